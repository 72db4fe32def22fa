// Normalisation and activation ops: layerNorm (with the per-row statistics the backward pass needs),
// GPT-2's tanh GELU and its derivative, softmax and log-softmax over the last dimension.
// Tensors larger than one storage binding are processed in chunks of whole rows (elements for GELU).
import { flatWorkgroups, type KernelSpec, type Workgroups } from "../../kernels/descriptor.ts";
import { geluBackwardKernel, geluKernel, geluWorkgroups } from "../../kernels/gelu.ts";
import {
  LAYERNORM_COLSUM_WG,
  LAYERNORM_PARTIAL_WG,
  LAYERNORM_ROWTHREAD_WG,
  layerNormBackwardKernel,
  layerNormBackwardRowThreadKernel,
  layerNormBlockPartialKernel,
  layerNormColSumKernel,
  layerNormKernel,
  layerNormRowThreadKernel,
} from "../../kernels/layernorm.ts";
import { rowWorkgroupSize } from "../../kernels/reduce.ts";
import { softmaxKernel, type SoftmaxKind } from "../../kernels/softmax.ts";
import { shapeStr, type Tensor } from "../tensor.ts";

import { assertF32, bindAll, bindRows, rowChunks, rowsCols } from "../chunks.ts";

function rowGroups(x: Tensor, rows: number): Workgroups {
  return flatWorkgroups(rows, x.engine.limits.maxWorkgroupsPerDim);
}

export interface LayerNormResult {
  /** Normalised output, shaped like x. */
  y: Tensor;
  /** Per-row mean, [rows]. */
  mean: Tensor;
  /** Per-row 1 / sqrt(var + eps) (biased variance, as PyTorch), [rows]. */
  rstd: Tensor;
}

/**
 * Widest row that layerNorm and its backward hand to the thread-per-row kernels (no workgroup barriers)
 * rather than the workgroup-per-row ones (a shared-memory tree sum per row). On lavapipe a barrier is
 * costly: [4096, 128] forward 40-49 -> 7.5 ms, backward 49-54 -> 14 ms; [1024, 768] forward 17-21 ->
 * 11 ms, backward 44+ -> 26 ms (2 shared CPU cores). At C = 1024 the thread per row still won ([2048,
 * 1024]: 107 -> 50 ms forward, 135 -> 95 backward); at 2048, with few rows, the workgroups do (backward
 * [256, 2048]: 28 ms against 50).
 */
export const LAYERNORM_ROWTHREAD_MAX_C = 1024;

/** LayerNorm over the last dimension of x [..., C] with gamma, beta [C] (GPT-2: eps = 1e-5). */
export function launchLayerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): LayerNormResult {
  assertF32("layerNorm", x, gamma, beta);
  const { rows, cols } = rowsCols("layerNorm", x);
  for (const [name, p] of [["gamma", gamma], ["beta", beta]] as const) {
    if (p.rank !== 1 || p.size !== cols) {
      throw new RangeError(`layerNorm: ${name} must be [${cols}] for x ${shapeStr(x.shape)}, got ${p}`);
    }
  }
  if (!(eps >= 0) || !Number.isFinite(eps)) throw new RangeError(`layerNorm: eps must be >= 0, got ${eps}`);
  const engine = x.engine;
  const y = engine.empty(x.shape);
  const mean = engine.empty([rows]);
  const rstd = engine.empty([rows]);
  const rowThread = cols <= LAYERNORM_ROWTHREAD_MAX_C;
  const kernel = rowThread ? layerNormRowThreadKernel : layerNormKernel(rowWorkgroupSize(cols));
  for (const [r0, r1] of rowChunks(engine, rows, [cols * 4], "layerNorm")) {
    const xr = x.range(r0 * cols, r1 * cols);
    const mr = mean.range(r0, r1);
    engine.dispatch(
      kernel,
      { rows: r1 - r0, C: cols, off: xr.elemOffset, statOff: mr.elemOffset, eps },
      [xr, gamma.range(0, cols), beta.range(0, cols), y.range(r0 * cols, r1 * cols), mr, rstd.range(r0, r1)],
      rowGroups(x, rowThread ? Math.ceil((r1 - r0) / LAYERNORM_ROWTHREAD_WG) : r1 - r0),
    );
  }
  return { y, mean, rstd };
}

