// Soak (issue #16, "steady under long use"): in ONE process on the bundled model, many causal traces, ROME
// edit/revert cycles and evaluations, through the library entry points the CLI calls (tracing/, rome/,
// eval/; no subprocess). It records the engine's pool counters, the process RSS and the V8 heap after a
// warm-up (the first 10% of each phase) and at each phase's end, and reports a phase "flat" when its end is
// within the tolerance printed with the table. Each phase cycles over as many items as its warm-up runs, so
// that after the warm-up every tensor shape has been seen: the pool then has no reason to grow, and growth
// is a leak, not a new prompt length. Then the first trace, edit and evaluation are repeated and must be
// bit-identical (exact JSON of the float64 numbers, content hashes of the f32 weights): PASS/FAIL per
// check, exit code 1 on any FAIL (a phase that is not flat is reported, not failed).
//
//   deno task soak [--traces N] [--edits N] [--evals N] [--quick] [--json]
//
// traces (default 300): one prompt of data/world/known_facts.json each (the first 30, cycling), every kind,
//   as `deno task trace --prompt P --subject S` computes them (σ_t over the known facts' subjects, the
//   noise, base pass, cells) and renders its files in memory (JSON, SVG, PNG, HTML; not written).
// edits (default 100): a CounterFact case of data/world/counterfact.json each (the first 10, cycling), as
//   `deno task edit --case ID --patch F` then `--revert F` do it: pre tests, the shipped statistics C
//   uploaded, the edit, post tests (20-token greedy generations), the model's content hash, the patch
//   encoded and decoded, the matrix XORed back; every revert must restore the loaded model's content hash.
// evals (default 20): eval/'s harness with ROME on 3 CounterFact records each (the first 6, cycling),
//   generation length 0, every case computed (in-memory stores), as `deno task eval --method rome
//   --generation-length 0` runs it.
// --quick: 20 traces, 6 edits, 2 evaluations (a smoke run, a few minutes on lavapipe).
// Progress goes to stderr; --json prints one JSON object on stdout instead of the tables. With
// `--v8-flags=--expose-gc` a full GC runs before each checkpoint, so the heap figures are live data only.
import { parseArgs } from "node:util";
import { getEngine } from "../engine/engine.ts";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";
import { findSubjectRange } from "../engine/gpt2/tokenizer.ts";
import { ENGINE_VERSION } from "../engine/version.ts";
import { parseDataset } from "../eval/datasets.ts";
import { type CaseResult, type RunIdentity } from "../eval/metrics.ts";
import { romeMethod } from "../eval/methods.ts";
import { REFERENCE_GENERATION } from "../eval/probes.ts";
import { runEvaluation } from "../eval/harness.ts";
import { type CounterFactCase, counterFactEdit } from "../rome/cases.ts";
import { executeRome } from "../rome/edit.ts";
import { DEFAULT_GENERATION_TOKENS, evaluateRequest } from "../rome/evaluate.ts";
import { defaultHparams } from "../rome/hparams.ts";
import {
  buildPatch,
  checkRevert,
  decodePatch,
  matrixHash,
  modelContentHash,
  patchBytes,
  readMatrix,
  xorMatrix,
} from "../rome/patch.ts";
import { normalizeRequest } from "../rome/request.ts";
import { decodeSecondMoment, shippedStatsFile, statsFitModel, uploadSecondMoment } from "../rome/stats.ts";
import { DEFAULT_TEMPLATE_SEED, generateContextTemplates } from "../rome/templates.ts";
import { parseKnownFacts, parseSubjects } from "../tracing/facts.ts";
import { DEFAULT_NOISE, parseNoiseSpec, subjectEmbeddingStd } from "../tracing/noise.ts";
import { traceHeader, traceRecords } from "../tracing/prompt.ts";
import { traceFiles } from "../tracing/report.ts";
import { pngRasteriser } from "../cli/figures.ts";
import {
  BasePass,
  DEFAULT_SAMPLES,
  DEFAULT_TRACE_SEED,
  defaultWindow,
  TRACE_KINDS,
} from "../tracing/trace.ts";

