// Tensor plumbing for hook points and batching: row copies (the one in-place family), row selection,
// column slices and concatenation, fills, f16 <-> f32 casts, and an in-place row add for ROME edits.
// Tensors larger than one storage binding are processed in row chunks (engine/chunks.ts).
import {
  addRowKernel,
  castF16ToF32Kernel,
  castF32ToF16Kernel,
  copyColsKernel,
  copyRowsKernel,
  copyWorkgroups,
  fillKernel,
} from "../../kernels/copy.ts";
import { gatherRowsKernel } from "../../kernels/gather.ts";
import type { Engine } from "../engine.ts";
import { type BoundRange, DTYPE_BYTES, shapeStr, type Tensor } from "../tensor.ts";
import { asRows, bindAll, bindRows, rowChunks } from "../chunks.ts";

function assertWordDtype(what: string, t: Tensor): void {
  if (DTYPE_BYTES[t.dtype] !== 4) {
    throw new TypeError(`${what}: expected a 4-byte dtype (f32, u32, i32), got ${t.dtype} ${t}`);
  }
}

function assertIndex(what: string, t: Tensor): void {
  if (t.dtype !== "u32" || t.rank !== 1) {
    throw new TypeError(`${what}: row indices must be a u32 tensor [n], got ${t}`);
  }
}

// ---------------------------------------------------------------- row copies

/** Row indices: a host list (validated here), a u32 tensor [n] (out-of-range rows are skipped), or null for 0..n-1. */
export type Rows = readonly number[] | Tensor | null;

function isHostRows(r: readonly number[] | Tensor): r is readonly number[] {
  return Array.isArray(r);
}

/**
 * dst[dstRows[k], :] = src[srcRows[k], :] IN PLACE (the only in-place copy: restoring clean states into
 * corrupted rows). Both tensors are read as [rows, lastDim] and must share lastDim and dtype. `null` means
 * rows 0..n-1, n taken from the other list (or all of src's rows when both are null). Host lists are
 * checked against the row counts; a u32 tensor cannot be checked without a readback, so a pair whose index
 * is out of range is skipped. With repeated destination rows in a tensor list, which source wins is
 * unspecified (host lists: the last one).
 */
export function copyRows(src: Tensor, srcRows: Rows, dst: Tensor, dstRows: Rows): void {
  const what = "copyRows";
  assertWordDtype(what, src);
  if (dst.dtype !== src.dtype) throw new TypeError(`${what}: src ${src} and dst ${dst} differ in dtype`);
  const s = asRows(src, what), d = asRows(dst, what);
  if (s.cols !== d.cols) throw new RangeError(`${what}: src ${src} and dst ${dst} differ in row width`);
  if (src.buffer === dst.buffer) throw new Error(`${what}: src and dst must be different tensors`);
  const len = (r: Rows): number | undefined => {
    if (r === null) return undefined;
    if (isHostRows(r)) return r.length;
    assertIndex(what, r);
    return r.size;
  };
  const n = len(srcRows) ?? len(dstRows) ?? s.rows;
  if (len(srcRows) !== undefined && len(dstRows) !== undefined && len(srcRows) !== len(dstRows)) {
    throw new RangeError(`${what}: ${len(srcRows)} source rows but ${len(dstRows)} destination rows`);
  }
  const checkHost = (r: Rows, limit: number, side: string) => {
    if (r !== null && isHostRows(r)) {
      for (const i of r) {
        if (!Number.isInteger(i) || i < 0 || i >= limit) {
          throw new RangeError(`${what}: ${side} row ${i} outside 0..${limit - 1}`);
        }
      }
    } else if (r === null && n > limit) {
      throw new RangeError(`${what}: ${n} ${side} rows (identity) but the tensor has ${limit}`);
    }
  };
  checkHost(srcRows, s.rows, "source");
  checkHost(dstRows, d.rows, "destination");
  if (n === 0 || s.cols === 0) return;

  const C = s.cols, e = src.engine;
  if ((srcRows === null || isHostRows(srcRows)) && (dstRows === null || isHostRows(dstRows))) {
    // Both known on the host: buffer-to-buffer copies of contiguous runs, free of any binding limit.
    const at = (r: readonly number[] | null, k: number) => r === null ? k : r[k];
    const rb = C * 4;
    for (let k = 0; k < n;) {
      let run = 1;
      while (
        k + run < n && at(srcRows, k + run) === at(srcRows, k) + run &&
        at(dstRows, k + run) === at(dstRows, k) + run
      ) run++;
      e.copy(src.buffer, at(srcRows, k) * rb, dst.buffer, at(dstRows, k) * rb, run * rb);
      k += run;
    }
    return;
  }
  e.scope(() => {
    const index = (r: Rows): Tensor | undefined =>
      r === null ? undefined : isHostRows(r) ? e.upload(Uint32Array.from(r), [r.length], "u32") : r;
    const si = index(srcRows), di = index(dstRows);
    const any = (si ?? di)!;
    // Every (source chunk, destination chunk) pair gets one dispatch that copies only the pairs whose rows
    // fall in both; with tensors under the binding limit that is a single dispatch.
    for (const [s0, s1] of rowChunks(e, s.rows, [C * 4], `${what} src`)) {
      for (const [d0, d1] of rowChunks(e, d.rows, [C * 4], `${what} dst`)) {
        const sb = bindRows(src, s0, s1, C), db = bindRows(dst, d0, d1, C);
        e.dispatch(
          copyRowsKernel,
          {
            n,
            C,
            sR0: s0,
            sR1: s1,
            dR0: d0,
            dR1: d1,
            sOff: sb.elemOffset,
            dOff: db.elemOffset,
            srcIdentity: si ? 0 : 1,
            dstIdentity: di ? 0 : 1,
          },
          [bindAll(si ?? any, what), bindAll(di ?? any, what), sb, db],
          copyWorkgroups(n * C),
        );
      }
    }
  });
}

