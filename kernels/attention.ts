// Causal multi-head attention kernels for right-padded batches, forward and backward, as three small
// tiled kernels instead of one fused kernel, because the backward needs the probabilities anyway:
//   S = scale·Q Kᵀ (causal-valid tiles only)  →  P = masked softmax(S) in place  →  O = P V.
// The backward reuses them: dP = dO Vᵀ (qk), dS = scale·P ⊙ (dP − rowsum(P ⊙ dP)) (softmax backward),
// dQ = dS K (av), dK = dSᵀ Q and dV = Pᵀ dO (av, transposed A).
//
// Layout: one dispatch covers a chunk of (batch, head) pairs p = b·H + h starting at pair p0 (the op splits
// the pairs so every bound range fits a storage binding); wid.z is the pair inside the chunk. Row tensors
// (qkv, dO, outputs) are [B·T, stride] with head h at columns col + h·hd and are bound from batch row b0;
// score tensors are [pairs, T, T] bound from pair p0. `*Off` uniforms are Tensor.range element offsets.
//
// Masking (row b has valid tokens 0..len_b−1): query i attends keys j ≤ i, j < len. Nothing at a padded
// position is ever read into a valid result (padded inputs may hold NaN), padded rows of P, dS and every
// output are written as zeros, and lengths above T count as T.
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";

/** Output tile edge of the qk and av kernels (16×16 threads, 4×4 outputs each) and their reduction step. */
export const ATTN_TILE = 64;
const ATTN_TK = 16;
/** Threads per row of the softmax kernels. */
export const ATTN_ROW_WG = 128;

// Shared between the tiled kernels: tiles are stored [TK][TILE+1] (padded against bank conflicts on the
// transposing store), and the row length is broadcast through workgroupUniformLoad so that loops with
// barriers may depend on it.
const TILE_PRELUDE = /* wgsl */ `
const TM: u32 = ${ATTN_TILE}u;
const TK: u32 = ${ATTN_TK}u;
const TS: u32 = ${ATTN_TILE + 1}u;
var<workgroup> as_: array<f32, ${ATTN_TK * (ATTN_TILE + 1)}>;
var<workgroup> bs_: array<f32, ${ATTN_TK * (ATTN_TILE + 1)}>;
var<workgroup> wlen: u32;

fn row_len(b: u32, li: u32) -> u32 {
  if (li == 0u) { wlen = min(lengths[b], P.T); }
  return workgroupUniformLoad(&wlen);
}
`;

const GEOMETRY: [string, "u32"][] = [["T", "u32"], ["H", "u32"], ["hd", "u32"], ["p0", "u32"], ["b0", "u32"]];

/**
 * s[p, i, j] = scale · Σ_d x[b, i, h·hd + d] · y[b, j, h·hd + d] for i < len, j ≤ i. Entries outside that
 * region are not written (the softmax kernels rewrite every row in full). Tiles above the diagonal or
 * past the row's length are skipped whole.
 */