const ROOT = new URL("..", import.meta.url);
const MODEL_DIR = new URL("models/world-gpt2", ROOT).pathname;
const FACTS = new URL("data/world/known_facts.json", ROOT).pathname;
const COUNTERFACT = new URL("data/world/counterfact.json", ROOT).pathname;
/** Records per evaluation. */
const EVAL_RECORDS = 3;
/** Share of each phase run before the warm-up checkpoint. */
const WARM_UP = 0.1;
/** The flatness rule: pool bytes exactly equal; RSS within the larger of these above the warm-up's. */
const RSS_SLACK_FRACTION = 0.1, RSS_SLACK_BYTES = 20 * 2 ** 20;
const FLAT_RULE = `bytes live and bytes pooled equal to the warm-up's, RSS at most ` +
  `max(+${RSS_SLACK_FRACTION * 100}%, +${RSS_SLACK_BYTES / 2 ** 20} MiB) above it`;

// ------------------------------------------------------------------ options

const { values } = parseArgs({
  args: Deno.args,
  options: {
    traces: { type: "string" },
    edits: { type: "string" },
    evals: { type: "string" },
    quick: { type: "boolean" },
    json: { type: "boolean" },
  },
});
function count(name: "traces" | "edits" | "evals", full: number, quick: number): number {
  const raw = values[name];
  if (raw === undefined) return values.quick ? quick : full;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) {
    console.error(`soak: --${name} must be an integer ≥ 1, got '${raw}'`);
    Deno.exit(2);
  }
  return n;
}
const N = { traces: count("traces", 300, 20), edits: count("edits", 100, 6), evals: count("evals", 20, 2) };
/** Items run before a phase's warm-up checkpoint, and how many distinct ones the phase cycles over. */
const warmUp = (n: number) => Math.max(1, Math.ceil(n * WARM_UP));
const CYCLE = { traces: warmUp(N.traces), edits: warmUp(N.edits), evals: warmUp(N.evals) };
const json = Boolean(values.json);
const say = (s: string) => json || console.log(s);
const note = (s: string) => console.error(s);

// ------------------------------------------------------------------ setup

const tStart = performance.now();
const engine = await getEngine();
const adapter = `${engine.gpu.info.description}${engine.gpu.info.isFallbackAdapter ? " (software)" : ""}`;
say(`adapter: ${adapter}`);
const { model, tokenizer } = await loadGpt2Folder(engine, MODEL_DIR);
await engine.sync();
const loadedHash = model.hash;
const nLayer = model.config.nLayer;

const factsJson = JSON.parse(await Deno.readTextFile(FACTS));
const facts = parseKnownFacts(factsJson, FACTS);
const subjects = parseSubjects(factsJson, FACTS);
const noiseSpec = parseNoiseSpec(DEFAULT_NOISE);
if (!("factor" in noiseSpec)) throw new Error(`soak: the default noise ${DEFAULT_NOISE} is not a factor`);

const cfJson = JSON.parse(await Deno.readTextFile(COUNTERFACT));
const cases = cfJson as CounterFactCase[];
const dataset = parseDataset(cfJson, COUNTERFACT);
if (dataset.kind !== "counterfact") throw new Error(`soak: ${COUNTERFACT} is not a CounterFact file`);

const { hparams: hp } = defaultHparams(model.config);
const layer = hp.layers[0];
const statsPath = `${MODEL_DIR}/${shippedStatsFile(layer)}`;
const stats = decodeSecondMoment(await Deno.readFile(statsPath), statsPath);
if (!statsFitModel(stats.info, layer, loadedHash)) {
  throw new Error(`soak: ${statsPath} does not belong to this model's layer ${layer}`);
}
/** C uploaded for one use, as the CLI's layerStats does for each edit or evaluation run. */
const uploadC = () => uploadSecondMoment(model, stats.mom2, stats.count, statsPath);
const templates = await generateContextTemplates(
  model,
  tokenizer,
  hp.context_template_length_params,
  DEFAULT_TEMPLATE_SEED,
);
if (await modelContentHash(model) !== loadedHash) {
  throw new Error("soak: the model's content hash differs from the one computed while loading");
}

// ------------------------------------------------------------------ one unit of each phase