/**
 * GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with the tanh argument clamped: finite
 * for every finite input (up to +-3.4e38). Infinite inputs are outside its domain (-inf gives NaN).
 */
export function launchGelu(x: Tensor): Tensor {
  assertF32("gelu", x);
  return geluChunks(geluKernel, "gelu", x, [], x.engine.empty(x.shape));
}

/** Runs a GELU kernel over x in element chunks, binding x, then `inputs`, then `out` (all x's shape). */
function geluChunks(kernel: KernelSpec, what: string, x: Tensor, inputs: Tensor[], out: Tensor): Tensor {
  const engine = x.engine;
  for (const [i0, i1] of rowChunks(engine, x.size, [1 * 4], what)) {
    const xr = x.range(i0, i1);
    engine.dispatch(
      kernel,
      { n: i1 - i0, off: xr.elemOffset },
      [xr, ...inputs.map((t) => t.range(i0, i1)), out.range(i0, i1)],
      geluWorkgroups(i1 - i0),
    );
  }
  return out;
}

/** dx = dy * gelu'(x), the derivative of the same clamped tanh form `gelu` computes. */
export function geluBackward(x: Tensor, dy: Tensor): Tensor {
  assertF32("geluBackward", x, dy);
  if (x.rank !== dy.rank || x.shape.some((d, i) => d !== dy.shape[i])) {
    throw new RangeError(`geluBackward: dy ${shapeStr(dy.shape)} must match x ${shapeStr(x.shape)}`);
  }
  return geluChunks(geluBackwardKernel, "geluBackward", x, [dy], x.engine.empty(x.shape));
}

function rowSoftmax(kind: SoftmaxKind, op: string, x: Tensor): Tensor {
  assertF32(op, x);
  const { rows, cols } = rowsCols(op, x);
  const engine = x.engine;
  const y = engine.empty(x.shape);
  const kernel = softmaxKernel(kind, rowWorkgroupSize(cols));
  for (const [r0, r1] of rowChunks(engine, rows, [cols * 4], op)) {
    const xr = x.range(r0 * cols, r1 * cols);
    engine.dispatch(
      kernel,
      { rows: r1 - r0, cols, off: xr.elemOffset },
      [xr, y.range(r0 * cols, r1 * cols)],
      rowGroups(x, r1 - r0),
    );
  }
  return y;
}

/** Softmax over the last dimension (max-subtracted, f32). */
export function softmax(x: Tensor): Tensor {
  return rowSoftmax("softmax", "softmax", x);
}

/** log(softmax(x)) over the last dimension, computed as (x - max) - log(sum exp(x - max)). */
export function logSoftmax(x: Tensor): Tensor {
  return rowSoftmax("logsoftmax", "logSoftmax", x);
}

// ---------------------------------------------------------------- layerNorm backward

export interface LayerNormGrads {
  /** Gradient w.r.t. x, shaped like x. */
  dx: Tensor;
  /** Gradient w.r.t. gamma, summed over rows, [C]. */
  dgamma: Tensor;
  /** Gradient w.r.t. beta, summed over rows, [C]. */
  dbeta: Tensor;
}

/**
 * Rows of the partial [dgamma | dbeta] sums: enough blocks to keep a GPU busy, few enough that the
 * column sum stays short (and the partials small next to x and dy).
 */
const LAYERNORM_BACKWARD_BLOCKS = 256;

/**
 * Gradients of `layerNorm` from its saved per-row mean and rstd: x, dy [..., C], mean, rstd [rows],
 * gamma [C]. dgamma and dbeta are reduced without atomics, bitwise reproducible run to run.
 */
