// deno task trace: causal tracing of one prompt (heatmaps, severed paths) or of a known-facts file (average
// indirect effects and the suggested edit layer).
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeFileAtomic } from "../engine/files.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { findSubjectRange, type Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { LAST_SUBJECT } from "../tracing/aggregate.ts";
import { summarizeFacts, type TraceCaseStore, traceFacts } from "../tracing/dataset.ts";
import { EXAMPLE_KNOWN_ID, type KnownFact, parseKnownFacts, parseSubjects } from "../tracing/facts.ts";
import { DEFAULT_NOISE, type NoiseSpec, parseNoiseSpec, subjectEmbeddingStd } from "../tracing/noise.ts";
import { traceHeader, traceRecords } from "../tracing/prompt.ts";
import { fmt } from "../tracing/render.ts";
import {
  factsAnsi,
  factsFiles,
  factsSummaryRecord,
  type OutputFiles,
  severedFiles,
  type SeveredRecord,
  severedText,
  traceAnsi,
  traceFiles,
  type TraceRunInfo,
} from "../tracing/report.ts";
import {
  BasePass,
  DEFAULT_SAMPLES,
  DEFAULT_TRACE_SEED,
  DEFAULT_WINDOW,
  defaultWindow,
  severedTrace,
  TRACE_KINDS,
  type TraceKind,
} from "../tracing/trace.ts";
import { pngRasteriser } from "./figures.ts";
import { intOption, MAX_SEED, MODEL_OPTION, parse, requireText, UsageError } from "./args.ts";
import { type SuggestedLayer, suggestedLayerPath, writeSuggestedLayer } from "./cache.ts";
import { readJsonFile } from "./files.ts";
import { BUNDLED_MODEL, loadModel, modelDir } from "./open.ts";
import { fmtSeconds, Progress } from "./progress.ts";

/**
 * The bundled world's known facts: the default --facts, and the subjects whose embedding std sets the noise
 * level when neither --subjects nor --facts says otherwise.
 */
const BUNDLED_FACTS = fileURLToPath(new URL("../data/world/known_facts.json", import.meta.url));

const TRACE_USAGE = `deno task trace [--model DIR] --prompt TEXT --subject TEXT [--expect TEXT] [--force]
                 [--kind hidden|mlp|attn|all|severed] [--sever mlp|attn|both]
                 [--samples 10] [--noise 3x|FLOAT] [--subjects FILE] [--window W] [--seed 1]
                 [--max-rows N] [--out DIR] [--json]
deno task trace [--model DIR] --facts FILE [--limit N] [--kind hidden|mlp|attn|all] [--out DIR]
                 [--json | --suggest-layer]   (plus the noise/sample options above)
  Causal tracing (Meng et al. 2022): corrupt the subject's token embeddings with Gaussian noise
  (--samples draws of --noise: '3x' = 3 × the std of the subjects' token embeddings, or an absolute
  number), restore clean states one (token, layer) cell at a time and report p(answer) per cell.
  --kind all (default) traces hidden states, MLP and attention windows of --window layers (default 10,
  the reference's; a third of the depth for models of under 12 layers: 2 for the bundled model); severed
  (or --sever) restores the last subject token's hidden state with the MLP and/or attention outputs
  at that token frozen to their corrupted values. --expect refuses a prompt whose top-1 answer is
  not TEXT (the reference skips those) unless --force.
  --facts traces every fact of a known_1000.json-format file (skipping facts the model gets wrong),
  caches each case under OUT/cases/ (an interrupted run resumes), and reports average indirect effects
  per token category and layer, the total effect, and the suggested edit layer (largest MLP effect at
  the last subject token; --suggest-layer prints only that). The std for '3x' is taken over the
  --subjects file, else the --facts file, else the bundled world's known facts.
  Files go to --out (default traces/<prompt> or traces/facts-<file>): trace.json, heatmap_<kind>.svg/.png,
  report.html (dataset mode: summary.json, aie_*.svg/.png, aie_lines.svg, report.html).`;