/** Drops wall-clock fields (and nothing else) so that results compare exactly. */
function timeless(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(timeless);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.entries(v).filter(([k]) => k !== "seconds" && k !== "time" && k !== "created").map((
        [k, x],
      ) => [k, timeless(x)]),
    );
  }
  return v;
}

const rasterise = pngRasteriser();

/** A one-prompt trace of every kind, as `deno task trace --prompt --subject` runs it (files in memory). */
async function traceOnce(i: number): Promise<string> {
  const fact = facts[i % facts.length];
  const ids = tokenizer.encode(fact.prompt);
  const subjectRange = findSubjectRange(tokenizer, fact.prompt, fact.subject);
  const std = await subjectEmbeddingStd(model, tokenizer, subjects);
  const noise = (noiseSpec as { factor: number }).factor * std.std;
  const base = await BasePass.run(model, { ids, subjectRange }, {
    samples: DEFAULT_SAMPLES,
    noise,
    seed: DEFAULT_TRACE_SEED,
  });
  try {
    const header = traceHeader(tokenizer, base, fact.prompt, fact.subject);
    const { records } = await traceRecords(base, header, TRACE_KINDS, { window: defaultWindow(nLayer) });
    const files = await traceFiles(records, {
      seed: DEFAULT_TRACE_SEED,
      model_hash: model.hash,
      noise_factor: (noiseSpec as { factor: number }).factor,
      embedding_std: std.std,
    }, rasterise);
    if (files.size === 0) throw new Error("soak: the trace rendered no files");
    return JSON.stringify(timeless({ known_id: fact.known_id, records }));
  } finally {
    base.dispose();
  }
}

let revertFailures = 0;

/** `deno task edit --case ID --patch F` then `deno task edit --revert F`, in memory. */
async function editOnce(i: number): Promise<{ post: string; reverted: string }> {
  const r = cases[i % cases.length];
  const { input, caseId, prompts } = counterFactEdit(r);
  const request = normalizeRequest(input);
  const gen = { generationTokens: DEFAULT_GENERATION_TOKENS };
  const hashBefore = model.hash;
  const pre = await evaluateRequest(model, tokenizer, request, prompts, gen);
  const C = await uploadC();
  let edit;
  try {
    edit = await executeRome(model, tokenizer, request, {
      hparams: hp,
      layer,
      variant: "rome",
      templates,
      secondMoment: { C, count: stats.count },
      damping: 0,
    });
  } finally {
    C.dispose();
  }
  const post = await evaluateRequest(model, tokenizer, request, prompts, gen);
  const hashAfter = await modelContentHash(model);
  const patch = await buildPatch(edit, {
    layer,
    variant: "rome",
    request: { ...request, case_id: caseId },
    hparams: hp,
    seed: DEFAULT_TEMPLATE_SEED,
    c_hash: statsPath,
    hashBefore,
    hashAfter,
    pre,
    post,
  });
  const bytes = patchBytes(patch);
  // --revert: the patch read back, checked against the matrix, and XORed out
  const back = decodePatch(bytes, "soak.patch");
  const W = model.w(back.meta.matrix);
  checkRevert(
    back,
    matrixHash(back.meta.matrix, W.shape, await readMatrix(model, back.meta.matrix)),
    undefined,
    hashAfter,
  );
  const res = await xorMatrix(model, back.meta.matrix, back.xor);
  if (res.after !== back.meta.matrix_hash_before) {
    throw new Error(
      `soak: ${back.meta.matrix} hashes to ${res.after} after the revert, ` +
        `not ${back.meta.matrix_hash_before}`,
    );
  }
  const reverted = await modelContentHash(model);
  if (reverted !== loadedHash) revertFailures++;
  const f32 = (name: string, a: Float32Array) => matrixHash(name, [a.length], a);
  return {
    post: JSON.stringify(timeless({
      case_id: caseId,
      pre,
      post,
      matrix_hash_after: edit.matrixHashAfter,
      u: f32("u", edit.u),
      lambda: f32("lambda", edit.lambda),
      v_star: f32("v*", edit.vStar),
      losses: edit.losses,
      delta_norm: edit.deltaNorm,
    })),
    reverted,
  };
}

