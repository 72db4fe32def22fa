// GPT-2 forward throughput on a checkpoint with GPT-2 small's shapes (124M parameters, random weights):
// batch 1 and 32 at T = 16 and 128, in tokens/s, with the engine's peak GPU memory. The comparison
// printed beside it is the model's matmul FLOPs per second over the same run.
import { type Engine, getEngine } from "../engine/engine.ts";
import { type Gpt2Config, parameterCount } from "../engine/gpt2/config.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes } from "../engine/gpt2/model.ts";
import { GPT2_SMALL } from "../tests/lib/fixtures.ts";
import { runAlone } from "./util.ts";

function randomWeights(c: Gpt2Config) {
  const shapes = expectedWeightShapes(c);
  let seed = 1;
  const read = (name: string) => {
    const n = shapes.get(name)!.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    let s = seed++ * 2654435761;
    const std = name.includes("ln_") && name.endsWith("weight") ? 0 : 0.02;
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      out[i] = (s / 4294967296 - 0.5) * std * 3.46;
    }
    if (std === 0) out.fill(1);
    return out;
  };
  return {
    tensors: new Map([...shapes].map(([n, shape]) => [n, { shape, dtype: "F32" }])),
    read,
    describe: () => "random",
  };
}

/** Matmul FLOPs of one forward over B rows of T tokens with logits at the last position only. */
function forwardFlops(c: Gpt2Config, B: number, T: number): number {
  const d = c.nEmbd, f = c.nInner;
  const perToken = c.nLayer * 2 * (d * 3 * d + d * d + 2 * d * f);
  const attn = c.nLayer * 2 * 2 * T * T / 2 * d; // QKᵀ and PV over the causal half
  return B * (T * perToken + attn) + B * 2 * d * c.vocabSize;
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const c = GPT2_SMALL;
  const t0 = performance.now();
  const model = buildGpt2(engine, c, randomWeights(c));
  await engine.sync();
  const loadS = (performance.now() - t0) / 1000;
  const shapes: [number, number][] = opts.quick ? [[1, 16]] : [[1, 16], [1, 128], [32, 16], [32, 128]];
  const rows: Record<string, unknown>[] = [];
  if (!opts.json) {
    console.log(
      `GPT-2 small shapes, ${(parameterCount(c) / 1e6).toFixed(0)}M parameters, uploaded in ${
        loadS.toFixed(1)
      } s`,
    );
    console.log("batch     T   tokens/s   ms/forward   GFLOPS   peak GPU MiB");
  }
  for (const [B, T] of shapes) {
    const ids = Array.from(
      { length: B },
      (_, b) => Array.from({ length: T }, (_, t) => (b * 131 + t * 7919) % c.vocabSize),
    );
    const once = async () => {
      const { logits } = model.forward(ids);
      await logits!.read();
      logits!.dispose();
    };
    await once(); // compiles pipelines
    const iters = B * T >= 2048 ? 1 : 3;
    const s0 = performance.now();
    for (let i = 0; i < iters; i++) await once();
    const ms = (performance.now() - s0) / iters;
    const row = {
      name: `gpt2_small_forward_b${B}_t${T}`,
      batch: B,
      T,
      tokens_per_s: (B * T) / (ms / 1000),
      ms_per_forward: ms,
      gflops: forwardFlops(c, B, T) / (ms / 1000) / 1e9,
      peak_gpu_mib: engine.stats.peakBytes / 2 ** 20,
    };
    rows.push(row);
    if (!opts.json) {
      console.log(
        `${String(B).padStart(5)} ${String(T).padStart(5)} ${row.tokens_per_s.toFixed(1).padStart(10)} ` +
          `${ms.toFixed(0).padStart(12)} ${row.gflops.toFixed(1).padStart(8)} ${
            row.peak_gpu_mib.toFixed(0).padStart(14)
          }`,
      );
    }
  }
  for (const t of model.weights.values()) t.dispose();
  engine.pool.trim();
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine(), 2);
