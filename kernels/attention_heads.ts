// Attention kernels of the matmul path (T > 32): the op runs S = scale·Q Kᵀ, O = P V and the backward
// products as batched matmuls over head-major copies; these kernels do the layout changes and the masked
// row work (layout and masking rules: kernels/attention.ts, which holds the tiled and fused kernels).
// None uses a workgroup barrier (llvmpipe runs a workgroup as fibers switched at every barrier): the
// row kernels give each score row to one invocation, which loops over its ≤ T columns.
// Plain ES module: no Deno API.
import {
  SOFTMAX_BACKWARD_BINDINGS,
  SOFTMAX_BACKWARD_UNIFORMS,
  SOFTMAX_BINDINGS,
  SOFTMAX_UNIFORMS,
  WGSL_SCORE_ROW,
} from "./attention.ts";
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslGroupThreadMain } from "./wgsl.ts";

/** Invocations per workgroup of the element-wise and row kernels below. */
export const ATTN_FLAT_WG = 64;

// one invocation per element or row: idx
const FLAT_INDEX = wgslGroupThreadMain("idx", undefined, "li");

// the row kernels: score row r of the chunk, its query i, len and lim (attention.ts)
const SCORE_ROW_INDEX = FLAT_INDEX + /* wgsl */ `
  let r = idx;` + WGSL_SCORE_ROW;

const HEAD_UNIFORMS: [string, "u32"][] = [
  ["T", "u32"],
  ["H", "u32"],
  ["hd", "u32"],
  ["p0", "u32"],
  ["b0", "u32"],
  ["pairs", "u32"],
  ["total", "u32"],
  ["rowStride", "u32"],
  ["rowOff", "u32"],
  ["headOff", "u32"],
];

// idx: head row (s, pr, t) of [secs, pairs, T]; src: its first element in the row tensor
const HEAD_ROW = /* wgsl */ `
  if (idx >= P.total) { return; }
  let t = idx % P.T;
  let q = idx / P.T; // s·pairs + pr
  let pr = q % P.pairs;
  let s = q / P.pairs;
  let p = P.p0 + pr;
  let b = p / P.H;
  let h = p % P.H;
  let src = P.rowOff + ((b - P.b0) * P.T + t) * P.rowStride + (s * P.H + h) * P.hd;`;

/**
 * Head-major copy of `secs` column sections of a row tensor: head[s, pr, t, d] = rows[b, t, s·C + h·hd + d]
 * for the chunk's pairs pr (p = p0 + pr = b·H + h), and 0 at padded positions t ≥ len_b, which are never
 * read (they may hold NaN): the products over the copies then see only zeros there. One invocation per
 * (s, pr, t) copies hd elements (integer division is scalarised on CPU Vulkan: once per row, not per element).
 */
export const splitHeadsKernel: KernelSpec = {
  key: "attention_split_heads_f32",
  uniforms: HEAD_UNIFORMS,
  bindings: [
    { name: "lengths", access: "read", type: "u32" },
    { name: "rows", access: "read", type: "f32" },
    { name: "head", access: "read_write", type: "f32" },
  ],
  workgroupSize: [ATTN_FLAT_WG, 1, 1],
  body: FLAT_INDEX + HEAD_ROW + /* wgsl */ `
  let dst = P.headOff + idx * P.hd;
  if (t < min(lengths[b], P.T)) {
    for (var d = 0u; d < P.hd; d++) { head[dst + d] = rows[src + d]; }
  } else {
    for (var d = 0u; d < P.hd; d++) { head[dst + d] = 0.0; }
  }
}`,
};

/**
 * The inverse of splitHeadsKernel: rows[b, t, s·C + h·hd + d] = head[s, pr, t, d] (or head[s, pr, d, t]
 * when `transposed`), 0 at padded positions t ≥ len_b. Writes exactly the chunk's head columns.
 */
export function mergeHeadsKernel(transposed: boolean): KernelSpec {
  return {
    key: `attention_merge_heads_f32${transposed ? "_transposed" : ""}`,
    uniforms: HEAD_UNIFORMS,
    bindings: [
      { name: "lengths", access: "read", type: "u32" },
      { name: "head", access: "read", type: "f32" },
      { name: "rows", access: "read_write", type: "f32" },
    ],
    workgroupSize: [ATTN_FLAT_WG, 1, 1],
    body: FLAT_INDEX + HEAD_ROW + /* wgsl */ `
  if (t < min(lengths[b], P.T)) {
    ${
      transposed
        ? "let h0 = P.headOff + q * P.hd * P.T + t;\n    for (var d = 0u; d < P.hd; d++) { rows[src + d] = head[h0 + d * P.T]; }"
        : "let h0 = P.headOff + idx * P.hd;\n    for (var d = 0u; d < P.hd; d++) { rows[src + d] = head[h0 + d]; }"
    }
  } else {
    for (var d = 0u; d < P.hd; d++) { rows[src + d] = 0.0; }
  }
}`,
  };
}

/**
 * Masked softmax in place over full score rows [rows, T] (the matmul wrote every entry; masked ones may
 * hold anything, NaN included, and are only overwritten): one invocation per row, the max and the sum
 * in one online pass over the visible keys j ≤ i, j < len, then the row written with zeros elsewhere.
 */
export const rowSoftmaxKernel: KernelSpec = {
  key: "attention_row_softmax_f32_causal",
  uniforms: SOFTMAX_UNIFORMS,
  bindings: SOFTMAX_BINDINGS,
  workgroupSize: [ATTN_FLAT_WG, 1, 1],
  body: SCORE_ROW_INDEX + /* wgsl */ `
  let base = P.sOff + r * P.T;
  var m = -3.4028234e38;
  var l = 0.0;
  for (var j = 0u; j < lim; j++) {
    let x = s[base + j];
    let mm = max(m, x);
    l = l * exp(m - mm) + exp(x - mm);
    m = mm;
  }
  let inv = 1.0 / l;
  for (var j = 0u; j < lim; j++) { s[base + j] = exp(s[base + j] - m) * inv; }
  for (var j = lim; j < P.T; j++) { s[base + j] = 0.0; }
}`,
};

/**
 * Softmax backward in place over full rows of g (dP from a matmul; masked entries may hold anything):
 * g_j ← scale · P_j · (g_j − Σ_k P_k g_k) over visible j, zero elsewhere; one invocation per row.
 */
export const rowSoftmaxBackwardKernel: KernelSpec = {
  key: "attention_row_softmax_backward_f32_causal",
  uniforms: SOFTMAX_BACKWARD_UNIFORMS,
  bindings: SOFTMAX_BACKWARD_BINDINGS,
  workgroupSize: [ATTN_FLAT_WG, 1, 1],
  body: SCORE_ROW_INDEX + /* wgsl */ `
  let pBase = P.pOff + r * P.T;
  let gBase = P.gOff + r * P.T;
  var dot = 0.0;
  for (var j = 0u; j < lim; j++) { dot += probs[pBase + j] * g[gBase + j]; }
  for (var j = 0u; j < lim; j++) { g[gBase + j] = P.scale * probs[pBase + j] * (g[gBase + j] - dot); }
  for (var j = lim; j < P.T; j++) { g[gBase + j] = 0.0; }
}`,
};

/** Workgroups of the kernels above for `n` elements or rows. */
export function flatAttnWorkgroups(n: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / ATTN_FLAT_WG));
}
