// The attention kernel of incremental decoding (generation with a KV cache; kernels/attention.ts holds
// the batched kernels). The cache of one layer holds the c_attn output rows [Tmax, 3C] of each sequence
// (q, k, v in the HF layout), sequence r at rows r·Tmax + t, in one tensor per group of sequences (a
// group fits one storage binding). A query token is written to the cache first, then attends to its own
// row's keys 0..pos: so one kernel serves the prompt (many tokens per row, causal among them) and every
// generated token (one per row).
// Plain ES module: no Deno API.
import type { KernelSpec } from "./descriptor.ts";

/** Longest context the cached kernel holds scores for (GPT-2's is 1024); 8 KiB of workgroup memory. */
export const CACHED_MAX_T = 2048;
/** Threads per (query, head) workgroup of the cached kernel. */
export const CACHED_WG = 64;

/**
 * out[oRow0 + i, h·hd + d] = Σ_{j ≤ pos} softmax_j(scale · q·k_j) · v_j[d] for query entry i of this
 * dispatch, where queries[2·(oRow0 + i)] is the query's sequence within the bound cache group and
 * queries[2·(oRow0 + i) + 1] its position (the query's own qkv row). One workgroup per (head, query):
 * the scores go to workgroup memory, then a max and a sum reduction, then each thread sums one or more
 * output columns over the keys. Barriers sit in uniform control flow (pos is broadcast).
 */
export const cachedAttentionKernel: KernelSpec = {
  key: `attention_cached_f32_wg${CACHED_WG}_max${CACHED_MAX_T}`,
  uniforms: [
    ["Tmax", "u32"],
    ["H", "u32"],
    ["hd", "u32"],
    ["C", "u32"],
    ["oRow0", "u32"],
    ["cOff", "u32"],
    ["oOff", "u32"],
    ["scale", "f32"],
  ],
  bindings: [
    { name: "queries", access: "read", type: "u32" },
    { name: "cache", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [CACHED_WG, 1, 1],
  body: /* wgsl */ `
var<workgroup> sc: array<f32, ${CACHED_MAX_T}>;
var<workgroup> red: array<f32, WG_X>;
var<workgroup> wpos: u32;

fn reduce_max(li: u32, x: f32) -> f32 {
  red[li] = x;
  workgroupBarrier();
  for (var w = WG_X / 2u; w > 0u; w = w / 2u) {
    if (li < w) { red[li] = max(red[li], red[li + w]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn reduce_sum(li: u32, x: f32) -> f32 {
  red[li] = x;
  workgroupBarrier();
  for (var w = WG_X / 2u; w > 0u; w = w / 2u) {
    if (li < w) { red[li] = red[li] + red[li + w]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let h = wid.x;
  let q = P.oRow0 + wid.y;
  if (li == 0u) { wpos = min(queries[2u * q + 1u], P.Tmax - 1u); }
  let pos = workgroupUniformLoad(&wpos);
  let W = 3u * P.C;
  let seq = P.cOff + queries[2u * q] * P.Tmax * W;
  let qBase = seq + pos * W + h * P.hd;
  var m = -3.4028234e38;
  for (var j = li; j <= pos; j += WG_X) {
    let kBase = seq + j * W + P.C + h * P.hd;
    var s = 0.0;
    for (var d = 0u; d < P.hd; d++) { s += cache[qBase + d] * cache[kBase + d]; }
    s = s * P.scale;
    sc[j] = s;
    m = max(m, s);
  }
  m = reduce_max(li, m);
  var l = 0.0;
  for (var j = li; j <= pos; j += WG_X) {
    let p = exp(sc[j] - m);
    sc[j] = p;
    l += p;
  }
  let inv = 1.0 / reduce_sum(li, l);
  let oBase = P.oOff + wid.y * P.C + h * P.hd;
  for (var d = li; d < P.hd; d += WG_X) {
    let vBase = seq + 2u * P.C + h * P.hd + d;
    var acc = 0.0;
    for (var j = 0u; j <= pos; j++) { acc += sc[j] * cache[vBase + j * W]; }
    out[oBase + d] = acc * inv;
  }
}`,
};
