// The Euclidean norm of all elements and its gradient. x must fit one storage binding.
import { normBackwardKernel, normBackwardWorkgroups, sqrtScalarKernel } from "../../kernels/norm.ts";
import type { Tensor } from "../tensor.ts";
import { launchMul } from "./elementwise.ts";
import { sum } from "./reduce.ts";

/** ‖x‖ = sqrt(Σ x²), [1]. */
export function launchNorm(x: Tensor): Tensor {
  if (x.dtype !== "f32") throw new TypeError(`norm: expected f32, got ${x}`);
  const e = x.engine;
  const out = e.empty([1]);
  e.scope(() => {
    const s = sum(launchMul(x, x), "all");
    e.dispatch(sqrtScalarKernel, {}, [s, out], [1, 1, 1]);
  });
  return out;
}

/** g · x/‖x‖ (0 where ‖x‖ = 0) from x, its norm `nrm` [1] and the upstream gradient g [1]. */
export function normBackward(x: Tensor, nrm: Tensor, g: Tensor): Tensor {
  const e = x.engine;
  const dx = e.empty(x.shape);
  e.dispatch(
    normBackwardKernel,
    { n: x.size },
    [x, nrm, g, dx],
    normBackwardWorkgroups(x.size, e.limits.maxWorkgroupsPerDim),
  );
  return dx;
}
