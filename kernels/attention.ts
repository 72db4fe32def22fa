// Causal multi-head attention kernels for right-padded batches, forward and backward. The general path
// is three small tiled kernels rather than one fused kernel, because the backward needs the probabilities
// anyway:
//   S = scale·Q Kᵀ (causal-valid tiles only)  →  P = masked softmax(S) in place  →  O = P V.
// The backward reuses them: dP = dO Vᵀ (qk), dS = scale·P ⊙ (dP − rowsum(P ⊙ dP)) (softmax backward),
// dQ = dS K (av), dK = dSᵀ Q and dV = Pᵀ dO (av, transposed A). Short sequences (T ≤ 32, hd ≤ 64, the
// causal-tracing case) take one fused kernel per forward instead: a workgroup per (batch, head) pair.
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
import {
  flatWorkgroups,
  type KernelSpec,
  type StorageBinding,
  type UniformType,
  type Workgroups,
} from "./descriptor.ts";
import { wgslGroupMain } from "./wgsl.ts";

/** Output tile edges of the qk and av kernels: the op takes the smallest that covers T (up to 64). */
export type AttnTile = 16 | 32 | 64;
export const ATTN_TILES: readonly AttnTile[] = [16, 32, 64];
// 8×8 threads per tile, each computing (tile/8)² outputs: few threads per barrier suits CPU Vulkan
// (llvmpipe runs a workgroup as fibers switched at every barrier) and still feeds a GPU.
const THREADS = 8;
/** Reduction step (columns of the head dim or of the score rows loaded per barrier pair). */
const TK = 32;
/** Threads per row of the softmax kernels. */
export const ATTN_ROW_WG = 32;

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** The WGSL pieces of a tiled kernel with a tile×tile output tile. */
interface TileCode {
  tag: string;
  prelude: string;
  accDecl: string;
  /** The step of the k loop once a TK slice is loaded: barrier, the register tile's FMAs, barrier. */
  accFma: string;
  /** Unrolled epilogue: `store(row, col, value)` gives the WGSL storing one element (row/col: tile offsets). */
  storeTile(store: (row: string, col: string, v: string) => string): string;
}

function tileCode(tile: AttnTile): TileCode {
  const rt = tile / THREADS; // outputs per thread per side
  const w = Math.min(4, rt); // accumulator vector width
  const vecs = rt / w;
  const vec = `vec${w}<f32>`;
  // The register tile is named vector accumulators, unrolled: llvmpipe spills a dynamically indexed
  // private array to memory. acc{a}_{q}[c] holds row lid.y + THREADS·a, column lid.x + THREADS·(w·q + c).
  const accs = range(rt).flatMap((a) => range(vecs).map((q) => [a, q]));
  return {
    tag: `${tile}x${tile}_t${THREADS}_k${TK}`,
    // Tiles are stored [TK][tile+1] (padded against bank conflicts on the transposing store); the row
    // length is broadcast through workgroupUniformLoad so loops with barriers may depend on it.
    prelude: /* wgsl */ `
const TM: u32 = ${tile}u;
const TK: u32 = ${TK}u;
const TS: u32 = ${tile + 1}u;
const NT: u32 = ${THREADS * THREADS}u;
var<workgroup> as_: array<f32, ${TK * (tile + 1)}>;
var<workgroup> bs_: array<f32, ${TK * (tile + 1)}>;
var<workgroup> wlen: u32;

fn row_len(b: u32, li: u32) -> u32 {
  if (li == 0u) { wlen = min(lengths[b], P.T); }
  return workgroupUniformLoad(&wlen);
}
`,
    accDecl: accs.map(([a, q]) => `var acc${a}_${q} = ${vec}();`).join("\n  "),
    accFma: /* wgsl */ `
    workgroupBarrier();
    for (var k = 0u; k < TK; k++) {
      ${range(rt).map((a) => `let x${a} = as_[k * TS + lid.y + ${THREADS * a}u];`).join("\n      ")}
      ${
      range(vecs).map((q) =>
        `let y${q} = ${vec}(${
          range(w).map((c) => `bs_[k * TS + lid.x + ${THREADS * (w * q + c)}u]`).join(", ")
        });`
      ).join("\n      ")
    }
      ${accs.map(([a, q]) => `acc${a}_${q} += x${a} * y${q};`).join("\n      ")}
    }
    workgroupBarrier();`,
    storeTile: (store) =>
      range(rt).flatMap((a) =>
        range(rt).map((c) =>
          store(
            `lid.y + ${THREADS * a}u`,
            `lid.x + ${THREADS * c}u`,
            `acc${a}_${Math.floor(c / w)}[${c % w}]`,
          )
        )
      ).join("\n  "),
  };
}

