// LayerNorm over the last dimension (Ba et al. 2016; GPT-2 uses eps = 1e-5):
//   y = (x - mean) * rstd * gamma + beta,   rstd = 1 / sqrt(var + eps),   var = mean((x - mean)^2)
// One workgroup per row. Two passes over the row (mean, then the centred sum of squares) instead of
// E[x^2] - E[x]^2, which cancels catastrophically in f32 when |mean| >> std. The per-row mean and rstd
// are written too: the backward pass needs exactly these values. Plain ES module: no Deno API.
import type { Access, KernelSpec, StorageBinding, UniformType } from "./descriptor.ts";
import { WGSL_WG_SUM } from "./reduce.ts";
import { wgslGroupMain, wgslGroupThreadMain, wgslThreadMain } from "./wgsl.ts";

const f32 = (name: string, access: Access): StorageBinding => ({ name, access, type: "f32" });

/** Uniforms and bindings of both forward kernels (workgroup per row and thread per row). */
const FORWARD_UNIFORMS: readonly (readonly [string, UniformType])[] = [
  ["rows", "u32"],
  ["C", "u32"],
  ["off", "u32"],
  ["statOff", "u32"],
  ["eps", "f32"],
];
const FORWARD_BINDINGS: readonly StorageBinding[] = [
  f32("x", "read"),
  f32("gamma", "read"),
  f32("beta", "read"),
  f32("y", "read_write"),
  f32("mean", "read_write"),
  f32("rstd", "read_write"),
];

/**
 * Bindings x and y are chunk ranges of [rows, C] tensors that start at the same element, so they share
 * `off`; mean and rstd are chunk ranges of [rows] tensors and share `statOff`.
 */
export function layerNormKernel(wg: number): KernelSpec {
  return {
    key: `layernorm_f32_rows_wg${wg}`,
    uniforms: FORWARD_UNIFORMS,
    bindings: FORWARD_BINDINGS,
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_WG_SUM}
${wgslGroupMain("row", "P.rows")}
  let base = P.off + row * P.C;
  let n = f32(P.C);
  var s = 0.0;
  for (var c = lid; c < P.C; c = c + WG_X) { s = s + x[base + c]; }
  let mu = wgSum(lid, s) / n;
  var q = 0.0;
  for (var c = lid; c < P.C; c = c + WG_X) {
    let d = x[base + c] - mu;
    q = q + d * d;
  }
  let r = 1.0 / sqrt(wgSum(lid, q) / n + P.eps);
  for (var c = lid; c < P.C; c = c + WG_X) {
    y[base + c] = (x[base + c] - mu) * r * gamma[c] + beta[c];
  }
  if (lid == 0u) {
    mean[P.statOff + row] = mu;
    rstd[P.statOff + row] = r;
  }
}`,
  };
}

/** Rows per workgroup of the thread-per-row kernels (forward and backward dx). */
export const LAYERNORM_ROWTHREAD_WG = 64;

/**
 * WGSL that sums expressions of the column `c` over c in [0, P.C) in one thread, blocked so the rounding
 * stays close to the workgroup kernels' (64 strided partials and a tree) rather than growing with C as a
 * plain running sum's does (|mean| = 300 std at C = 257 lost 3e-4 in y that way): runs of 16 columns,
 * 16 runs to a block of 256, blocks summed in order; about 16 + 16 + C / 256 roundings deep. `sums` are
 * [variable, expression] pairs; the variables are declared (`var`) by the snippet. `pre` is WGSL run
 * once per column before the expressions (lets of shared subexpressions).
 */
function blockedRowSums(sums: readonly (readonly [string, string])[], pre = ""): string {
  const each = (f: (v: string, e: string) => string) => sums.map(([v, e]) => f(v, e)).join(" ");
  return /* wgsl */ `
  ${each((v) => `var ${v} = 0.0;`)}
  for (var c2 = 0u; c2 < P.C; c2 = c2 + 256u) {
    let e2 = min(c2 + 256u, P.C);
    ${each((v) => `var ${v}_2 = 0.0;`)}
    for (var c1 = c2; c1 < e2; c1 = c1 + 16u) {
      let e1 = min(c1 + 16u, e2);
      ${each((v) => `var ${v}_1 = 0.0;`)}
      for (var c = c1; c < e1; c = c + 1u) {
        ${pre}
        ${each((v, e) => `${v}_1 = ${v}_1 + ${e};`)}
      }
      ${each((v) => `${v}_2 = ${v}_2 + ${v}_1;`)}
    }
    ${each((v) => `${v} = ${v} + ${v}_2;`)}
  }`;
}

/**
 * The same layerNorm with one thread per row and no workgroup barriers, for narrow rows (engine/launch/nn.ts
 * LAYERNORM_ROWTHREAD_MAX_C): each thread sums its row minus its first element (`blockedRowSums`), then
 * the centred squares, then writes y. Same bindings and uniforms as `layerNormKernel`; dispatch ceil(rows / LAYERNORM_ROWTHREAD_WG)
 * workgroups (flat over x and y).
 */
export const layerNormRowThreadKernel: KernelSpec = {
  key: "layernorm_f32_rowthread",
  uniforms: FORWARD_UNIFORMS,
  bindings: FORWARD_BINDINGS,
  workgroupSize: [LAYERNORM_ROWTHREAD_WG, 1, 1],
  body: /* wgsl */ `${wgslGroupThreadMain("row", "P.rows")}
  let base = P.off + row * P.C;
  let n = f32(P.C);
  // the sum is taken about the row's first element: its rounding then scales with the spread, not |mean|
  let x0 = x[base];
