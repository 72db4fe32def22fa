// Shared benchmark helpers: GPU timing without a readback per iteration, random GPT-2 checkpoints, the
// bandwidth table of the memory-bound families, and running one bench module on its own.
import type { Engine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes, type Gpt2Model } from "../engine/gpt2/model.ts";
import type { Tensor } from "../engine/tensor.ts";

/** Mean milliseconds per call: warm up (compiles pipelines), then N calls and one sync. */
export async function timeGpu(e: Engine, iters: number, call: () => unknown): Promise<number> {
  for (let i = 0; i < 2; i++) e.scope(() => void call());
  await e.sync();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) e.scope(() => void call());
  await e.sync();
  return (performance.now() - t0) / iters;
}

/**
 * Mean ms per call over `iters` recorded calls with one sync at the end, after a warm-up call (pipeline
 * compiles); the best of `rounds` such runs, since a shared CPU (lavapipe) makes single runs noisy.
 */
export async function bestTimeGpu(
  engine: Engine,
  iters: number,
  fn: () => unknown,
  rounds = 3,
): Promise<number> {
  const call = () => engine.scope(() => void fn()); // results are temporaries: disposed (to the pool) at once
  call();
  await engine.sync();
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) call();
    await engine.sync();
    best = Math.min(best, (performance.now() - t0) / iters);
  }
  return best;
}

/** A CPU implementation of WebGPU (lavapipe, llvmpipe, SwiftShader): benches pick smaller sizes there. */
export function isSoftwareAdapter(engine: Engine): boolean {
  return engine.gpu.info.isFallbackAdapter ||
    /llvmpipe|lavapipe|swiftshader/i.test(engine.gpu.info.description);
}

/** A deterministic input of the given shape: values spread over [-3, 3] (the sine of a multiple of the index). */
export function sineTensor(e: Engine, shape: number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.sin(i * 12.9898) * 3;
  return e.upload(x, shape);
}

/** A row of a memory-bound family: ms per call and GB/s of the bytes it moves. */
export function bandwidthRow(
  family: string,
  op: string,
  shape: readonly number[],
  ms: number,
  bytes: number,
  iters: number,
): Record<string, unknown> {
  return {
    family,
    op,
    shape: `[${shape.join(", ")}]`,
    ms: +ms.toFixed(3),
    gbps: +(bytes / (ms * 1e6)).toFixed(2),
    iters,
  };
}

/** Prints bandwidth rows under a title line; `opWidth` fits the family's op names. */
export function printBandwidthTable(title: string, opWidth: number, rows: Record<string, unknown>[]): void {
  const line = (op: unknown, shape: unknown, ms: unknown, gbps: unknown) =>
    `${String(op).padEnd(opWidth)} ${String(shape).padEnd(18)} ${String(ms).padStart(8)} ${
      String(gbps).padStart(9)
    }`;
  console.log(title);
  console.log(`${"op".padEnd(opWidth)} shape              ms/call      GB/s`);
  for (const r of rows) console.log(line(r.op, r.shape, r.ms, r.gbps));
}

export type BenchRun = (
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
) => Promise<Record<string, unknown>[]>;

/** A bench module run by itself: `--quick` for the small sizes, `--json` prints the rows (indented so). */
export async function runAlone(run: BenchRun, engine: Engine, jsonIndent?: number): Promise<void> {
  const json = Deno.args.includes("--json");
  const rows = await run(engine, { json, quick: Deno.args.includes("--quick") });
  if (json) console.log(JSON.stringify(rows, null, jsonIndent));
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
