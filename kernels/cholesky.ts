// Blocked Cholesky (right-looking, LAPACK dpotrf order) and blocked triangular solves, as small kernels
// the op layer records block column by block column. WGSL has no global barrier and long dispatches get
// killed by watchdogs, so every step is its own dispatch:
//   potrf  factor the nb×nb diagonal block in one workgroup (shared memory, one column per step)
//   trsm   L21 = A21 · L11⁻ᵀ, one thread per panel row, many workgroups
//   syrk   A22 -= L21 · L21ᵀ on lower-triangle tiles only (where the n³/3 flops are)
//   trsv   diagonal-block substitution + a matrix-times-block update, for L y = b and Lᵀ x = y
// The matrix may be bound through a row range (Tensor.range) when it exceeds one storage binding, so
// kernels address it as `l[i * n + j - P.lOff]` with global indices (i, j); `lOff` is the first element
// of the binding. Plain ES module: no Deno API.
import { type KernelSpec } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

/** Side of the square output tile of the rank-nb update. */
export const SYRK_TILE = 64;
/** Panel rows solved by one trsm workgroup (one thread each). */
export const TRSM_ROWS = 64;
/** Outputs per trsv update workgroup (one thread each). */
export const TRSV_ROWS = 64;
/** Right-hand sides handled by one diagonal-block solve workgroup (one thread each). */
export const TRSV_DIAG_RHS = 64;

const cache = new Map<string, KernelSpec>();
function memo(spec: () => KernelSpec, key: string): KernelSpec {
  let s = cache.get(key);
  if (!s) cache.set(key, s = spec());
  return s;
}

/**
 * L = lower(A) + damping·I, strict upper part zeroed, over rows [row0, row0 + rows). Only A's lower
 * triangle is read (A is symmetric; LAPACK's uplo = 'L'), so the factorisation never writes the upper part.
 */
export const lowerCopyKernel: KernelSpec = {
  key: "cholesky_copy_lower_f32",
  uniforms: [["n", "u32"], ["row0", "u32"], ["count", "u32"], ["aOff", "u32"], ["lOff", "u32"], [
    "damping",
    "f32",
  ]],
  bindings: [
    { name: "a", access: "read", type: "f32" },
    { name: "l", access: "read_write", type: "f32" },
  ],
  workgroupSize: [256, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("e", "P.count")} // e: element of the chunk
  let g = P.row0 * P.n + e;                       // element of the matrix
  let i = g / P.n;
  let j = g % P.n;
  var v = 0.0;
  if (j <= i) { v = a[g - P.aOff]; }
  if (j == i) { v += P.damping; }
  l[g - P.lOff] = v;
}`,
};

/**
 * Factors the diagonal block L[k0:k0+bk, k0:k0+bk] in place, in one workgroup: column by column,
 * pivot → scale the column → rank-1 update of the block's trailing lower triangle, two barriers per
 * column. Also writes the factor to `d` (nb×nb, row-major) for the panel solve. A pivot ≤ 0 (or NaN/inf)
 * sets status[0] = 1 + its global column unless an earlier column already failed; blocks run in order
 * and one thread writes, so the first failure wins without atomics.
 */
export function potrfKernel(nb: number): KernelSpec {
  return memo(() => ({
    key: `cholesky_potrf_f32_nb${nb}`,
    uniforms: [["n", "u32"], ["k0", "u32"], ["bk", "u32"], ["lOff", "u32"]],
    bindings: [
      { name: "l", access: "read_write", type: "f32" },
      { name: "d", access: "read_write", type: "f32" },
      { name: "status", access: "read_write", type: "u32" },
    ],
    workgroupSize: [256, 1, 1],
    body: /* wgsl */ `
const NB: u32 = ${nb}u;
var<workgroup> a: array<f32, ${nb * nb}>;