const TRACE_OPTIONS = {
  ...MODEL_OPTION,
  prompt: { type: "string" },
  subject: { type: "string" },
  expect: { type: "string" },
  force: { type: "boolean" },
  kind: { type: "string" },
  sever: { type: "string" },
  samples: { type: "string" },
  noise: { type: "string" },
  subjects: { type: "string" },
  window: { type: "string" },
  seed: { type: "string" },
  "max-rows": { type: "string" },
  out: { type: "string" },
  json: { type: "boolean" },
  facts: { type: "string" },
  limit: { type: "string" },
  "suggest-layer": { type: "boolean" },
} as const;

interface TraceCliSettings {
  samples: number;
  /** Absent: defaultWindow of the model's depth (known once it is loaded). */
  window?: number;
  seed: number;
  maxRows?: number;
  noiseSpec: NoiseSpec;
}

function traceSettings(opts: Record<string, unknown>): TraceCliSettings {
  let noiseSpec: NoiseSpec;
  try {
    noiseSpec = parseNoiseSpec(String(opts.noise ?? DEFAULT_NOISE));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (opts.subjects !== undefined && "absolute" in noiseSpec) {
    throw new UsageError(
      `--subjects sets the std σ_t of a relative --noise like '3x'; --noise ${opts.noise} is absolute`,
    );
  }
  const samples = intOption(opts, "samples", DEFAULT_SAMPLES, 1);
  const maxRows = opts["max-rows"] === undefined ? undefined : intOption(opts, "max-rows", 0, 1);
  if (maxRows !== undefined && maxRows < samples) {
    // a cell's samples run in one forward: fewer rows would silently be raised to the samples
    throw new UsageError(
      `--max-rows must be an integer ≥ --samples (${samples}): a cell's samples run in one forward ` +
        `(got '${opts["max-rows"]}')`,
    );
  }
  return {
    samples,
    window: opts.window === undefined ? undefined : intOption(opts, "window", DEFAULT_WINDOW, 1),
    seed: intOption(opts, "seed", DEFAULT_TRACE_SEED, 0, MAX_SEED),
    maxRows,
    noiseSpec,
  };
}

/** --window sizes the mlp and attn kinds' restored windows: refused where neither is traced. */
function windowUsed(opts: Record<string, unknown>, kinds: TraceKind[] | "severed", severed: boolean): void {
  if (opts.window === undefined) return;
  if (severed || kinds === "severed") {
    throw new UsageError("--window is for the mlp and attn kinds' windows, not for severed paths");
  }
  if (!kinds.some((k) => k !== "hidden")) {
    throw new UsageError("--window is for the mlp and attn kinds' windows, not for --kind hidden");
  }
}

function traceKinds(opts: Record<string, unknown>, allowSevered: boolean): TraceKind[] | "severed" {
  const k = String(opts.kind ?? "all");
  if (k === "all") return [...TRACE_KINDS];
  if (k === "severed" && allowSevered) return "severed";
  if ((TRACE_KINDS as readonly string[]).includes(k)) return [k as TraceKind];
  throw new UsageError(
    `--kind must be one of hidden, mlp, attn, all${allowSevered ? ", severed" : ""} (got '${k}')`,
  );
}

/** ν and how it was obtained (σ_t over a subjects file when the spec is a factor). */
async function traceNoise(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  spec: NoiseSpec,
  subjectsFile: string,
  quiet: boolean,
): Promise<{ noise: number; factor: number | null; std: number | null }> {
  if ("absolute" in spec) return { noise: spec.absolute, factor: null, std: null };
  const subjects = parseSubjects(await readJsonFile(subjectsFile, "subjects file"), subjectsFile);
  const s = await subjectEmbeddingStd(model, tokenizer, subjects);
  if (!quiet) {
    console.error(
      `noise ${fmt(spec.factor * s.std, 4)} = ${spec.factor} × σ_t, σ_t = ${
        fmt(s.std, 4)
      } over ${s.rows} tokens of ` +
        `${s.subjects} subjects (${subjectsFile})`,
    );
  }
  return { noise: spec.factor * s.std, factor: spec.factor, std: s.std };
}

/** A folder name from a prompt or file name. */
function slug(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 48) || "trace";
}

