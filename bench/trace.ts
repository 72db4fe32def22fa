// Causal tracing speed: one prompt of T = 10 tokens with 10 noise samples on a checkpoint with GPT-2 small's
// shapes (random weights, built in memory), per kind: wall time, cells, forward rows per second and peak
// GPU memory. Beside it, the batched layer-skipping evaluation against the reference-shaped one (one full
// forward of 1 + samples rows per cell, one readback per cell) on a smaller model, measured in the same run.
// --quick: the GPT-2-small-shaped model keeps 4 of its 12 layers and traces the hidden kind only.
import { type Engine, getEngine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { BasePass, TRACE_KINDS, traceCells, type TraceKind, traceKind } from "../tracing/trace.ts";
import { GPT2_SMALL } from "../tests/lib/fixtures.ts";
import { randomGpt2Model, runAlone } from "./util.ts";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";

const T = 10, SAMPLES = 10;
const IDS = (vocab: number) => Array.from({ length: T }, (_, t) => (t * 7919 + 13) % vocab);
const SUBJECT: [number, number] = [1, 4];

interface KindTiming {
  seconds: number;
  rows: number;
  forwards: number;
  cells: number;
}

export async function timeKinds(
  model: Gpt2Model,
  kinds: readonly TraceKind[],
  strategy: "batched" | "naive",
): Promise<Map<TraceKind, KindTiming>> {
  const base = await BasePass.run(model, { ids: IDS(model.config.vocabSize), subjectRange: SUBJECT }, {
    samples: SAMPLES,
    noise: 0.1,
    seed: 1,
  });
  const out = new Map<TraceKind, KindTiming>();
  try {
    for (const kind of kinds) {
      const r = await traceKind(base, kind, { strategy });
      out.set(kind, {
        seconds: r.seconds,
        rows: r.rows,
        forwards: r.forwards,
        cells: T * model.config.nLayer,
      });
    }
  } finally {
    base.dispose();
  }
  return out;
}

/** The JSON row of one kind's timing. */
function kindRow(name: string, kind: TraceKind, layers: number, r: KindTiming) {
  return {
    name,
    kind,
    layers,
    T,
    samples: SAMPLES,
    cells: r.cells,
    rows: r.rows,
    forwards: r.forwards,
    seconds: r.seconds,
    rows_per_s: r.rows / r.seconds,
  };
}

/** One base pass and two cells (a block output, an MLP window) through the batched path. */
async function warmUp(model: Gpt2Model): Promise<void> {
  const base = await BasePass.run(model, { ids: IDS(model.config.vocabSize), subjectRange: SUBJECT }, {
    samples: 2,
    noise: 0.1,
    seed: 1,
  });
  try {
    await traceCells(base, [
      { restore: [{ site: "resid", layer: 0, token: 2 }] },
      { restore: [{ site: "mlp", layer: 0, token: 2 }, { site: "attn", layer: 1, token: 3 }] },
    ]);
  } finally {
    base.dispose();
  }
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const say = (s: string) => opts.json || console.log(s);

  // ---- GPT-2 small shapes
  const big: Gpt2Config = opts.quick ? { ...GPT2_SMALL, nLayer: 4 } : GPT2_SMALL;
  const bigKinds: TraceKind[] = opts.quick ? ["hidden"] : [...TRACE_KINDS];
  let model = randomGpt2Model(engine, big);
  await engine.sync();
  await warmUp(model); // compiles the pipelines outside the timings
  say(
    `GPT-2 small shapes${
      opts.quick ? ", 4 layers" : ""
    }: T ${T}, ${SAMPLES} samples, batched layer-skipping trace`,
  );
  say("kind      cells   rows   forwards   seconds   rows/s   peak GPU MiB");
  for (const [kind, r] of await timeKinds(model, bigKinds, "batched")) {
    const row = {
      ...kindRow(`trace_gpt2_small${opts.quick ? "_4layers" : ""}_${kind}`, kind, big.nLayer, r),
      peak_gpu_mib: engine.stats.peakBytes / 2 ** 20,
    };
    rows.push(row);
    say(
      `${kind.padEnd(7)} ${String(r.cells).padStart(6)} ${String(r.rows).padStart(6)} ${
        String(r.forwards).padStart(10)
      } ${r.seconds.toFixed(1).padStart(9)} ${row.rows_per_s.toFixed(0).padStart(8)} ${
        row.peak_gpu_mib.toFixed(0).padStart(14)
      }`,
    );
  }
  for (const t of model.weights.values()) t.dispose();
  engine.pool.trim();

  // ---- the bundled model (when present): the same prompt shape, every kind
  const bundled = new URL("../models/world-gpt2", import.meta.url).pathname;
  try {
    Deno.statSync(`${bundled}/model.safetensors`);
    const { model: bm } = await loadGpt2Folder(engine, bundled);
    await warmUp(bm);
    say(`bundled model (${bm.config.nLayer} layers, d ${bm.config.nEmbd}): T ${T}, ${SAMPLES} samples`);
    for (const [kind, r] of await timeKinds(bm, [...TRACE_KINDS], "batched")) {
      const row = kindRow(`trace_bundled_${kind}`, kind, bm.config.nLayer, r);
      rows.push(row);
      say(
        `${kind.padEnd(7)} ${String(r.rows).padStart(6)} rows ${r.seconds.toFixed(2).padStart(7)} s ${
          row.rows_per_s.toFixed(0).padStart(6)
        } rows/s`,
      );
    }
    for (const t of bm.weights.values()) t.dispose();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    say("bundled model not found: skipped");
  }

  // ---- batched vs naive on a smaller model
  const small: Gpt2Config = { ...GPT2_SMALL, nLayer: 6, nEmbd: 128, nHead: 4, nInner: 512, vocabSize: 4096 };
  model = randomGpt2Model(engine, small);
  await engine.sync();
  const kinds: TraceKind[] = opts.quick ? ["hidden"] : [...TRACE_KINDS];
  say(`\nbatched vs one forward per cell: 6 layers, d 128, vocab 4096, T ${T}, ${SAMPLES} samples`);
  say("kind      batched s   naive s   speedup   batched rows/s   naive rows/s");
  await warmUp(model);
  const fast = await timeKinds(model, kinds, "batched");
  const slow = await timeKinds(model, kinds, "naive");
  for (const kind of kinds) {
    const f = fast.get(kind)!, s = slow.get(kind)!;
    const row = {
      name: `trace_speedup_${kind}`,
      kind,
      layers: small.nLayer,
      batched_s: f.seconds,
      naive_s: s.seconds,
      speedup: s.seconds / f.seconds,
      batched_rows_per_s: f.rows / f.seconds,
      naive_rows_per_s: s.rows / s.seconds,
    };
    rows.push(row);
    say(
      `${kind.padEnd(7)} ${f.seconds.toFixed(2).padStart(11)} ${s.seconds.toFixed(2).padStart(9)} ${
        row.speedup.toFixed(1).padStart(8)
      }x ${row.batched_rows_per_s.toFixed(0).padStart(15)} ${row.naive_rows_per_s.toFixed(0).padStart(14)}`,
    );
  }
  for (const t of model.weights.values()) t.dispose();
  engine.pool.trim();
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine(), 2);
