// GELU in GPT-2's tanh form (`gelu_new`, Hendrycks & Gimpel 2016, eq. after (2)):
//   gelu(x) = 0.5 x (1 + tanh(a)),   a = sqrt(2/pi) (x + 0.044715 x^3)
// and its derivative for the backward pass:
//   gelu'(x) = 0.5 (1 + tanh(a)) + 0.5 x (1 - tanh(a)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// Two clamps keep large inputs finite: x^3 overflows f32 for |x| > 7e12, and tanh built on exp gives
// inf/inf = NaN for |a| beyond ~44 on some backends. 1 - tanh(15) = 1.9e-13 rounds away in f32 (tanh
// is +-1 there either way), so clamping a to +-15, and x to +-10 inside the cubic (|a| is already 43
// there), changes no f32 result.
// The derivative is that of the clamped form: where a is clamped, da/dx = 0. One thread per element.
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const GELU_WG = 256;

const WGSL_GELU_ARG = /* wgsl */ `
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_C: f32 = 0.044715;
const ARG_CLAMP: f32 = 15.0;
// The unclamped tanh argument, from x clamped to where the cubic cannot overflow.
fn geluArg(x: f32) -> f32 {
  let u = clamp(x, -10.0, 10.0);
  return SQRT_2_OVER_PI * (u + GELU_C * u * u * u);
}`;

/** y = gelu(x) over a flat range; x and y are ranges starting at the same element, sharing `off`. */
export const geluKernel: KernelSpec = {
  key: "gelu_f32_tanh_clamp15",
  uniforms: [["n", "u32"], ["off", "u32"]],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "y", access: "read_write", type: "f32" },
  ],
  workgroupSize: [GELU_WG, 1, 1],
  body: /* wgsl */ `
${WGSL_GELU_ARG}
${wgslThreadMain("i", "P.n")}
  let v = x[P.off + i];
  let t = tanh(clamp(geluArg(v), -ARG_CLAMP, ARG_CLAMP));
  y[P.off + i] = 0.5 * v * (1.0 + t);
}`,
};

/** dx = dy * gelu'(x) over a flat range; x, dy, dx share `off`. */
export const geluBackwardKernel: KernelSpec = {
  key: "gelu_f32_tanh_clamp15_backward",
  uniforms: [["n", "u32"], ["off", "u32"]],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "dy", access: "read", type: "f32" },
    { name: "dx", access: "read_write", type: "f32" },
  ],
  workgroupSize: [GELU_WG, 1, 1],
  body: /* wgsl */ `
${WGSL_GELU_ARG}
${wgslThreadMain("i", "P.n")}
  let v = x[P.off + i];
  let a = geluArg(v);
  let t = tanh(clamp(a, -ARG_CLAMP, ARG_CLAMP));
  let u = clamp(v, -10.0, 10.0);
  // da/dx, zero where the clamp holds a constant
  let da = select(0.0, SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * u * u), abs(a) < ARG_CLAMP);
  // (0.5 v) * ((1 - t^2) * da): when clamped the right factor is exactly 0, so no inf * 0
  let g = 0.5 * (1.0 + t) + (0.5 * v) * ((1.0 - t * t) * da);
  dx[P.off + i] = dy[P.off + i] * g;
}`,
};

export function geluWorkgroups(n: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / GELU_WG));
}