${blockedRowSums([["s", "x[base + c] - x0"]])}
  let mu = x0 + s / n;
${blockedRowSums([["q", "d * d"]], "let d = x[base + c] - mu;")}
  let r = 1.0 / sqrt(q / n + P.eps);
  for (var c = 0u; c < P.C; c = c + 1u) {
    y[base + c] = (x[base + c] - mu) * r * gamma[c] + beta[c];
  }
  mean[P.statOff + row] = mu;
  rstd[P.statOff + row] = r;
}`,
};

// ---------------------------------------------------------------- backward
//
// With xhat = (x - mean) * rstd and dxhat = dy * gamma, the gradient of y = xhat * gamma + beta is
//   dx     = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))
//   dgamma = sum_rows dy * xhat,   dbeta = sum_rows dy
// from the mean and rstd the forward pass saved. dgamma and dbeta are column sums over every row: no
// float atomics (their order, hence their rounding, would vary run to run), but two kernels. The first
// gives each workgroup a block of consecutive rows: it writes dx for them row by row, then each thread
// sums its own columns over the block into one partial row; the second sums the partial rows in block
// order. Results are bitwise reproducible.

/** The inputs every backward kernel reads first: the forward's x, the upstream dy and the saved stats. */
const BACKWARD_INPUTS: readonly StorageBinding[] = [
  f32("x", "read"),
  f32("dy", "read"),
  f32("mean", "read"),
  f32("rstd", "read"),
];

/** Uniforms of the kernels that work on blocks of `rowsPerBlock` consecutive rows. */
const BLOCK_UNIFORMS: readonly (readonly [string, UniformType])[] = [
  ["rows", "u32"], // rows in this chunk
  ["C", "u32"],
  ["rowsPerBlock", "u32"],
  ["blocks", "u32"], // blocks in this chunk
  ["off", "u32"],
  ["statOff", "u32"],
  ["pOff", "u32"],
];

/**
 * WGSL: block `block`'s partial [dgamma | dbeta] sums of column c, dy * xhat and dy over rows [r0, r1) in
 * row order, written to its row of `partial`.
 */
const WGSL_BLOCK_COLUMN_PARTIAL = /* wgsl */ `
fn blockColumnPartial(block: u32, c: u32, r0: u32, r1: u32) {
  var g = 0.0;
  var s = 0.0;
  for (var r = r0; r < r1; r = r + 1u) {
    let d = dy[P.off + r * P.C + c];
    g = g + d * (x[P.off + r * P.C + c] - mean[P.statOff + r]) * rstd[P.statOff + r];
    s = s + d;
  }
  let prow = P.pOff + block * 2u * P.C;
  partial[prow + c] = g;
  partial[prow + P.C + c] = s;
}`;

/**
 * dx for a block of `rowsPerBlock` rows per workgroup, plus the block's partial [dgamma | dbeta] row of
 * 2C values. x, dy and dx are chunk ranges of [rows, C] tensors starting at the same element (`off`);
 * mean and rstd share `statOff`; `partial` is a range of [blocks, 2C] at `pOff`.
 */
export function layerNormBackwardKernel(wg: number): KernelSpec {
  return {
    key: `layernorm_backward_f32_rowblocks_wg${wg}`,
    uniforms: BLOCK_UNIFORMS,
    bindings: [
      ...BACKWARD_INPUTS,
      f32("gamma", "read"),
      f32("dx", "read_write"),
      f32("partial", "read_write"),
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_WG_SUM}
${WGSL_BLOCK_COLUMN_PARTIAL}
${wgslGroupMain("block", "P.blocks")}
  let r0 = block * P.rowsPerBlock;
  let r1 = min(r0 + P.rowsPerBlock, P.rows);
  let n = f32(P.C);
  for (var r = r0; r < r1; r = r + 1u) {
    let base = P.off + r * P.C;
    let mu = mean[P.statOff + r];
    let rs = rstd[P.statOff + r];
    var s1 = 0.0;
    var s2 = 0.0;
    for (var c = lid; c < P.C; c = c + WG_X) {
      let dxh = dy[base + c] * gamma[c];
      s1 = s1 + dxh;
      s2 = s2 + dxh * (x[base + c] - mu) * rs;
    }
    let a = wgSum(lid, s1) / n;
    let b = wgSum(lid, s2) / n;
    for (var c = lid; c < P.C; c = c + WG_X) {
      let xh = (x[base + c] - mu) * rs;
      dx[base + c] = rs * (dy[base + c] * gamma[c] - a - xh * b);
    }
  }
  // Thread lid owns columns lid, lid + WG_X, ...: its partial sums need no synchronisation.
  for (var c = lid; c < P.C; c = c + WG_X) { blockColumnPartial(block, c, r0, r1); }
}`,
  };
}