/** The tile the op uses for sequences of length T: the smallest that covers T, else the largest. */
export function attnTile(T: number): AttnTile {
  return ATTN_TILES.find((t) => t >= T) ?? 64;
}

// Opening of the tiled kernels' main: workgroup (x, y) is an output tile of the pair wid.z of the chunk,
// p = b·H + h.
const TILE_MAIN = /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let p = P.p0 + wid.z;
  let b = p / P.H;
  let h = p % P.H;`;

const GEOMETRY: [string, "u32"][] = [["T", "u32"], ["H", "u32"], ["hd", "u32"], ["p0", "u32"], ["b0", "u32"]];

/**
 * s[p, i, j] = scale · Σ_d x[b, i, h·hd + d] · y[b, j, h·hd + d] for i < len, j ≤ i. Entries outside that
 * region are not written (the softmax kernels rewrite every row in full). Tiles above the diagonal or
 * past the row's length are skipped whole.
 */
export function qkKernel(tile: AttnTile): KernelSpec {
  const t = tileCode(tile);
  return {
    key: `attention_qk_f32_${t.tag}_causal`,
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
    workgroupSize: [THREADS, THREADS, 1],
    body: t.prelude + TILE_MAIN + /* wgsl */ `
  let i0 = wid.y * TM;
  let j0 = wid.x * TM;
  if (j0 > i0 + TM - 1u) { return; } // strictly above the causal diagonal
  let len = row_len(b, li);
  if (i0 >= len || j0 >= len) { return; }
  let xBase = P.xOff + (b - P.b0) * P.T * P.xStride + P.xCol + h * P.hd;
  let yBase = P.yOff + (b - P.b0) * P.T * P.yStride + P.yCol + h * P.hd;
  ${t.accDecl}
  for (var k0 = 0u; k0 < P.hd; k0 += TK) {
    for (var t = 0u; t < TM * TK / NT; t++) { // TM·TK elements over NT threads
      let e = li + t * NT;
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
${t.accFma}
  }
  let sBase = P.sOff + wid.z * P.T * P.T;
  ${
      t.storeTile((r, c, v) =>
        `if (i0 + ${r} < len && j0 + ${c} <= i0 + ${r}) { s[sBase + (i0 + ${r}) * P.T + j0 + ${c}] = P.scale * ${v}; }`
      )
    }
}`,
  };
}

/**
 * o[b, r, h·hd + d] = Σ_m A[p][r, m] · y[b, m, h·hd + d] (or with A transposed: Σ_m A[p][m, r] · y[...]),
 * the reduction running only over valid causal m: m ≤ r (plain) or r ≤ m < len (transposed). Rows r ≥ len
 * are written as zeros, so every output element of the head's column block is written.
 */
export function avKernel(tile: AttnTile, transA: boolean): KernelSpec {
  const t = tileCode(tile);
  return {
    key: `attention_av_f32_${t.tag}_causal${transA ? "_transA" : ""}`,
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
    workgroupSize: [THREADS, THREADS, 1],
    body: t.prelude + TILE_MAIN + /* wgsl */ `
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
  ${t.accDecl}
  for (var m0 = mStart; m0 < mEnd; m0 += TK) {
    for (var t = 0u; t < TM * TK / NT; t++) { // TM·TK elements over NT threads
      let e = li + t * NT;
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
${t.accFma}
  }
  ${
      t.storeTile((r, c, v) =>
        `if (r0 + ${r} < P.T && d0 + ${c} < P.hd) { ` +
        `o[oBase + (r0 + ${r}) * P.oStride + d0 + ${c}] = select(0.0, ${v}, r0 + ${r} < len); }`
      )
    }
}`,
  };
}

// Row reductions: a tree over WG_X threads. Barriers dominate on CPU Vulkan (llvmpipe), so the forward
// merges max and sum into one online reduction (running max m, sum l of exp(x − m), as in FlashAttention).
const ROW_PRELUDE = /* wgsl */ `
var<workgroup> red_m: array<f32, WG_X>;
var<workgroup> red_l: array<f32, WG_X>;

fn reduce_sum(v: f32, lid: u32) -> f32 {
  red_l[lid] = v;
  workgroupBarrier();
  for (var st = WG_X / 2u; st > 0u; st >>= 1u) {
    if (lid < st) { red_l[lid] = red_l[lid] + red_l[lid + st]; }
    workgroupBarrier();
  }
  let r = red_l[0];
  workgroupBarrier();
  return r;
}