async function writeOutputs(dir: string, files: OutputFiles): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const enc = new TextEncoder();
  for (const [name, content] of files) {
    await writeFileAtomic(join(dir, name), [typeof content === "string" ? enc.encode(content) : content]);
  }
}

export async function cmdTrace(args: string[]): Promise<void> {
  const opts = parse(args, TRACE_OPTIONS, TRACE_USAGE);
  // named, so that a missing bundled model reads as any missing --model folder (as it always has in trace)
  opts.model ??= BUNDLED_MODEL;
  modelDir(opts); // the first thing missing is the model: say so before anything else
  if (opts.facts !== undefined || opts["suggest-layer"]) return await traceFactsCli(opts);
  return await tracePromptCli(opts);
}

/** The fact traced when no --prompt and --subject are given: the bundled world's example (the page's too). */
async function exampleFact(): Promise<KnownFact> {
  const facts = parseKnownFacts(await readJsonFile(BUNDLED_FACTS, "facts file"), BUNDLED_FACTS);
  const fact = facts.find((f) => f.known_id === EXAMPLE_KNOWN_ID);
  if (!fact) {
    throw new UsageError(
      `${BUNDLED_FACTS} has no known_id ${EXAMPLE_KNOWN_ID}; give --prompt and --subject`,
    );
  }
  return fact;
}