/**
 * out[k, :] = x[rows[k], :] (e.g. the last valid position of each batch row before the logits matmul).
 * x is read as [R, lastDim]; out is [n, lastDim]. Rows >= R cannot be seen without a readback: they give
 * zero rows (callers validate indices on the host). Chunked over x and out for big tensors.
 */
export function launchSelectRows(x: Tensor, rows: Tensor, what = "selectRows"): Tensor {
  assertWordDtype(what, x);
  assertIndex(what, rows);
  const { rows: R, cols: C } = asRows(x, what);
  const n = rows.size, e = x.engine;
  const out = e.empty([n, C], x.dtype);
  if (n === 0 || C === 0) return out;
  for (const [k0, k1] of rowChunks(e, n, [C * 4, 4], `${what} out`)) {
    const ob = bindRows(out, k0, k1, C), ib = bindRows(rows, k0, k1, 1);
    for (const [r0, r1] of rowChunks(e, R, [C * 4], `${what} table`)) {
      const tb = bindRows(x, r0, r1, C);
      e.dispatch(
        gatherRowsKernel,
        { n: k1 - k0, C, r0, r1, V: R, tOff: tb.elemOffset, oOff: ob.elemOffset, idOff: ib.elemOffset },
        [ib, tb, ob],
        copyWorkgroups((k1 - k0) * C),
      );
    }
  }
  return out;
}

// ---------------------------------------------------------------- columns

function copyCols(src: Tensor, sCol: number, dst: Tensor, dCol: number, w: number, what: string): void {
  const s = asRows(src, what), d = asRows(dst, what), e = src.engine;
  if (w === 0 || s.rows === 0) return;
  for (const [r0, r1] of rowChunks(e, s.rows, [s.cols * 4, d.cols * 4], what)) {
    const sb = bindRows(src, r0, r1, s.cols), db = bindRows(dst, r0, r1, d.cols);
    e.dispatch(
      copyColsKernel,
      {
        rows: r1 - r0,
        w,
        sStride: s.cols,
        sCol,
        sOff: sb.elemOffset,
        dStride: d.cols,
        dCol,
        dOff: db.elemOffset,
      },
      [sb, db],
      copyWorkgroups((r1 - r0) * w),
    );
  }
}

/** x[..., start:end] as a new tensor [..., end - start]. */
export function sliceCols(x: Tensor, start: number, end: number): Tensor {
  const what = "sliceCols";
  assertWordDtype(what, x);
  const { cols } = asRows(x, what);
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > cols) {
    throw new RangeError(`${what}: columns [${start}, ${end}) outside the ${cols} columns of ${x}`);
  }
  const out = x.engine.empty([...x.shape.slice(0, -1), end - start], x.dtype);
  copyCols(x, start, out, 0, end - start, what);
  return out;
}

/** Concatenation along the last dimension; all inputs share dtype and leading dimensions. */
export function concatCols(xs: readonly Tensor[]): Tensor {
  const what = "concatCols";
  if (xs.length === 0) throw new RangeError(`${what}: no tensors`);
  const lead = xs[0].shape.slice(0, -1);
  let total = 0;
  for (const x of xs) {
    assertWordDtype(what, x);
    if (x.dtype !== xs[0].dtype) throw new TypeError(`${what}: mixed dtypes ${xs[0].dtype} and ${x.dtype}`);
    const l = x.shape.slice(0, -1);
    if (x.rank !== xs[0].rank || l.some((v, i) => v !== lead[i])) {
      throw new RangeError(
        `${what}: ${shapeStr(x.shape)} does not match ${shapeStr(xs[0].shape)} but for the last dim`,
      );
    }
    total += x.shape[x.rank - 1];
  }
  const out = xs[0].engine.empty([...lead, total], xs[0].dtype);
  let col = 0;
  for (const x of xs) {
    const w = x.shape[x.rank - 1];
    copyCols(x, 0, out, col, w, what);
    col += w;
  }
  return out;
}

// ---------------------------------------------------------------- in place

