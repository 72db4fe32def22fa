// Splitting work over tensors larger than one storage binding, and the shape/dtype checks every op
// family shares. Tensors beyond `engine.limits.maxBindingBytes` (GPT-2's token embedding: 147 MiB for
// small, 307 MiB for XL, against lavapipe's 128 MiB) are processed in row chunks bound with Tensor.range.
import type { Engine } from "./engine.ts";
import { type BoundRange, shapeStr, type Tensor } from "./tensor.ts";

/**
 * Splits rows [0, rows) into consecutive [first, end) chunks such that, for every tensor given by its row
 * width in bytes, `Tensor.range(first * rowElems, end * rowElems)` fits one storage binding. A range
 * starts at the offset alignment at or below its first byte, so the slack in front is accounted exactly.
 * `maxRows` further caps a chunk (e.g. a dispatch dimension).
 */
export function rowChunks(
  engine: Engine,
  rows: number,
  rowBytes: readonly number[],
  what: string,
  maxRows = Infinity,
): [number, number][] {
  const max = engine.limits.maxBindingBytes;
  const align = engine.limits.storageOffsetAlignment;
  const chunks: [number, number][] = [];
  for (let r0 = 0; r0 < rows;) {
    let r1 = Math.min(rows, r0 + maxRows);
    for (const rb of rowBytes) {
      if (rb === 0) continue;
      const slack = (r0 * rb) % align;
      // ceil((end*rb - offset) / 4) * 4 <= max holds when end*rb - offset <= max (max is a multiple of 4)
      r1 = Math.min(r1, r0 + Math.floor((max - slack) / rb));
    }
    if (r1 <= r0) {
      throw new RangeError(
        `${what}: one row of ${Math.max(...rowBytes)} bytes does not fit the device's ` +
          `${max}-byte storage binding limit`,
      );
    }
    chunks.push([r0, r1]);
    r0 = r1;
  }
  return chunks;
}

/** Rows [r0, r1) of a tensor viewed as [*, rowElems], as a binding (never the pooled buffer's slack). */
export function bindRows(t: Tensor, r0: number, r1: number, rowElems: number): BoundRange {
  return t.range(r0 * rowElems, r1 * rowElems);
}

/** The whole tensor as a binding of exactly its bytes (a pooled buffer may be up to 25% larger). */
export function bindAll(t: Tensor, what: string): BoundRange {
  if (t.byteLength > t.engine.limits.maxBindingBytes) {
    throw new RangeError(
      `${what}: ${t} is ${t.byteLength} bytes, over the ${t.engine.limits.maxBindingBytes}-byte binding limit`,
    );
  }
  return t.range(0, Math.max(t.size, 1));
}

/** Rows and row width of a tensor read as a matrix [rows, lastDim]. */
export function asRows(t: Tensor, what: string): { rows: number; cols: number } {
  if (t.rank < 1) throw new RangeError(`${what}: expected a tensor of rank >= 1, got ${t}`);
  const cols = t.shape[t.rank - 1];
  return { rows: cols === 0 ? 0 : t.size / cols, cols };
}

/** rows and cols of `x` seen as [rows, C] over its last dimension; rejects rank 0 and C = 0. */
export function rowsCols(op: string, x: Tensor): { rows: number; cols: number } {
  if (x.rank === 0) throw new RangeError(`${op}: needs at least one dimension, got a scalar ${x}`);
  const cols = x.shape[x.rank - 1];
  if (cols === 0) throw new RangeError(`${op}: last dimension is empty in ${shapeStr(x.shape)}`);
  return { rows: x.size / cols, cols };
}

export function assertF32(op: string, ...ts: Tensor[]): void {
  for (const t of ts) if (t.dtype !== "f32") throw new TypeError(`${op}: expected f32, got ${t.dtype} ${t}`);
}