/** `deno task eval --method rome --generation-length 0` on EVAL_RECORDS records, every case computed. */
async function evalOnce(i: number): Promise<string> {
  const all = dataset.records;
  const records = Array.from({ length: EVAL_RECORDS }, (_, k) => all[(i * EVAL_RECORDS + k) % all.length]);
  const run: RunIdentity = {
    dataset_kind: "counterfact",
    dataset_hash: "soak",
    method: "rome",
    hparams_hash: "soak",
    model_hash: model.hash,
    sequential: 1,
    generation: { max_out_len: 0, top_k: REFERENCE_GENERATION.topK, seed: 1, tfidf: "" },
    engine_version: ENGINE_VERSION,
  };
  const stored = new Map<number, CaseResult>();
  const C = await uploadC();
  try {
    const res = await runEvaluation({
      model,
      tokenizer,
      dataset: { ...dataset, records } as typeof dataset,
      method: romeMethod({
        hparams: hp,
        layer,
        variant: "rome",
        templates,
        secondMoment: { C, count: stats.count },
        statsId: statsPath,
        templateSeed: DEFAULT_TEMPLATE_SEED,
      }),
      run,
      store: {
        get: (id) => Promise.resolve(stored.get(id)),
        put: (r) => Promise.resolve(void stored.set(r.case_id, r)),
      },
    });
    if (res.computed !== records.length) {
      throw new Error(`soak: ${res.computed} of ${records.length} cases computed`);
    }
    return JSON.stringify(timeless(res.results.map(({ run: _r, ...r }) => r)));
  } finally {
    C.dispose();
  }
}

// ------------------------------------------------------------------ checkpoints