// (max, sum of exp(x - max)) of the whole row from each thread's partial pair
fn reduce_online(m: f32, l: f32, lid: u32) -> vec2<f32> {
  red_m[lid] = m;
  red_l[lid] = l;
  workgroupBarrier();
  for (var st = WG_X / 2u; st > 0u; st >>= 1u) {
    if (lid < st) {
      let m1 = red_m[lid];
      let m2 = red_m[lid + st];
      let mm = max(m1, m2);
      red_l[lid] = red_l[lid] * exp(m1 - mm) + red_l[lid + st] * exp(m2 - mm);
      red_m[lid] = mm;
    }
    workgroupBarrier();
  }
  let r = vec2<f32>(red_m[0], red_l[0]);
  workgroupBarrier();
  return r;
}
`;

// The masked softmax kernels in place over score rows [rows, T], here and in attention_heads.ts (one
// invocation per row there): the same uniforms and bindings, forward and backward.
export const SOFTMAX_UNIFORMS: readonly (readonly [string, UniformType])[] = [
  ["T", "u32"],
  ["H", "u32"],
  ["p0", "u32"],
  ["rows", "u32"],
  ["sOff", "u32"],
];
export const SOFTMAX_BINDINGS: readonly StorageBinding[] = [
  { name: "lengths", access: "read", type: "u32" },
  { name: "s", access: "read_write", type: "f32" },
];
export const SOFTMAX_BACKWARD_UNIFORMS: readonly (readonly [string, UniformType])[] = [
  ["T", "u32"],
  ["H", "u32"],
  ["p0", "u32"],
  ["rows", "u32"],
  ["pOff", "u32"],
  ["gOff", "u32"],
  ["scale", "f32"],
];
export const SOFTMAX_BACKWARD_BINDINGS: readonly StorageBinding[] = [
  { name: "lengths", access: "read", type: "u32" },
  { name: "probs", access: "read", type: "f32" },
  { name: "g", access: "read_write", type: "f32" },
];

/**
 * WGSL, once the score row `r` of the chunk is declared: leaves when r >= P.rows, else declares the
 * query i = r % T of pair p0 + r / T, its batch row's length `len` and `lim`, the visible keys 0..lim-1.
 */
export const WGSL_SCORE_ROW = /* wgsl */ `
  if (r >= P.rows) { return; }
  let i = r % P.T;
  let len = min(lengths[(P.p0 + r / P.T) / P.H], P.T);
  let lim = select(0u, i + 1u, i < len); // keys 0..lim-1 are visible`;

/**
 * Masked softmax in place over each score row (one workgroup per row r of the chunk, pair r / T, query
 * i = r % T): P[i, j] = exp(s_j − max) / Σ exp(s − max) over j ≤ i, j < len; zeros elsewhere, and whole
 * rows of zeros for padded queries. Reads only the entries the qk kernel wrote.
 */
