// Optimiser kernels: one in-place update of a parameter range per dispatch (Adam/AdamW, SGD with
// momentum), and the three kernels of gradient-norm clipping (segment sums of squares, the clip
// coefficient, the in-place scale). Hyperparameters that change every step (bias corrections, the
// learning rate) are uniforms, so one pipeline serves every step. Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { WGSL_WG_SUM } from "./reduce.ts";
import { wgslGroupMain, wgslThreadMain } from "./wgsl.ts";

export const OPTIM_WG = 256;

/**
 * torch.optim.Adam / AdamW (Kingma & Ba 2015, Algorithm 1; Loshchilov & Hutter 2019) for one range of
 * p, g, m, v (all ranges start at the same element, `off`), in PyTorch's order of operations:
 *   g += l2 * p                          (Adam's weight decay; l2 = 0 for AdamW)
 *   p *= decay                           (AdamW: decay = 1 - lr * wd; 1 for Adam)
 *   m = beta1 m + c1 g,   v = beta2 v + c2 g^2       (c1 = 1 - beta1, c2 = 1 - beta2, from float64)
 *   p -= stepSize * m / (sqrt(v) / bc2Sqrt + eps)    (stepSize = lr / (1 - beta1^t), bc2Sqrt = sqrt(1 - beta2^t))
 */
export const adamKernel: KernelSpec = {
  key: "optim_adam_f32",
  uniforms: [
    ["n", "u32"],
    ["off", "u32"],
    ["beta1", "f32"],
    ["beta2", "f32"],
    ["c1", "f32"],
    ["c2", "f32"],
    ["stepSize", "f32"],
    ["bc2Sqrt", "f32"],
    ["eps", "f32"],
    ["l2", "f32"],
    ["decay", "f32"],
  ],
  bindings: [
    { name: "p", access: "read_write", type: "f32" },
    { name: "g", access: "read", type: "f32" },
    { name: "m", access: "read_write", type: "f32" },
    { name: "v", access: "read_write", type: "f32" },
  ],
  workgroupSize: [OPTIM_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let k = P.off + i;
  var param = p[k];
  var grad = g[k];
  // a branch, not 0 * p: an infinite parameter must not turn the gradient into NaN when wd = 0
  if (P.l2 != 0.0) { grad = grad + P.l2 * param; }
  param = param * P.decay;
  let mk = P.beta1 * m[k] + P.c1 * grad;
  let vk = P.beta2 * v[k] + P.c2 * grad * grad;
  m[k] = mk;
  v[k] = vk;
  p[k] = param - P.stepSize * mk / (sqrt(vk) / P.bc2Sqrt + P.eps);
}`,
};

/**
 * torch.optim.SGD (dampening 0, no Nesterov) for one range of p, g (and the momentum buffer), sharing `off`:
 *   d = g + wd * p;   momentum: buf = first ? d : momentum * buf + d,  d = buf;   p -= lr * d
 */
export function sgdKernel(momentum: boolean): KernelSpec {
  // PyTorch starts the buffer at the first step's d (not at zero), then buf = momentum * buf + d.
  const withMomentum = /* wgsl */ `
  if (P.first == 0u) { d = P.momentum * buf[k] + d; }
  buf[k] = d;`;
  return {
    key: `optim_sgd_f32${momentum ? "_momentum" : ""}`,
    uniforms: [
      ["n", "u32"],
      ["off", "u32"],
      ["lr", "f32"],
      ["wd", "f32"],
      ["momentum", "f32"],
      ["first", "u32"],
    ],
    bindings: [
      { name: "p", access: "read_write", type: "f32" },
      { name: "g", access: "read", type: "f32" },
      ...(momentum ? [{ name: "buf", access: "read_write", type: "f32" } as const] : []),
    ],
    workgroupSize: [OPTIM_WG, 1, 1],
    body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let k = P.off + i;
  let param = p[k];
  var d = g[k];
  if (P.wd != 0.0) { d = d + P.wd * param; }${momentum ? withMomentum : ""}
  p[k] = param - P.lr * d;
}`,
  };
}

/** Elements one workgroup of the sum of squares covers (16 per thread). */
export const SUMSQ_SEGMENT = 4096;

/**
 * partial[pOff + s] = sum of x^2 over segment s (SUMSQ_SEGMENT elements) of an n-element range at `off`.
 * The partials of all gradients sit side by side in one buffer, in a fixed order: deterministic.
 */
export const sumSquaresKernel: KernelSpec = {
  key: `optim_sumsq_f32_segments${SUMSQ_SEGMENT}_wg${OPTIM_WG}`,
  uniforms: [["n", "u32"], ["off", "u32"], ["pOff", "u32"]],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "partial", access: "read_write", type: "f32" },
  ],
  workgroupSize: [OPTIM_WG, 1, 1],
  body: /* wgsl */ `
${WGSL_WG_SUM}
${wgslGroupMain("seg")}
  let start = seg * ${SUMSQ_SEGMENT}u;
  if (start >= P.n) { return; }
  let end = min(start + ${SUMSQ_SEGMENT}u, P.n);
  var s = 0.0;
  for (var i = start + lid; i < end; i = i + WG_X) {
    let v = x[P.off + i];
    s = s + v * v;
  }
  s = wgSum(lid, s);
  if (lid == 0u) { partial[P.pOff + seg] = s; }
}`,
};

/**
 * One workgroup: norm = sqrt(sum of the `count` partials), coef = min(1, maxNorm / (norm + 1e-6)), as
 * torch.nn.utils.clip_grad_norm_ (the 1e-6 keeps a zero norm finite).
 */
export const clipCoefKernel: KernelSpec = {
  key: `optim_clip_coef_f32_wg${OPTIM_WG}`,
  uniforms: [["count", "u32"], ["maxNorm", "f32"]],
  bindings: [
    { name: "partial", access: "read", type: "f32" },
    { name: "norm", access: "read_write", type: "f32" },
    { name: "coef", access: "read_write", type: "f32" },
  ],
  workgroupSize: [OPTIM_WG, 1, 1],
  body: /* wgsl */ `
${WGSL_WG_SUM}
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < P.count; i = i + WG_X) { s = s + partial[i]; }
  s = wgSum(lid, s);
  if (lid == 0u) {
    let total = sqrt(s);
    norm[0] = total;
    coef[0] = min(1.0, P.maxNorm / (total + 1e-6));
  }
}`,
};

/** x[off + i] *= coef[0] in place: the factor is read on the GPU, never on the host. */
export const scaleByKernel: KernelSpec = {
  key: "optim_scale_by_f32",
  uniforms: [["n", "u32"], ["off", "u32"]],
  bindings: [
    { name: "coef", access: "read", type: "f32" },
    { name: "x", access: "read_write", type: "f32" },
  ],
  workgroupSize: [OPTIM_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  x[P.off + i] = x[P.off + i] * coef[0];
}`,
};

/** Workgroups of a one-thread-per-element optimiser kernel over n elements. */
export function optimWorkgroups(n: number, maxPerDim?: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / OPTIM_WG), maxPerDim);
}