export function layerNormBackward(
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  gamma: Tensor,
  dy: Tensor,
): LayerNormGrads {
  const what = "layerNormBackward";
  assertF32(what, x, mean, rstd, gamma, dy);
  const { rows, cols: C } = rowsCols(what, x);
  if (dy.rank !== x.rank || dy.shape.some((d, i) => d !== x.shape[i])) {
    throw new RangeError(`${what}: dy ${shapeStr(dy.shape)} must match x ${shapeStr(x.shape)}`);
  }
  if (gamma.rank !== 1 || gamma.size !== C) {
    throw new RangeError(`${what}: gamma must be [${C}] for x ${shapeStr(x.shape)}, got ${gamma}`);
  }
  for (const [name, s] of [["mean", mean], ["rstd", rstd]] as const) {
    if (s.rank !== 1 || s.size !== rows) {
      throw new RangeError(
        `${what}: ${name} must be [${rows}] (one per row of x ${shapeStr(x.shape)}), got ${s}`,
      );
    }
  }
  const e = x.engine;
  const dx = e.empty(x.shape), dgamma = e.empty([C]), dbeta = e.empty([C]);
  if (rows === 0) {
    e.clear(dgamma);
    e.clear(dbeta);
    return { dx, dgamma, dbeta };
  }
  // Rows per block: as many blocks as LAYERNORM_BACKWARD_BLOCKS, unless a block would not fit a binding.
  const maxRowsBound = Math.floor((e.limits.maxBindingBytes - e.limits.storageOffsetAlignment) / (C * 4));
  if (maxRowsBound < 1) {
    throw new RangeError(`${what}: a row of ${C} elements exceeds the device's storage binding limit`);
  }
  const perBlock = Math.min(Math.ceil(rows / LAYERNORM_BACKWARD_BLOCKS), maxRowsBound);
  const blocks = Math.ceil(rows / perBlock);
  e.scope(() => {
    const partial = e.empty([blocks, 2 * C]);
    const rowThread = C <= LAYERNORM_ROWTHREAD_MAX_C;
    const wb = [perBlock * C * 4, perBlock * 4, 2 * C * 4];
    for (const [b0, b1] of rowChunks(e, blocks, wb, what)) {
      const r0 = b0 * perBlock, r1 = Math.min(rows, b1 * perBlock);
      const xr = bindRows(x, r0, r1, C),
        sr = bindRows(mean, r0, r1, 1),
        pr = bindRows(partial, b0, b1, 2 * C);
      // the block kernels' uniforms (layerNormBackwardKernel, layerNormBlockPartialKernel)
      const blockUniforms = {
        rows: r1 - r0,
        C,
        rowsPerBlock: perBlock,
        blocks: b1 - b0,
        off: xr.elemOffset,
        statOff: sr.elemOffset,
        pOff: pr.elemOffset,
      };
      if (rowThread) {
        // dx by one thread per row, the partial column sums by one thread per (block, column): no barriers
        const dyr = bindRows(dy, r0, r1, C), rr = bindRows(rstd, r0, r1, 1);
        e.dispatch(
          layerNormBackwardRowThreadKernel,
          { rows: r1 - r0, C, off: xr.elemOffset, statOff: sr.elemOffset },
          [xr, dyr, sr, rr, bindAll(gamma, what), bindRows(dx, r0, r1, C)],
          rowGroups(x, Math.ceil((r1 - r0) / LAYERNORM_ROWTHREAD_WG)),
        );
        e.dispatch(
          layerNormBlockPartialKernel,
          blockUniforms,
          [xr, dyr, sr, rr, pr],
          rowGroups(x, Math.ceil(((b1 - b0) * C) / LAYERNORM_PARTIAL_WG)),
        );
        continue;
      }
      e.dispatch(
        layerNormBackwardKernel(rowWorkgroupSize(C)),
        blockUniforms,
        [
          xr,
          bindRows(dy, r0, r1, C),
          sr,
          bindRows(rstd, r0, r1, 1),
          bindAll(gamma, what),
          bindRows(dx, r0, r1, C),
          pr,
        ],
        rowGroups(x, b1 - b0),
      );
    }
    const gb = bindAll(dgamma, what), bb = bindAll(dbeta, what);
    rowChunks(e, blocks, [2 * C * 4], what).forEach(([b0, b1], i) => {
      const pr = bindRows(partial, b0, b1, 2 * C);
      e.dispatch(
        layerNormColSumKernel,
        { blocks: b1 - b0, C, pOff: pr.elemOffset, accumulate: i === 0 ? 0 : 1 },
        [pr, gb, bb],
        flatWorkgroups(Math.ceil(C / LAYERNORM_COLSUM_WG), e.limits.maxWorkgroupsPerDim),
      );
    });
  });
  return { dx, dgamma, dbeta };
}
