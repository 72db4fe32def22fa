// Loss kernels, each with its gradient w.r.t. the logits: fused cross-entropy (negative log-likelihood of
// softmax) and KL(p0 || p) = sum p0 (log p0 - log p) for p = softmax(logits) and a fixed reference p0 (the
// reference weights the sum).
//
// The forward kernels are one workgroup per row with a strided loop, so a row of GPT-2's 50257 logits is
// one workgroup, max-subtracted with the same online (max, sum) merge as the softmax kernel (Milakov &
// Gimelshein 2018). For the backward they save, per row, the max m and log s, s = sum exp(l - m), not
// logsumexp = m + log s: with logits near 1000, rounding m + log s to f32 costs 3e-5 absolute, so
// exp(l - lse) would be off by that relatively, while (l - m) - log s is exact to log s's rounding.
//
//   cross-entropy:  loss = w * (log s - (l[t] - m))                      (= w * (lse - l[t]))
//                   dl   = g * w * (softmax(l) - onehot(t))
//   KL(p0 || p):    loss = sum_c p0 * (log p0 - log p),  log p = (l - m) - log s
//                   dl   = g * (softmax(l) * sum_c p0 - p0)
//
// A row with weight 0 gives exactly 0 loss and 0 gradient (selected, not multiplied: its logits may be
// anything). A target >= V with a non-zero weight cannot be reported without a readback; it gives NaN
// loss and gradient, so it cannot pass unnoticed. KL terms with p0 = 0 (log p0 = -inf) count 0, the limit
// of p0 log p0 (PyTorch's kl_div(log_target=True) computes 0 * -inf = NaN there).
// NaN comes from a uniform (`P.nan`) because a constant NaN is a shader-creation error.
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type StorageBinding, type Workgroups } from "./descriptor.ts";
import { WGSL_WG_SUM } from "./reduce.ts";
import { wgslRowMaxSum } from "./softmax.ts";
import { wgslGroupMain, wgslThreadMain } from "./wgsl.ts";

/** Threads per workgroup of the elementwise gradient kernels. */
export const LOSS_GRAD_WG = 256;

/** Per-row values the forward kernels save for the backward: [m, log s] (cross-entropy), + [sum p0] (KL). */
export const CE_SAVED = 2;
export const KL_SAVED = 3;

/** The online (max, sum exp) of a row of the logits, merged across the workgroup (softmax.ts). */
const WGSL_ROW_LOGSUMEXP = wgslRowMaxSum("logits");

const f32In = (name: string): StorageBinding => ({ name, access: "read", type: "f32" });
const f32Out = (name: string): StorageBinding => ({ name, access: "read_write", type: "f32" });

/** Last bindings of both gradient kernels: the upstream gradient g per row (when given), saved, dlogits. */
const gradOutputs = (upstream: boolean): StorageBinding[] => [
  ...(upstream ? [f32In("g")] : []),
  f32In("saved"),
  f32Out("dlogits"),
];
/** Entry of both gradient kernels: one thread per logit `i`, in row `row`. */
const WGSL_GRAD_MAIN = wgslThreadMain("i", "P.n") + /* wgsl */ `
  let row = i / P.V;`;

/**
 * Cross-entropy forward over a row chunk: logits is a range of [rows, V] at `off`; targets, weights and
 * loss are ranges of [rows] vectors at `vOff`; saved is a range of [rows, 2] at `sOff`.
 */