@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(local_invocation_index) t: u32) {
  let bk = P.bk;
  for (var e = t; e < NB * NB; e += WG_X) {
    let i = e / NB;
    let j = e % NB;
    var v = 0.0;
    if (i < bk && j <= i) { v = l[(P.k0 + i) * P.n + P.k0 + j - P.lOff]; }
    a[e] = v;
  }
  workgroupBarrier();
  for (var j = 0u; j < bk; j++) {
    let djj = a[j * NB + j];
    if (t == 0u) {
      // Bit test as well as the compare: compilers may assume no NaN/inf in float compares.
      let bits = bitcast<u32>(djj);
      let bad = djj <= 0.0 || (bits & 0x7f800000u) == 0x7f800000u;
      if (bad && status[0] == 0u) { status[0] = P.k0 + j + 1u; }
    }
    let piv = sqrt(djj);
    for (var i = j + 1u + t; i < bk; i += WG_X) { a[i * NB + j] = a[i * NB + j] / piv; }
    workgroupBarrier();
    if (t == 0u) { a[j * NB + j] = piv; }
    // Rank-1 update of the block's trailing lower triangle: rows/cols j+1..bk-1.
    let rest = bk - j - 1u;
    for (var e = t; e < rest * rest; e += WG_X) {
      let i = j + 1u + e / rest;
      let c = j + 1u + e % rest;
      if (c <= i) { a[i * NB + c] -= a[i * NB + j] * a[c * NB + j]; }
    }
    workgroupBarrier();
  }
  for (var e = t; e < NB * NB; e += WG_X) {
    let i = e / NB;
    let j = e % NB;
    d[e] = a[e];
    if (i < bk && j <= i) { l[(P.k0 + i) * P.n + P.k0 + j - P.lOff] = a[e]; }
  }
}`,
  }), `potrf${nb}`);
}

/**
 * Panel solve L21 = A21 · L11⁻ᵀ for panel rows [row0, row0 + rows) (relative to t0 = k0 + bk), one thread
 * per row: forward substitution x L11ᵀ = a on the thread's own row, held in a private vec4 array and
 * dotted with rows of L11 (`d4`, the same address for every thread) four columns per step. Private
 * arrays indexed by workgroup-uniform loop counters are one vector op per access on lavapipe, where a
 * shared-memory row costs a gather (measured at m = 3008: shared 23 ms, scalar private 18 ms, vec4
 * private 13 ms; fully unrolled code ran in 8.5 ms but took LLVM ~55 s to compile).
 * The result goes back into L and, transposed ([bk][mp], mp = n - t0 rounded up to 4), into `pt` for
 * the rank-nb update.
 */
export function trsmKernel(nb: number): KernelSpec {
  return memo(() => ({
    key: `cholesky_trsm_f32_nb${nb}_rows${TRSM_ROWS}`,
    uniforms: [
      ["n", "u32"],
      ["k0", "u32"],
      ["bk", "u32"],
      ["mp", "u32"],
      ["row0", "u32"],
      ["rows", "u32"],
      ["lOff", "u32"],
    ],
    bindings: [
      { name: "d4", access: "read", type: "vec4<f32>" },
      { name: "l", access: "read_write", type: "f32" },
      { name: "pt", access: "read_write", type: "f32" },
    ],
    workgroupSize: [TRSM_ROWS, 1, 1],
    body: /* wgsl */ `
const NB: u32 = ${nb}u;

