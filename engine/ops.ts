// The functional op set: the one way into the ops for the GPT-2 graph and the layers above the engine.
// Each differentiable op runs its kernel(s) through the launchers in engine/launch/* and, when a tape is
// recording and an input requires a gradient, records its backward rule on the tape (autograd.ts).
// Transposes in backward rules are matmul flags, never copies. The launcher-level ops that have no
// backward (row copies, casts, reductions, Cholesky solves, in-place accumulation) are re-exported here
// under their own names; launchers whose op is differentiable here are named launch* so that no name
// means two things.
import { activeTape } from "./autograd.ts";
import { launchAdd, launchMul, launchScale, launchSub } from "./launch/elementwise.ts";
import { launchMatmul, type MatmulOptions } from "./launch/matmul.ts";
import {
  geluBackward,
  launchGelu,
  launchLayerNorm,
  layerNormBackward,
  logSoftmax,
  softmax,
} from "./launch/nn.ts";
import { attentionBackward, launchAttention } from "./launch/attention.ts";
import { launchAddPositions, launchGatherRows, scatterAddRows } from "./launch/gather.ts";
import { copyRows, launchSelectRows } from "./launch/copy.ts";
import { sum } from "./launch/reduce.ts";
import {
  crossEntropyBackward,
  klDivergenceRefModelBackward,
  launchCrossEntropy,
  launchKlDivergenceRefModel,
} from "./launch/loss.ts";
import { launchNorm, normBackward } from "./launch/norm.ts";
import type { Tensor } from "./tensor.ts";

// ---------------------------------------------------------------- launcher-level ops (no backward)

export { logSoftmax, softmax } from "./launch/nn.ts";
export {
  addAt,
  castF16ToF32,
  castF32ToF16,
  concatCols,
  copyRows,
  fill,
  hasShaderF16,
  type Rows,
  sliceCols,
} from "./launch/copy.ts";
export { argmax, max, mean, type ReduceAxis, sum } from "./launch/reduce.ts";
export { axpy, clampToBand } from "./launch/elementwise.ts";
export {
  cholesky,
  choleskySolve,
  choleskySolveChecked,
  NotPositiveDefiniteError,
  triangularSolve,
} from "./launch/linalg.ts";
export type { MatmulOptions } from "./launch/matmul.ts";

/**
 * out += alpha · op(a)·op(b), in place and with no backward (accumulating statistics, editing a weight):
 * the launcher's `out` + `accumulate`.
 */
export function matmulAccumulate(
  a: Tensor,
  b: Tensor,
  out: Tensor,
  opts: Pick<MatmulOptions, "transA" | "transB" | "alpha"> = {},
): Tensor {
  return launchMatmul(a, b, { ...opts, out, accumulate: true });
}

// ---------------------------------------------------------------- helpers of the backward rules

/** Sum of g over its leading rows, shaped `shape` (the gradient of an operand broadcast over rows). */
function unbroadcast(g: Tensor, shape: readonly number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (g.size === n) return g.view(shape);
  const rows = g.size / n;
  const ones = g.engine.upload(new Float32Array(rows).fill(1), [1, rows]);
  return launchMatmul(ones, g.view([rows, n])).view(shape);
}

/** A copy of x in a new buffer (no backward). */
export function clone(x: Tensor): Tensor {
  const out = x.engine.empty(x.shape, x.dtype);
  x.engine.copy(x.buffer, 0, out.buffer, 0, Math.ceil(x.byteLength / 4) * 4);
  return out;
}

// ---------------------------------------------------------------- elementwise

export function add(a: Tensor, b: Tensor): Tensor {
  const out = launchAdd(a, b);
  activeTape()?.record(
    out,
    [a, b],
    [],
    (g, needs) => [needs[0] ? g.view() : undefined, needs[1] ? unbroadcast(g, b.shape) : undefined],
  );
  return out;
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const out = launchSub(a, b);
  activeTape()?.record(out, [a, b], [], (g, needs) => [
    needs[0] ? g.view() : undefined,
    needs[1] ? launchScale(unbroadcast(g, b.shape), -1) : undefined,
  ]);
  return out;
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const out = launchMul(a, b);
  activeTape()?.record(out, [a, b], [a, b], (g, needs, [sa, sb]) => [
    needs[0] ? launchMul(g, sb) : undefined,
    needs[1] ? unbroadcast(launchMul(g, sa), b.shape) : undefined,
  ]);
  return out;
}

/** alpha · a + beta. */
export function scale(a: Tensor, alpha: number, beta = 0): Tensor {
  const out = launchScale(a, alpha, beta);
  activeTape()?.record(out, [a], [], (g) => [launchScale(g, alpha)]);
  return out;
}

