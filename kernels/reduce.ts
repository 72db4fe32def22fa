// Reduction kernels: sum / max over contiguous segments, argmax over rows, and the WGSL helpers the
// other row-wise families (layernorm, softmax) share: a NaN test that fast-math cannot fold away and a
// shared-memory tree sum. One workgroup reduces one segment with a strided loop (thread t reads t,
// t+WG, ...: neighbouring threads read neighbouring words), then a log2(WG)-step tree in workgroup
// memory. Plain ES module: no Deno API.
import type { KernelSpec } from "./descriptor.ts";
import { wgslGroupMain } from "./wgsl.ts";

/**
 * Workgroup width of a one-workgroup-per-row kernel: 64 threads up to 4096 columns (GPT-2's 768 and
 * attention rows; many rows keep the device busy, and each tree level costs a barrier: on lavapipe 64
 * threads made layerNorm [1024, 768] 2x and a 16M-element sum 2x faster than 256), 256 for longer rows
 * such as the 50257 logits, of which there are few. A power of two, which the tree reductions require.
 */
export function rowWorkgroupSize(cols: number): 64 | 256 {
  return cols <= 4096 ? 64 : 256;
}

/**
 * Elements one workgroup of the segmented reduction covers. Longer rows (and "all") are split into
 * segments of this length whose partials are reduced again, so no workgroup loops over more than
 * SEGMENT / 64 = 64 elements per thread, whatever the input size.
 */
export const SEGMENT = 4096;

/**
 * `isNan` on the bits: WGSL lets implementations assume no NaN at run time, so `v != v` may be folded
 * to false; an integer test on the exponent and mantissa cannot be.
 */
export const WGSL_IS_NAN = /* wgsl */ `
fn isNan(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}`;

/** Lowest finite f32: the identity of a running max that must not create inf - inf = NaN. */
export const WGSL_LOWEST = /* wgsl */ `const LOWEST_F32: f32 = -3.40282346638528859812e+38;`;

/**
 * `wgSum(lid, v)`: sum of `v` over the workgroup, returned to every thread. Must be called from uniform
 * control flow (it has barriers); the trailing barrier lets the caller reuse it immediately.
 */
export const WGSL_WG_SUM = /* wgsl */ `
var<workgroup> sumScratch: array<f32, WG_X>;
fn wgSum(lid: u32, v: f32) -> f32 {
  sumScratch[lid] = v;
  workgroupBarrier();
  for (var s = WG_X / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { sumScratch[lid] = sumScratch[lid] + sumScratch[lid + s]; }
    workgroupBarrier();
  }
  let total = sumScratch[0];
  workgroupBarrier();
  return total;
}`;

export type ReduceOp = "sum" | "max";

/** Start value of one thread's accumulator, and how two partials combine. */
const REDUCE: Record<ReduceOp, { init: string; combine: (a: string, b: string) => string }> = {
  sum: { init: "0.0", combine: (a, b) => `${a} + ${b}` },
  // Max is idempotent, so the segment's first element is a valid identity even for threads that see
  // no element; unlike -inf it keeps a segment of all -inf at -inf. NaN propagates (either operand).
  max: { init: "x[P.xOff + start]", combine: (a, b) => `maxNan(${a}, ${b})` },
};

/**
 * Segmented reduction. The input is a [rows, cols] matrix viewed as rows split into segments of
 * `segLen`; global segment g = r * segs + j covers elements [r*cols + j*segLen, min(.. + segLen,
 * (r+1)*cols)). One workgroup per segment writes `scale * op(segment)` to y[yOff + g - firstSeg].
 * `base` is the absolute element index bound at x[xOff] (the start of this chunk's binding).
 */
export function segmentReduceKernel(op: ReduceOp, wg: number): KernelSpec {
  const r = REDUCE[op];
  return {
    key: `reduce_f32_${op}_segments_wg${wg}`,
    uniforms: [
      ["count", "u32"], // segments in this dispatch
      ["firstSeg", "u32"],
      ["segs", "u32"], // segments per row
      ["segLen", "u32"],
      ["cols", "u32"],
      ["base", "u32"],
      ["xOff", "u32"],
      ["yOff", "u32"],
      ["scale", "f32"],
    ],
    bindings: [
      { name: "x", access: "read", type: "f32" },
      { name: "y", access: "read_write", type: "f32" },
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_IS_NAN}
fn maxNan(a: f32, b: f32) -> f32 {
  return select(select(max(a, b), b, isNan(b)), a, isNan(a));
}
var<workgroup> scratch: array<f32, WG_X>;
${wgslGroupMain("local", "P.count")}
  let g = P.firstSeg + local;
  let row = g / P.segs;
  let rowStart = row * P.cols;
  let segStart = rowStart + (g % P.segs) * P.segLen;
  // relative to the binding
  let start = segStart - P.base;
  let end = min(segStart + P.segLen, rowStart + P.cols) - P.base;
  var acc: f32 = ${r.init};
  for (var i = start + lid; i < end; i = i + WG_X) {
    acc = ${r.combine("acc", "x[P.xOff + i]")};
  }
  scratch[lid] = acc;
  workgroupBarrier();
  for (var s = WG_X / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { scratch[lid] = ${r.combine("scratch[lid]", "scratch[lid + s]")}; }
    workgroupBarrier();
  }
  if (lid == 0u) { y[P.yOff + local] = scratch[0] * P.scale; }
}`,
  };
}

/**
 * argmax over each row of a [rows, cols] matrix, as u32 column indices. Ties go to the lowest index;
 * NaN counts as larger than every number (as in NumPy/PyTorch), so a row with a NaN returns the index
 * of its first NaN.
 */
export function argmaxKernel(wg: number): KernelSpec {
  return {
    key: `reduce_f32_argmax_rows_wg${wg}`,
    uniforms: [["rows", "u32"], ["cols", "u32"], ["xOff", "u32"], ["yOff", "u32"]],
    bindings: [
      { name: "x", access: "read", type: "f32" },
      { name: "y", access: "read_write", type: "u32" },
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_IS_NAN}
// Does (v2, i2) beat (v1, i1)? Larger wins, NaN beats any number, equal keys go to the lower index.
fn beats(v2: f32, i2: u32, v1: f32, i1: u32) -> bool {
  let n1 = isNan(v1);
  let n2 = isNan(v2);
  if (n1 || n2) { return n2 && (!n1 || i2 < i1); }
  return v2 > v1 || (v2 == v1 && i2 < i1);
}
var<workgroup> bestV: array<f32, WG_X>;
var<workgroup> bestI: array<u32, WG_X>;
${wgslGroupMain("row", "P.rows")}
  let base = P.xOff + row * P.cols;
  // Column 0 is a real candidate, so it is a safe start for threads that see no column.
  var v = x[base];
  var i = 0u;
  for (var c = lid; c < P.cols; c = c + WG_X) {
    let xc = x[base + c];
    if (beats(xc, c, v, i)) { v = xc; i = c; }
  }
  bestV[lid] = v;
  bestI[lid] = i;
  workgroupBarrier();
  for (var s = WG_X / 2u; s > 0u; s = s >> 1u) {
    if (lid < s && beats(bestV[lid + s], bestI[lid + s], bestV[lid], bestI[lid])) {
      bestV[lid] = bestV[lid + s];
      bestI[lid] = bestI[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u) { y[P.yOff + row] = bestI[0]; }
}`,
  };
}