export const qkKernel: KernelSpec = {
  key: `attention_qk_f32_${ATTN_TILE}x${ATTN_TILE}_causal`,
  uniforms: [
    ...GEOMETRY,
    ["xStride", "u32"],
    ["xCol", "u32"],
    ["xOff", "u32"],
    ["yStride", "u32"],
    ["yCol", "u32"],
    ["yOff", "u32"],
    ["sOff", "u32"],
    ["scale", "f32"],
  ],
  bindings: [
    { name: "lengths", access: "read", type: "u32" },
    { name: "x", access: "read", type: "f32" },
    { name: "y", access: "read", type: "f32" },
    { name: "s", access: "read_write", type: "f32" },
  ],
  workgroupSize: [16, 16, 1],
  body: TILE_PRELUDE + /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let p = P.p0 + wid.z;
  let b = p / P.H;
  let h = p % P.H;
  let i0 = wid.y * TM;
  let j0 = wid.x * TM;
  if (j0 > i0 + TM - 1u) { return; } // strictly above the causal diagonal
  let len = row_len(b, li);
  if (i0 >= len || j0 >= len) { return; }
  let xBase = P.xOff + (b - P.b0) * P.T * P.xStride + P.xCol + h * P.hd;
  let yBase = P.yOff + (b - P.b0) * P.T * P.yStride + P.yCol + h * P.hd;
  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < P.hd; k0 += TK) {
    for (var t = 0u; t < 4u; t++) {
      let e = li + t * 256u;
      let r = e / TK; // consecutive threads read consecutive d of one row
      let k = e % TK;
      let d = k0 + k;
      var xv = 0.0;
      var yv = 0.0;
      if (d < P.hd) {
        if (i0 + r < len) { xv = x[xBase + (i0 + r) * P.xStride + d]; }
        if (j0 + r < len) { yv = y[yBase + (j0 + r) * P.yStride + d]; }
      }
      as_[k * TS + r] = xv;
      bs_[k * TS + r] = yv;
    }
    workgroupBarrier();
    for (var k = 0u; k < TK; k++) {
      let xa = vec4<f32>(as_[k * TS + lid.y], as_[k * TS + lid.y + 16u], as_[k * TS + lid.y + 32u],
                         as_[k * TS + lid.y + 48u]);
      let yb = vec4<f32>(bs_[k * TS + lid.x], bs_[k * TS + lid.x + 16u], bs_[k * TS + lid.x + 32u],
                         bs_[k * TS + lid.x + 48u]);
      acc[0] += xa.x * yb;
      acc[1] += xa.y * yb;
      acc[2] += xa.z * yb;
      acc[3] += xa.w * yb;
    }
    workgroupBarrier();
  }
  let sBase = P.sOff + wid.z * P.T * P.T;
  for (var a = 0u; a < 4u; a++) {
    let i = i0 + lid.y + 16u * a;
    if (i >= len) { continue; }
    for (var c = 0u; c < 4u; c++) {
      let j = j0 + lid.x + 16u * c;
      if (j <= i) { s[sBase + i * P.T + j] = P.scale * acc[a][c]; }
    }
  }
}`,
};

/**
 * o[b, r, h·hd + d] = Σ_m A[p][r, m] · y[b, m, h·hd + d] (or with A transposed: Σ_m A[p][m, r] · y[...]),
 * the reduction running only over valid causal m: m ≤ r (plain) or r ≤ m < len (transposed). Rows r ≥ len
 * are written as zeros, so every output element of the head's column block is written.
 */
export function avKernel(transA: boolean): KernelSpec {
  return {
    key: `attention_av_f32_${ATTN_TILE}x${ATTN_TILE}_causal${transA ? "_transA" : ""}`,
    uniforms: [
      ...GEOMETRY,
      ["aOff", "u32"],
      ["yStride", "u32"],
      ["yCol", "u32"],
      ["yOff", "u32"],
      ["oStride", "u32"],
      ["oCol", "u32"],
      ["oOff", "u32"],
    ],
    bindings: [
      { name: "lengths", access: "read", type: "u32" },
      { name: "a", access: "read", type: "f32" },
      { name: "y", access: "read", type: "f32" },
      { name: "o", access: "read_write", type: "f32" },
    ],
    workgroupSize: [16, 16, 1],
    body: TILE_PRELUDE + /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let p = P.p0 + wid.z;
  let b = p / P.H;
  let h = p % P.H;
  let r0 = wid.y * TM;
  let d0 = wid.x * TM;
  let len = row_len(b, li);
  let aBase = P.aOff + wid.z * P.T * P.T;
  let yBase = P.yOff + (b - P.b0) * P.T * P.yStride + P.yCol + h * P.hd;
  let oBase = P.oOff + (b - P.b0) * P.T * P.oStride + P.oCol + h * P.hd;
  ${
      transA
        ? "let mStart = r0;\n  let mEnd = len; // keys j of this tile collect from queries i >= j"
        : "let mStart = 0u;\n  let mEnd = min(len, r0 + TM); // query i reads keys j <= i"
    }
  var acc: array<vec4<f32>, 4>;
  for (var m0 = mStart; m0 < mEnd; m0 += TK) {
    for (var t = 0u; t < 4u; t++) {
      let e = li + t * 256u;
      ${
      transA
        ? `let r = e % TM; // A[m, r]: consecutive threads read consecutive columns
      let k = e / TM;
      var av = 0.0;
      if (m0 + k < mEnd && r0 + r < P.T) { av = a[aBase + (m0 + k) * P.T + r0 + r]; }`
        : `let r = e / TK; // A[r, m]: consecutive threads read consecutive columns
      let k = e % TK;
      var av = 0.0;
      if (r0 + r < len && m0 + k < mEnd) { av = a[aBase + (r0 + r) * P.T + m0 + k]; }`
    }
      as_[k * TS + r] = av;
      let c = e % TM;
      let kc = e / TM;
      var yv = 0.0;
      if (m0 + kc < mEnd && d0 + c < P.hd) { yv = y[yBase + (m0 + kc) * P.yStride + d0 + c]; }
      bs_[kc * TS + c] = yv;
    }
    workgroupBarrier();
    for (var k = 0u; k < TK; k++) {
      let xa = vec4<f32>(as_[k * TS + lid.y], as_[k * TS + lid.y + 16u], as_[k * TS + lid.y + 32u],
                         as_[k * TS + lid.y + 48u]);
      let yb = vec4<f32>(bs_[k * TS + lid.x], bs_[k * TS + lid.x + 16u], bs_[k * TS + lid.x + 32u],
                         bs_[k * TS + lid.x + 48u]);
      acc[0] += xa.x * yb;
      acc[1] += xa.y * yb;
      acc[2] += xa.z * yb;
      acc[3] += xa.w * yb;
    }
    workgroupBarrier();
  }
  for (var a_ = 0u; a_ < 4u; a_++) {
    let r = r0 + lid.y + 16u * a_;
    if (r >= P.T) { continue; }
    for (var c = 0u; c < 4u; c++) {
      let d = d0 + lid.x + 16u * c;
      if (d < P.hd) { o[oBase + r * P.oStride + d] = select(0.0, acc[a_][c], r < len); }
    }
  }
}`,
  };
}