/** A differentiable view with another shape. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const out = x.view(shape);
  activeTape()?.record(out, [x], [], (g) => [g.view(x.shape)]);
  return out;
}

// ---------------------------------------------------------------- reductions and norms

/** Sum of all elements, [1]. */
export function sumAll(x: Tensor): Tensor {
  const out = sum(x, "all");
  activeTape()?.record(out, [x], [], (g) => [launchAdd(x.engine.zeros(x.shape), g)]);
  return out;
}

/** Σ x², [1]. */
export function sumSquares(x: Tensor): Tensor {
  const out = sum(launchMul(x, x), "all");
  activeTape()?.record(out, [x], [x], (g, _n, [sx]) => [launchMul(sx, launchScale(g, 2))]);
  return out;
}

// ---------------------------------------------------------------- linear algebra

/**
 * alpha · op(a)·op(b) + bias. 2-D·2-D, 3-D·2-D (one weight for every batch) and 3-D·3-D; the backward
 * uses the transposed products through matmul's flags.
 */
export function matmul(
  a: Tensor,
  b: Tensor,
  opts: Pick<MatmulOptions, "transA" | "transB" | "bias" | "alpha"> = {},
): Tensor {
  const out = launchMatmul(a, b, opts);
  const tape = activeTape();
  if (!tape) return out;
  const inputs = opts.bias ? [a, b, opts.bias] : [a, b];
  const tA = opts.transA ?? false, tB = opts.transB ?? false, alpha = opts.alpha ?? 1;
  tape.record(out, inputs, [a, b], (g, needs, [sa, sb]) => {
    // A 3-D·2-D product is one [Bt·M, K]·[K, N] product (shared weights): flatten it for the rules.
    const flat = sa.rank === 3 && sb.rank === 2;
    const A = flat ? sa.view([sa.shape[0] * sa.shape[1], sa.shape[2]]) : sa;
    const G = flat ? g.view([g.size / g.shape[g.rank - 1], g.shape[g.rank - 1]]) : g;
    let dA: Tensor | undefined, dB: Tensor | undefined;
    if (needs[0]) {
      dA = !tA
        ? launchMatmul(G, sb, { transB: !tB, alpha })
        : launchMatmul(sb, G, { transA: tB, transB: true, alpha });
    }
    if (needs[1]) {
      dB = !tB
        ? launchMatmul(A, G, { transA: !tA, alpha })
        : launchMatmul(G, A, { transA: true, transB: tA, alpha });
    }
    const dBias = opts.bias && needs[2] ? unbroadcast(g, opts.bias.shape) : undefined;
    return [dA?.view(a.shape), dB?.view(b.shape), dBias];
  });
  return out;
}

// ---------------------------------------------------------------- GPT-2 layers

export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  const { y, mean, rstd } = launchLayerNorm(x, gamma, beta, eps);
  const tape = activeTape();
  if (tape) {
    tape.record(y, [x, gamma, beta], [x, mean, rstd, gamma], (g, _needs, [sx, sm, sr, sg]) => {
      const { dx, dgamma, dbeta } = layerNormBackward(sx, sm, sr, sg, g);
      return [dx.view(x.shape), dgamma, dbeta];
    });
  }
  return y;
}

export function gelu(x: Tensor): Tensor {
  const out = launchGelu(x);
  activeTape()?.record(out, [x], [x], (g, _n, [sx]) => [geluBackward(sx, g)]);
  return out;
}

/** Causal multi-head attention over the fused qkv [B, T, 3C] of right-padded rows. */
export function attention(qkv: Tensor, lengths: Tensor, nHead: number): Tensor {
  const tape = activeTape();
  const wantGrad = tape !== undefined && qkv.requiresGrad;
  const { out, probs } = launchAttention(qkv, lengths, nHead, { saveProbs: wantGrad });
  if (wantGrad) {
    tape.record(
      out,
      [qkv],
      [qkv, probs!, lengths],
      (g, _n, [sq, sp, sl]) => [attentionBackward(sq, sp, g, sl, nHead)],
    );
  }
  return out;
}

/** Rows of `table` at `ids`; the backward scatters (adds) the rows back. */
export function gatherRows(table: Tensor, ids: Tensor): Tensor {
  const out = launchGatherRows(table, ids);
  activeTape()?.record(out, [table], [ids], (g, _n, [si]) => [scatterAddRows(g, si, table.shape[0])]);
  return out;
}

/** x [B, T, C] + wpe[t] for each position t. */
export function addPositions(x: Tensor, wpe: Tensor): Tensor {
  const out = launchAddPositions(x, wpe);
  activeTape()?.record(out, [x, wpe], [], (g, needs) => {
    let dw: Tensor | undefined;
    if (needs[1]) {
      const [, T, C] = x.shape;
      dw = x.engine.zeros(wpe.shape);
      copyRows(unbroadcast(g, [T, C]), null, dw, null);
    }
    return [needs[0] ? g.view() : undefined, dw];
  });
  return out;
}