interface Checkpoint {
  phase: string;
  point: "start" | "warm-up" | "half" | "end";
  done: number;
  seconds: number;
  bytesLive: number;
  bytesPooled: number;
  buffersCreated: number;
  poolHits: number;
  peakBytes: number;
  dispatches: number;
  submits: number;
  readbacks: number;
  pipelines: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
const checkpoints: Checkpoint[] = [];

async function checkpoint(phase: string, point: Checkpoint["point"], done: number, t0: number) {
  await engine.sync();
  gc?.();
  const p = engine.pool.stats, s = engine.stats, m = Deno.memoryUsage();
  const c: Checkpoint = {
    phase,
    point,
    done,
    seconds: (performance.now() - t0) / 1000,
    bytesLive: p.bytesLive,
    bytesPooled: p.bytesPooled,
    buffersCreated: p.buffersCreated,
    poolHits: p.poolHits,
    peakBytes: p.peakBytes,
    dispatches: s.dispatches,
    submits: s.submits,
    readbacks: s.readbacks,
    pipelines: s.pipelines,
    rss: m.rss,
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
  };
  checkpoints.push(c);
  return c;
}

const MiB = (b: number) => b / 2 ** 20;

interface PhaseResult {
  seconds: number;
  warm: Checkpoint;
  /** Half-way, when that is past the warm-up: RSS from here to the end tells a plateau from a climb. */
  half?: Checkpoint;
  end: Checkpoint;
}

async function phase(name: string, n: number, step: (i: number) => Promise<void>): Promise<PhaseResult> {
  const warmAt = warmUp(n);
  const every = Math.max(1, Math.round(n / 20));
  const t0 = performance.now();
  await checkpoint(name, "start", 0, t0);
  const halfAt = Math.floor(n / 2);
  let warm: Checkpoint | undefined, half: Checkpoint | undefined;
  for (let i = 0; i < n; i++) {
    await step(i);
    if (i + 1 === warmAt) warm = await checkpoint(name, "warm-up", i + 1, t0);
    if (i + 1 === halfAt && halfAt > warmAt) half = await checkpoint(name, "half", i + 1, t0);
    if ((i + 1) % every === 0 || i + 1 === n) {
      const p = engine.pool.stats;
      note(
        `soak ${name} ${i + 1}/${n} ${((performance.now() - t0) / 1000).toFixed(1)} s: RSS ${
          MiB(Deno.memoryUsage().rss).toFixed(1)
        } MiB, live ${MiB(p.bytesLive).toFixed(2)} MiB, pooled ${
          MiB(p.bytesPooled).toFixed(2)
        } MiB, ${p.buffersCreated} buffers`,
      );
    }
  }
  const end = await checkpoint(name, "end", n, t0);
  return { seconds: (performance.now() - t0) / 1000, warm: warm!, half, end };
}

function flatness(r: PhaseResult) {
  const rssLimit = r.warm.rss + Math.max(RSS_SLACK_BYTES, RSS_SLACK_FRACTION * r.warm.rss);
  const live = r.end.bytesLive === r.warm.bytesLive;
  const pooled = r.end.bytesPooled === r.warm.bytesPooled;
  const rss = r.end.rss <= rssLimit;
  return {
    flat: live && pooled && rss,
    bytes_live: { warm: r.warm.bytesLive, end: r.end.bytesLive, ok: live },
    bytes_pooled: { warm: r.warm.bytesPooled, end: r.end.bytesPooled, ok: pooled },
    buffers_created: { warm: r.warm.buffersCreated, end: r.end.buffersCreated },
    rss: {
      warm: r.warm.rss,
      ...(r.half ? { half: r.half.rss } : {}),
      end: r.end.rss,
      limit: Math.round(rssLimit),
      ok: rss,
    },
    heap_used: { warm: r.warm.heapUsed, end: r.end.heapUsed },
  };
}

// ------------------------------------------------------------------ the run

note(
  `soak: ${N.traces} traces, ${N.edits} edit/revert cycles, ${N.evals} evaluations ` +
    `of ${EVAL_RECORDS} records ` +
    `on ${MODEL_DIR} (setup ${((performance.now() - tStart) / 1000).toFixed(1)} s)`,
);
let firstTrace = "", firstEdit = { post: "", reverted: "" }, firstEval = "";
const phases: Record<string, PhaseResult> = {};
phases.traces = await phase("traces", N.traces, async (i) => {
  const r = await traceOnce(i % CYCLE.traces);
  if (i === 0) firstTrace = r;
});
phases.edits = await phase("edits", N.edits, async (i) => {
  const r = await editOnce(i % CYCLE.edits);
  if (i === 0) firstEdit = r;
});
phases.evals = await phase("evals", N.evals, async (i) => {
  const r = await evalOnce(i % CYCLE.evals);
  if (i === 0) firstEval = r;
});

// the first of each, again, on the same process and engine
const tRepeat = performance.now();
note("soak: repeating the first trace, edit and evaluation");
const againTrace = await traceOnce(0);
const againEdit = await editOnce(0);
const againEval = await evalOnce(0);
const final = await checkpoint("repeat", "end", 3, tRepeat);

interface Check {
  name: string;
  pass: boolean;
  detail: string;
}
const same = (a: string, b: string) => a === b ? "identical" : `differ (${firstDifference(a, b)})`;
function firstDifference(a: string, b: string): string {
  let k = 0;
  while (k < a.length && k < b.length && a[k] === b[k]) k++;
  return `at character ${k}: …${a.slice(Math.max(0, k - 40), k + 40)}… vs …${
    b.slice(Math.max(0, k - 40), k + 40)
  }…`;
}
const fact0 = facts[0], case0 = cases[0];
const checks: Check[] = [
  {
    name: `trace 1 (known_id ${fact0.known_id}, ${
      JSON.stringify(fact0.subject)
    }): scores of every kind, high/low scores`,
    pass: againTrace === firstTrace,
    detail: same(firstTrace, againTrace),
  },
  {
    name: `edit 1 (case ${case0.case_id}): pre/post probabilities, generations, edited matrix hash, u, Λ, v*`,
    pass: againEdit.post === firstEdit.post,
    detail: same(firstEdit.post, againEdit.post),
  },
  {
    name: "edit 1: reverted model hash equals the loaded model's, first and repeated",
    pass: firstEdit.reverted === loadedHash && againEdit.reverted === loadedHash,
    detail: `loaded ${loadedHash}, first ${firstEdit.reverted}, repeated ${againEdit.reverted}`,
  },
  {
    name: `every revert restored the loaded model bit for bit (${N.edits + 1} reverts)`,
    pass: revertFailures === 0,
    detail: `${revertFailures} did not`,
  },
  {
    name: `evaluation 1 (cases ${
      dataset.records.slice(0, EVAL_RECORDS).map((r) => r.case_id).join(", ")
    }): per-case metrics and edit facts`,
    pass: againEval === firstEval,
    detail: same(firstEval, againEval),
  },
  {
    name: "no tensor left behind: bytes live at the end equal those after loading",
    pass: final.bytesLive === checkpoints[0].bytesLive,
    detail: `${checkpoints[0].bytesLive} → ${final.bytesLive} bytes`,
  },
];
const flat = Object.fromEntries(Object.entries(phases).map(([k, r]) => [k, flatness(r)]));
const failed = checks.filter((c) => !c.pass).length;
const totalSeconds = (performance.now() - tStart) / 1000;

if (json) {
  console.log(JSON.stringify(
    {
      adapter,
      model: MODEL_DIR,
      settings: { ...N, cycle: CYCLE, eval_records: EVAL_RECORDS, warm_up: WARM_UP, gc: Boolean(gc) },
      flat_rule: FLAT_RULE,
      checkpoints,
      phases: Object.fromEntries(
        Object.entries(phases).map(([k, r]) => [k, { seconds: r.seconds, ...flat[k] }]),
      ),
      repeat_seconds: final.seconds,
      checks,
      seconds: totalSeconds,
      pass: failed === 0,
    },
    null,
    1,
  ));
} else {
  const pad = (s: string | number, w: number) => String(s).padStart(w);
  say(
    `\n${N.traces} traces (of ${CYCLE.traces} facts), ${N.edits} edit/revert cycles (of ${CYCLE.edits} cases), ` +
      `${N.evals} evaluations (of ${CYCLE.evals}) of ${EVAL_RECORDS} CounterFact records each on ${MODEL_DIR}` +
      `${gc ? " (full GC before each checkpoint)" : ""}\n`,
  );
  say(
    "phase    point     done   wall s  live MiB  pooled MiB  buffers  peak MiB  pipelines  RSS MiB  heap MiB",
  );
  for (const c of checkpoints) {
    say(
      `${c.phase.padEnd(8)} ${c.point.padEnd(8)} ${pad(c.done, 5)} ${pad(c.seconds.toFixed(1), 8)} ${
        pad(MiB(c.bytesLive).toFixed(3), 9)
      } ${pad(MiB(c.bytesPooled).toFixed(3), 11)} ${pad(c.buffersCreated, 8)} ${
        pad(MiB(c.peakBytes).toFixed(2), 9)
      } ${pad(c.pipelines, 10)} ${pad(MiB(c.rss).toFixed(1), 8)} ${pad(MiB(c.heapUsed).toFixed(1), 9)}`,
    );
  }
  say(`\nflat = ${FLAT_RULE}`);
  for (const [k, f] of Object.entries(flat)) {
    const r = phases[k];
    say(
      `${k.padEnd(7)} ${
        f.flat ? "flat" : "NOT flat"
      }: live ${f.bytes_live.warm} → ${f.bytes_live.end} B, pooled ${f.bytes_pooled.warm} → ${f.bytes_pooled.end} B, ` +
        `buffers ${f.buffers_created.warm} → ${f.buffers_created.end}, RSS ${MiB(f.rss.warm).toFixed(1)} → ${
          MiB(f.rss.end).toFixed(1)
        } MiB (limit ${MiB(f.rss.limit).toFixed(1)}${
          f.rss.half !== undefined
            ? `; second half ${f.rss.end >= f.rss.half ? "+" : ""}${
              MiB(f.rss.end - f.rss.half).toFixed(1)
            } MiB`
            : ""
        }); ${r.seconds.toFixed(1)} s, ${(r.seconds / (r.end.done || 1)).toFixed(2)} s each`,
    );
  }
  say("");
  for (const c of checks) say(`${c.pass ? "PASS" : "FAIL"}  ${c.name}: ${c.detail}`);
  say(
    `\nwall ${totalSeconds.toFixed(1)} s (repeat ${final.seconds.toFixed(1)} s); ${
      failed ? `${failed} check(s) FAILED` : "all checks passed"
    }`,
  );
}
Deno.exit(failed ? 1 : 0);