@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = P.row0 + gid.x;                         // panel row, relative to t0
  if (r >= P.row0 + P.rows) { return; }
  let bk = P.bk;
  let row = (P.k0 + bk + r) * P.n + P.k0 - P.lOff;
  // The row as vec4s and d as vec4 rows: the dot product of column j runs 4 columns per step.
  var x: array<vec4<f32>, ${nb / 4}>;
  for (var q = 0u; q < NB / 4u; q++) {
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
      if (4u * q + c < bk) { v[c] = l[row + 4u * q + c]; }
    }
    x[q] = v;
  }
  for (var j = 0u; j < bk; j++) {
    let jq = j / 4u;
    let jr = j % 4u;
    var acc = vec4<f32>(0.0);
    for (var q = 0u; q < jq; q++) { acc = fma(x[q], d4[j * (NB / 4u) + q], acc); }
    // The solved part of x[jq]: components below jr (select, not a 0 multiply: unsolved ones may be inf).
    let part = x[jq] * d4[j * (NB / 4u) + jq];
    acc += select(vec4<f32>(0.0), part, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(jr));
    x[jq][jr] = (x[jq][jr] - (acc.x + acc.y + acc.z + acc.w)) / d4[j * (NB / 4u) + jq][jr];
  }
  for (var p = 0u; p < bk; p++) {
    let v = x[p / 4u][p % 4u];
    l[row + p] = v;
    pt[p * P.mp + r] = v;
  }
}`,
  }), `trsm${nb}`);
}

/**
 * Symmetric rank-bk update A22 -= L21 · L21ᵀ of the trailing lower triangle, one 64×64 output tile per
 * workgroup of 8×8 threads, each holding an 8×8 register block (16 vec4 accumulators) and reading the
 * panel straight from global memory as vec4: 4 vec4 loads feed 64 FMAs per panel column. On lavapipe
 * this beat staging through shared memory (barriers and shared-memory gathers cost more than they save:
 * ~6 GFLOPS against ~2-4 for 16×16-thread shared-memory variants at n = 1024).
 * The panel is pt = L21ᵀ ([bk][mp], mp = m rounded up to 4 so rows are vec4-aligned; the padding is
 * never stored). Only tiles with tile-row ≥ tile-col are launched: the flat tile index t maps to
 * (bi, bj) by inverting t = bi(bi+1)/2 + bj, and one dispatch covers tiles [tile0, tile0 + tiles) (one
 * binding-sized chunk of tile rows). Diagonal tiles compute the full tile but store only j ≤ i, so the
 * upper part of L stays zero.
 */
export function syrkKernel(): KernelSpec {
  const RB = SYRK_TILE / 8; // rows (and columns) per thread
  const accs: string[] = [], loads: string[] = [], fmas: string[] = [], stores: string[] = [];
  for (let v = 0; v < RB / 4; v++) {
    loads.push(`    let a${v} = pt[ia + ${v}u];`, `    let b${v} = pt[ib + ${v}u];`);
  }
  for (let i = 0; i < RB; i++) {
    for (let v = 0; v < RB / 4; v++) {
      accs.push(`  var c${i}_${v} = vec4<f32>(0.0);`);
      fmas.push(`    c${i}_${v} += a${i >> 2}[${i & 3}] * b${v};`);
      stores.push(`  subtract4(r0 + ${i}u, c0 + ${4 * v}u, c${i}_${v});`);
    }
  }
  return memo(() => ({
    key: `cholesky_syrk_f32_${SYRK_TILE}x${SYRK_TILE}_r${RB}x${RB}_vec4_lower`,
    uniforms: [
      ["n", "u32"],
      ["t0", "u32"],
      ["bk", "u32"],
      ["m", "u32"],
      ["mp", "u32"],
      ["tile0", "u32"],
      ["tiles", "u32"],
      ["lOff", "u32"],
    ],
    bindings: [
      { name: "pt", access: "read", type: "vec4<f32>" },
      { name: "l", access: "read_write", type: "f32" },
    ],
    workgroupSize: [8, 8, 1],
    body: /* wgsl */ `
const T: u32 = ${SYRK_TILE}u;
const RB: u32 = ${RB}u;

fn lowerTile(t: u32) -> vec2<u32> {
  var i = u32((sqrt(8.0 * f32(t) + 1.0) - 1.0) * 0.5);
  if ((i + 1u) * (i + 2u) / 2u <= t) { i += 1u; }
  if (i * (i + 1u) / 2u > t) { i -= 1u; }
  return vec2<u32>(i, t - i * (i + 1u) / 2u);
}

// L[t0 + i, t0 + j .. j + 3] -= v, lower triangle and inside the trailing matrix only.
fn subtract4(i: u32, j: u32, v: vec4<f32>) {
  if (i >= P.m) { return; }
  for (var q = 0u; q < 4u; q++) {
    if (j + q <= i) {
      let g = (P.t0 + i) * P.n + P.t0 + j + q - P.lOff;
      l[g] = l[g] - v[q];
    }
  }
}

@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let f = wid.x + wid.y * nwg.x;
  if (f >= P.tiles) { return; }
  let tile = lowerTile(P.tile0 + f);
  let r0 = tile.x * T + lid.y * RB;
  let c0 = tile.y * T + lid.x * RB;
  let stride = P.mp / 4u;
${accs.join("\n")}
  var ia = r0 / 4u;
  var ib = c0 / 4u;
  for (var p = 0u; p < P.bk; p++) {
${loads.join("\n")}
${fmas.join("\n")}
    ia += stride;
    ib += stride;
  }
