// The Euclidean norm's two kernels that no other family provides: the scalar square root that finishes
// ‖x‖ = sqrt(Σ x²) (the sum of squares runs on the reduce kernels) and the gradient x/‖x‖, taken as 0 at
// x = 0 as torch.norm does (ROME's weight decay ‖δ‖/‖v₀‖² starts at δ = 0).
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const NORM_BACKWARD_WG = 256;

/** out[0] = sqrt(s[0]): one thread (there is no elementwise square root). */
export const sqrtScalarKernel: KernelSpec = {
  key: "norm_sqrt_scalar_f32",
  uniforms: [],
  bindings: [
    { name: "s", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [1, 1, 1],
  body: /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main() {
  out[0] = sqrt(s[0]);
}`,
};

/** dx[i] = g · x[i] / ‖x‖, and 0 when ‖x‖ = 0 (PyTorch's subgradient of the norm at the origin). */
export const normBackwardKernel: KernelSpec = {
  key: "norm_backward_f32",
  uniforms: [["n", "u32"]],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "nrm", access: "read", type: "f32" },
    { name: "g", access: "read", type: "f32" },
    { name: "dx", access: "read_write", type: "f32" },
  ],
  workgroupSize: [NORM_BACKWARD_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let r = nrm[0];
  dx[i] = select(0.0, g[0] * x[i] / r, r > 0.0);
}`,
};

export function normBackwardWorkgroups(n: number, maxPerDim?: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / NORM_BACKWARD_WG), maxPerDim);
}
