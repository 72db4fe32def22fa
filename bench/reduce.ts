// Benchmark of the reduction family: row reductions over GPT-2 shapes ([T, 768] activations, [B, 50257]
// logits for sum and argmax) and whole-tensor ("all") sums of a few million elements, which go
// through the staged segment reduction. GB/s counts the input read once.
import { type Engine, getEngine } from "../engine/engine.ts";
import { argmax, max, sum } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bandwidthRow, printBandwidthTable, runAlone, sineTensor, timeGpu } from "./util.ts";

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const T = opts.quick ? 128 : 1024, B = opts.quick ? 2 : 8, N = opts.quick ? 1 << 20 : 1 << 24;
  const iters = opts.quick ? 3 : 10;
  const cases: { op: string; shape: number[]; call: (x: Tensor) => unknown }[] = [
    { op: "sum -1", shape: [T, 768], call: (x) => sum(x) },
    { op: "max -1", shape: [T, 768], call: (x) => max(x) },
    { op: "sum -1", shape: [B, 50257], call: (x) => sum(x) },
    { op: "argmax", shape: [B, 50257], call: (x) => argmax(x) },
    { op: "sum all", shape: [N], call: (x) => sum(x, "all") },
    { op: "max all", shape: [N], call: (x) => max(x, "all") },
  ];
  const rows: Record<string, unknown>[] = [];
  for (const c of cases) {
    const x = sineTensor(engine, c.shape);
    const ms = await timeGpu(engine, iters, () => c.call(x));
    x.dispose();
    rows.push(bandwidthRow("reduce", c.op, c.shape, ms, x.size * 4, iters));
  }
  if (!opts.json) printBandwidthTable(`reduce on ${engine.gpu.info.description}`, 9, rows);
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine());