/**
 * dx alone, one thread per row and no workgroup barriers (narrow rows): each thread accumulates
 * sum(dy * gamma) and sum(dy * gamma * xhat) over its row (`blockedRowSums`), then writes the row of dx.
 * x, dy and dx are chunk ranges of [rows, C] starting at the same element (`off`); mean and rstd share
 * `statOff`. Dispatch ceil(rows / LAYERNORM_ROWTHREAD_WG) workgroups (flat over x and y).
 */
export const layerNormBackwardRowThreadKernel: KernelSpec = {
  key: "layernorm_backward_f32_rowthread",
  uniforms: [["rows", "u32"], ["C", "u32"], ["off", "u32"], ["statOff", "u32"]],
  bindings: [...BACKWARD_INPUTS, f32("gamma", "read"), f32("dx", "read_write")],
  workgroupSize: [LAYERNORM_ROWTHREAD_WG, 1, 1],
  body: /* wgsl */ `${wgslGroupThreadMain("r", "P.rows")}
  let base = P.off + r * P.C;
  let mu = mean[P.statOff + r];
  let rs = rstd[P.statOff + r];
  let n = f32(P.C);
${
    blockedRowSums(
      [["s1", "dxh"], ["s2", "dxh * (x[base + c] - mu) * rs"]],
      "let dxh = dy[base + c] * gamma[c];",
    )
  }
  let a = s1 / n;
  let b = s2 / n;
  for (var c = 0u; c < P.C; c = c + 1u) {
    let xh = (x[base + c] - mu) * rs;
    dx[base + c] = rs * (dy[base + c] * gamma[c] - a - xh * b);
  }
}`,
};

/** Threads per workgroup of `layerNormBlockPartialKernel`. */
export const LAYERNORM_PARTIAL_WG = 64;

/**
 * The partial [dgamma | dbeta] rows of `layerNormBackwardKernel` without its dx part, and without
 * barriers: thread (block, c) sums dy * xhat and dy over the block's rows in row order, exactly as that
 * kernel's column loop does. Ranges as in `layerNormBackwardKernel`; dispatch
 * ceil(blocks * C / LAYERNORM_PARTIAL_WG) workgroups (flat over x and y). Neighbouring threads read
 * neighbouring columns.
 */
export const layerNormBlockPartialKernel: KernelSpec = {
  key: "layernorm_backward_f32_colpartial",
  uniforms: BLOCK_UNIFORMS,
  bindings: [...BACKWARD_INPUTS, f32("partial", "read_write")],
  workgroupSize: [LAYERNORM_PARTIAL_WG, 1, 1],
  body: /* wgsl */ `
${WGSL_BLOCK_COLUMN_PARTIAL}
${wgslGroupThreadMain("t")}
  let block = t / P.C;
  let c = t - block * P.C;
  if (block >= P.blocks) { return; }
  let r0 = block * P.rowsPerBlock;
  blockColumnPartial(block, c, r0, min(r0 + P.rowsPerBlock, P.rows));
}`,
};

export const LAYERNORM_COLSUM_WG = 64;

/**
 * dgamma[c] (+)= sum_b partial[b, c], dbeta[c] (+)= sum_b partial[b, C + c] over `blocks` partial rows
 * of a [blocks, 2C] range at `pOff`, in block order. One thread per column; `accumulate` = 1 adds to
 * the running sums of earlier chunks, 0 starts them.
 */
export const layerNormColSumKernel: KernelSpec = {
  key: "layernorm_backward_f32_colsum",
  uniforms: [["blocks", "u32"], ["C", "u32"], ["pOff", "u32"], ["accumulate", "u32"]],
  bindings: [
    { name: "partial", access: "read", type: "f32" },
    { name: "dgamma", access: "read_write", type: "f32" },
    { name: "dbeta", access: "read_write", type: "f32" },
  ],
  workgroupSize: [LAYERNORM_COLSUM_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("c", "P.C")}
  var g = 0.0;
  var s = 0.0;
  if (P.accumulate == 1u) {
    g = dgamma[c];
    s = dbeta[c];
  }
  for (var b = 0u; b < P.blocks; b = b + 1u) {
    let at = P.pOff + b * 2u * P.C;
    g = g + partial[at + c];
    s = s + partial[at + P.C + c];
  }
  dgamma[c] = g;
  dbeta[c] = s;
}`,
};
