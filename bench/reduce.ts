// Benchmark of the reduction family: row reductions over GPT-2 shapes ([T, 768] activations, [B, 50257]
// logits for sum and argmax) and whole-tensor ("all") sums of a few million elements, which go
// through the staged segment reduction. GB/s counts the input read once.
import { type Engine, getEngine } from "../engine/engine.ts";
import { argmax, max, sum } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { timeGpu } from "./util.ts";

function randomTensor(e: Engine, shape: number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.sin(i * 12.9898) * 3;
  return e.upload(x, shape);
}

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
    const x = randomTensor(engine, c.shape);
    const ms = await timeGpu(engine, iters, () => c.call(x));
    x.dispose();
    rows.push({
      family: "reduce",
      op: c.op,
      shape: `[${c.shape.join(", ")}]`,
      ms: +ms.toFixed(3),
      gbps: +(x.size * 4 / (ms * 1e6)).toFixed(2),
      iters,
    });
  }
  if (!opts.json) {
    console.log(`reduce on ${engine.gpu.info.description}`);
    console.log("op        shape              ms/call      GB/s");
    for (const r of rows) {
      console.log(
        `${String(r.op).padEnd(9)} ${String(r.shape).padEnd(18)} ${String(r.ms).padStart(8)} ${
          String(r.gbps).padStart(9)
        }`,
      );
    }
  }
  return rows;
}

if (import.meta.main) {
  const json = Deno.args.includes("--json");
  const rows = await run(await getEngine(), { json, quick: Deno.args.includes("--quick") });
  if (json) console.log(JSON.stringify(rows));
}
