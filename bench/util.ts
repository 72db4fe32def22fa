// Shared benchmark helpers: GPU timing without a readback per iteration, and random GPT-2 checkpoints.
import type { Engine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes, type Gpt2Model } from "../engine/gpt2/model.ts";

/** Mean milliseconds per call: warm up (compiles pipelines), then N calls and one sync. */
export async function timeGpu(e: Engine, iters: number, call: () => unknown): Promise<number> {
  for (let i = 0; i < 2; i++) e.scope(() => void call());
  await e.sync();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) e.scope(() => void call());
  await e.sync();
  return (performance.now() - t0) / iters;
}

/** Random weights (uniform, std 0.02; layer-norm gains 1), deterministic, generated per tensor on demand. */
export function randomGpt2Model(engine: Engine, c: Gpt2Config, seed = 1): Gpt2Model {
  const shapes = expectedWeightShapes(c);
  let s0 = seed;
  return buildGpt2(engine, c, {
    tensors: new Map([...shapes].map(([n, shape]) => [n, { shape, dtype: "F32" }])),
    read: (name) => {
      const n = shapes.get(name)!.reduce((a, b) => a * b, 1);
      const out = new Float32Array(n);
      if (/ln_[12f]\.weight$/.test(name)) return out.fill(1);
      let s = (s0++ * 2654435761) >>> 0;
      for (let i = 0; i < n; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        out[i] = (s / 4294967296 - 0.5) * 0.02 * Math.sqrt(12);
      }
      return out;
    },
    describe: () => "random",
  });
}
