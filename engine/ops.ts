// The functional op set the GPT-2 graph and the science layers use. Each op runs its kernel(s) from
// engine/ops/* and, when a tape is recording and an input requires a gradient, records its backward
// rule on the tape (autograd.ts). Transposes in backward rules are matmul flags, never copies.
import { activeTape } from "./autograd.ts";
import * as raw from "./ops/elementwise.ts";
import { matmul as rawMatmul, type MatmulOptions } from "./ops/matmul.ts";
import { gelu as rawGelu, geluBackward, layerNorm as rawLayerNorm, layerNormBackward } from "./ops/nn.ts";
import { attention as rawAttention, attentionBackward } from "./ops/attention.ts";
import {
  addPositions as rawAddPositions,
  gatherRows as rawGatherRows,
  scatterAddRows,
} from "./ops/gather.ts";
import { copyRows, selectRows as rawSelectRows } from "./ops/copy.ts";
import { sum as rawSum } from "./ops/reduce.ts";
import {
  crossEntropy as rawCrossEntropy,
  crossEntropyBackward,
  klDivergence as rawKlDivergence,
  klDivergenceBackward,
} from "./ops/loss.ts";
import type { Tensor } from "./tensor.ts";

export { logSoftmax, softmax } from "./ops/nn.ts";

/** Sum of g over its leading rows, shaped `shape` (the gradient of an operand broadcast over rows). */
function unbroadcast(g: Tensor, shape: readonly number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  if (g.size === n) return g.view(shape);
  const rows = g.size / n;
  const ones = g.engine.upload(new Float32Array(rows).fill(1), [1, rows]);
  return rawMatmul(ones, g.view([rows, n])).view(shape);
}

function clone(x: Tensor): Tensor {
  const out = x.engine.empty(x.shape, x.dtype);
  x.engine.copy(x.buffer, 0, out.buffer, 0, Math.ceil(x.byteLength / 4) * 4);
  return out;
}

// ---------------------------------------------------------------- elementwise

export function add(a: Tensor, b: Tensor): Tensor {
  const out = raw.add(a, b);
  activeTape()?.record(
    out,
    [a, b],
    [],
    (g, needs) => [needs[0] ? g.view() : undefined, needs[1] ? unbroadcast(g, b.shape) : undefined],
  );
  return out;
}

export function sub(a: Tensor, b: Tensor): Tensor {
  const out = raw.sub(a, b);
  activeTape()?.record(out, [a, b], [], (g, needs) => [
    needs[0] ? g.view() : undefined,
    needs[1] ? raw.scale(unbroadcast(g, b.shape), -1) : undefined,
  ]);
  return out;
}

export function mul(a: Tensor, b: Tensor): Tensor {
  const out = raw.mul(a, b);
  activeTape()?.record(out, [a, b], [a, b], (g, needs, [sa, sb]) => [
    needs[0] ? raw.mul(g, sb) : undefined,
    needs[1] ? unbroadcast(raw.mul(g, sa), b.shape) : undefined,
  ]);
  return out;
}

/** alpha · a + beta. */
export function scale(a: Tensor, alpha: number, beta = 0): Tensor {
  const out = raw.scale(a, alpha, beta);
  activeTape()?.record(out, [a], [], (g) => [raw.scale(g, alpha)]);
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
  const out = rawSum(x, "all");
  activeTape()?.record(out, [x], [], (g) => [raw.add(x.engine.zeros(x.shape), g)]);
  return out;
}

/** Σ x², [1]. */
export function sumSquares(x: Tensor): Tensor {
  const out = rawSum(raw.mul(x, x), "all");
  activeTape()?.record(out, [x], [x], (g, _n, [sx]) => [raw.mul(sx, raw.scale(g, 2))]);
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
  const out = rawMatmul(a, b, opts);
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
        ? rawMatmul(G, sb, { transB: !tB, alpha })
        : rawMatmul(sb, G, { transA: tB, transB: true, alpha });
    }
    if (needs[1]) {
      dB = !tB
        ? rawMatmul(A, G, { transA: !tA, alpha })
        : rawMatmul(G, A, { transA: true, transB: tA, alpha });
    }
    const dBias = opts.bias && needs[2] ? unbroadcast(g, opts.bias.shape) : undefined;
    return [dA?.view(a.shape), dB?.view(b.shape), dBias];
  });
  return out;
}

// ---------------------------------------------------------------- GPT-2 layers

export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  const { y, mean, rstd } = rawLayerNorm(x, gamma, beta, eps);
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
  const out = rawGelu(x);
  activeTape()?.record(out, [x], [x], (g, _n, [sx]) => [geluBackward(sx, g)]);
  return out;
}

/** Causal multi-head attention over the fused qkv [B, T, 3C] of right-padded rows. */
export function attention(qkv: Tensor, lengths: Tensor, nHead: number): Tensor {
  const tape = activeTape();
  const wantGrad = tape !== undefined && qkv.requiresGrad;
  const { out, probs } = rawAttention(qkv, lengths, nHead, { saveProbs: wantGrad });
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
  const out = rawGatherRows(table, ids);
  activeTape()?.record(out, [table], [ids], (g, _n, [si]) => [scatterAddRows(g, si, table.shape[0])]);
  return out;
}

/** x [B, T, C] + wpe[t] for each position t. */
export function addPositions(x: Tensor, wpe: Tensor): Tensor {
  const out = rawAddPositions(x, wpe);
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
  const out = rawSelectRows(x, rows);
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
    return [dx, needs[1] ? rawSelectRows(g, sr) : undefined];
  });
  return out;
}