async function tracePromptCli(opts: Record<string, unknown>): Promise<void> {
  const fact = opts.prompt === undefined && opts.subject === undefined ? await exampleFact() : undefined;
  const prompt = fact?.prompt ?? requireText(opts, "prompt");
  const subject = fact?.subject ?? requireText(opts, "subject");
  const expect = (opts.expect as string | undefined) ?? fact?.attribute;
  if (opts.limit !== undefined) throw new UsageError("--limit is for --facts (how many facts to trace)");
  const kinds = traceKinds(opts, true);
  const severArg = opts.sever === undefined ? undefined : String(opts.sever);
  if (severArg !== undefined && !["mlp", "attn", "both"].includes(severArg)) {
    throw new UsageError(`--sever must be mlp, attn or both (got '${severArg}')`);
  }
  // --sever traces severed paths: a --kind other than severed would be ignored
  if (severArg !== undefined && opts.kind !== undefined && kinds !== "severed") {
    throw new UsageError(`--sever traces severed paths, not --kind ${opts.kind}; drop one of them`);
  }
  const sever: ("attn" | "mlp")[] | undefined = severArg === "both" || (kinds === "severed" && !severArg)
    ? ["attn", "mlp"]
    : severArg
    ? [severArg as "attn" | "mlp"]
    : undefined;
  windowUsed(opts, kinds, sever !== undefined);
  const settings = traceSettings(opts);
  const json = Boolean(opts.json);
  const t0 = performance.now();
  if (!prompt.includes(subject)) {
    throw new UsageError(
      `--subject ${JSON.stringify(subject)} does not occur in --prompt ${JSON.stringify(prompt)}`,
    );
  }
  const { model, tokenizer } = await loadModel(opts);
  settings.window ??= defaultWindow(model.config.nLayer);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const subjectRange = findSubjectRange(tokenizer, prompt, subject);
  const subjects = (opts.subjects as string | undefined) ?? BUNDLED_FACTS;
  const noise = await traceNoise(model, tokenizer, settings.noiseSpec, subjects, json);
  const base = await BasePass.run(model, { ids, subjectRange }, { ...settings, noise: noise.noise }, {
    corruptedSites: sever ?? [],
  });
  try {
    const common = traceHeader(tokenizer, base, prompt, subject);
    const { answer, tokens } = common;
    if (expect !== undefined && answer.trim() !== expect.trim() && !opts.force) {
      throw new Error(
        `the model's top-1 answer is ${JSON.stringify(answer)} (p = ${fmt(base.highScore, 3)}), not ` +
          `${JSON.stringify(expect)}: tracing shows how a known fact is recalled (the reference skips such ` +
          `prompts); pass --force to trace it anyway`,
      );
    }
    const info: TraceRunInfo = {
      seed: settings.seed,
      model_hash: model.hash,
      noise_factor: noise.factor,
      embedding_std: noise.std,
    };
    const out = (opts.out as string | undefined) ?? join("traces", slug(prompt));
    const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
    const nLayer = model.config.nLayer, T = ids.length;
    const cellsPerKind = T * nLayer;
    let rows = settings.samples + 1;

    if (sever) {
      const bar = new Progress("severed paths", nLayer * (1 + sever.length), json);
      const s = await severedTrace(base, sever, {
        maxRows: settings.maxRows,
        onProgress: (d) => bar.update(d),
      });
      bar.done();
      rows += s.rows;
      const record: SeveredRecord = {
        ...common,
        token: s.token,
        samples: settings.samples,
        noise: noise.noise,
        seconds: s.seconds,
        ordinary: s.ordinary,
        ...(s.attn ? { attn_severed: s.attn } : {}),
        ...(s.mlp ? { mlp_severed: s.mlp } : {}),
      };
      await writeOutputs(out, severedFiles(record, info));
      if (json) return console.log(JSON.stringify(record));
      console.log(
        `answer ${JSON.stringify(answer)}: p clean ${fmt(base.highScore, 4)}, corrupted ${
          fmt(base.lowScore, 4)
        }`,
      );
      console.log(`restoring token ${s.token} ${JSON.stringify(tokens[s.token])}; effects are p − low_score`);
      console.log(severedText(record));
      printTraceTiming(rows, s.seconds, (performance.now() - t0) / 1000);
      console.log(`wrote ${join(out, "report.html")}`);
      return;
    }

    const kindList = kinds as TraceKind[];
    const bar = new Progress("tracing", cellsPerKind * kindList.length, json);
    const { records, rows: cellRows, seconds: traceSeconds } = await traceRecords(base, common, kindList, {
      window: settings.window,
      maxRows: settings.maxRows,
      onProgress: (d, _total, kind) => bar.update(d, kind),
    });
    rows += cellRows;
    bar.done();
    await writeOutputs(out, await traceFiles(records, info, pngRasteriser()));
    if (json) {
      console.log(JSON.stringify(records.length === 1 ? records[0] : records));
      return;
    }
    for (const r of records) console.log(traceAnsi(r, color) + "\n");
    printTraceTiming(rows, traceSeconds, (performance.now() - t0) / 1000);
    console.log(`wrote ${join(out, "report.html")} (trace.json, heatmap_*.svg/.png)`);
  } finally {
    base.dispose();
  }
}

function printTraceTiming(rows: number, traceSeconds: number, wallSeconds: number): void {
  console.log(
    `trace ${fmtSeconds(traceSeconds)} (${rows} forward rows, ${
      (rows / Math.max(traceSeconds, 1e-9)).toFixed(0)
    } rows/s); ` +
      `wall ${fmtSeconds(wallSeconds)} with loading`,
  );
}

/** Case files `<dir>/<known_id>_<kind>.json`, written atomically; unreadable ones count as missing. */
function fileCaseStore(dir: string): TraceCaseStore {
  return {
    async load(id, kind) {
      try {
        return JSON.parse(await Deno.readTextFile(join(dir, `${id}_${kind}.json`)));
      } catch {
        return undefined;
      }
    },
    async save(record) {
      await Deno.mkdir(dir, { recursive: true });
      await writeFileAtomic(join(dir, `${record.known_id}_${record.kind}.json`), [
        new TextEncoder().encode(JSON.stringify(record) + "\n"),
      ]);
    },
  };
}

