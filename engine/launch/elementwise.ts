// Elementwise ops: add / sub / mul with row broadcasting, scale, axpy, and the clamp of w to a band around w0.
import {
  affineKernel,
  binaryKernel,
  type BinaryOp,
  elementwiseWorkgroups,
} from "../../kernels/elementwise.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
import { assertF32, rowChunks } from "../chunks.ts";
import { clampToBandKernel, clampWorkgroups } from "../../kernels/clamp.ts";

function binary(op: BinaryOp, a: Tensor, b: Tensor, alpha: number, beta: number): Tensor {
  assertF32(op, a, b);
  if (b.size === 0 || a.size % b.size !== 0) {
    throw new RangeError(`${op}: cannot broadcast ${shapeStr(b.shape)} over ${shapeStr(a.shape)}`);
  }
  const out = a.engine.empty(a.shape);
  a.engine.dispatch(
    binaryKernel(op),
    { n: a.size, nb: b.size, alpha, beta },
    [a, b, out],
    elementwiseWorkgroups(a.size),
  );
  return out;
}

/** a + b (b broadcast over a's leading dimensions when smaller). */
export const launchAdd = (a: Tensor, b: Tensor): Tensor => binary("add", a, b, 1, 1);
export const launchSub = (a: Tensor, b: Tensor): Tensor => binary("sub", a, b, 1, 1);
export const launchMul = (a: Tensor, b: Tensor): Tensor => binary("mul", a, b, 1, 1);
/** alpha * x + y. */
export const axpy = (alpha: number, x: Tensor, y: Tensor): Tensor => binary("add", x, y, alpha, 1);

/** alpha * a + beta. */
export function launchScale(a: Tensor, alpha: number, beta = 0): Tensor {
  assertF32("scale", a);
  const out = a.engine.empty(a.shape);
  a.engine.dispatch(affineKernel, { n: a.size, alpha, beta }, [a, out], elementwiseWorkgroups(a.size));
  return out;
}

/**
 * w ← clamp(w, w0 − ε, w0 + ε) in place on the GPU (kernels/clamp.ts), in binding-sized chunks. w and w0
 * are f32 tensors of the same shape.
 */
export function clampToBand(w: Tensor, w0: Tensor, eps: number): void {
  if (w.dtype !== "f32" || w0.dtype !== "f32" || w.size !== w0.size) {
    throw new RangeError(`clampToBand: ${w} and ${w0} must be f32 tensors of one size`);
  }
  if (!(eps >= 0) || !Number.isFinite(eps)) {
    throw new RangeError(`clampToBand: ε must be a finite number ≥ 0, got ${eps}`);
  }
  const e = w.engine;
  for (const [i0, i1] of rowChunks(e, w.size, [4], "clampToBand")) {
    const wr = w.range(i0, i1), cr = w0.range(i0, i1);
    e.dispatch(
      clampToBandKernel,
      { n: i1 - i0, off: wr.elemOffset, eps },
      [wr, cr],
      clampWorkgroups(i1 - i0, e.limits.maxWorkgroupsPerDim),
    );
  }
}
