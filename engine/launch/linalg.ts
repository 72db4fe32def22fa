// Dense SPD linear algebra for ROME's C x = k: blocked Cholesky (C = L Lᵀ) and blocked triangular solves,
// recorded as a sequence of dispatches into the open batch; nothing inside is read back. Only
// choleskySolveChecked reads (the status flag) so it can throw a readable error.
//
// Matrices larger than one storage binding (6400² f32 is 164 MB > lavapipe's 128 MiB) are bound by row
// ranges; every kernel takes `lOff`, the first element of its binding.
import { ceilDiv, flatWorkgroups } from "../../kernels/descriptor.ts";
import {
  lowerCopyKernel,
  potrfKernel,
  SYRK_TILE,
  syrkKernel,
  TRSM_ROWS,
  trsmKernel,
  TRSV_DIAG_RHS,
  TRSV_ROWS,
  trsvDiagKernel,
  trsvUpdateKernel,
} from "../../kernels/cholesky.ts";
import type { Engine } from "../engine.ts";
import { type BoundRange, shapeStr, type Tensor } from "../tensor.ts";

export interface CholeskyOptions {
  /** λ added to the diagonal before factoring (ridge / Tikhonov damping): factors A + λI. Default 0. */
  damping?: number;
  /** Block size nb of the blocked algorithm (8..64, multiple of 8). Default 64. */
  blockSize?: number;
}

/** Block size used unless asked otherwise: nb² f32 of the diagonal block fit 16 KiB of shared memory. */
export const DEFAULT_BLOCK = 64;

/** Raised by choleskySolveChecked when a pivot is not positive. */
export class NotPositiveDefiniteError extends Error {
  override name = "NotPositiveDefiniteError";
  constructor(readonly column: number) {
    super(`matrix is not positive definite at column ${column}; add damping / more samples`);
  }
}

/**
 * The column a status value names: status[0] is 0 when every pivot was positive, else 1 + the first
 * column whose pivot was ≤ 0 or not finite (LAPACK's INFO convention). Returns -1 for success.
 */
export function failedColumn(status: number): number {
  return status === 0 ? -1 : status - 1;
}

function blockSize(engine: Engine, opts: { blockSize?: number }): number {
  const nb = opts.blockSize ?? DEFAULT_BLOCK;
  if (!Number.isInteger(nb) || nb < 8 || nb > 64 || nb % 8 !== 0) {
    throw new RangeError(`cholesky: blockSize must be a multiple of 8 in [8, 64], got ${nb}`);
  }
  if (nb * nb * 4 > engine.limits.workgroupStorage) {
    throw new RangeError(
      `cholesky: blockSize ${nb} needs ${nb * nb * 4} bytes of workgroup memory, device has ` +
        `${engine.limits.workgroupStorage}`,
    );
  }
  return nb;
}

function squareSize(op: string, a: Tensor): number {
  if (a.dtype !== "f32") throw new TypeError(`${op}: expected an f32 matrix, got ${a}`);
  if (a.rank !== 2 || a.shape[0] !== a.shape[1] || a.shape[0] === 0) {
    throw new RangeError(`${op}: expected a non-empty square matrix [n, n], got ${shapeStr(a.shape)}`);
  }
  return a.shape[0];
}

/** Number of right-hand sides of b ([n] or [n, r]) after checking it against an n×n matrix. */
function rhsCount(op: string, n: number, b: Tensor): number {
  if (b.dtype !== "f32") throw new TypeError(`${op}: expected f32 right-hand sides, got ${b}`);
  const ok = (b.rank === 1 || b.rank === 2) && b.shape[0] === n && b.size > 0;
  if (!ok) {
    throw new RangeError(`${op}: right-hand side must be [${n}] or [${n}, r], got ${shapeStr(b.shape)}`);
  }
  if (b.byteLength > b.engine.limits.maxBindingBytes) {
    throw new RangeError(
      `${op}: right-hand side ${shapeStr(b.shape)} is ${b.byteLength} bytes, over the device's ` +
        `${b.engine.limits.maxBindingBytes}-byte storage binding; solve fewer columns at a time`,
    );
  }
  const r = b.rank === 1 ? 1 : b.shape[1];
  if (r > b.engine.limits.maxWorkgroupsPerDim) {
    throw new RangeError(
      `${op}: ${r} right-hand sides exceed ${b.engine.limits.maxWorkgroupsPerDim} per call`,
    );
  }
  return r;
}