async function traceFactsCli(opts: Record<string, unknown>): Promise<void> {
  const factsFile = (opts.facts as string | undefined) ?? BUNDLED_FACTS;
  for (const f of ["prompt", "subject", "expect", "sever", "force"]) {
    if (opts[f] !== undefined) throw new UsageError(`--${f} is for single-prompt tracing, not --facts`);
  }
  const kinds = traceKinds(opts, false) as TraceKind[];
  windowUsed(opts, kinds, false);
  const settings = traceSettings(opts);
  const onlyLayer = Boolean(opts["suggest-layer"]);
  if (onlyLayer && !kinds.includes("mlp")) throw new UsageError("--suggest-layer needs the mlp kind");
  const quiet = Boolean(opts.json) || onlyLayer;
  const facts = parseKnownFacts(await readJsonFile(factsFile, "facts file"), factsFile);
  const limit = opts.limit === undefined ? facts.length : intOption(opts, "limit", 0, 1);
  const t0 = performance.now();
  const { model, tokenizer } = await loadModel(opts, quiet);
  settings.window ??= defaultWindow(model.config.nLayer);
  // The std is over the whole file's subjects (as the reference's knowns), whatever --limit keeps.
  const subjects = (opts.subjects as string | undefined) ?? factsFile;
  const noise = await traceNoise(model, tokenizer, settings.noiseSpec, subjects, quiet);
  const out = (opts.out as string | undefined) ??
    join("traces", "facts-" + slug(basename(factsFile, ".json")));
  const chosen = facts.slice(0, limit);
  const bar = new Progress("tracing facts", chosen.length, quiet);
  let traced = 0, cachedFacts = 0, skipped = 0;
  const result = await traceFacts(model, tokenizer, chosen, {
    samples: settings.samples,
    noise: noise.noise,
    seed: settings.seed,
    window: settings.window,
    kinds,
    maxRows: settings.maxRows,
    store: fileCaseStore(join(out, "cases")),
    onFact: (done, _total, _fact, status) => {
      if (status === "traced") traced++;
      else if (status === "cached") cachedFacts++;
      else skipped++;
      bar.update(done, `${traced} traced, ${cachedFacts} cached, ${skipped} skipped`);
    },
  });
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  const summary = summarizeFacts(result, kinds);
  const record = factsSummaryRecord(summary.kinds, {
    facts_file: factsFile,
    model_hash: model.hash,
    n: summary.n,
    facts: summary.facts,
    skipped: summary.skipped,
    samples: settings.samples,
    noise: noise.noise,
    window: settings.window,
    seed: settings.seed,
    seconds,
    suggested_layer: summary.suggestedLayer ?? null,
  });
  await writeOutputs(out, await factsFiles(summary.kinds, record, pngRasteriser()));
  if (summary.suggestedLayer !== undefined) {
    const stored: SuggestedLayer = {
      layer: summary.suggestedLayer,
      model_hash: model.hash,
      facts_file: factsFile,
      n: summary.n,
      mlp_aie_last_subject: summary.kinds.mlp!.aie[LAST_SUBJECT],
      samples: settings.samples,
      noise: noise.noise,
      window: settings.window,
      seed: settings.seed,
    };
    await writeSuggestedLayer(stored);
  }
  if (onlyLayer) return console.log(String(summary.suggestedLayer));
  if (opts.json) return console.log(JSON.stringify(record));
  const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
  console.log(`${summary.n} of ${summary.facts} facts predicted correctly (${summary.skipped} skipped)\n`);
  console.log(factsAnsi(summary.kinds, settings.window, color) + "\n");
  if (summary.suggestedLayer !== undefined) {
    const aie = summary.kinds.mlp!.aie[LAST_SUBJECT][summary.suggestedLayer];
    console.log(
      `suggested edit layer: ${summary.suggestedLayer} (largest MLP AIE at the last subject token, ${
        fmt(aie, 4)
      }); ` +
        `stored in ${suggestedLayerPath(model.hash)}`,
    );
  }
  console.log(
    `${fmtSeconds(seconds)} (${result.rows} forward rows${
      result.rows ? `, ${(result.rows / seconds).toFixed(0)} rows/s` : ""
    }); ` +
      `wrote ${join(out, "report.html")}`,
  );
}