${stores.join("\n")}
}`,
  }), "syrk");
}

/**
 * Diagonal-block substitution on the right-hand sides x ([n, r] row-major) for block rows [k0, k0+bk):
 * lower: solve L_kk y = x_k (forward); transposed: solve L_kkᵀ y = x_k (backward). The block is staged in
 * shared memory; one thread per right-hand side column.
 */
export function trsvDiagKernel(nb: number, transposed: boolean): KernelSpec {
  const which = transposed ? "transposed" : "lower";
  const solve = transposed
    ? /* wgsl */ `
    for (var jj = 0u; jj < bk; jj++) {
      let j = bk - 1u - jj;
      var s = x[(P.k0 + j) * P.r + c];
      for (var p = j + 1u; p < bk; p++) { s -= ls[p * NB + j] * x[(P.k0 + p) * P.r + c]; }
      x[(P.k0 + j) * P.r + c] = s / ls[j * NB + j];
    }`
    : /* wgsl */ `
    for (var j = 0u; j < bk; j++) {
      var s = x[(P.k0 + j) * P.r + c];
      for (var p = 0u; p < j; p++) { s -= ls[j * NB + p] * x[(P.k0 + p) * P.r + c]; }
      x[(P.k0 + j) * P.r + c] = s / ls[j * NB + j];
    }`;
  return memo(() => ({
    key: `cholesky_trsv_diag_f32_nb${nb}_${which}`,
    uniforms: [["n", "u32"], ["r", "u32"], ["k0", "u32"], ["bk", "u32"], ["lOff", "u32"]],
    bindings: [
      { name: "l", access: "read", type: "f32" },
      { name: "x", access: "read_write", type: "f32" },
    ],
    workgroupSize: [TRSV_DIAG_RHS, 1, 1],
    body: /* wgsl */ `
const NB: u32 = ${nb}u;
var<workgroup> ls: array<f32, ${nb * nb}>;

@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let bk = P.bk;
  for (var e = t; e < bk * bk; e += WG_X) {
    let i = e / bk;
    let j = e % bk;
    ls[i * NB + j] = l[(P.k0 + i) * P.n + P.k0 + j - P.lOff];
  }
  workgroupBarrier();
  let c = wid.x * WG_X + t;
  if (c < P.r) {${solve}
  }
}`,
  }), `trsvdiag${nb}${which}`);
}

/**
 * Block update after a diagonal solve: x[o, c] -= Σ_p M(o, p) · x[k0 + p, c] for outputs o in
 * [out0, out0 + outs), p < bk, where
 *   lower:      M(o, p) = L[o, k0 + p]  for rows o below the block (forward substitution, right-looking);
 *   transposed: M(o, p) = L[k0 + p, o]  for rows o above the block (back substitution with Lᵀ, using
 *               rows of L so neighbouring threads read neighbouring elements instead of a column of L).
 * One thread per output, one right-hand side c per workgroup row (wid.y), so x[k0 + p, c] is the same
 * for the whole workgroup. Memory-bound (each element of L is read once per right-hand side): no shared
 * memory, no barriers.
 */
export function trsvUpdateKernel(transposed: boolean): KernelSpec {
  const which = transposed ? "transposed" : "lower";
  const m = transposed ? "l[(P.k0 + p) * P.n + o - P.lOff]" : "l[o * P.n + P.k0 + p - P.lOff]";
  return memo(() => ({
    key: `cholesky_trsv_update_f32_${which}`,
    uniforms: [
      ["n", "u32"],
      ["r", "u32"],
      ["k0", "u32"],
      ["bk", "u32"],
      ["out0", "u32"],
      ["outs", "u32"],
      ["lOff", "u32"],
    ],
    bindings: [
      { name: "l", access: "read", type: "f32" },
      { name: "x", access: "read_write", type: "f32" },
    ],
    workgroupSize: [TRSV_ROWS, 1, 1],
    body: /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let o = P.out0 + gid.x;
  if (o >= P.out0 + P.outs) { return; }
  let c = wid.y;
  var acc = 0.0;
  for (var p = 0u; p < P.bk; p++) { acc += ${m} * x[(P.k0 + p) * P.r + c]; }
  x[o * P.r + c] -= acc;
}`,
  }), `trsvupd${which}`);
}