export function crossEntropyKernel(wg: number, weighted: boolean): KernelSpec {
  return {
    key: `crossentropy_f32_rows_online_wg${wg}${weighted ? "_weighted" : ""}`,
    uniforms: [
      ["rows", "u32"],
      ["V", "u32"],
      ["off", "u32"],
      ["vOff", "u32"],
      ["sOff", "u32"],
      ["nan", "f32"],
    ],
    bindings: [
      f32In("logits"),
      { name: "targets", access: "read", type: "u32" },
      ...(weighted ? [f32In("weights")] : []),
      f32Out("loss"),
      f32Out("saved"),
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_ROW_LOGSUMEXP}
${wgslGroupMain("row", "P.rows")}
  let base = P.off + row * P.V;
  let ms = rowMaxSum(lid, base, P.V);
  let logS = log(ms.y);
  if (lid == 0u) {
    let t = targets[P.vOff + row];
    let w = ${weighted ? "weights[P.vOff + row]" : "1.0"};
    var l = 0.0;
    if (w != 0.0) {
      l = P.nan;
      if (t < P.V) { l = w * (logS - (logits[base + t] - ms.x)); }
    }
    loss[P.vOff + row] = l;
    saved[P.sOff + 2u * row] = ms.x;
    saved[P.sOff + 2u * row + 1u] = logS;
  }
}`,
  };
}

/**
 * dlogits = g * w * (softmax - onehot(target)) over a row chunk, one thread per element: logits and
 * dlogits are ranges of [rows, V] at `off`; targets, weights, g ranges of [rows] at `vOff`; saved at `sOff`.
 */
export function crossEntropyBackwardKernel(weighted: boolean, upstream: boolean): KernelSpec {
  return {
    key: `crossentropy_backward_f32${weighted ? "_weighted" : ""}${upstream ? "_upstream" : ""}`,
    uniforms: [["n", "u32"], ["V", "u32"], ["off", "u32"], ["vOff", "u32"], ["sOff", "u32"], ["nan", "f32"]],
    bindings: [
      f32In("logits"),
      { name: "targets", access: "read", type: "u32" },
      ...(weighted ? [f32In("weights")] : []),
      ...gradOutputs(upstream),
    ],
    workgroupSize: [LOSS_GRAD_WG, 1, 1],
    body: /* wgsl */ `${WGSL_GRAD_MAIN}
  let c = i - row * P.V;
  let t = targets[P.vOff + row];
  let w = ${weighted ? "weights[P.vOff + row]" : "1.0"} * ${upstream ? "g[P.vOff + row]" : "1.0"};
  var d = 0.0;
  if (w != 0.0) {
    let p = exp((logits[P.off + i] - saved[P.sOff + 2u * row]) - saved[P.sOff + 2u * row + 1u]);
    d = w * (p - select(0.0, 1.0, c == t));
    if (t >= P.V) { d = P.nan; }
  }
  dlogits[P.off + i] = d;
}`,
  };
}

/**
 * KL(p0 || softmax(logits)) forward over a row chunk: logits and logp0 are ranges of [rows, V] at `off`;
 * loss a range of [rows] at `vOff`; saved a range of [rows, 3] (m, log s, sum p0) at `sOff`.
 */
export function klDivergenceRefModelKernel(wg: number): KernelSpec {
  return {
    key: `kldiv_f32_rows_online_wg${wg}`,
    uniforms: [["rows", "u32"], ["V", "u32"], ["off", "u32"], ["vOff", "u32"], ["sOff", "u32"]],
    bindings: [f32In("logits"), f32In("logp0"), f32Out("loss"), f32Out("saved")],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_ROW_LOGSUMEXP}
${WGSL_WG_SUM}
${wgslGroupMain("row", "P.rows")}
  let base = P.off + row * P.V;
  let ms = rowMaxSum(lid, base, P.V);
  let logS = log(ms.y);
  // A second pass: each term is p0 * (log p0 - log p), small when the distributions are close, instead
  // of sum p0 log p0 - sum p0 l + lse * sum p0, which cancels.
  var kl = 0.0;
  var mass = 0.0;
  for (var c = lid; c < P.V; c = c + WG_X) {
    let lp0 = logp0[base + c];
    let p0 = exp(lp0);
    if (p0 > 0.0) { kl = kl + p0 * (lp0 - ((logits[base + c] - ms.x) - logS)); }
    mass = mass + p0;
  }
  kl = wgSum(lid, kl);
  mass = wgSum(lid, mass);
  if (lid == 0u) {
    loss[P.vOff + row] = kl;
    saved[P.sOff + 3u * row] = ms.x;
    saved[P.sOff + 3u * row + 1u] = logS;
    saved[P.sOff + 3u * row + 2u] = mass;
  }
}`,
  };
}

/** dlogits = g * (softmax(logits) * sum p0 - p0) over a row chunk, one thread per element. */
export function klDivergenceRefModelBackwardKernel(upstream: boolean): KernelSpec {
  return {
    key: `kldiv_backward_f32${upstream ? "_upstream" : ""}`,
    uniforms: [["n", "u32"], ["V", "u32"], ["off", "u32"], ["vOff", "u32"], ["sOff", "u32"]],
    bindings: [
      f32In("logits"),
      f32In("logp0"),
      ...gradOutputs(upstream),
    ],
    workgroupSize: [LOSS_GRAD_WG, 1, 1],
    body: /* wgsl */ `${WGSL_GRAD_MAIN}
  let s = P.sOff + 3u * row;
  let p = exp((logits[P.off + i] - saved[s]) - saved[s + 1u]);
  let d = p * saved[s + 2u] - exp(logp0[P.off + i]);
  dlogits[P.off + i] = ${upstream ? "g[P.vOff + row] * d" : "d"};
}`,
  };
}

export function lossGradWorkgroups(n: number, maxPerDim?: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / LOSS_GRAD_WG), maxPerDim);
}
