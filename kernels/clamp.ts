// Projection onto an L∞ ball around a reference tensor, in place: w = clamp(w, w0 − ε, w0 + ε)
// elementwise. FT+L (Zhu et al. 2020, the ROME paper's constrained fine-tuning baseline) applies it to the
// fine-tuned matrix after every optimiser step, as the reference's
// `torch.clamp(v, min=w0 - eps, max=w0 + eps)`: the bounds are f32 sums, then min(max(w, lo), hi).
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const CLAMP_WG = 256;

/** One range of w and w0 (both start at element `off` of their bindings), n elements. */
export const clampToBandKernel: KernelSpec = {
  key: "clamp_to_band_f32",
  uniforms: [["n", "u32"], ["off", "u32"], ["eps", "f32"]],
  bindings: [
    { name: "w", access: "read_write", type: "f32" },
    { name: "w0", access: "read", type: "f32" },
  ],
  workgroupSize: [CLAMP_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let k = P.off + i;
  let c = w0[k];
  w[k] = min(max(w[k], c - P.eps), c + P.eps);
}`,
};

export function clampWorkgroups(n: number, maxPerDim?: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / CLAMP_WG), maxPerDim);
}
