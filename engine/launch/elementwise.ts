// Elementwise ops: add / sub / mul with row broadcasting, scale, axpy.
import {
  affineKernel,
  binaryKernel,
  type BinaryOp,
  elementwiseWorkgroups,
} from "../../kernels/elementwise.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
import { assertF32 } from "../chunks.ts";

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
