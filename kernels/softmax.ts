// Softmax and log-softmax over the last dimension, one workgroup per row with a strided loop, so a row
// of any length (GPT-2's 50257 logits) is one workgroup. Max-subtracted in f32, with the "online"
// running max/sum (Milakov & Gimelshein 2018): each thread keeps (m, s = sum exp(x - m)) and rescales
// s when m grows, the threads' pairs merge in a tree, then one more pass writes
//   softmax:     exp(x - m) / s
//   logSoftmax:  (x - m) - log(s)
// Two reads of the row instead of three. Plain ES module: no Deno API.
import type { KernelSpec } from "./descriptor.ts";
import { WGSL_LOWEST } from "./reduce.ts";
import { wgslGroupMain } from "./wgsl.ts";

export type SoftmaxKind = "softmax" | "logsoftmax";

const OUT: Record<SoftmaxKind, string> = {
  softmax: "exp(v - m) / s",
  logsoftmax: "(v - m) - log(s)",
};

/**
 * WGSL: `rowMaxSum(lid, base, n)`, the online (max, sum exp) of `src[base .. base + n]` merged across the
 * workgroup, returning (m, s): m = max of the row, s = sum exp(src - m). Declares the workgroup arrays
 * redM and redS; call from uniform control flow (barriers). Shared by softmax and the loss kernels.
 */
export function wgslRowMaxSum(src: string): string {
  return /* wgsl */ `
${WGSL_LOWEST}
var<workgroup> redM: array<f32, WG_X>;
var<workgroup> redS: array<f32, WG_X>;
fn rowMaxSum(lid: u32, base: u32, n: u32) -> vec2<f32> {
  // Start at the lowest finite value, not -inf: a thread with no column (or only -inf columns) then
  // holds s = 0 and merges as exp(finite) * 0 = 0 instead of exp(-inf - -inf) = NaN.
  var m = LOWEST_F32;
  var s = 0.0;
  for (var c = lid; c < n; c = c + WG_X) {
    let v = ${src}[base + c];
    if (v > m) {
      s = s * exp(m - v) + 1.0;
      m = v;
    } else {
      s = s + exp(v - m);
    }
  }
  redM[lid] = m;
  redS[lid] = s;
  workgroupBarrier();
  for (var k = WG_X / 2u; k > 0u; k = k >> 1u) {
    if (lid < k) {
      let m1 = redM[lid];
      let m2 = redM[lid + k];
      let mm = max(m1, m2);
      redS[lid] = redS[lid] * exp(m1 - mm) + redS[lid + k] * exp(m2 - mm);
      redM[lid] = mm;
    }
    workgroupBarrier();
  }
  let out = vec2<f32>(redM[0], redS[0]);
  workgroupBarrier();
  return out;
}`;
}

/** x and y are chunk ranges of [rows, cols] tensors starting at the same element, sharing `off`. */
export function softmaxKernel(kind: SoftmaxKind, wg: number): KernelSpec {
  return {
    key: `${kind}_f32_rows_online_wg${wg}`,
    uniforms: [["rows", "u32"], ["cols", "u32"], ["off", "u32"]],
    bindings: [
      { name: "x", access: "read", type: "f32" },
      { name: "y", access: "read_write", type: "f32" },
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${wgslRowMaxSum("x")}
${wgslGroupMain("row", "P.rows")}
  let base = P.off + row * P.cols;
  let ms = rowMaxSum(lid, base, P.cols);
  let m = ms.x;
  let s = ms.y;
  for (var c = lid; c < P.cols; c = c + WG_X) {
    let v = x[base + c];
    y[base + c] = ${OUT[kind]};
  }
}`,
  };
}