const ROW_PRELUDE = /* wgsl */ `
var<workgroup> red: array<f32, WG_X>;

fn reduce_max(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var st = WG_X / 2u; st > 0u; st >>= 1u) {
    if (lid < st) { red[lid] = max(red[lid], red[lid + st]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var st = WG_X / 2u; st > 0u; st >>= 1u) {
    if (lid < st) { red[lid] = red[lid] + red[lid + st]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
`;

/**
 * Masked softmax in place over each score row (one workgroup per row r of the chunk, pair r / T, query
 * i = r % T): P[i, j] = exp(s_j − max) / Σ exp(s − max) over j ≤ i, j < len; zeros elsewhere, and whole
 * rows of zeros for padded queries. Reads only the entries the qk kernel wrote.
 */
export const softmaxKernel: KernelSpec = {
  key: "attention_softmax_f32_causal",
  uniforms: [["T", "u32"], ["H", "u32"], ["p0", "u32"], ["rows", "u32"], ["sOff", "u32"]],
  bindings: [
    { name: "lengths", access: "read", type: "u32" },
    { name: "s", access: "read_write", type: "f32" },
  ],
  workgroupSize: [ATTN_ROW_WG, 1, 1],
  body: ROW_PRELUDE + /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= P.rows) { return; }
  let i = r % P.T;
  let len = min(lengths[(P.p0 + r / P.T) / P.H], P.T);
  let lim = select(0u, i + 1u, i < len); // keys 0..lim-1 are visible
  let base = P.sOff + r * P.T;
  var m = -3.4028234e38;
  for (var j = lid; j < lim; j += WG_X) { m = max(m, s[base + j]); }
  m = reduce_max(m, lid);
  var sum = 0.0;
  for (var j = lid; j < lim; j += WG_X) { sum += exp(s[base + j] - m); }
  sum = reduce_sum(sum, lid);
  let inv = 1.0 / sum;
  for (var j = lid; j < P.T; j += WG_X) {
    var v = 0.0;
    if (j < lim) { v = exp(s[base + j] - m) * inv; }
    s[base + j] = v;
  }
}`,
};

/**
 * Softmax backward in place over each row of g (which holds dP): g_j ← scale · P_j · (g_j − Σ_k P_k g_k)
 * over visible j, zero elsewhere. `scale` folds in the 1/sqrt(hd) of the scores.
 */
export const softmaxBackwardKernel: KernelSpec = {
  key: "attention_softmax_backward_f32_causal",
  uniforms: [
    ["T", "u32"],
    ["H", "u32"],
    ["p0", "u32"],
    ["rows", "u32"],
    ["pOff", "u32"],
    ["gOff", "u32"],
    ["scale", "f32"],
  ],
  bindings: [
    { name: "lengths", access: "read", type: "u32" },
    { name: "probs", access: "read", type: "f32" },
    { name: "g", access: "read_write", type: "f32" },
  ],
  workgroupSize: [ATTN_ROW_WG, 1, 1],
  body: ROW_PRELUDE + /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= P.rows) { return; }
  let i = r % P.T;
  let len = min(lengths[(P.p0 + r / P.T) / P.H], P.T);
  let lim = select(0u, i + 1u, i < len);
  let pBase = P.pOff + r * P.T;
  let gBase = P.gOff + r * P.T;
  var dot = 0.0;
  for (var j = lid; j < lim; j += WG_X) { dot += probs[pBase + j] * g[gBase + j]; }
  dot = reduce_sum(dot, lid);
  for (var j = lid; j < P.T; j += WG_X) {
    var v = 0.0;
    if (j < lim) { v = P.scale * probs[pBase + j] * (g[gBase + j] - dot); }
    g[gBase + j] = v;
  }
}`,
};

/** Workgroups of the tiled kernels: [column tiles, row tiles, pairs]. */
export function tileWorkgroups(cols: number, rows: number, pairs: number): Workgroups {
  return [Math.ceil(cols / ATTN_TILE), Math.ceil(rows / ATTN_TILE), pairs];
}

/** Workgroups of the row kernels: one per score row, folded into x/y. */
export function rowWorkgroups(rows: number): Workgroups {
  return flatWorkgroups(rows);
}