export const softmaxKernel: KernelSpec = {
  key: "attention_softmax_f32_causal",
  uniforms: SOFTMAX_UNIFORMS,
  bindings: SOFTMAX_BINDINGS,
  workgroupSize: [ATTN_ROW_WG, 1, 1],
  body: ROW_PRELUDE + /* wgsl */ `${wgslGroupMain("r")}${WGSL_SCORE_ROW}
  let base = P.sOff + r * P.T;
  var m = -3.4028234e38; // finite, so exp(m - m') stays defined for threads that saw nothing
  var l = 0.0;
  for (var j = lid; j < lim; j += WG_X) {
    let x = s[base + j];
    if (x > m) {
      l = l * exp(m - x) + 1.0;
      m = x;
    } else {
      l += exp(x - m);
    }
  }
  let ml = reduce_online(m, l, lid);
  m = ml.x;
  let inv = 1.0 / ml.y;
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
  uniforms: SOFTMAX_BACKWARD_UNIFORMS,
  bindings: SOFTMAX_BACKWARD_BINDINGS,
  workgroupSize: [ATTN_ROW_WG, 1, 1],
  body: ROW_PRELUDE + /* wgsl */ `${wgslGroupMain("r")}${WGSL_SCORE_ROW}
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

/** Largest sequence length and head size of the fused short-sequence kernel. */
export const FUSED_MAX_T = 32;
export const FUSED_MAX_HD = 64;
const FUSED_THREADS = 64;

/** Workgroup memory of the fused kernel for sequences up to maxT: K and V rows, and the score block. */
export function fusedStorageBytes(maxT: 16 | 32): number {
  return 4 * (2 * maxT * FUSED_MAX_HD + maxT * maxT) + 16;
}

/**
 * The whole forward of one (batch, head) pair in one workgroup, for short sequences (T ≤ maxT, hd ≤ 64):
 * causal tracing runs many short prompts, where the tiled path would spend a dozen mostly idle
 * workgroups (and three dispatches) per pair. K and V rows live in workgroup memory, the T×T scores too;
 * each query row's softmax is done by one thread (at most 32 entries). Same masking as the tiled path;
 * with `saveProbs` the probabilities are written to probs [pairs, T, T] (zeros where masked).
 */
export function fusedKernel(maxT: 16 | 32, saveProbs: boolean): KernelSpec {
  return {
    key: `attention_fused_f32_t${maxT}_d${FUSED_MAX_HD}_causal${saveProbs ? "_probs" : ""}`,
    uniforms: [...GEOMETRY, ["pairs", "u32"], ["qOff", "u32"], ["oOff", "u32"], ["pOff", "u32"], [
      "scale",
      "f32",
    ]],
    bindings: [
      { name: "lengths", access: "read", type: "u32" },
      { name: "qkv", access: "read", type: "f32" },
      { name: "o", access: "read_write", type: "f32" },
      ...(saveProbs ? [{ name: "probs", access: "read_write" as const, type: "f32" }] : []),
    ],
    workgroupSize: [FUSED_THREADS, 1, 1],
    body: /* wgsl */ `
const MT: u32 = ${maxT}u;
const MD: u32 = ${FUSED_MAX_HD}u;
var<workgroup> ks: array<f32, ${maxT * FUSED_MAX_HD}>;
var<workgroup> vs: array<f32, ${maxT * FUSED_MAX_HD}>;
var<workgroup> ss: array<f32, ${maxT * maxT}>;
var<workgroup> wlen: u32;
${wgslGroupMain("pr", "P.pairs", "li")} // pr: the pair inside the chunk
  let p = P.p0 + pr;
  let b = p / P.H;
  let h = p % P.H;
  if (li == 0u) { wlen = min(lengths[b], P.T); }
  let len = workgroupUniformLoad(&wlen);
  let stride = 3u * P.H * P.hd;
  let rowBase = P.qOff + (b - P.b0) * P.T * stride + h * P.hd; // q of row 0; k at +C, v at +2C
  let C = P.H * P.hd;
  for (var e = li; e < len * P.hd; e += WG_X) {
    let j = e / P.hd;
    let d = e % P.hd;
    ks[j * MD + d] = qkv[rowBase + j * stride + C + d];
    vs[j * MD + d] = qkv[rowBase + j * stride + 2u * C + d];
  }
  workgroupBarrier();
  for (var e = li; e < len * len; e += WG_X) {
    let i = e / len;
    let j = e % len;
    if (j <= i) {
      var dot = 0.0;
      for (var d = 0u; d < P.hd; d++) { dot += qkv[rowBase + i * stride + d] * ks[j * MD + d]; }
      ss[i * MT + j] = P.scale * dot;
    }
  }
  workgroupBarrier();
  if (li < len) {
    let i = li;
    var m = -3.4028234e38;
    for (var j = 0u; j <= i; j++) { m = max(m, ss[i * MT + j]); }
    var l = 0.0;
    for (var j = 0u; j <= i; j++) {
      let x = exp(ss[i * MT + j] - m);
      ss[i * MT + j] = x;
      l += x;
    }
    let inv = 1.0 / l;
    for (var j = 0u; j <= i; j++) { ss[i * MT + j] = ss[i * MT + j] * inv; }
  }
  workgroupBarrier();
  ${
      saveProbs
        ? `for (var e = li; e < P.T * P.T; e += WG_X) {
    let i = e / P.T;
    let j = e % P.T;
    var v = 0.0;
    if (i < len && j <= i) { v = ss[i * MT + j]; }
    probs[P.pOff + pr * P.T * P.T + e] = v;
  }`
        : ""
    }
  let oBase = P.oOff + (b - P.b0) * P.T * C + h * P.hd;
  for (var e = li; e < P.T * P.hd; e += WG_X) {
    let i = e / P.hd;
    let d = e % P.hd;
    var acc = 0.0;
    if (i < len) {
      for (var j = 0u; j <= i; j++) { acc += ss[i * MT + j] * vs[j * MD + d]; }
    }
    o[oBase + i * C + d] = acc;
  }
}`,
  };
}

/** Workgroups of the tiled kernels: [column tiles, row tiles, pairs]. */
export function tileWorkgroups(tile: AttnTile, cols: number, rows: number, pairs: number): Workgroups {
  return [Math.ceil(cols / tile), Math.ceil(rows / tile), pairs];
}

/** Workgroups of the row kernels: one per score row, folded into x/y. */
export function rowWorkgroups(rows: number): Workgroups {
  return flatWorkgroups(rows);
}