// ---------------------------------------------------------------- rows (hook points)

/** x[rows] as a new [n, C] tensor. */
export function selectRows(x: Tensor, rows: Tensor): Tensor {
  const out = launchSelectRows(x, rows);
  activeTape()?.record(out, [x], [rows], (g, _n, [sr]) => [scatterAddRows(g, sr, x.shape[0])]);
  return out;
}

/** x with rows `rows` replaced by the rows of v (a new tensor). */
export function withRows(x: Tensor, rows: Tensor, v: Tensor): Tensor {
  const out = clone(x);
  copyRows(v, null, out, rows);
  activeTape()?.record(out, [x, v], [rows], (g, needs, [sr]) => {
    let dx: Tensor | undefined;
    if (needs[0]) {
      dx = clone(g);
      copyRows(g.engine.zeros([sr.size, x.shape[1]]), null, dx, sr);
    }
    return [dx, needs[1] ? launchSelectRows(g, sr) : undefined];
  });
  return out;
}

// ---------------------------------------------------------------- losses

/** Per-row (weighted) negative log-likelihood of `targets` under softmax(logits): [n]. */
export function crossEntropy(logits: Tensor, targets: Tensor, weights?: Tensor): Tensor {
  const { loss, saved } = launchCrossEntropy(logits, targets, weights);
  const keep = weights ? [logits, targets, saved, weights] : [logits, targets, saved];
  activeTape()?.record(
    loss,
    [logits],
    keep,
    (g, _n, [sl, st, ss, sw]) => [crossEntropyBackward(sl, st, sw, ss, g)],
  );
  return loss;
}

/**
 * Per-row KL(p0 ‖ p) = Σ_v p0 (log p0 − log p), p = softmax(logits) and the reference p0 given as fixed
 * log-probabilities [n, V]: [n]. Named in KL's argument order (reference, then model); the reverse
 * direction, which ROME minimises, is `klDivergenceModelRef`.
 */
export function klDivergenceRefModel(logits: Tensor, logProbsRef: Tensor): Tensor {
  const { loss, saved } = launchKlDivergenceRefModel(logits, logProbsRef);
  activeTape()?.record(loss, [logits], [logits, logProbsRef, saved], (g, _n, [sl, sr, ss]) => [
    klDivergenceRefModelBackward(sl, sr, ss, g),
  ]);
  return loss;
}

/**
 * The Euclidean norm ‖x‖ = sqrt(Σ x²) of all elements, [1]. Its gradient is x/‖x‖, taken as 0 at x = 0
 * as torch.norm does (ROME's weight decay ‖δ‖/‖v₀‖² starts at δ = 0). x must fit one storage binding.
 */
export function norm(x: Tensor): Tensor {
  const out = launchNorm(x);
  activeTape()?.record(out, [x], [x, out], (g, _n, [sx, sn]) => [normBackward(sx, sn, g)]);
  return out;
}

/** [n, cols] = column vector v [n] repeated over `cols` columns (an outer product with ones). */
function repeatCols(v: Tensor, cols: number): Tensor {
  const ones = v.engine.upload(new Float32Array(cols).fill(1), [1, cols]);
  return launchMatmul(v.view([v.size, 1]), ones);
}

/**
 * Per-row KL(p ‖ p0) = Σ_v p (log p − log p0), p = softmax(logits) and the reference p0 given as fixed
 * log-probabilities [n, V]: [n]. Named in KL's argument order (model, then reference). This is the
 * direction ROME's code minimises (`F.kl_div(log p0, log p, log_target=True)` in compute_v.py), the reverse
 * of `klDivergenceRefModel`. Gradient w.r.t. the logits: g · p ⊙ (log p − log p0 − KL).
 */
export function klDivergenceModelRef(logits: Tensor, logProbsRef: Tensor): Tensor {
  const what = "klDivergenceModelRef";
  if (logits.rank !== 2 || logProbsRef.rank !== 2 || logits.shape.join() !== logProbsRef.shape.join()) {
    throw new RangeError(
      `${what}: logits ${logits} and reference log-probabilities ${logProbsRef} must be [n, V]`,
    );
  }
  const [n, V] = logits.shape;
  const e = logits.engine;
  const { p, d, loss } = e.scope(() => {
    const p = softmax(logits);
    const d = launchSub(logSoftmax(logits), logProbsRef); // log p − log p0
    return { p, d, loss: sum(launchMul(p, d), -1) };
  });
  activeTape()?.record(loss, [logits], [p, d, loss], (g, _n, [sp, sd, sl]) => {
    const centred = launchSub(sd, repeatCols(sl, V)); // log p − log p0 − KL, per row
    return [launchMul(launchMul(sp, centred), repeatCols(g, V)).view([n, V])];
  });
  p.dispose();
  d.dispose();
  return loss;
}