/** Fills x IN PLACE with `value` (converted to x's dtype: f32, f16 rounded as Float16Array, u32, i32). */
export function fill(x: Tensor, value: number): void {
  let bits: number;
  if (x.dtype === "f32") bits = new Uint32Array(Float32Array.of(value).buffer)[0];
  else if (x.dtype === "f16") {
    const h = new Uint16Array(Float16Array.of(value).buffer)[0];
    bits = (h | (h << 16)) >>> 0;
  } else if (x.dtype === "u32") {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new RangeError(`fill: ${value} is not a u32`);
    }
    bits = value;
  } else {
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
      throw new RangeError(`fill: ${value} is not an i32`);
    }
    bits = value >>> 0;
  }
  const words = Math.ceil(x.byteLength / 4), e = x.engine;
  if (words === 0) return;
  for (const [w0, w1] of rowChunks(e, words, [4], "fill")) {
    const b = wordRange(x, w0, w1);
    e.dispatch(fillKernel, { n: w1 - w0, bits, off: b.elemOffset }, [b], copyWorkgroups(w1 - w0));
  }
}

/** Words [w0, w1) of a tensor's bytes as a binding whose elemOffset counts 4-byte words. */
function wordRange(t: Tensor, w0: number, w1: number): BoundRange {
  const per = 4 / DTYPE_BYTES[t.dtype]; // elements per word: 1, or 2 for f16 (range rounds up to a word)
  const r = t.range(w0 * per, Math.min(w1 * per, t.size));
  return { ...r, elemOffset: r.elemOffset / per };
}

/** x[row, :] += alpha * v IN PLACE; x is read as [R, C] (row is a flat row index), v has C elements. */
export function addAt(x: Tensor, row: number, v: Tensor, alpha = 1): void {
  const what = "addAt";
  if (x.dtype !== "f32" || v.dtype !== "f32") throw new TypeError(`${what}: expected f32, got ${x} and ${v}`);
  const { rows, cols } = asRows(x, what);
  if (v.size !== cols) throw new RangeError(`${what}: vector ${v} does not match the rows of ${x} (${cols})`);
  if (!Number.isInteger(row) || row < 0 || row >= rows) {
    throw new RangeError(`${what}: row ${row} outside 0..${rows - 1}`);
  }
  if (cols === 0) return;
  const xb = bindRows(x, row, row + 1, cols);
  x.engine.dispatch(
    addRowKernel,
    { C: cols, off: xb.elemOffset, alpha },
    [bindAll(v, what), xb],
    copyWorkgroups(cols),
  );
}

// ---------------------------------------------------------------- casts

/** Elements per chunk of a cast: even (whole f16 words) and small enough for both bindings. */
function castChunks(e: Engine, n: number, what: string): [number, number][] {
  // pairs of elements: 8 bytes on the f32 side, one 4-byte word on the f16 side
  return rowChunks(e, Math.ceil(n / 2), [8, 4], what).map(([p0, p1]) => [2 * p0, Math.min(n, 2 * p1)]);
}

/** Whether casts use shader-f16 by default on this engine. */
export function hasShaderF16(e: Engine): boolean {
  return e.gpu.hasF16;
}

/**
 * f16 -> f32. `native` (default: when the device has shader-f16) converts in hardware; otherwise the
 * halves are decoded from their bits, which needs no f16 support. Both are exact.
 */
export function castF16ToF32(x: Tensor, opts: { native?: boolean } = {}): Tensor {
  if (x.dtype !== "f16") throw new TypeError(`castF16ToF32: expected f16, got ${x}`);
  const e = x.engine, native = opts.native ?? hasShaderF16(e);
  if (native && !hasShaderF16(e)) {
    throw new Error("castF16ToF32: native cast needs shader-f16, which this device lacks");
  }
  const out = e.empty(x.shape, "f32");
  const kernel = castF16ToF32Kernel(native);
  for (const [a, b] of castChunks(e, x.size, "castF16ToF32")) {
    const sb = x.range(a, b), db = out.range(a, b);
    e.dispatch(
      kernel,
      { n: b - a, sOff: sb.elemOffset / 2, dOff: db.elemOffset },
      [sb, db],
      copyWorkgroups(Math.ceil((b - a) / 2)),
    );
  }
  return out;
}

/**
 * f32 -> f16, round to nearest even (the bits path matches Float16Array exactly; the native path rounds
 * as the device does, which WGSL allows to be either neighbour). |x| >= 65520 gives ±infinity on both.
 */
export function castF32ToF16(x: Tensor, opts: { native?: boolean } = {}): Tensor {
  if (x.dtype !== "f32") throw new TypeError(`castF32ToF16: expected f32, got ${x}`);
  const e = x.engine, native = opts.native ?? hasShaderF16(e);
  if (native && !hasShaderF16(e)) {
    throw new Error("castF32ToF16: native cast needs shader-f16, which this device lacks");
  }
  const out = e.empty(x.shape, "f16");
  const kernel = castF32ToF16Kernel(native);
  for (const [a, b] of castChunks(e, x.size, "castF32ToF16")) {
    const sb = x.range(a, b), db = out.range(a, b);
    e.dispatch(
      kernel,
      { n: b - a, sOff: sb.elemOffset, dOff: db.elemOffset / 2, inf: Infinity },
      [sb, db],
      copyWorkgroups(Math.ceil((b - a) / 2)),
    );
  }
  return out;
}