/** Rows [r0, r1) (all columns c0..c1) of an n-column matrix as one binding; `lOff` for the kernel. */
function rowsBinding(t: Tensor, n: number, r0: number, r1: number, c0 = 0, c1 = n): [BoundRange, number] {
  const range = t.range(r0 * n + c0, (r1 - 1) * n + c1);
  return [range, range.offset / 4];
}

/** Rows of an n-column f32 matrix that always fit one storage binding (an aligned range costs up to one
 * alignment unit more than its rows). */
function rowsPerBinding(engine: Engine, n: number): number {
  return Math.floor((engine.limits.maxBindingBytes - engine.limits.storageOffsetAlignment) / (4 * n));
}

/** Refuses, before anything is recorded, a matrix whose `rows`-row strips cannot be bound. */
function assertStripFits(op: string, engine: Engine, n: number, rows: number): void {
  if (rowsPerBinding(engine, n) < rows) {
    throw new RangeError(
      `${op}: a ${rows}-row strip of a ${n}-column matrix does not fit the device's ` +
        `${engine.limits.maxBindingBytes}-byte storage binding`,
    );
  }
}

/** Splits rows [r0, r1) into chunks of whole `unit`-row groups that each fit one storage binding. */
function rowChunks(engine: Engine, n: number, r0: number, r1: number, unit: number): [number, number][] {
  const step = Math.floor(rowsPerBinding(engine, n) / unit) * unit; // ≥ unit: checked by assertStripFits
  const out: [number, number][] = [];
  for (let r = r0; r < r1; r += step) out.push([r, Math.min(r1, r + step)]);
  return out;
}

/**
 * Cholesky factor of a symmetric positive definite matrix: A + damping·I = L Lᵀ, L lower triangular
 * with its upper part zeroed. Reads only A's lower triangle. `status` is a u32 [1]: 0 when A was
 * positive definite, else 1 + the first failing column (see failedColumn); L is then garbage from that
 * column on. Right-looking blocked algorithm, 3 dispatches per block column of nb.
 */
export function cholesky(a: Tensor, opts: CholeskyOptions = {}): { l: Tensor; status: Tensor } {
  const n = squareSize("cholesky", a);
  const engine = a.engine;
  const nb = blockSize(engine, opts);
  const damping = opts.damping ?? 0;
  if (!Number.isFinite(damping) || damping < 0) {
    throw new RangeError(`cholesky: damping must be a finite number ≥ 0, got ${damping}`);
  }
  assertStripFits("cholesky", engine, n, Math.max(nb, SYRK_TILE));
  const l = engine.empty([n, n]);
  const status = engine.zeros([1], "u32");

  for (const [r0, r1] of rowChunks(engine, n, 0, n, 1)) {
    const [ar, aOff] = rowsBinding(a, n, r0, r1);
    const [lr, lOff] = rowsBinding(l, n, r0, r1);
    const count = (r1 - r0) * n;
    engine.dispatch(
      lowerCopyKernel,
      { n, row0: r0, count, aOff, lOff, damping },
      [ar, lr],
      flatWorkgroups(
        ceilDiv(count, 256),
      ),
    );
  }

  const d = engine.empty([nb, nb]);
  // L21ᵀ of the current panel, rows padded to a multiple of 4 floats for the update's vec4 loads.
  const pt = engine.empty([nb, Math.max(4, Math.ceil((n - nb) / 4) * 4)]);
  for (let k0 = 0; k0 < n; k0 += nb) {
    const bk = Math.min(nb, n - k0);
    const t0 = k0 + bk;
    const m = n - t0;
    const mp = Math.ceil(m / 4) * 4;
    {
      const [lr, lOff] = rowsBinding(l, n, k0, t0, k0, t0);
      engine.dispatch(potrfKernel(nb), { n, k0, bk, lOff }, [lr, d, status], [1, 1, 1]);
    }
    if (m === 0) break;
    for (const [r0, r1] of rowChunks(engine, n, t0, n, TRSM_ROWS)) {
      const [lr, lOff] = rowsBinding(l, n, r0, r1, k0, t0);
      const rows = r1 - r0;
      engine.dispatch(trsmKernel(nb), { n, k0, bk, mp, row0: r0 - t0, rows, lOff }, [d, lr, pt], [
        ceilDiv(rows, TRSM_ROWS),
        1,
        1,
      ]);
    }
    // Lower tiles of the trailing m×m matrix; tile row bi holds tiles bi(bi+1)/2 .. bi(bi+1)/2 + bi.
    const tri = (rows: number) => rows * (rows + 1) / 2;
    for (const [r0, r1] of rowChunks(engine, n, t0, n, SYRK_TILE)) {
      const [lr, lOff] = rowsBinding(l, n, r0, r1, t0, r1);
      const tile0 = tri((r0 - t0) / SYRK_TILE);
      const tiles = tri(ceilDiv(r1 - t0, SYRK_TILE)) - tile0;
      engine.dispatch(
        syrkKernel(),
        { n, t0, bk, m, mp, tile0, tiles, lOff },
        [pt, lr],
        flatWorkgroups(tiles),
      );
    }
  }
  d.dispose();
  pt.dispose();
  return { l, status };
}