// ---------------------------------------------------------------- losses

/** Per-row (weighted) negative log-likelihood of `targets` under softmax(logits): [n]. */
export function crossEntropy(logits: Tensor, targets: Tensor, weights?: Tensor): Tensor {
  const { loss, saved } = rawCrossEntropy(logits, targets, weights);
  const keep = weights ? [logits, targets, saved, weights] : [logits, targets, saved];
  activeTape()?.record(
    loss,
    [logits],
    keep,
    (g, _n, [sl, st, ss, sw]) => [crossEntropyBackward(sl, st, sw, ss, g)],
  );
  return loss;
}

/** Per-row KL(p0 ‖ softmax(logits)) with p0 given as fixed log-probabilities: [n]. */
export function klDivergence(logits: Tensor, logProbsRef: Tensor): Tensor {
  const { loss, saved } = rawKlDivergence(logits, logProbsRef);
  activeTape()?.record(loss, [logits], [logits, logProbsRef, saved], (g, _n, [sl, sr, ss]) => [
    klDivergenceBackward(sl, sr, ss, g),
  ]);
  return loss;
}

export { clone };

// ---------------------------------------------------------------- appended for ROME (rome/)
// Kept at the end of the file (with their own imports) so that this section merges cleanly.
import {
  flatWorkgroups as romeFlatWorkgroups,
  type KernelSpec as RomeKernelSpec,
} from "../kernels/descriptor.ts";
import { logSoftmax as rawLogSoftmax, softmax as rawSoftmax } from "./ops/nn.ts";

/** out[0] = sqrt(s[0]): the one scalar square root `norm` needs (no elementwise sqrt exists). */
const sqrtScalarKernel: RomeKernelSpec = {
  key: "rome_sqrt_scalar",
  uniforms: [],
  bindings: [
    { name: "s", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [1, 1, 1],
  body: /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main() {
  out[0] = sqrt(s[0]);
}`,
};

/** dx[i] = g · x[i] / ‖x‖, and 0 when ‖x‖ = 0 (PyTorch's subgradient of the norm at the origin). */
const normBackwardKernel: RomeKernelSpec = {
  key: "rome_norm_backward",
  uniforms: [["n", "u32"]],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "nrm", access: "read", type: "f32" },
    { name: "g", access: "read", type: "f32" },
    { name: "dx", access: "read_write", type: "f32" },
  ],
  workgroupSize: [256, 1, 1],
  body: /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG_X;
  if (i >= P.n) { return; }
  let r = nrm[0];
  dx[i] = select(0.0, g[0] * x[i] / r, r > 0.0);
}`,
};

/**
 * The Euclidean norm ‖x‖ = sqrt(Σ x²) of all elements, [1]. Its gradient is x/‖x‖, taken as 0 at x = 0
 * as torch.norm does (ROME's weight decay ‖δ‖/‖v₀‖² starts at δ = 0). x must fit one storage binding.
 */
export function norm(x: Tensor): Tensor {
  if (x.dtype !== "f32") throw new TypeError(`norm: expected f32, got ${x}`);
  const e = x.engine;
  const out = e.empty([1]);
  e.scope(() => {
    const s = rawSum(raw.mul(x, x), "all");
    e.dispatch(sqrtScalarKernel, {}, [s, out], [1, 1, 1]);
  });
  activeTape()?.record(out, [x], [x, out], (g, _n, [sx, sn]) => {
    const dx = e.empty(sx.shape);
    e.dispatch(
      normBackwardKernel,
      { n: sx.size },
      [sx, sn, g, dx],
      romeFlatWorkgroups(Math.ceil(sx.size / 256), e.limits.maxWorkgroupsPerDim),
    );
    return [dx];
  });
  return out;
}

/** [n, cols] = column vector v [n] repeated over `cols` columns (an outer product with ones). */
function repeatCols(v: Tensor, cols: number): Tensor {
  const ones = v.engine.upload(new Float32Array(cols).fill(1), [1, cols]);
  return rawMatmul(v.view([v.size, 1]), ones);
}

/**
 * Per-row KL(softmax(logits) ‖ p0) = Σ_v p (log p − log p0), with p0 given as fixed log-probabilities
 * [n, V]: [n]. This is the direction ROME's code minimises (`F.kl_div(log p0, log p, log_target=True)`
 * in compute_v.py), the reverse of `klDivergence`'s KL(p0 ‖ p). Gradient w.r.t. the logits:
 * g · p ⊙ (log p − log p0 − KL).
 */
export function klDivergenceFromRef(logits: Tensor, logProbsRef: Tensor): Tensor {
  const what = "klDivergenceFromRef";
  if (logits.rank !== 2 || logProbsRef.rank !== 2 || logits.shape.join() !== logProbsRef.shape.join()) {
    throw new RangeError(
      `${what}: logits ${logits} and reference log-probabilities ${logProbsRef} must be [n, V]`,
    );
  }
  const [n, V] = logits.shape;
  const e = logits.engine;
  const { p, d, loss } = e.scope(() => {
    const p = rawSoftmax(logits);
    const d = raw.sub(rawLogSoftmax(logits), logProbsRef); // log p − log p0
    return { p, d, loss: rawSum(raw.mul(p, d), -1) };
  });
  activeTape()?.record(loss, [logits], [p, d, loss], (g, _n, [sp, sd, sl]) => {
    const centred = raw.sub(sd, repeatCols(sl, V)); // log p − log p0 − KL, per row
    return [raw.mul(raw.mul(sp, centred), repeatCols(g, V)).view([n, V])];
  });
  p.dispose();
  d.dispose();
  return loss;
}
