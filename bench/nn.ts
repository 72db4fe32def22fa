// Benchmark of the nn family at GPT-2 small shapes: layerNorm [T, 768], gelu and its backward on the MLP
// activation [T, 3072], softmax / logSoftmax over vocabulary rows [B, 50257] and attention rows.
// GB/s counts each op's compulsory traffic (every input read once, every output written once).
import { type Engine, getEngine } from "../engine/engine.ts";
import { geluBackward, launchGelu, launchLayerNorm, logSoftmax, softmax } from "../engine/launch/nn.ts";
import type { Tensor } from "../engine/tensor.ts";
import { bandwidthRow, printBandwidthTable, runAlone, sineTensor, timeGpu } from "./util.ts";

interface Case {
  op: string;
  shape: number[];
  /** Bytes an ideal kernel moves per call. */
  bytes: number;
  make: (e: Engine) => Tensor[];
  call: (ins: Tensor[]) => unknown;
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const T = opts.quick ? 128 : 1024, C = 768, V = 50257, B = opts.quick ? 2 : 8;
  const iters = opts.quick ? 3 : 10;
  const cases: Case[] = [
    {
      op: "layerNorm",
      shape: [T, C],
      bytes: 4 * (2 * T * C + 2 * C + 2 * T),
      make: (e) => [sineTensor(e, [T, C]), sineTensor(e, [C]), sineTensor(e, [C])],
      call: ([x, g, b]) => launchLayerNorm(x, g, b),
    },
    {
      op: "gelu",
      shape: [T, 4 * C],
      bytes: 4 * 2 * T * 4 * C,
      make: (e) => [sineTensor(e, [T, 4 * C])],
      call: ([x]) => launchGelu(x),
    },
    {
      op: "geluBackward",
      shape: [T, 4 * C],
      bytes: 4 * 3 * T * 4 * C,
      make: (e) => [sineTensor(e, [T, 4 * C]), sineTensor(e, [T, 4 * C])],
      call: ([x, dy]) => geluBackward(x, dy),
    },
    {
      op: "softmax",
      shape: [B, V],
      bytes: 4 * 2 * B * V,
      make: (e) => [sineTensor(e, [B, V])],
      call: ([x]) => softmax(x),
    },
    {
      op: "logSoftmax",
      shape: [B, V],
      bytes: 4 * 2 * B * V,
      make: (e) => [sineTensor(e, [B, V])],
      call: ([x]) => logSoftmax(x),
    },
    {
      // attention probabilities of one layer: 12 heads x T query rows of T keys
      op: "softmax",
      shape: [12 * T, T],
      bytes: 4 * 2 * 12 * T * T,
      make: (e) => [sineTensor(e, [12 * T, T])],
      call: ([x]) => softmax(x),
    },
  ];
  const rows: Record<string, unknown>[] = [];
  for (const c of cases) {
    const ins = c.make(engine);
    const ms = await timeGpu(engine, iters, () => c.call(ins));
    ins.forEach((t) => t.dispose());
    rows.push(bandwidthRow("nn", c.op, c.shape, ms, c.bytes, iters));
  }
  if (!opts.json) printBandwidthTable(`nn on ${engine.gpu.info.description}`, 13, rows);
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine());
