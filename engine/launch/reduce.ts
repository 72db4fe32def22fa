// Reductions over the last dimension (each row of [..., C] to one value, result [rows]) or over
// everything ("all", result [1]): sum, mean, max, and argmax over the last dimension.
//
// Rows longer than SEGMENT, and "all", reduce in stages: each workgroup reduces one SEGMENT-long piece
// to a partial, and the partials are reduced again until one value per row is left, so no workgroup
// loops over millions of elements and every stage keeps the GPU busy.
//
// NaN policy: max propagates NaN (any NaN in a row gives NaN); argmax treats NaN as the largest value
// (the first NaN's index, as NumPy and PyTorch do). argmax ties go to the lowest index.
//
// Tensors larger than one storage binding are processed in chunks of whole rows (or segments) bound
// with `Tensor.range` (engine/chunks.ts).
import { flatWorkgroups } from "../../kernels/descriptor.ts";
import {
  argmaxKernel,
  type ReduceOp,
  rowWorkgroupSize,
  SEGMENT,
  segmentReduceKernel,
} from "../../kernels/reduce.ts";
import type { Tensor } from "../tensor.ts";
import { assertF32, rowChunks, rowsCols } from "../chunks.ts";

export type ReduceAxis = -1 | "all";

/** op over each row of x seen as [rows, cols], times `scale`, as a new [rows] tensor. */
function reduceRows(op: ReduceOp, x: Tensor, rows: number, cols: number, scale: number): Tensor {
  const engine = x.engine;
  let cur = x;
  let curCols = cols;
  for (;;) {
    const segs = Math.ceil(curCols / SEGMENT);
    const segLen = segs === 1 ? curCols : SEGMENT;
    const kernel = segmentReduceKernel(op, rowWorkgroupSize(segLen));
    const out = engine.empty([rows * segs]);
    const segStart = (g: number) => Math.floor(g / segs) * curCols + (g % segs) * segLen;
    const segEnd = (g: number) => Math.min(segStart(g) + segLen, (Math.floor(g / segs) + 1) * curCols);
    for (const [g0, g1] of rowChunks(engine, rows * segs, [segLen * 4], op)) {
      const base = segStart(g0);
      const xr = cur.range(base, segEnd(g1 - 1));
      const yr = out.range(g0, g1);
      engine.dispatch(
        kernel,
        {
          count: g1 - g0,
          firstSeg: g0,
          segs,
          segLen,
          cols: curCols,
          base,
          xOff: xr.elemOffset,
          yOff: yr.elemOffset,
          scale: segs === 1 ? scale : 1,
        },
        [xr, yr],
        flatWorkgroups(g1 - g0, engine.limits.maxWorkgroupsPerDim),
      );
    }
    // partials of an earlier stage are ours; recording order keeps the reuse of their buffer safe
    if (cur !== x) cur.dispose();
    if (segs === 1) return out;
    cur = out;
    curCols = segs;
  }
}

function reduce(op: ReduceOp, name: string, x: Tensor, axis: ReduceAxis, mean: boolean): Tensor {
  assertF32(name, x);
  if (axis === "all") {
    if (x.size === 0) throw new RangeError(`${name}: cannot reduce an empty tensor ${x}`);
    return reduceRows(op, x, 1, x.size, mean ? 1 / x.size : 1);
  }
  if (axis !== -1) throw new RangeError(`${name}: axis must be -1 or "all", got ${String(axis)}`);
  const { rows, cols } = rowsCols(name, x);
  return reduceRows(op, x, rows, cols, mean ? 1 / cols : 1);
}

/** Sum over the last dimension ([rows]) or over everything ("all": [1]). */
export function sum(x: Tensor, axis: ReduceAxis = -1): Tensor {
  return reduce("sum", "sum", x, axis, false);
}

/** Mean over the last dimension ([rows]) or over everything ("all": [1]). */
export function mean(x: Tensor, axis: ReduceAxis = -1): Tensor {
  return reduce("sum", "mean", x, axis, true);
}

/** Max over the last dimension ([rows]) or over everything ("all": [1]); NaN propagates. */
export function max(x: Tensor, axis: ReduceAxis = -1): Tensor {
  return reduce("max", "max", x, axis, false);
}

/**
 * Index of the largest element of each row over the last dimension, as u32 [rows]. Ties go to the
 * lowest index; NaN counts as larger than any number (a row with NaN gives its first NaN's index).
 */
export function argmax(x: Tensor): Tensor {
  assertF32("argmax", x);
  const { rows, cols } = rowsCols("argmax", x);
  const engine = x.engine;
  const out = engine.empty([rows], "u32");
  const kernel = argmaxKernel(rowWorkgroupSize(cols));
  for (const [r0, r1] of rowChunks(engine, rows, [cols * 4], "argmax")) {
    const xr = x.range(r0 * cols, r1 * cols);
    const yr = out.range(r0, r1);
    engine.dispatch(
      kernel,
      { rows: r1 - r0, cols, xOff: xr.elemOffset, yOff: yr.elemOffset },
      [xr, yr],
      flatWorkgroups(r1 - r0, engine.limits.maxWorkgroupsPerDim),
    );
  }
  return out;
}
