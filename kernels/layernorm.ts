// LayerNorm over the last dimension (Ba et al. 2016; GPT-2 uses eps = 1e-5):
//   y = (x - mean) * rstd * gamma + beta,   rstd = 1 / sqrt(var + eps),   var = mean((x - mean)^2)
// One workgroup per row. Two passes over the row (mean, then the centred sum of squares) instead of
// E[x^2] - E[x]^2, which cancels catastrophically in f32 when |mean| >> std. The per-row mean and rstd
// are written too: the backward pass needs exactly these values. Plain ES module: no Deno API.
import type { KernelSpec } from "./descriptor.ts";
import { WGSL_WG_SUM } from "./reduce.ts";

/**
 * Bindings x and y are chunk ranges of [rows, C] tensors that start at the same element, so they share
 * `off`; mean and rstd are chunk ranges of [rows] tensors and share `statOff`.
 */
export function layerNormKernel(wg: number): KernelSpec {
  return {
    key: `layernorm_f32_rows_wg${wg}`,
    uniforms: [["rows", "u32"], ["C", "u32"], ["off", "u32"], ["statOff", "u32"], ["eps", "f32"]],
    bindings: [
      { name: "x", access: "read", type: "f32" },
      { name: "gamma", access: "read", type: "f32" },
      { name: "beta", access: "read", type: "f32" },
      { name: "y", access: "read_write", type: "f32" },
      { name: "mean", access: "read_write", type: "f32" },
      { name: "rstd", access: "read_write", type: "f32" },
    ],
    workgroupSize: [wg, 1, 1],
    body: /* wgsl */ `
${WGSL_WG_SUM}
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.rows) { return; }
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
