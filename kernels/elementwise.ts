// Elementwise kernels: out = f(a, b) over flat ranges. One thread per element, flat 1-D dispatch folded
// into x/y so any size fits the 65535-workgroups-per-dimension limit.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const ELEMENTWISE_WG = 256;

/** Binary ops: out[i] = op(alpha * a[i], beta * b[i]). `axpy` is add with alpha. */
export type BinaryOp = "add" | "sub" | "mul";

const BIN_EXPR: Record<BinaryOp, string> = {
  add: "P.alpha * x + P.beta * y",
  sub: "P.alpha * x - P.beta * y",
  mul: "P.alpha * x * y",
};

/** out = op(a, b) where b is broadcast over a's leading dims (b.size divides a.size: bias rows). */
export function binaryKernel(op: BinaryOp): KernelSpec {
  return {
    key: `elementwise_f32_${op}_bcast`,
    uniforms: [["n", "u32"], ["nb", "u32"], ["alpha", "f32"], ["beta", "f32"]],
    bindings: [
      { name: "a", access: "read", type: "f32" },
      { name: "b", access: "read", type: "f32" },
      { name: "out", access: "read_write", type: "f32" },
    ],
    workgroupSize: [ELEMENTWISE_WG, 1, 1],
    body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let x = a[i];
  let y = b[i % P.nb];
  out[i] = ${BIN_EXPR[op]};
}`,
  };
}

/** Unary map out[i] = alpha * a[i] + beta (scale and shift). */
export const affineKernel: KernelSpec = {
  key: "elementwise_f32_affine",
  uniforms: [["n", "u32"], ["alpha", "f32"], ["beta", "f32"]],
  bindings: [
    { name: "a", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [ELEMENTWISE_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  out[i] = P.alpha * a[i] + P.beta;
}`,
};

export function elementwiseWorkgroups(n: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / ELEMENTWISE_WG));
}