/** In-place blocked substitution on x ([n, r]): L y = x (lower) or Lᵀ y = x (transposed). */
function solveInPlace(l: Tensor, x: Tensor, n: number, r: number, transposed: boolean, nb: number): void {
  const engine = l.engine;
  const diag = trsvDiagKernel(nb, transposed);
  const update = trsvUpdateKernel(transposed);
  const blocks = ceilDiv(n, nb);
  for (let s = 0; s < blocks; s++) {
    const k0 = (transposed ? blocks - 1 - s : s) * nb;
    const bk = Math.min(nb, n - k0);
    const t0 = k0 + bk;
    {
      const [lr, lOff] = rowsBinding(l, n, k0, t0, k0, t0);
      engine.dispatch(diag, { n, r, k0, bk, lOff }, [lr, x], [ceilDiv(r, TRSV_DIAG_RHS), 1, 1]);
    }
    if (!transposed) {
      // Right-looking forward step: rows below the block lose their dependence on it.
      for (const [r0, r1] of rowChunks(engine, n, t0, n, 1)) {
        const [lr, lOff] = rowsBinding(l, n, r0, r1, k0, t0);
        engine.dispatch(update, { n, r, k0, bk, out0: r0, outs: r1 - r0, lOff }, [lr, x], [
          ceilDiv(r1 - r0, TRSV_ROWS),
          r,
          1,
        ]);
      }
    } else if (k0 > 0) {
      // Backward step with Lᵀ: unknowns above the block lose their dependence on it, reading the
      // block's rows of L (contiguous) rather than its column.
      const [lr, lOff] = rowsBinding(l, n, k0, t0, 0, k0);
      engine.dispatch(update, { n, r, k0, bk, out0: 0, outs: k0, lOff }, [lr, x], [
        ceilDiv(k0, TRSV_ROWS),
        r,
        1,
      ]);
    }
  }
}

/**
 * Solves L y = b (transpose false) or Lᵀ y = b (transpose true) for lower-triangular L [n, n] (only its
 * lower triangle is read) and b [n] or [n, r]. Returns y with b's shape.
 */
export function triangularSolve(
  l: Tensor,
  b: Tensor,
  opts: { transpose: boolean; blockSize?: number },
): Tensor {
  const n = squareSize("triangularSolve", l);
  const r = rhsCount("triangularSolve", n, b);
  const nb = blockSize(l.engine, opts);
  assertStripFits("triangularSolve", l.engine, n, nb);
  const x = l.engine.empty(b.shape);
  l.engine.copy(b.buffer, 0, x.buffer, 0, b.byteLength);
  solveInPlace(l, x, n, r, opts.transpose, nb);
  return x;
}

/**
 * Solves (A + damping·I) x = b for symmetric positive definite A [n, n] and b [n] or [n, r]: Cholesky,
 * then forward and back substitution, all in the open batch. Check `status` (see cholesky) after your
 * own readback: x is meaningless when it is non-zero.
 */
export function choleskySolve(
  a: Tensor,
  b: Tensor,
  opts: CholeskyOptions = {},
): { x: Tensor; status: Tensor } {
  const n = squareSize("choleskySolve", a);
  const r = rhsCount("choleskySolve", n, b);
  const engine = a.engine;
  const nb = blockSize(engine, opts);
  const { l, status } = cholesky(a, opts);
  const x = engine.empty(b.shape);
  engine.copy(b.buffer, 0, x.buffer, 0, b.byteLength);
  solveInPlace(l, x, n, r, false, nb);
  solveInPlace(l, x, n, r, true, nb);
  l.dispose();
  return { x, status };
}

/**
 * choleskySolve, then reads the status flag (one readback) and throws NotPositiveDefiniteError
 * ("matrix is not positive definite at column j; add damping / more samples") instead of returning junk.
 */
export async function choleskySolveChecked(
  a: Tensor,
  b: Tensor,
  opts: CholeskyOptions = {},
): Promise<Tensor> {
  const { x, status } = choleskySolve(a, b, opts);
  const [flag] = await status.read();
  status.dispose();
  if (flag !== 0) {
    x.dispose();
    throw new NotPositiveDefiniteError(failedColumn(flag));
  }
  return x;
}
