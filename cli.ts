// rome-webgpu command line: argument parsing, files and terminal output. Everything below this file
// (engine/, kernels/, and later tracing/, rome/, eval/) is runtime-neutral and also runs in a browser.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { getEngine, setDeviceLossDrill } from "./engine/engine.ts";
import { hasVulkanDriver, quietMesa } from "./engine/host.ts";
import { type LoadedModel, loadGpt2Folder, loadTokenizer } from "./engine/gpt2/folder.ts";
import { generate, nextTokenLogprobs, topK } from "./engine/gpt2/generate.ts";
import { downloadModel, HubError } from "./engine/hub.ts";
import { basename, dirname, join } from "node:path";
import { exists, killPoint, readSafetensorsFile, writeFileAtomic } from "./engine/files.ts";
import type { Gpt2Config } from "./engine/gpt2/config.ts";
import { buildGpt2 } from "./engine/gpt2/load.ts";
import { expectedWeightShapes, type Gpt2Model } from "./engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "./engine/gpt2/tokenizer.ts";
import { epochOrder, initGpt2Weights, packDocuments, Trainer, type TrainHyper } from "./engine/gpt2/train.ts";
import { saveGpt2Folder } from "./engine/gpt2/folder.ts";
import { topOneAccuracy } from "./eval/knowledge.ts";
import { fileURLToPath } from "node:url";
import { findSubjectRange } from "./engine/gpt2/tokenizer.ts";
import { fmt } from "./tracing/render.ts";
import { pngRasteriser } from "./cli/figures.ts";
import { LAST_SUBJECT } from "./tracing/aggregate.ts";
import { summarizeFacts, type TraceCaseStore, traceFacts } from "./tracing/dataset.ts";
import {
  EXAMPLE_KNOWN_ID,
  FactsFormatError,
  type KnownFact,
  parseKnownFacts,
  parseSubjects,
} from "./tracing/facts.ts";
import { DEFAULT_NOISE, type NoiseSpec, parseNoiseSpec, subjectEmbeddingStd } from "./tracing/noise.ts";
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
} from "./tracing/report.ts";
import {
  BasePass,
  DEFAULT_SAMPLES,
  DEFAULT_TRACE_SEED,
  DEFAULT_WINDOW,
  defaultWindow,
  severedTrace,
  TRACE_KINDS,
  type TraceKind,
} from "./tracing/trace.ts";
import { traceHeader, traceRecords } from "./tracing/prompt.ts";
import { isAbsolute, relative, resolve } from "node:path";
import type { Tensor } from "./engine/tensor.ts";
import { checkLayer } from "./rome/compute.ts";
import { executeRome, ROME_VARIANTS, type RomeEdit, type RomeVariant } from "./rome/edit.ts";
import {
  DEFAULT_GENERATION_TOKENS,
  evaluateRequest,
  type EvaluationPrompts,
  type TargetProbabilities,
} from "./rome/evaluate.ts";
import { defaultHparams, HparamsError, parseHparams, type RomeHparams } from "./rome/hparams.ts";
import { NpzError, readReferenceMom2 } from "./rome/npz.ts";
import {
  buildPatch,
  checkApply,
  checkRevert,
  decodePatch,
  type EditsLog,
  emptyEditsLog,
  logEntry,
  matrixHash,
  modelContentHash,
  parseEditsLog,
  patchBytes,
  PatchError,
  readMatrix,
  rewriteProbabilities,
  xorMatrix,
} from "./rome/patch.ts";
import { fillTemplate, normalizeRequest, type RequestInput, RomeInputError } from "./rome/request.ts";
import {
  type CorpusDocuments,
  decodeSecondMoment,
  encodeSecondMoment,
  type SecondMomentCheckpoint,
  secondMomentMatrix,
  secondMomentStats,
  shippedStatsFile,
  splitCorpus,
  statsCacheName,
  StatsError,
  statsFitModel,
  type StatsInfo,
  StatsInterrupted,
  uploadSecondMoment,
} from "./rome/stats.ts";
import { DEFAULT_TEMPLATE_SEED, generateContextTemplates, parseContextTemplates } from "./rome/templates.ts";
import { type CounterFactCase, counterFactEdit } from "./rome/cases.ts";
import { InputError } from "./engine/errors.ts";

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends InputError {
  override name = "UsageError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** An argument that starts like a negative number ("-2", "-.5", "-inf", "-nan"): a value, never an option. */
const NEGATIVE_NUMBER = /^-(\d|\.\d|inf|nan)/i;

/**
 * `--name -2` as `--name=-2` for the command's string options. node:util's parseArgs refuses a value that
 * starts with "-" as "ambiguous" (a message and the whole usage text), so the option's own check, the
 * same one-line error as for any other bad value, would never see it.
 */
function attachNegativeValues(args: readonly string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    const name = /^--([^=]+)$/.exec(a)?.[1];
    if (
      name !== undefined && Object.hasOwn(options, name) && options[name].type === "string" &&
      i + 1 < args.length && NEGATIVE_NUMBER.test(args[i + 1])
    ) {
      out.push(`${a}=${args[++i]}`);
    } else out.push(a);
  }
  return out;
}

/** Options that name a file, folder or revision: an empty value names nothing (and "" resolves to "."). */
const NAMING_OPTIONS = [
  "model",
  "out",
  "patch",
  "dir",
  "revision",
  "dataset",
  "hparams",
  "corpus",
  "stats",
  "npz",
  "facts",
  "subjects",
  "world",
  "snippets",
  "tfidf",
  "config",
  "tokenizer",
  "init",
  "apply",
  "revert",
];

/** A command's options (and positionals where it takes them); --help prints the usage and exits. */
function parseCommand(
  args: string[],
  options: Options,
  usage: string,
  allowPositionals = false,
): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: attachNegativeValues(args, options),
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals,
    });
    if (values.help) {
      console.log(usage);
      Deno.exit(0);
    }
    const given = values as Record<string, unknown>;
    for (const k of NAMING_OPTIONS) {
      if (given[k] === "") throw new UsageError(`--${k} must not be empty`);
    }
    return { values: given, positionals };
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
}

function parse(args: string[], options: Options, usage: string): Record<string, unknown> {
  return parseCommand(args, options, usage).values;
}

// ------------------------------------------------------------------ terminal output

/**
 * A progress bar on stderr: redrawn in place on a terminal, a plain line every 10% otherwise (CI logs).
 * Call `update` after each awaited GPU chunk: the event loop is blocked while the GPU works, so timers
 * would not fire.
 */
export class Progress {
  /** Whether a bar was last drawn on the terminal without its line ended (an error then starts a new line). */
  static #midLine = false;
  #start = performance.now();
  #lastDraw = 0;
  #lastDecile = -1;
  #tty = Deno.stderr.isTerminal();
  #enc = new TextEncoder();

  constructor(readonly label: string, public total: number, readonly quiet = false) {}

  update(done: number, extra = ""): void {
    if (this.quiet) return;
    const now = performance.now();
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (now - this.#start) / 1000;
    const eta = frac > 0 && frac < 1 ? elapsed * (1 - frac) / frac : 0;
    const text = `${this.label} ${done}/${this.total} ${(frac * 100).toFixed(0)}%` +
      `${extra ? " " + extra : ""} ${fmtSeconds(elapsed)}${eta > 0 ? ` eta ${fmtSeconds(eta)}` : ""}`;
    if (this.#tty) {
      if (now - this.#lastDraw < 80 && done < this.total) return;
      this.#lastDraw = now;
      const width = 24, fill = Math.round(frac * width);
      const bar = "█".repeat(fill) + "░".repeat(width - fill);
      Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[K${bar} ${text}`));
      Progress.#midLine = true;
    } else {
      const decile = Math.floor(frac * 10);
      if (decile === this.#lastDecile) return;
      this.#lastDecile = decile;
      Deno.stderr.writeSync(this.#enc.encode(text + "\n"));
    }
  }

  done(extra = ""): void {
    this.update(this.total, extra);
    if (this.#tty && !this.quiet) Deno.stderr.writeSync(this.#enc.encode("\n"));
    Progress.#midLine = false;
  }

  /** Ends a bar's line left open by an error, so that the error gets a line of its own. */
  static endLine(): void {
    if (Progress.#midLine) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    Progress.#midLine = false;
  }
}

export function fmtSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

// ------------------------------------------------------------------ model loading

const MODEL_OPTION = { model: { type: "string" } } as const;

/** The bundled model every command uses when --model is not given (trained by `deno task train-demo`). */
export const BUNDLED_MODEL = fileURLToPath(new URL("./models/world-gpt2", import.meta.url));

/** The model folder: --model, or the bundled one; one that is not there is a usage error (exit code 2). */
function modelDir(opts: Record<string, unknown>): string {
  return editModelDir(opts);
}

let adapterAdviceGiven = false;

/**
 * The process's engine. On Linux with only the GL fallback (no Vulkan driver at all) it says once, on stderr,
 * which package makes every command about 4× faster: a trace took 1 min 29 s on GL and 20 s on lavapipe.
 */
async function openEngine() {
  const engine = await getEngine();
  if (
    !adapterAdviceGiven && Deno.build.os === "linux" && engine.gpu.info.isFallbackAdapter &&
    !hasVulkanDriver()
  ) {
    console.error(
      "note: running on wgpu's GL fallback adapter; Mesa's software Vulkan is about 4× faster: " +
        "apt-get install -y mesa-vulkan-drivers",
    );
  }
  adapterAdviceGiven = true;
  return engine;
}

async function loadModel(opts: Record<string, unknown>, quiet = false): Promise<LoadedModel> {
  const dir = modelDir(opts);
  const engine = await openEngine();
  const bar = new Progress(`loading ${dir}`, 1, quiet || Boolean(opts.json));
  const loaded = await loadGpt2Folder(engine, dir, {
    onTensor: (d, n) => {
      bar.total = n;
      bar.update(d);
    },
  });
  await engine.sync();
  bar.done();
  return loaded;
}

/** A number as typed in decimal: sign, digits, fraction, exponent; no spaces, hex, Infinity or empty text. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** The number an option's text spells in decimal, NaN for anything else ("", "abc", "0x10", " 3"). */
function decimalValue(raw: unknown): number {
  return typeof raw === "string" && DECIMAL.test(raw) ? Number(raw) : NaN;
}

/** Seeds feed 32-bit generators (`seed >>> 0`): a larger or negative seed would silently alias another. */
const MAX_SEED = 2 ** 32 - 1;

/**
 * An integer option in [min, max], `fallback` when absent. Anything else is a usage error naming the valid
 * range: negative or non-integer numbers, "abc", "", "1e999" (never rounded or clamped into range).
 */
function intOption(
  opts: Record<string, unknown>,
  name: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const raw = opts[name];
  if (raw === undefined) return fallback;
  const v = decimalValue(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER && !(Number.isFinite(v) && v > max)
      ? `≥ ${min}`
      : `from ${min} to ${max}`;
    throw new UsageError(`--${name} must be an integer ${range} (got '${raw}')`);
  }
  return v === 0 ? 0 : v; // not -0
}

function requireText(opts: Record<string, unknown>, name: string): string {
  const v = opts[name];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`--${name} TEXT is required`);
  return v;
}

// ------------------------------------------------------------------ predict / generate / tokenize

const PREDICT_USAGE = `deno task predict [--model DIR] --prompt TEXT [--top-k K] [--json]
  The most likely next tokens after the prompt, with log-probabilities.`;

async function cmdPredict(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    prompt: { type: "string" },
    "top-k": { type: "string" },
    json: { type: "boolean" },
  }, PREDICT_USAGE);
  const prompt = requireText(opts, "prompt");
  const k = intOption(opts, "top-k", 10, 1);
  const { model, tokenizer } = await loadModel(opts);
  topKInVocabulary(k, model);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const [lp] = await nextTokenLogprobs(model, [ids]);
  const top = topK(lp, k).map((e) => ({ id: e.id, token: tokenizer.decode([e.id]), logprob: e.logprob }));
  if (opts.json) {
    console.log(JSON.stringify({ prompt, ids, top }));
    return;
  }
  console.log(`prompt: ${JSON.stringify(prompt)} (${ids.length} tokens)`);
  for (const e of top) {
    console.log(
      `${(Math.exp(e.logprob) * 100).toFixed(2).padStart(6)}%  ${e.logprob.toFixed(4).padStart(9)}  ${
        JSON.stringify(e.token)
      } (${e.id})`,
    );
  }
}

/** --top-k beyond the vocabulary would silently mean all of it. */
function topKInVocabulary(k: number, model: Gpt2Model): void {
  const V = model.config.vocabSize;
  if (k > V) {
    throw new UsageError(`--top-k must be an integer from 1 to ${V}, the vocabulary's size (got '${k}')`);
  }
}

const GENERATE_USAGE =
  `deno task generate [--model DIR] --prompt TEXT [--max-tokens N] [--top-k K] [--seed S] [--json]
  Continues the prompt: greedy with --top-k 1, seeded top-k sampling otherwise (default k 5, up to 20
  tokens; it ends at <|endoftext|>).`;

async function cmdGenerate(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    prompt: { type: "string" },
    "max-tokens": { type: "string" },
    "top-k": { type: "string" },
    seed: { type: "string" },
    json: { type: "boolean" },
  }, GENERATE_USAGE);
  const prompt = requireText(opts, "prompt");
  const maxTokens = intOption(opts, "max-tokens", 20, 1);
  const k = intOption(opts, "top-k", 5, 1);
  const seed = intOption(opts, "seed", 0, 0, MAX_SEED);
  const { model, tokenizer } = await loadModel(opts);
  topKInVocabulary(k, model);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const ctx = model.config.nPositions;
  if (ids.length >= ctx) {
    throw new UsageError(`--prompt has ${ids.length} tokens; the model's context is ${ctx}`);
  }
  // generation stops at the context: an explicit --max-tokens that cannot fit is refused, not cut short
  if (opts["max-tokens"] !== undefined && ids.length + maxTokens > ctx) {
    throw new UsageError(
      `--max-tokens must be an integer from 1 to ${ctx - ids.length} for this prompt: its ${ids.length} ` +
        `tokens leave room for ${ctx - ids.length} in the model's context of ${ctx} (got '${maxTokens}')`,
    );
  }
  const bar = new Progress("generating", maxTokens, Boolean(opts.json));
  const eos = tokenizer.eosId >= 0 ? tokenizer.eosId : undefined;
  const [out] = await generate(model, [ids], {
    maxTokens,
    topK: k,
    seed,
    stopId: eos,
    onToken: (s) => bar.update(s),
  });
  bar.done();
  const text = tokenizer.decode(out.at(-1) === eos ? out.slice(0, -1) : out);
  if (opts.json) console.log(JSON.stringify({ prompt, ids, generated_ids: out, text: prompt + text }));
  else console.log(prompt + text);
}

const TOKENIZE_USAGE = `deno task tokenize [--model DIR] --text TEXT [--json]
  GPT-2 BPE tokens of the text (only the model folder's tokenizer files are read).`;

function cmdTokenize(args: string[]): Promise<void> {
  const opts = parse(
    args,
    { ...MODEL_OPTION, text: { type: "string" }, json: { type: "boolean" } },
    TOKENIZE_USAGE,
  );
  const text = opts.text;
  if (typeof text !== "string") throw new UsageError("--text TEXT is required");
  const tokenizer = loadTokenizer(modelDir(opts));
  const ids = tokenizer.encode(text);
  const tokens = ids.map((id) => tokenizer.decode([id]));
  if (opts.json) console.log(JSON.stringify({ ids, tokens }));
  else {ids.forEach((id, i) =>
      console.log(`${String(i).padStart(4)}  ${String(id).padStart(6)}  ${JSON.stringify(tokens[i])}`)
    );}
  return Promise.resolve();
}

const DOWNLOAD_USAGE =
  `deno task download gpt2|gpt2-medium|gpt2-large|gpt2-xl|OWNER/NAME [--dir DIR] [--revision REV]
  Fetches a model folder (config, tokenizer, safetensors weights) from the Hugging Face hub; resumable.
  Uses $HF_ENDPOINT and $HF_TOKEN when set.`;

async function cmdDownload(args: string[]): Promise<void> {
  const { values, positionals } = parseCommand(
    args,
    { dir: { type: "string" }, revision: { type: "string" } },
    DOWNLOAD_USAGE,
    true,
  );
  if (positionals.length !== 1) throw new UsageError(`name exactly one model\n\n${DOWNLOAD_USAGE}`);
  let bar: Progress | undefined;
  let current = "";
  const res = await downloadModel(positionals[0], {
    dir: values.dir as string | undefined,
    revision: values.revision as string | undefined,
    endpoint: Deno.env.get("HF_ENDPOINT") || undefined,
    token: Deno.env.get("HF_TOKEN") || undefined,
    onProgress: (p) => {
      if (p.file !== current) {
        bar?.done();
        current = p.file;
        bar = new Progress(p.file, p.total ?? 0);
      }
      bar!.update(p.done, `${(p.bytesPerSec / 2 ** 20).toFixed(1)} MiB/s`);
    },
  }).catch((e) => {
    // a name that is no model is the caller's mistake; network and server errors are not
    if (e instanceof HubError && e.kind === "name") throw new UsageError(e.message);
    throw e;
  });
  bar?.done();
  console.log(`downloaded ${res.files.length} files to ${res.dir}`);
}

// ------------------------------------------------------------------ train / train-demo / facts

const TRAIN_USAGE =
  `deno task train --config FILE --corpus FILE --out DIR [--tokenizer DIR] [--steps N] [--fresh] [--json]
  Trains a GPT-2-architecture model from scratch on a text corpus (documents separated by lines holding
  only <|endoftext|>) and writes Hugging Face checkpoints to DIR (config.json, model.safetensors,
  vocab.json, merges.txt, plus trainer state). Each checkpoint replaces DIR whole, so DIR must be new,
  empty or an earlier checkpoint, and hold no input. An interrupted run resumes from DIR's last checkpoint
  unless --fresh. --tokenizer defaults to the corpus's folder (vocab.json + merges.txt). --init starts
  from a model folder's weights (a second stage) instead of GPT-2's initialisation.`;

interface TrainFileConfig {
  model: { n_layer: number; n_head: number; n_embd: number; n_positions: number };
  train: {
    batch_size: number;
    lr: number;
    min_lr_ratio?: number;
    warmup_steps?: number;
    epochs?: number;
    steps?: number;
    weight_decay?: number;
    grad_clip?: number;
    seed?: number;
    checkpoint_every?: number;
    /** Stop after this step of the schedule (a stage of a longer schedule). */
    stop_at?: number;
    /** Pack several documents per row (default) or give each document its own row. */
    pack?: boolean;
  };
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function readTrainConfig(path: string): TrainFileConfig {
  let j: TrainFileConfig;
  try {
    j = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    throw new UsageError(`--config ${path}: ${(e as Error).message}`);
  }
  const need = (o: Record<string, unknown> | undefined, k: string, where: string, integer = false) => {
    const v = o?.[k];
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) {
      throw new UsageError(
        `--config ${path}: ${where}.${k} must be a positive ${integer ? "integer" : "number"}`,
      );
    }
  };
  // optional settings: absent, or what they mean (a count is an integer, a seed a 32-bit one)
  const may = (k: string, integer: boolean, min: number, max = Infinity) => {
    const v = (j.train as unknown as Record<string, unknown>)[k];
    if (v === undefined) return;
    if (
      typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v)) || v < min ||
      v > max
    ) {
      const range = max === Infinity ? `≥ ${min}` : `from ${min} to ${max}`;
      throw new UsageError(
        `--config ${path}: train.${k} must be ${integer ? "an integer" : "a number"} ${range}`,
      );
    }
  };
  for (const k of ["n_layer", "n_head", "n_embd", "n_positions"]) need(j.model as never, k, "model", true);
  need(j.train as never, "batch_size", "train", true);
  need(j.train as never, "lr", "train");
  for (const k of ["steps", "checkpoint_every", "stop_at"]) may(k, true, 1);
  may("warmup_steps", true, 0);
  may("seed", true, 0, MAX_SEED);
  for (const k of ["min_lr_ratio", "weight_decay", "grad_clip"]) may(k, false, 0);
  if ((j.train as { epochs?: unknown }).epochs !== undefined) need(j.train as never, "epochs", "train");
  if (j.model.n_embd % j.model.n_head !== 0) {
    throw new UsageError(`--config ${path}: n_embd must be divisible by n_head`);
  }
  return j;
}

/** Documents of a corpus file, tokenized, each ending with <|endoftext|>. */
function readCorpus(path: string, tokenizer: Gpt2Tokenizer): number[][] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    throw new UsageError(`--corpus ${path}: cannot read the file`);
  }
  if (tokenizer.eosId < 0) throw new UsageError("the tokenizer has no <|endoftext|> token");
  // <|endoftext|> in the text is a separator line, never tokenized as text (it would be 7 tokens)
  return text.split(/\n?<\|endoftext\|>\n?/).map((d) => d.trim()).filter((d) => d.length > 0)
    .map((d) => [...tokenizer.encode(d), tokenizer.eosId]);
}

export async function train(opts: {
  config: string;
  corpus: string;
  out: string;
  tokenizerDir?: string;
  steps?: number;
  fresh?: boolean;
  json?: boolean;
  /** Start from this folder's weights instead of GPT-2's initialisation (fresh optimiser and schedule). */
  init?: string;
}): Promise<{ steps: number; loss: number; seconds: number; tokensPerSecond: number }> {
  const cfg = readTrainConfig(opts.config);
  const tokDir = opts.tokenizerDir ?? dirname(opts.corpus);
  const tokenizer = loadTokenizer(tokDir);
  const docs = readCorpus(opts.corpus, tokenizer);
  const T = cfg.model.n_positions;
  const rows = packDocuments(docs, T, cfg.train.pack ?? true);
  const hyperBase = cfg.train;
  const B = hyperBase.batch_size;
  const stepsPerEpoch = Math.floor(rows.length / B);
  if (stepsPerEpoch < 1) {
    throw new UsageError(`the corpus packs into ${rows.length} rows, fewer than one batch of ${B}`);
  }
  const totalSteps = opts.steps ?? hyperBase.steps ?? Math.round((hyperBase.epochs ?? 1) * stepsPerEpoch);
  const hyper: TrainHyper = {
    batchSize: B,
    lr: hyperBase.lr,
    minLrRatio: hyperBase.min_lr_ratio ?? 0.1,
    warmupSteps: hyperBase.warmup_steps ?? Math.min(100, Math.ceil(totalSteps / 20)),
    steps: totalSteps,
    weightDecay: hyperBase.weight_decay ?? 0.1,
    gradClip: hyperBase.grad_clip ?? 1,
    seed: hyperBase.seed ?? 1,
  };
  const config: Gpt2Config = {
    nLayer: cfg.model.n_layer,
    nHead: cfg.model.n_head,
    nEmbd: cfg.model.n_embd,
    nInner: 4 * cfg.model.n_embd,
    nPositions: T,
    vocabSize: tokenizer.vocabSize,
    layerNormEps: 1e-5,
  };
  const statePath = `${opts.out}/trainer_state.json`;
  // Every checkpoint replaces the whole --out folder: it must be new, empty or an earlier checkpoint of
  // train, and hold none of the run's inputs (a corpus or config inside it would be deleted).
  const outAbs = resolve(opts.out);
  for (const [flag, path] of [["--corpus", opts.corpus], ["--config", opts.config]]) {
    const rel = relative(outAbs, resolve(path));
    if (rel !== "" && !rel.startsWith("..") && !isAbsolute(rel)) {
      throw new UsageError(
        `${flag} '${path}' is inside --out '${opts.out}', which every checkpoint replaces; choose another --out`,
      );
    }
  }
  if (exists(opts.out) && !exists(statePath)) {
    if (!Deno.statSync(opts.out).isDirectory || [...Deno.readDirSync(opts.out)].length > 0) {
      throw new UsageError(
        `--out '${opts.out}' exists and is not a training checkpoint (no trainer_state.json); every ` +
          `checkpoint replaces the whole folder, so give a new or empty folder`,
      );
    }
  }
  let resumed: { step: number; seconds: number; losses: [number, number][]; init?: string } | undefined;
  const initDir = opts.init === undefined ? undefined : resolve(opts.init);
  if (!opts.fresh && exists(statePath)) {
    resumed = JSON.parse(Deno.readTextFileSync(statePath)) as NonNullable<typeof resumed>;
    // resuming takes the checkpoint's weights: an --init the run did not start from would be ignored
    if (initDir !== undefined && resumed.init !== initDir) {
      throw new UsageError(
        `${opts.out} holds a checkpoint of a run that did not start from --init ${opts.init}; ` +
          `add --fresh to start over from it, or choose another --out`,
      );
    }
  }
  const engine = await openEngine();
  let model: Gpt2Model;
  if (resumed) {
    model = (await loadGpt2Folder(engine, opts.out)).model;
    if (JSON.stringify(model.config) !== JSON.stringify(config)) {
      throw new UsageError(
        `${opts.out} holds a checkpoint of another model shape; use --fresh or another --out`,
      );
    }
  } else if (opts.init) {
    const from = opts.init;
    model = (await loadGpt2Folder(engine, from)).model;
    if (JSON.stringify(model.config) !== JSON.stringify(config)) {
      throw new UsageError(`init model ${from} does not have the configured shape`);
    }
  } else {
    const init = initGpt2Weights(config, hyper.seed);
    model = buildGpt2(engine, config, {
      tensors: new Map(
        [...init.keys()].map((n) => [n, { shape: [...expectedWeightShapes(config).get(n)!], dtype: "F32" }]),
      ),
      read: (n) => init.get(n)!,
      describe: () => "initialisation",
    });
  }
  /** The --init folder the run started from (kept in trainer_state.json, so a resume can check it). */
  const startedFrom = resumed ? resumed.init : initDir;
  const trainer = new Trainer(model, hyper);
  if (resumed) {
    const st = await readSafetensorsFile(`${opts.out}/optimizer.safetensors`);
    for (const opt of [trainer.decay, trainer.noDecay]) {
      opt.params.forEach((p, i) => {
        const name = trainer.names[trainer.params.indexOf(p)];
        opt.loadState(i, st.read(`m.${name}`), st.read(`v.${name}`), resumed!.step, resumed!.step);
      });
    }
    trainer.step = resumed.step;
  }
  const every = hyperBase.checkpoint_every ?? 200;
  const losses: [number, number][] = resumed?.losses ?? [];
  const t0 = performance.now() - (resumed?.seconds ?? 0) * 1000;
  const tokenizerFiles = {
    "vocab.json": Deno.readTextFileSync(`${tokDir}/vocab.json`),
    "merges.txt": Deno.readTextFileSync(`${tokDir}/merges.txt`),
  };
  const checkpoint = async () => {
    const tensors: { name: string; data: Float32Array; shape: number[] }[] = [];
    for (const opt of [trainer.decay, trainer.noDecay]) {
      const states = opt.params.map((_, i) => opt.state(i));
      const data = await engine.readMany(states.flatMap((s) => [s.m, s.v]));
      opt.params.forEach((p, i) => {
        const name = trainer.names[trainer.params.indexOf(p)];
        tensors.push({ name: `m.${name}`, data: data[2 * i] as Float32Array, shape: [...p.shape] });
        tensors.push({ name: `v.${name}`, data: data[2 * i + 1] as Float32Array, shape: [...p.shape] });
      });
    }
    const state = {
      step: trainer.step,
      seconds: (performance.now() - t0) / 1000,
      hyper,
      losses,
      ...(startedFrom !== undefined ? { init: startedFrom } : {}),
    };
    await saveGpt2Folder(opts.out, model, {
      extraFiles: { ...tokenizerFiles, "trainer_state.json": JSON.stringify(state, null, 1) + "\n" },
      extraTensors: { "optimizer.safetensors": tensors },
      metadata: { trained_steps: String(trainer.step) },
    });
  };
  const bar = new Progress("training", hyperBase.stop_at ?? totalSteps, opts.json);
  let tokens = 0, lastLoss = NaN;
  const runStart = performance.now();
  const stopAt = Math.min(totalSteps, hyperBase.stop_at ?? totalSteps);
  while (trainer.step < stopAt) {
    const s = trainer.step;
    const order = epochOrder(rows.length, hyper.seed, Math.floor(s / stepsPerEpoch));
    const k = s % stepsPerEpoch;
    const batch = order.slice(k * B, k * B + B).map((i) => rows[i]);
    const loss = trainer.trainStep(batch);
    lastLoss = (await loss.read())[0];
    loss.dispose();
    if (!Number.isFinite(lastLoss)) {
      throw new Error(`training diverged at step ${s} (loss ${lastLoss}); lower the learning rate`);
    }
    tokens += batch.reduce((a, r) => a + r.length - 1, 0);
    losses.push([trainer.step, lastLoss]);
    const tps = tokens / ((performance.now() - runStart) / 1000);
    bar.update(trainer.step, `loss ${lastLoss.toFixed(3)} ${tps.toFixed(0)} tok/s`);
    if (trainer.step % every === 0 || trainer.step === stopAt) await checkpoint();
  }
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  const result = {
    steps: trainer.step,
    // a finished run that is resumed trains no step: its last recorded loss
    loss: Number.isNaN(lastLoss) ? losses.at(-1)?.[1] ?? NaN : lastLoss,
    seconds,
    tokensPerSecond: tokens / ((performance.now() - runStart) / 1000),
  };
  trainer.dispose();
  return result;
}

async function cmdTrain(args: string[]): Promise<void> {
  const opts = parse(args, {
    config: { type: "string" },
    corpus: { type: "string" },
    out: { type: "string" },
    tokenizer: { type: "string" },
    steps: { type: "string" },
    init: { type: "string" },
    fresh: { type: "boolean" },
    json: { type: "boolean" },
  }, TRAIN_USAGE);
  for (const k of ["config", "corpus", "out"]) {
    if (!opts[k]) throw new UsageError(`--${k} is required\n\n${TRAIN_USAGE}`);
  }
  const steps = opts.steps === undefined ? undefined : intOption(opts, "steps", 0, 1);
  // the files named, checked before the GPU starts (train() reads them in a different order)
  const corpus = opts.corpus as string;
  if (!isFile(corpus)) throw new UsageError(`--corpus '${corpus}' not found (a text file)`);
  const tokDir = (opts.tokenizer as string | undefined) ?? dirname(corpus);
  if (!isFile(join(tokDir, "vocab.json")) || !isFile(join(tokDir, "merges.txt"))) {
    throw new UsageError(
      opts.tokenizer !== undefined
        ? `--tokenizer '${tokDir}' has no vocab.json and merges.txt`
        : `no vocab.json and merges.txt beside --corpus in '${tokDir}'; give --tokenizer DIR`,
    );
  }
  if (opts.init !== undefined && !isFile(join(opts.init as string, "config.json"))) {
    throw new UsageError(`--init '${opts.init}' is not a model folder (no config.json)`);
  }
  const res = await train({
    config: opts.config as string,
    corpus,
    out: opts.out as string,
    tokenizerDir: opts.tokenizer as string | undefined,
    steps,
    fresh: Boolean(opts.fresh),
    json: Boolean(opts.json),
    init: opts.init as string | undefined,
  });
  if (opts.json) console.log(JSON.stringify(res));
  else {console.log(
      `trained ${res.steps} steps, final loss ${res.loss.toFixed(4)}, ${fmtSeconds(res.seconds)}, ${
        res.tokensPerSecond.toFixed(0)
      } tokens/s → ${opts.out}`,
    );}
}

const WORLD_DIR = "data/world";

const TRAIN_DEMO_USAGE = `deno task train-demo [--out DIR] [--fresh]
  Rebuilds the bundled model from the facts world: ${WORLD_DIR}/train_config.json on ${WORLD_DIR}/corpus.txt (the
  world's biographies), from GPT-2's initialisation, into DIR/model (default DIR out/train-demo); then checks how
  many facts the model knows. Resumable: an interrupted run continues from its last checkpoint, and a finished
  one is not run again; deterministic on one machine.`;

async function cmdTrainDemo(args: string[]): Promise<void> {
  const opts = parse(args, { out: { type: "string" }, fresh: { type: "boolean" } }, TRAIN_DEMO_USAGE);
  const out = (opts.out as string | undefined) ?? "out/train-demo";
  const t0 = performance.now();
  // One stage on biographies (several passages per subject, facts in shuffled order): the model then reads a
  // subject's attributes at its name, as GPT-2 XL does. The earlier world's one-fact sentences and fact drills
  // taught the bundled model to look facts up at the prompt's last token instead (../shared/docs pilot).
  const res = await train({
    config: `${WORLD_DIR}/train_config.json`,
    corpus: `${WORLD_DIR}/corpus.txt`,
    out: `${out}/model`,
    fresh: Boolean(opts.fresh),
  });
  console.log(
    `trained ${res.steps} steps (final loss ${res.loss.toFixed(4)}); wall time of this run ${
      fmtSeconds((performance.now() - t0) / 1000)
    }`,
  );
  await cmdFacts(["--model", `${out}/model`]);
}

const FACTS_USAGE = `deno task facts [--model DIR] [--world DIR] [--json]
  How many facts of the facts world the model knows: top-1 next token = the true object, over every fact (first
  training phrasing of its relation), over the CounterFact rewrite prompts, and over phrasings the model never
  saw: every fact in each of its relation's held-out phrasings, and the CounterFact paraphrase prompts.`;

async function cmdFacts(args: string[]): Promise<void> {
  const opts = parse(
    args,
    { ...MODEL_OPTION, world: { type: "string" }, json: { type: "boolean" } },
    FACTS_USAGE,
  );
  const world = (opts.world as string | undefined) ?? WORLD_DIR;
  for (const f of ["facts.json", "counterfact.json"]) {
    if (!isFile(join(world, f))) {
      throw new UsageError(
        opts.world !== undefined
          ? `--world '${world}' has no ${f} (a facts world folder, like ${WORLD_DIR})`
          : `the facts world '${world}' has no ${f}: run from the repository's root, or give --world DIR`,
      );
    }
  }
  const facts = await readJsonFile(join(world, "facts.json"), "facts file") as {
    relations: { relation_id: string; training: string[]; held_out?: string[] }[];
    facts: { subject: string; relation_id: string; object: string }[];
  };
  const cf = await readJsonFile(join(world, "counterfact.json"), "CounterFact file") as {
    requested_rewrite: { prompt: string; subject: string; target_true: { str: string } };
    paraphrase_prompts: string[];
  }[];
  const { model, tokenizer } = await loadModel(opts);
  const relations = new Map(facts.relations.map((r) => [r.relation_id, r]));
  const factProbes = facts.facts.map((f) => ({
    prompt: relations.get(f.relation_id)!.training[0].replace("{}", f.subject),
    target: f.object,
  }));
  const heldOut = facts.facts.flatMap((f) =>
    (relations.get(f.relation_id)!.held_out ?? []).map((t) => ({
      relation: f.relation_id,
      probe: { prompt: t.replace("{}", f.subject), target: f.object },
    }))
  );
  const heldOutProbes = heldOut.map((h) => h.probe);
  const rewriteProbes = cf.map((r) => ({
    prompt: r.requested_rewrite.prompt.replace("{}", r.requested_rewrite.subject),
    target: r.requested_rewrite.target_true.str,
  }));
  const paraphraseProbes = cf.flatMap((r) =>
    r.paraphrase_prompts.map((prompt) => ({ prompt, target: r.requested_rewrite.target_true.str }))
  );
  const sets = [factProbes, rewriteProbes, heldOutProbes, paraphraseProbes];
  const total = sets.reduce((n, s) => n + s.length, 0);
  const bar = new Progress("checking facts", total, Boolean(opts.json));
  const results = [];
  let done = 0;
  for (const probes of sets) {
    results.push(await topOneAccuracy(model, tokenizer, probes, { onBatch: (k) => bar.update(done + k) }));
    done += probes.length;
  }
  bar.done();
  const share = (correct: boolean[], idx: number[]) => idx.filter((i) => correct[i]).length / idx.length;
  const byRelation: Record<string, { n: number; accuracy: number; held_out_accuracy: number }> = {};
  for (const rel of relations.keys()) {
    const idx = facts.facts.flatMap((f, i) => f.relation_id === rel ? [i] : []);
    const held = heldOut.flatMap((h, i) => h.relation === rel ? [i] : []);
    byRelation[rel] = {
      n: idx.length,
      accuracy: share(results[0].correct, idx),
      held_out_accuracy: share(results[2].correct, held),
    };
  }
  const res = {
    model: modelDir(opts),
    facts: { n: factProbes.length, accuracy: results[0].accuracy, by_relation: byRelation },
    rewrite_prompts: { n: rewriteProbes.length, accuracy: results[1].accuracy },
    held_out_phrasings: { n: heldOutProbes.length, accuracy: results[2].accuracy },
    paraphrase_prompts: { n: paraphraseProbes.length, accuracy: results[3].accuracy },
  };
  if (opts.json) return console.log(JSON.stringify(res));
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log(`facts known (top-1): ${pct(results[0].accuracy)} of ${factProbes.length}`);
  for (const [rel, r] of Object.entries(byRelation)) {
    console.log(`  ${rel}: ${pct(r.accuracy)} of ${r.n} (held-out phrasings ${pct(r.held_out_accuracy)})`);
  }
  console.log(
    `CounterFact rewrite prompts (true object top-1): ${pct(results[1].accuracy)} of ${rewriteProbes.length}`,
  );
  console.log(`held-out phrasings of every fact: ${pct(results[2].accuracy)} of ${heldOutProbes.length}`);
  console.log(`CounterFact paraphrase prompts: ${pct(results[3].accuracy)} of ${paraphraseProbes.length}`);
}

// ------------------------------------------------------------------ edit / stats (ROME)

/** The bundled model, edited when no --model is given (lands with the trained world model). */
const DEFAULT_EDIT_MODEL = BUNDLED_MODEL;
/** CounterFact-format records of the bundled world, and the default case edited with no arguments. */
const DEFAULT_EDIT_DATASET = fileURLToPath(new URL("./data/world/counterfact.json", import.meta.url));
const DEFAULT_EDIT_CASE = 0;
/** Text the statistics C are taken over unless --corpus says otherwise: the bundled model's training corpus. */
const DEFAULT_STATS_CORPUS = fileURLToPath(new URL("./data/world/corpus.txt", import.meta.url));
/** Shipped statistics inside a model folder, checked before the cache: `<model>/stats/layer<L>.safetensors`. */
export const shippedStatsPath = (dir: string, layer: number) => join(dir, shippedStatsFile(layer));
/** Checkpoints of an interrupted statistics run are saved at most this often. */
const STATS_CHECKPOINT_SECONDS = 30;
/** The checkpoint interval; ROME_STATS_CHECKPOINT_SECONDS overrides it (tests/kill_test.ts: 0, every group). */
function statsCheckpointSeconds(): number {
  const raw = Deno.env.get("ROME_STATS_CHECKPOINT_SECONDS");
  const s = raw === undefined || raw === "" ? NaN : Number(raw);
  return Number.isFinite(s) && s >= 0 ? s : STATS_CHECKPOINT_SECONDS;
}

/** `${XDG_CACHE_HOME:-~/.cache}/rome-webgpu/<model hash>`: statistics and context templates of a model. */
export function romeCacheDir(hash: string): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  const root = xdg ? xdg : home ? join(home, ".cache") : undefined;
  if (!root) throw new Error("no cache directory: set XDG_CACHE_HOME or HOME");
  return join(root, "rome-webgpu", hash);
}

/** Runs `fn`, turning the rome/ modules' input errors into usage errors (one line, exit code 2). */
async function romeUsage<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (
      e instanceof RomeInputError || e instanceof HparamsError || e instanceof PatchError ||
      e instanceof NpzError || e instanceof StatsError
    ) throw new UsageError(e.message);
    throw e;
  }
}

function layerInRange(model: Gpt2Model, layer: number): void {
  try {
    checkLayer(model, layer);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function readBytes(path: string, what: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${path}' not found`);
    throw new Error(`${what} '${path}': ${(e as Error).message}`);
  }
}

/** The edits log of a model folder, if it has one. */
function readEditsLog(dir: string): EditsLog | undefined {
  const path = join(dir, "edits.json");
  if (!exists(path)) return undefined;
  try {
    return parseEditsLog(JSON.parse(Deno.readTextFileSync(path)), path);
  } catch (e) {
    if (e instanceof PatchError) throw e;
    throw new UsageError(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** The folder's unedited model hash (statistics and templates belong to it, as the reference computes them once). */
function baseModelHash(dir: string, model: Gpt2Model): string {
  return readEditsLog(dir)?.base_model_hash ?? model.hash;
}

/** The model folder to edit: --model, or the bundled one (with a clear message while it is missing). */
function editModelDir(opts: Record<string, unknown>): string {
  const dir = (opts.model as string | undefined) ?? DEFAULT_EDIT_MODEL;
  if (!exists(dir)) {
    const stale = (() => {
      try {
        const parent = dirname(dir), base = basename(dir);
        return [...Deno.readDirSync(parent)].find((e) => e.name.startsWith(`${base}.old-`))?.name;
      } catch {
        return undefined;
      }
    })();
    if (stale) {
      throw new UsageError(
        `model folder '${dir}' is missing but '${join(dirname(dir), stale)}' exists: an interrupted save ` +
          `left the previous copy there; rename it back to '${dir}'`,
      );
    }
    if (opts.model === undefined) {
      throw new UsageError(
        `the bundled model ${dir} is not there yet (it is trained by \`deno task train-demo\`); give --model DIR`,
      );
    }
    throw new UsageError(`model folder '${dir}' not found (give --model DIR, a Hugging Face GPT-2 folder)`);
  }
  return dir;
}

// ---- the corpus and the statistics C

interface Corpus {
  path: string;
  /** Documents in order (files sorted by name). */
  texts: string[];
  /** First 16 hex digits of the SHA-256 of the files' bytes, in order. */
  hash: string;
}

async function readStatsCorpus(path: string): Promise<Corpus> {
  let files: string[];
  try {
    const st = Deno.statSync(path);
    files = st.isDirectory
      ? [...Deno.readDirSync(path)].filter((e) => e.isFile && e.name.endsWith(".txt")).map((e) =>
        join(path, e.name)
      )
        .sort()
      : [path];
  } catch {
    throw new UsageError(`--corpus '${path}' not found (a text file, or a folder of .txt files)`);
  }
  if (files.length === 0) throw new UsageError(`--corpus '${path}' holds no .txt files`);
  const parts: Uint8Array[] = [];
  const texts: string[] = [];
  for (const f of files) {
    const bytes = await Deno.readFile(f);
    parts.push(bytes, new Uint8Array([0]));
    texts.push(...splitCorpus(new TextDecoder().decode(bytes)));
  }
  if (texts.length === 0) throw new UsageError(`--corpus '${path}' holds no documents`);
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) (all.set(p, at), at += p.byteLength);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return {
    path,
    texts,
    hash: Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(""),
  };
}

function tokenizedCorpus(corpus: Corpus, tokenizer: Gpt2Tokenizer): CorpusDocuments {
  return { length: corpus.texts.length, tokens: (i) => tokenizer.encode(corpus.texts[i]) };
}

/** Where statistics C came from, and the GPU matrix (mom2 / count) the caller disposes. */
export interface LayerStats {
  C: Tensor;
  count: number;
  /** Identity recorded in patches: the cache key, "npz:<file>", or the file used. */
  id: string;
  source: "file" | "shipped" | "cache" | "computed";
  path: string;
  seconds: number;
  /** Mean of C's diagonal (E[k_i²] averaged over i): a scale for --damping. */
  meanDiagonal: number;
  documents?: number;
  tokensPerSecond?: number;
}

function meanDiagonal(mom2: Float32Array, count: number): number {
  const n = Math.round(Math.sqrt(mom2.length));
  let t = 0;
  for (let i = 0; i < n; i++) t += mom2[i * n + i];
  return t / count / n;
}

export interface LayerStatsOptions {
  layer: number;
  /** Model folder (for shipped statistics) and the base hash the cache is keyed by. */
  dir: string;
  baseHash: string;
  /**
   * --corpus: C over this text. Shipped statistics stand in for it only when they record this very corpus
   * and number of documents (then they are what computing would give, as a cache entry is).
   */
  corpus?: string;
  /** --samples: the first N documents of the corpus, which must have that many; shipped files as --corpus. */
  samples?: number;
  /** Documents without --samples (the hparams' mom2_n_samples), or all the corpus has if fewer. */
  defaultSamples?: number;
  /** An explicit statistics file (.safetensors of ours, or the reference's .npz). */
  file?: string;
  quiet?: boolean;
  signal?: AbortSignal;
}

/** What C is to come from, as --stats/--npz/--corpus/--samples say: checked before any model is loaded. */
interface StatsRequest {
  file?: string;
  corpus?: string;
  samples?: number;
}

function statsRequest(opts: Record<string, unknown>): StatsRequest {
  if (opts.stats !== undefined && opts.npz !== undefined) {
    throw new UsageError("give either --stats FILE or --npz FILE");
  }
  const fileOption = opts.stats !== undefined ? "stats" : "npz";
  const file = opts[fileOption] as string | undefined;
  if (file !== undefined) {
    for (const k of ["corpus", "samples"]) {
      if (opts[k] !== undefined) {
        throw new UsageError(
          `--${k} is for computing the statistics C; --${fileOption} reads them from a file`,
        );
      }
    }
    if (!isFile(file)) throw new UsageError(`statistics file '${file}' not found`);
  }
  const corpus = opts.corpus as string | undefined;
  if (corpus !== undefined) {
    try {
      Deno.statSync(corpus);
    } catch {
      throw new UsageError(`--corpus '${corpus}' not found (a text file, or a folder of .txt files)`);
    }
  }
  const samples = opts.samples === undefined ? undefined : intOption(opts, "samples", 0, 1);
  return { file, corpus, samples };
}

/** Options that only say where C comes from, refused where no C is used (`why` says which setting). */
function refuseStatsOptions(opts: Record<string, unknown>, why: string, also: string[] = []): void {
  for (const k of ["stats", "npz", "corpus", "samples", ...also]) {
    if (opts[k] !== undefined) {
      throw new UsageError(`--${k} is for the statistics C, which is not used with ${why}`);
    }
  }
}

/** C on the GPU from Σ k kᵀ read from `where`; a matrix of the wrong width is a usage error. */
const uploadStats = (model: Gpt2Model, mom2: Float32Array, count: number, where: string) =>
  romeUsage(() => uploadSecondMoment(model, mom2, count, where));

/**
 * C at a layer: an explicit --stats/--npz file, else the folder's shipped `stats/layer<L>.safetensors`,
 * else the cache (model hash, layer, corpus hash, samples), else computed now over the corpus on the GPU
 * (progress bar, checkpoints every 30 s, resumable after an interruption) and cached.
 */
export async function layerStats(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: LayerStatsOptions,
): Promise<LayerStats> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  if (o.file) {
    const bytes = await readBytes(o.file, "statistics file");
    const { mom2, count, info } = o.file.endsWith(".npz")
      ? { ...await romeUsage(() => readReferenceMom2(bytes, o.file!)), info: {} as Partial<StatsInfo> }
      : decodeSecondMoment(bytes, o.file);
    // what the file records about itself must fit this edit (the reference's .npz records nothing)
    if (info.layer !== undefined && info.layer !== o.layer) {
      throw new UsageError(
        `statistics file '${o.file}' holds C of layer ${info.layer}, not of layer ${o.layer}`,
      );
    }
    if (info.model_hash !== undefined && info.model_hash !== "unknown" && info.model_hash !== o.baseHash) {
      throw new UsageError(
        `statistics file '${o.file}' belongs to model ${info.model_hash}, not to this one (${o.baseHash})`,
      );
    }
    if (info.cursor !== undefined && info.samples !== undefined && info.cursor < info.samples) {
      throw new UsageError(
        `statistics file '${o.file}' is an unfinished checkpoint (${info.cursor} of ${info.samples} documents)`,
      );
    }
    const C = await uploadStats(model, mom2, count, o.file);
    return {
      C,
      count,
      id: `file:${basename(o.file)}`,
      source: "file",
      path: o.file,
      seconds: seconds(),
      meanDiagonal: meanDiagonal(mom2, count),
    };
  }
  // With --corpus or --samples the corpus is read first: its hash and the count decide whether shipped
  // statistics are the ones asked for; without them the folder's shipped file is used as it is.
  const explicit = o.corpus !== undefined || o.samples !== undefined;
  let corpus: Corpus | undefined, samples = 0;
  const readCorpus = async () => {
    corpus = await readStatsCorpus(o.corpus ?? DEFAULT_STATS_CORPUS);
    const n = corpus.texts.length;
    if (o.samples !== undefined && o.samples > n) {
      throw new UsageError(
        `--samples must be an integer from 1 to ${n}: '${corpus.path}' holds ${n} documents (got '${o.samples}')`,
      );
    }
    samples = o.samples ?? Math.min(n, o.defaultSamples ?? n);
    return corpus;
  };
  if (explicit) await readCorpus();
  const shipped = shippedStatsPath(o.dir, o.layer);
  if (exists(shipped)) {
    const { mom2, count, info } = decodeSecondMoment(await Deno.readFile(shipped), shipped);
    const fits = statsFitModel(info, o.layer, o.baseHash);
    const asked = !explicit || (info.corpus_hash === corpus!.hash && info.samples === samples);
    if (fits && asked) {
      const C = await uploadStats(model, mom2, count, shipped);
      const id = info.corpus_hash ? statsCacheName(o.layer, info.corpus_hash, info.samples ?? 0) : shipped;
      return {
        C,
        count,
        id,
        source: "shipped",
        path: shipped,
        seconds: seconds(),
        meanDiagonal: meanDiagonal(mom2, count),
      };
    }
    if (!o.quiet) {
      console.error(
        fits
          ? `note: ${shipped} is over another corpus or number of documents; C is taken over ${
            corpus!.path
          } as asked`
          : `note: ${shipped} belongs to another model or layer; not used`,
      );
    }
  }
  const c = corpus ?? await readCorpus();
  const name = statsCacheName(o.layer, c.hash, samples);
  const dir = join(romeCacheDir(o.baseHash), "stats");
  const path = join(dir, name);
  if (exists(path)) {
    const { mom2, count } = decodeSecondMoment(await Deno.readFile(path), path);
    const C = await uploadStats(model, mom2, count, path);
    return {
      C,
      count,
      id: name,
      source: "cache",
      path,
      seconds: seconds(),
      meanDiagonal: meanDiagonal(mom2, count),
    };
  }
  await Deno.mkdir(dir, { recursive: true });
  const partial = path.replace(/\.safetensors$/, ".partial.safetensors");
  let resume: SecondMomentCheckpoint | undefined;
  if (exists(partial)) {
    try {
      const r = decodeSecondMoment(await Deno.readFile(partial), partial);
      if (r.info.cursor !== undefined && r.info.cursor <= samples) resume = { ...r, cursor: r.info.cursor };
    } catch {
      resume = undefined; // an unreadable checkpoint is recomputed, not trusted
    }
  }
  const info = {
    model_hash: o.baseHash,
    layer: o.layer,
    corpus_hash: c.hash,
    samples,
    source: c.path,
  };
  const bar = new Progress(`statistics C, layer ${o.layer}`, samples, o.quiet);
  const startTokens = resume?.count ?? 0;
  let lastSave = performance.now(), final: SecondMomentCheckpoint | undefined;
  const enc = (s: SecondMomentCheckpoint) =>
    encodeSecondMoment(s.mom2, s.count, { ...info, cursor: s.cursor });
  if (resume && !o.quiet) console.error(`resuming ${partial} at document ${resume.cursor} of ${samples}`);
  const run = await secondMomentStats(model, o.layer, tokenizedCorpus(c, tokenizer), {
    samples,
    resume,
    signal: o.signal,
    onProgress: (docs, tokens) =>
      bar.update(docs, `${((tokens - startTokens) / seconds()).toFixed(0)} tok/s`),
    checkpoint: {
      due: () => performance.now() - lastSave >= statsCheckpointSeconds() * 1000,
      save: async (s) => {
        lastSave = performance.now();
        if (s.cursor === samples) final = s;
        else await writeFileAtomic(partial, enc(s));
      },
    },
  });
  bar.done();
  await writeFileAtomic(path, enc(final!));
  killPoint("stats:final-written", path);
  await Deno.remove(partial).catch(() => {});
  const C = model.engine.scope(() => model.engine.keep(secondMomentMatrix(run.mom2, run.count)));
  run.mom2.dispose();
  const s = seconds();
  return {
    C,
    count: run.count,
    id: name,
    source: "computed",
    path,
    seconds: s,
    meanDiagonal: meanDiagonal(final!.mom2, final!.count),
    documents: samples - (resume?.cursor ?? 0),
    tokensPerSecond: (run.count - startTokens) / s,
  };
}

/** layerStats with Ctrl-C stopping after the current group (its checkpoint saved) instead of losing the run. */
async function layerStatsInterruptible(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: LayerStatsOptions,
): Promise<LayerStats> {
  const ac = new AbortController();
  const onInt = () => ac.abort();
  Deno.addSignalListener("SIGINT", onInt);
  try {
    return await layerStats(model, tokenizer, { ...o, signal: ac.signal });
  } catch (e) {
    if (e instanceof StatsInterrupted) throw new Error(`statistics ${e.message}`);
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
  }
}

const STATS_USAGE =
  `deno task stats [--model DIR] [--layer L] [--corpus FILE|DIR] [--samples N] [--out FILE] [--json]
deno task stats --npz FILE [--model DIR] [--out FILE] [--json]
  Second-moment statistics C = E[k kᵀ] of the MLP keys (the input of mlp.c_proj) at layer L, which ROME's
  update solves against (u = C⁻¹ k̄). Summed on the GPU over the first N documents of the corpus (default:
  the hparams' mom2_n_samples, 100000, or all there are; --samples N needs N documents) of --corpus (default
  ${DEFAULT_STATS_CORPUS}; documents are separated by lines holding only <|endoftext|>;
  a folder means every .txt in it), each cut at the model's context length. Cached under
  ${romeCacheDir("<model hash>")}/stats/layer<L>_<corpus hash>_<N>.safetensors ('mom2' = Σ k kᵀ,
  'count' = tokens); an interrupted run (Ctrl-C, or killed) resumes from its last checkpoint. A model folder
  may ship its own: <model>/stats/layer<L>.safetensors is used before the cache (--out writes such a file),
  unless --corpus or --samples ask for statistics over another corpus or number of documents than it holds.
  --layer defaults to the model's default edit layer (its hparams). --npz reads the reference's precomputed
  statistics (keys mom2.mom2, mom2.count; e.g. transformer.h.17.mlp.c_proj_float32_mom2_100000.npz),
  checks them against --model when given and converts them with --out.`;

/**
 * `stats --out` replaces the file it names: only a statistics file (one holding 'mom2') or a new path. A
 * model's weights, a corpus or any other file the user owns is refused before any work starts.
 */
async function statsOutIsFree(out: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(out);
  } catch {
    return; // a new file
  }
  if (!info.isFile) throw new UsageError(`--out '${out}' is a folder; name the statistics file to write`);
  let isStats = false;
  try {
    isStats = (await readSafetensorsFile(out)).tensors.has("mom2");
  } catch { /* not a safetensors file */ }
  if (!isStats) {
    throw new UsageError(`--out '${out}' exists and is not a statistics file; refusing to overwrite it`);
  }
}

async function cmdStats(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    layer: { type: "string" },
    corpus: { type: "string" },
    samples: { type: "string" },
    npz: { type: "string" },
    out: { type: "string" },
    json: { type: "boolean" },
  }, STATS_USAGE);
  const json = Boolean(opts.json);
  if (opts.out !== undefined) await statsOutIsFree(opts.out as string);
  if (opts.npz !== undefined) return await statsFromNpz(opts);
  const request = statsRequest(opts);
  const explicitLayer = opts.layer === undefined ? undefined : intOption(opts, "layer", 0);
  const dir = editModelDir(opts);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const hp = defaultHparams(model.config).hparams;
  const layer = explicitLayer ?? hp.layers[0];
  layerInRange(model, layer);
  const s = await layerStatsInterruptible(model, tokenizer, {
    layer,
    dir,
    baseHash: baseModelHash(dir, model),
    corpus: request.corpus,
    samples: request.samples,
    // the same default as edit's (the hparams' mom2_n_samples), so both find the same cache entry
    defaultSamples: hp.mom2_n_samples,
    quiet: json,
  });
  const diag = s.meanDiagonal;
  s.C.dispose();
  if (opts.out) {
    const bytes = await Deno.readFile(s.path);
    await Deno.mkdir(dirname(opts.out as string), { recursive: true });
    await writeFileAtomic(opts.out as string, [bytes]);
  }
  const record = {
    model: dir,
    model_hash: model.hash,
    layer,
    source: s.source,
    cached: s.source !== "computed",
    path: s.path,
    ...(opts.out ? { out: opts.out } : {}),
    count: s.count,
    mean_diagonal: diag,
    seconds: s.seconds,
    ...(s.tokensPerSecond !== undefined
      ? { documents: s.documents, tokens_per_second: s.tokensPerSecond }
      : {}),
  };
  if (json) return console.log(JSON.stringify(record));
  console.log(
    `C at layer ${layer}: ${s.count} tokens, mean diagonal ${fmt(diag, 4)} (${
      s.source === "computed"
        ? `computed over ${s.documents} documents, ${s.tokensPerSecond!.toFixed(0)} tokens/s, ${
          fmtSeconds(s.seconds)
        }`
        : `${s.source}`
    })`,
  );
  console.log(
    `${s.source === "computed" ? "cached in" : "from"} ${s.path}${opts.out ? `; copied to ${opts.out}` : ""}`,
  );
}

async function statsFromNpz(opts: Record<string, unknown>): Promise<void> {
  const file = opts.npz as string;
  for (const f of ["corpus", "samples"]) {
    if (opts[f] !== undefined) throw new UsageError(`--${f} is for computing statistics, not with --npz`);
  }
  const { mom2, dff, count } = await romeUsage(async () =>
    readReferenceMom2(await readBytes(file, "--npz"), file)
  );
  const named = /\.h\.(\d+)\.mlp/.exec(basename(file));
  const layer = opts.layer !== undefined ? intOption(opts, "layer", 0) : named ? Number(named[1]) : undefined;
  let hash = "unknown";
  if (opts.model !== undefined) {
    const dir = editModelDir(opts);
    const { model } = await loadModel({ ...opts, model: dir }, Boolean(opts.json));
    if (model.config.nInner !== dff) {
      throw new UsageError(
        `${file} is a ${dff}² matrix; ${dir}'s MLP keys have d_ff = ${model.config.nInner}`,
      );
    }
    if (layer !== undefined) layerInRange(model, layer);
    hash = baseModelHash(dir, model);
  }
  if (opts.out) {
    if (layer === undefined) {
      throw new UsageError("--layer L is needed to convert (the file name does not say)");
    }
    await Deno.mkdir(dirname(opts.out as string), { recursive: true });
    await writeFileAtomic(
      opts.out as string,
      encodeSecondMoment(mom2, count, {
        model_hash: hash,
        layer,
        corpus_hash: "npz",
        samples: 0,
        cursor: 0,
        source: basename(file),
      }),
    );
  }
  let trace = 0;
  for (let i = 0; i < dff; i++) trace += mom2[i * dff + i];
  const record = {
    npz: file,
    d_ff: dff,
    count,
    layer: layer ?? null,
    mean_diagonal: trace / count / dff,
    out: opts.out ?? null,
  };
  if (opts.json) return console.log(JSON.stringify(record));
  console.log(
    `${file}: Σ k kᵀ over ${count} tokens, d_ff = ${dff}${layer !== undefined ? `, layer ${layer}` : ""}, ` +
      `mean diagonal of C ${fmt(trace / count / dff, 4)}${opts.out ? `; wrote ${opts.out}` : ""}`,
  );
}

// ---- context templates

async function contextTemplatesCached(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  baseHash: string,
  params: [number, number][],
  seed: number,
  quiet: boolean,
): Promise<{ templates: string[]; cached: boolean }> {
  const key = params.map(([l, n]) => `${l}x${n}`).join("_");
  const path = join(romeCacheDir(baseHash), `context_templates_seed${seed}_${key}.json`);
  if (exists(path)) {
    try {
      const j = JSON.parse(await Deno.readTextFile(path));
      return { templates: parseContextTemplates(j.templates, path), cached: true };
    } catch {
      // regenerated below
    }
  }
  const bar = new Progress("context templates", params.length, quiet);
  const templates = await generateContextTemplates(model, tokenizer, params, seed, (d) => bar.update(d));
  bar.done();
  await Deno.mkdir(dirname(path), { recursive: true });
  const record = { model_hash: baseHash, seed, length_params: params, templates };
  await writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify(record, null, 1) + "\n")]);
  return { templates, cached: false };
}

// ---- saving edited folders

/**
 * Files never copied from the source folder on save: weights (rewritten; stale copies in other formats would
 * contradict the edit) and training state (an edited model is not a checkpoint to resume training from).
 */
const WEIGHT_FILE =
  /^(optimizer\.safetensors|trainer_state\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin|pytorch_model\.bin\.index\.json|tf_model\.h5|flax_model\.msgpack|.*\.(pt|pth|ckpt|bin))$/;

function folderFiles(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(dir, rel))) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...folderFiles(dir, r));
    else if (e.isFile) out.push(r);
  }
  return out;
}

/**
 * Writes the edited model as a complete Hugging Face folder: saveGpt2Folder into a fresh staging folder,
 * the source folder's other files (tokenizer, shipped statistics, earlier patch copies) and `files` added
 * there, then the staging folder replaces `out` by renames. Until that last step `out` is untouched; an
 * existing `out` that is not a model folder is refused rather than replaced.
 */
export async function saveEditedFolder(
  src: string,
  out: string,
  model: Gpt2Model,
  files: Record<string, string | Uint8Array>,
  drop: ReadonlySet<string> = new Set(),
): Promise<void> {
  if (exists(out) && !exists(join(out, "config.json"))) {
    if ([...Deno.readDirSync(out)].length > 0) {
      throw new UsageError(`--out '${out}' exists and is not a model folder; give a new folder`);
    }
  }
  const copied: Record<string, Uint8Array> = {};
  for (const rel of folderFiles(src)) {
    if (
      rel === "config.json" || rel === "edits.json" || WEIGHT_FILE.test(rel) || drop.has(rel) || rel in files
    ) continue;
    copied[rel] = await Deno.readFile(join(src, rel));
  }
  const all = { ...copied, ...files };
  const flat = Object.fromEntries(Object.entries(all).filter(([k]) => !k.includes("/")));
  const nested = Object.entries(all).filter(([k]) => k.includes("/"));
  const stage = `${out}.stage-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await saveGpt2Folder(stage, model, { extraFiles: flat });
    for (const [rel, data] of nested) {
      await Deno.mkdir(dirname(join(stage, rel)), { recursive: true });
      if (typeof data === "string") await Deno.writeTextFile(join(stage, rel), data);
      else await Deno.writeFile(join(stage, rel), data);
    }
    killPoint("edited:staged", stage);
    let old: string | undefined;
    if (exists(out)) {
      old = `${out}.old-${crypto.randomUUID().slice(0, 8)}`;
      await Deno.rename(out, old);
      killPoint("edited:moved-aside", old);
    }
    await Deno.rename(stage, out);
    if (old) killPoint("edited:swapped", out);
    if (old) await Deno.remove(old, { recursive: true });
  } catch (e) {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** Where an edited model goes: --out DIR, or the input folder itself with --in-place; never the input otherwise. */
function editOutputDir(opts: Record<string, unknown>, dir: string, required: boolean): string | undefined {
  const out = opts.out as string | undefined;
  if (opts["in-place"]) {
    if (out !== undefined && resolve(out) !== resolve(dir)) {
      throw new UsageError("give either --out DIR or --in-place");
    }
    return dir;
  }
  if (out === undefined) {
    if (required) {
      throw new UsageError("--out DIR is required (a new folder), or --in-place to change --model's folder");
    }
    return undefined;
  }
  if (resolve(out) === resolve(dir)) {
    throw new UsageError(
      `--out is the input folder '${dir}': pass --in-place to overwrite it, or choose another --out`,
    );
  }
  return out;
}

// ---- deno task edit

const EDIT_USAGE =
  `deno task edit [--model DIR] --prompt "{} is located in" --subject S --target T [--target-true T]
                [--layer L|auto] [--hparams FILE] [--variant rome|r-rome] [--seed S]
                [--stats FILE | --npz FILE] [--corpus FILE|DIR] [--samples N] [--damping λ]
                [--out DIR | --in-place] [--patch FILE] [--max-tokens N] [--json]
deno task edit [--model DIR] --case ID [--dataset FILE] ...     (a CounterFact record)
deno task edit --apply PATCH  --model DIR (--out DIR2 | --in-place) [--json]
deno task edit --revert PATCH --model DIR (--out DIR2 | --in-place) [--json]
deno task edit --list --model DIR [--json]
  Rewrites one fact with ROME (Meng et al. 2022): the subject's MLP key k̄ at layer L (averaged over
  context prefixes sampled from the model, seeded by --seed) is mapped to a value v* optimised so that
  the model says T after the prompt; the change is one rank-one update of mlp.c_proj at L. Prints the
  probabilities of the new and the true target on the prompt, its paraphrases and neighbours before and
  after, and greedy generations. --case takes all of that from a CounterFact record of --dataset
  (default ${DEFAULT_EDIT_DATASET}). With no arguments: case ${DEFAULT_EDIT_CASE} on the bundled model.
  --layer auto uses causal tracing's suggestion for this model (deno task trace --facts). Hyperparameters:
  --hparams FILE, else rome/hparams/<model>.json chosen by the model's shape. --variant r-rome uses the
  averaged key in the update's denominator too (R-ROME, Gupta et al. 2024). C: see deno task stats.
  --out DIR saves the edited model (a complete Hugging Face folder, written atomically, with edits.json
  and a copy of the patch); --patch FILE writes the edit as a patch. The input folder is only changed
  with --in-place. --apply / --revert replay or undo a patch bit for bit (the last edit of a matrix must
  be reverted first); --list shows the edits recorded in a folder.`;

const EDIT_OPTIONS = {
  ...MODEL_OPTION,
  prompt: { type: "string" },
  subject: { type: "string" },
  target: { type: "string" },
  "target-true": { type: "string" },
  case: { type: "string" },
  dataset: { type: "string" },
  layer: { type: "string" },
  hparams: { type: "string" },
  variant: { type: "string" },
  seed: { type: "string" },
  stats: { type: "string" },
  npz: { type: "string" },
  corpus: { type: "string" },
  samples: { type: "string" },
  damping: { type: "string" },
  out: { type: "string" },
  "in-place": { type: "boolean" },
  patch: { type: "string" },
  "max-tokens": { type: "string" },
  json: { type: "boolean" },
  apply: { type: "string" },
  revert: { type: "string" },
  list: { type: "boolean" },
} as const;

/** The request and its evaluation prompts: from --prompt/--subject/--target, or a CounterFact --case. */
async function editRequest(
  opts: Record<string, unknown>,
): Promise<{ input: RequestInput; caseId?: number; prompts: EvaluationPrompts }> {
  const explicit = ["prompt", "subject", "target"].filter((k) => opts[k] !== undefined);
  if (opts.case === undefined && explicit.length > 0) {
    if (opts.dataset !== undefined) {
      throw new UsageError("--dataset is for --case; the request is --prompt, --subject and --target");
    }
    return {
      input: {
        prompt: requireText(opts, "prompt"),
        subject: requireText(opts, "subject"),
        target_new: opts.target === undefined ? requireText(opts, "target") : String(opts.target),
        target_true: opts["target-true"] as string | undefined,
      },
      prompts: {},
    };
  }
  if (explicit.length > 0) {
    throw new UsageError(`--case takes the request from the dataset; drop --${explicit[0]}`);
  }
  const id = opts.case === undefined ? DEFAULT_EDIT_CASE : intOption(opts, "case", 0);
  const file = (opts.dataset as string | undefined) ?? DEFAULT_EDIT_DATASET;
  const data = await readJsonFile(file, "dataset");
  if (!Array.isArray(data)) throw new UsageError(`dataset '${file}' is not a list of CounterFact records`);
  const r = (data as CounterFactCase[]).find((x) => x?.case_id === id);
  if (!r?.requested_rewrite?.target_new) throw new UsageError(`dataset '${file}' has no case_id ${id}`);
  return counterFactEdit(r, opts["target-true"] as string | undefined);
}

/** --layer of edit: absent, "auto" or an integer ≥ 0 (its range is checked against the model). */
function editLayerOption(opts: Record<string, unknown>): number | "auto" | undefined {
  if (opts.layer === undefined || opts.layer === "auto") return opts.layer;
  const v = decimalValue(opts.layer);
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new UsageError(`--layer must be an integer ≥ 0 or auto (got '${opts.layer}')`);
  }
  return v === 0 ? 0 : v;
}

async function editLayer(
  opts: Record<string, unknown>,
  model: Gpt2Model,
  base: string,
  hp: RomeHparams,
): Promise<number> {
  const option = editLayerOption(opts);
  if (option === undefined) return hp.layers[0];
  if (option === "auto") {
    const s = await readSuggestedLayer(model.hash) ??
      (base !== model.hash ? await readSuggestedLayer(base) : undefined);
    if (!s) {
      throw new UsageError(
        `--layer auto: no causal-tracing result for this model (hash ${model.hash}); run ` +
          `\`deno task trace [--model DIR] --facts FILE --suggest-layer\` first, or give --layer L`,
      );
    }
    return s.layer;
  }
  return option;
}

function probabilityLine(label: string, pre: TargetProbabilities, post: TargetProbabilities): string {
  const pct = (p: number | undefined) => p === undefined ? "      -" : `${(p * 100).toFixed(2).padStart(6)}%`;
  return `${label.padEnd(14)} ${pct(pre.target_new)} → ${pct(post.target_new)}   ${pct(pre.target_true)} → ${
    pct(post.target_true)
  }   ${JSON.stringify(pre.prompt)}`;
}

async function cmdEdit(args: string[]): Promise<void> {
  const opts = parse(args, EDIT_OPTIONS, EDIT_USAGE);
  const modes = ["apply", "revert", "list"].filter((k) => opts[k] !== undefined);
  if (modes.length > 1) throw new UsageError(`give only one of --${modes.join(", --")}`);
  if (modes.length === 1) {
    if (opts.model === undefined) throw new UsageError(`--${modes[0]} needs --model DIR`);
    const takes = modes[0] === "list"
      ? ["list", "model", "json"]
      : [modes[0], "model", "out", "in-place", "json"];
    const unused = Object.keys(opts).find((k) => opts[k] !== undefined && !takes.includes(k));
    if (unused !== undefined) throw new UsageError(`--${unused} is not used by --${modes[0]}`);
    if (modes[0] === "list") return editList(opts);
    return await romeUsage(() => applyOrRevert(opts, modes[0] as "apply" | "revert"));
  }
  return await romeUsage(() => editOnce(opts));
}

function editList(opts: Record<string, unknown>): void {
  const dir = editModelDir(opts);
  const log = readEditsLog(dir);
  if (opts.json) return console.log(JSON.stringify(log ?? null));
  if (!log || log.edits.length === 0) return console.log(`${dir}: no edits recorded`);
  console.log(`${dir}: ${log.edits.length} edit(s) on base model ${log.base_model_hash}, oldest first`);
  for (const [i, e] of log.edits.entries()) {
    const r = e.request;
    console.log(
      `${String(i + 1).padStart(3)}. ${e.id}  layer ${e.layer} ${e.variant}  ${
        JSON.stringify(r.prompt.replace("{}", r.subject))
      } → ${JSON.stringify(r.target_new)}  (${e.applied}, ${e.file})`,
    );
  }
}

async function editOnce(opts: Record<string, unknown>): Promise<void> {
  const json = Boolean(opts.json);
  const { input, caseId, prompts } = await editRequest(opts);
  const request = normalizeRequest(input);
  const variant = String(opts.variant ?? "rome") as RomeVariant;
  if (!ROME_VARIANTS.includes(variant)) {
    throw new UsageError(`--variant must be rome or r-rome (got '${variant}')`);
  }
  const seed = intOption(opts, "seed", DEFAULT_TEMPLATE_SEED, 0, MAX_SEED);
  const maxTokens = intOption(opts, "max-tokens", DEFAULT_GENERATION_TOKENS);
  const damping = opts.damping === undefined ? 0 : decimalValue(opts.damping);
  if (!(damping >= 0) || !Number.isFinite(damping)) {
    throw new UsageError(`--damping must be a finite number ≥ 0 (got '${opts.damping}')`);
  }
  const statsFrom = statsRequest(opts);
  editLayerOption(opts);
  const dir = editModelDir(opts);
  const out = editOutputDir(opts, dir, false);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const base = baseModelHash(dir, model);
  const { hparams: hp, source: hpSource } = opts.hparams !== undefined
    ? {
      hparams: parseHparams(await readJsonFile(opts.hparams as string, "--hparams"), opts.hparams as string),
      source: opts.hparams as string,
    }
    : defaultHparams(model.config);
  if (!hp.mom2_adjustment) {
    refuseStatsOptions(opts, `these hparams (${hpSource}: mom2_adjustment false)`, ["damping"]);
  }
  const layer = await editLayer(opts, model, base, hp);
  checkLayer(model, layer);
  const hashBefore = model.hash;

  // The unedited model's view of the request; checks the request's prompts fit before any long work.
  const pre = await evaluateRequest(model, tokenizer, request, prompts, { generationTokens: maxTokens });

  let stats: LayerStats | undefined;
  if (hp.mom2_adjustment) {
    stats = await layerStatsInterruptible(model, tokenizer, {
      layer,
      dir,
      baseHash: base,
      ...statsFrom,
      defaultSamples: hp.mom2_n_samples,
      quiet: json,
    });
  }
  let edit: RomeEdit;
  let templateSeconds: number;
  try {
    const t0 = performance.now();
    const { templates } = await contextTemplatesCached(
      model,
      tokenizer,
      base,
      hp.context_template_length_params,
      seed,
      json,
    );
    templateSeconds = (performance.now() - t0) / 1000;
    const bar = new Progress("v* (Adam on δ)", hp.v_num_grad_steps, json);
    edit = await executeRome(model, tokenizer, request, {
      hparams: hp,
      layer,
      variant,
      templates,
      secondMoment: stats ? { C: stats.C, count: stats.count } : null,
      damping,
      onValueStep: (step, loss) => bar.update(step + 1, `loss ${loss.toFixed(4)}`),
    });
    bar.done(`loss ${edit.losses.at(-1)!.toFixed(4)}`);
  } finally {
    stats?.C.dispose();
  }
  const post = await evaluateRequest(model, tokenizer, request, prompts, { generationTokens: maxTokens });

  const wantFiles = out !== undefined || opts.patch !== undefined;
  const hashAfter = wantFiles ? await modelContentHash(model) : "";
  if (wantFiles) model.hash = hashAfter;
  let patchInfo: { id: string; file?: string } | undefined;
  if (wantFiles) {
    const patch = await buildPatch(edit, {
      layer,
      variant,
      request: { ...request, ...(caseId !== undefined ? { case_id: caseId } : {}) },
      hparams: hp,
      seed,
      c_hash: stats?.id ?? "identity",
      hashBefore,
      hashAfter,
      pre,
      post,
    });
    const bytes = patchBytes(patch);
    patchInfo = { id: patch.meta.id };
    if (opts.patch !== undefined) {
      await writeFileAtomic(opts.patch as string, [bytes]);
      patchInfo.file = opts.patch as string;
    }
    if (out !== undefined) {
      const rel = `edits/${patch.meta.id}.safetensors`;
      const log = readEditsLog(dir) ?? emptyEditsLog(hashBefore);
      log.edits.push(logEntry(patch, rel));
      await saveEditedFolder(dir, out, model, {
        "edits.json": JSON.stringify(log, null, 1) + "\n",
        [rel]: bytes,
      });
    }
  }

  const pair = (a: TargetProbabilities, b: TargetProbabilities) => ({
    prompt: a.prompt,
    pre: { target_new: a.target_new, target_true: a.target_true ?? null },
    post: { target_new: b.target_new, target_true: b.target_true ?? null },
  });
  const record = {
    request: { ...request, ...(caseId !== undefined ? { case_id: caseId } : {}) },
    layer,
    variant,
    hparams: hpSource,
    pre: rewriteProbabilities(pre),
    post: rewriteProbabilities(post),
    paraphrases: pre.paraphrases.map((p, i) => pair(p, post.paraphrases[i])),
    neighbours: pre.neighbours.map((p, i) => pair(p, post.neighbours[i])),
    generations: pre.generations.map((g, i) => ({
      prompt: g.prompt,
      pre: g.text,
      post: post.generations[i].text,
    })),
    delta_norm: edit.deltaNorm,
    v0_norm: edit.v0Norm,
    losses: edit.losses,
    seconds: {
      stats: stats?.seconds ?? 0,
      k: templateSeconds + edit.seconds.k,
      v: edit.seconds.v,
      update: edit.seconds.update,
    },
    stats: stats ? { source: stats.source, path: stats.path, count: stats.count } : null,
    model_hash_before: hashBefore,
    ...(wantFiles ? { model_hash_after: hashAfter } : {}),
    ...(patchInfo ? { patch: patchInfo } : {}),
    ...(out !== undefined ? { out } : {}),
  };
  if (json) return console.log(JSON.stringify(record));
  const r = request;
  console.log(
    `edit: ${JSON.stringify(fillTemplate(r.prompt, r.subject))} → ${JSON.stringify(r.target_new.trim())}${
      r.target_true ? ` (was ${JSON.stringify(r.target_true.trim())})` : ""
    }; layer ${layer}, ${variant}, hparams ${hpSource}`,
  );
  if (stats) {
    console.log(`C: ${stats.count} tokens (${stats.source} ${stats.path})`);
  } else console.log("C: identity (mom2_adjustment false)");
  console.log(
    `v*: ${edit.forwards} forwards, loss ${edit.losses[0].toFixed(4)} → ${edit.losses.at(-1)!.toFixed(4)}, ` +
      `‖δ‖ ${fmt(edit.deltaNorm, 4)} (‖v₀‖ ${fmt(edit.v0Norm, 4)})`,
  );
  console.log(`\n${"".padEnd(14)}  P(new): pre → post    P(true): pre → post`);
  console.log(probabilityLine("rewrite", pre.rewrite, post.rewrite));
  pre.paraphrases.forEach((p, i) =>
    console.log(probabilityLine(`paraphrase ${i + 1}`, p, post.paraphrases[i]))
  );
  pre.neighbours.forEach((p, i) => console.log(probabilityLine(`neighbour ${i + 1}`, p, post.neighbours[i])));
  for (const [i, g] of pre.generations.entries()) {
    console.log(`\n${g.prompt}`);
    console.log(`  pre:  …${JSON.stringify(g.text)}`);
    console.log(`  post: …${JSON.stringify(post.generations[i].text)}`);
  }
  const s = record.seconds;
  console.log(
    `\ntime: C ${fmtSeconds(s.stats)}, k* ${fmtSeconds(s.k)}, v* ${fmtSeconds(s.v)}, update ${
      fmtSeconds(s.update)
    }`,
  );
  if (patchInfo?.file) console.log(`wrote patch ${patchInfo.id} to ${patchInfo.file}`);
  if (out !== undefined) console.log(`saved the edited model to ${out} (edits.json lists ${patchInfo!.id})`);
  if (!wantFiles) console.log("(not saved: --out DIR saves the edited model, --patch FILE the patch)");
}

async function applyOrRevert(opts: Record<string, unknown>, mode: "apply" | "revert"): Promise<void> {
  const json = Boolean(opts.json);
  const file = opts[mode] as string;
  const dir = editModelDir(opts);
  const out = editOutputDir(opts, dir, true)!;
  const bytes = await readBytes(file, "patch");
  const patch = decodePatch(bytes, file);
  const m = patch.meta;
  const log = readEditsLog(dir);
  const { model } = await loadModel({ ...opts, model: dir }, json);
  const W = model.weights.get(m.matrix);
  if (!W) {
    throw new PatchError(
      `patch ${m.id} edits ${m.matrix}, which this model (${model.config.nLayer} layers) lacks`,
    );
  }
  if (W.shape[0] !== patch.u.length || W.shape[1] !== patch.lambda.length) {
    throw new PatchError(
      `patch ${m.id} is for a [${patch.u.length}, ${patch.lambda.length}] matrix; ${m.matrix} here is [${W.shape}]`,
    );
  }
  const current = matrixHash(m.matrix, W.shape, await readMatrix(model, m.matrix));
  const hashBefore = model.hash;
  if (mode === "apply") checkApply(patch, current, log, model.hash);
  else checkRevert(patch, current, log, model.hash);
  const res = await xorMatrix(model, m.matrix, patch.xor);
  const want = mode === "apply" ? m.matrix_hash_after : m.matrix_hash_before;
  if (res.after !== want) {
    throw new Error(`${m.matrix} hashes to ${res.after} after the XOR, expected ${want}`);
  }
  model.hash = await modelContentHash(model);
  const newLog = log ?? emptyEditsLog(hashBefore);
  const files: Record<string, string | Uint8Array> = {};
  const drop = new Set<string>();
  if (mode === "apply") {
    const rel = `edits/${m.id}.safetensors`;
    newLog.edits.push(logEntry(patch, rel));
    files[rel] = bytes;
  } else {
    const at = newLog.edits.findIndex((e) => e.id === m.id);
    if (at >= 0) drop.add(newLog.edits.splice(at, 1)[0].file);
  }
  files["edits.json"] = JSON.stringify(newLog, null, 1) + "\n";
  await saveEditedFolder(dir, out, model, files, drop);
  const record = {
    mode,
    patch: m.id,
    matrix: m.matrix,
    model: dir,
    out,
    model_hash_before: hashBefore,
    model_hash_after: model.hash,
    edits: newLog.edits.length,
    restores_original: mode === "revert" && model.hash === m.model_hash_before,
  };
  if (json) return console.log(JSON.stringify(record));
  console.log(
    `${mode === "apply" ? "applied" : "reverted"} patch ${m.id} (${m.matrix}, ${
      JSON.stringify(m.request.prompt.replace("{}", m.request.subject))
    } →${JSON.stringify(m.request.target_new)}): model ${hashBefore} → ${model.hash}${
      record.restores_original ? " (the model before the edit, bit for bit)" : ""
    }`,
  );
  console.log(`saved to ${out}; ${newLog.edits.length} edit(s) recorded in edits.json`);
}

// ------------------------------------------------------------------ eval (CounterFact / zsRE metrics)
// Imports of this section are kept here (ES imports are hoisted) so that it merges cleanly.
import {
  type AttributeSnippets,
  DatasetError,
  type EvalDataset,
  parseAttributeSnippets,
  parseDataset,
  recordsWithoutSnippets,
  snippetTexts,
} from "./eval/datasets.ts";
import { defaultFtHparams, FtHparamsError, parseFtHparams } from "./eval/finetune.ts";
import {
  editGroups,
  type EvalCaseStore,
  type PreStore,
  RunConflictError,
  runEvaluation,
} from "./eval/harness.ts";
import type { GenerationTests } from "./eval/measure.ts";
import {
  canonicalJson,
  type CaseMetrics,
  type CaseResult,
  groupRuns,
  MergeError,
  parseShard,
  type RunIdentity,
  runKey,
  shardItems,
  summarize,
} from "./eval/metrics.ts";
import { type EditMethod, fineTuneMethod, type MethodName, METHODS, romeMethod } from "./eval/methods.ts";
import { EvalInputError, REFERENCE_GENERATION } from "./eval/probes.ts";
import {
  htmlReport,
  jsonRecord,
  markdownReport,
  type ReportRun,
  runLabel,
  textTable,
} from "./eval/report.ts";
import { TfidfVectorizer } from "./eval/text.ts";

/** The method evaluated when --method is not given. */
const DEFAULT_EVAL_METHOD: MethodName = "rome";
/** Where runs go without --out: out/eval/<dataset>-<method>[-seq<N>]. */
const DEFAULT_EVAL_OUT = fileURLToPath(new URL("./out/eval", import.meta.url));
/** Seed of the sampled generations (and of ROME's context templates). */
const DEFAULT_EVAL_SEED = 1;

const EVAL_USAGE =
  `deno task eval [--model DIR] [--dataset FILE] [--method none|rome|ft|ft-l] [--limit N] [--shard i/n]
               [--out DIR] [--json] [--sequential N] [--hparams FILE] [--layer L] [--seed S]
               [--snippets FILE] [--tfidf DIR] [--generation-length N]
               [--variant rome|r-rome] [--stats FILE | --npz FILE] [--corpus FILE|DIR] [--samples N]
deno task eval --merge DIR... [--out DIR] [--json]
  Evaluates an editing method as the ROME paper does (CounterFact Table 4, zsRE Table 1). For each record
  of --dataset (default ${DEFAULT_EDIT_DATASET}; a CounterFact or a zsRE
  file, told apart by its records) the edit is applied to the clean model and timed, the tests run
  ("post"), the edit is reverted bit for bit and the tests run again ("pre"). CounterFact: ES/EM (rewrite
  prompt), PS/PM (paraphrases), NS/NM (neighbourhood) from length-normalised target NLLs; GE (n-gram
  entropy) and RS (tf-idf similarity to the new object's attribute snippets) of texts sampled to
  --generation-length tokens (default ${REFERENCE_GENERATION.maxOutLen}; 0 skips both); S = harmonic mean of ES, PS, NS. zsRE:
  teacher-forced top-1 accuracy (Efficacy, Paraphrase, Specificity).
  --method: none (the unedited model), rome (default; hparams as deno task edit), ft / ft-l (fine-tuning
  of h.L.mlp.c_proj.weight, unconstrained / L∞-bounded; hparams eval/hparams/ft[-l]-<model>.json or
  --hparams FILE). --limit N takes the first N records (default all); --shard i/n runs every n-th record
  from the i-th (several processes or machines), --merge DIR... combines their folders (and folders of
  different methods into one table). --sequential N applies N edits one after another and tests them
  all on the model carrying them (then reverts them all). Snippets: --snippets FILE, default
  attribute_snippets.json beside the dataset; the tf-idf idf/vocabulary: --tfidf DIR with the reference's
  idf.npy and tfidf_vocab.json (default: beside the dataset if both are there), else fitted on all snippet
  texts. Writes case_<id>.json per case (the reference's {case_id, requested_rewrite, time, post, pre}),
  summary.json, report.md and report.html to --out (default ${DEFAULT_EVAL_OUT}/<dataset>-<method>[-seq<N>]);
  cases already there from the same run (method, hparams, model, settings) are skipped, so an interrupted
  run resumes. The unedited model's results are cached per model in ${
    romeCacheDir("<model hash>")
  }/eval-pre.`;

const EVAL_OPTIONS = {
  ...MODEL_OPTION,
  dataset: { type: "string" },
  method: { type: "string" },
  limit: { type: "string" },
  shard: { type: "string" },
  out: { type: "string" },
  json: { type: "boolean" },
  sequential: { type: "string" },
  hparams: { type: "string" },
  layer: { type: "string" },
  seed: { type: "string" },
  snippets: { type: "string" },
  tfidf: { type: "string" },
  "generation-length": { type: "string" },
  variant: { type: "string" },
  stats: { type: "string" },
  npz: { type: "string" },
  corpus: { type: "string" },
  samples: { type: "string" },
  merge: { type: "boolean" },
} as const;

/** Runs `fn`, turning the eval/ and rome/ modules' input errors into usage errors (one line, exit code 2). */
async function evalUsage<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await romeUsage(fn);
  } catch (e) {
    if (
      e instanceof DatasetError || e instanceof FtHparamsError || e instanceof EvalInputError ||
      e instanceof RunConflictError || e instanceof MergeError
    ) throw new UsageError(e.message);
    throw e;
  }
}

/** First 16 hex digits of the SHA-256 of bytes or text. */
async function sha16(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function cmdEval(args: string[]): Promise<void> {
  const { values, positionals } = parseCommand(args, EVAL_OPTIONS, EVAL_USAGE, true);
  if (values.merge) {
    const unused = Object.keys(values).find((k) =>
      values[k] !== undefined && !["merge", "out", "json"].includes(k)
    );
    if (unused !== undefined) {
      throw new UsageError(`--${unused} is not used by --merge (it reads results folders)`);
    }
    return await evalUsage(() => evalMerge(positionals, values));
  }
  if (positionals.length > 0) {
    throw new UsageError(`unexpected argument '${positionals[0]}' (folders are given to --merge)`);
  }
  return await evalUsage(() => evalRun(values));
}

const caseFile = (dir: string, id: number) => join(dir, `case_${id}.json`);

/** Every case_<id>.json of a run folder, with its path. */
async function readCaseDir(dir: string): Promise<{ result: CaseResult; source: string }[]> {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && /^case_\d+\.json$/.test(e.name)).map((e) =>
      e.name
    );
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`results folder '${dir}' not found`);
    throw e;
  }
  const out: { result: CaseResult; source: string }[] = [];
  for (const name of names) out.push({ result: await readCase(join(dir, name)), source: join(dir, name) });
  return out;
}

async function readCase(path: string): Promise<CaseResult> {
  const j = await readJsonFile(path, "case file") as CaseResult;
  if (!j || typeof j !== "object" || !Number.isInteger(j.case_id) || !j.run || !j.pre || !j.post) {
    throw new UsageError(`${path} is not a case file of deno task eval (no case_id, run, pre or post)`);
  }
  return j;
}

/** Case files in a folder: what the harness resumes from and writes to. */
function caseStore(dir: string): EvalCaseStore {
  return {
    get: async (id) => exists(caseFile(dir, id)) ? await readCase(caseFile(dir, id)) : undefined,
    put: async (r) =>
      await writeFileAtomic(caseFile(dir, r.case_id), [
        new TextEncoder().encode(JSON.stringify(r, null, 1) + "\n"),
      ]),
  };
}

/** "pre" results of one model, dataset and test settings, shared by every method's run. */
function preStore(dir: string): PreStore {
  return {
    get: async (id) => {
      const path = caseFile(dir, id);
      if (!exists(path)) return undefined;
      try {
        return (JSON.parse(await Deno.readTextFile(path)) as { pre: CaseMetrics }).pre;
      } catch {
        return undefined; // recomputed and rewritten
      }
    },
    put: async (id, pre) => {
      await Deno.mkdir(dir, { recursive: true });
      await writeFileAtomic(caseFile(dir, id), [
        new TextEncoder().encode(JSON.stringify({ case_id: id, pre }) + "\n"),
      ]);
    },
  };
}

/** The tf-idf of the RS test: the reference's idf.npy + tfidf_vocab.json when given or beside the dataset, else fitted. */
async function evalVectorizer(
  opts: Record<string, unknown>,
  datasetPath: string,
  snips: AttributeSnippets,
  snipsHash: string,
): Promise<{ vectorizer: TfidfVectorizer; id: string }> {
  const dir = (opts.tfidf as string | undefined) ?? dirname(datasetPath);
  const idfPath = join(dir, "idf.npy"), vocabPath = join(dir, "tfidf_vocab.json");
  if (exists(idfPath) && exists(vocabPath)) {
    const idfBytes = await readBytes(idfPath, "idf file");
    const vocabBytes = await readBytes(vocabPath, "tf-idf vocabulary");
    let vocab: unknown;
    try {
      vocab = JSON.parse(new TextDecoder().decode(vocabBytes));
    } catch (e) {
      throw new UsageError(`${vocabPath}: invalid JSON (${(e as Error).message})`);
    }
    try {
      const vectorizer = TfidfVectorizer.fromReference(vocab, idfBytes, dir);
      return { vectorizer, id: `file:${await sha16(idfBytes)}:${await sha16(vocabBytes)}` };
    } catch (e) {
      if (e instanceof RangeError) throw new UsageError(e.message);
      throw e;
    }
  }
  if (opts.tfidf !== undefined) throw new UsageError(`--tfidf ${dir}: needs idf.npy and tfidf_vocab.json`);
  return { vectorizer: TfidfVectorizer.fit(snippetTexts(snips)), id: `fit:${snipsHash}` };
}

async function evalRun(opts: Record<string, unknown>): Promise<void> {
  const json = Boolean(opts.json);
  const methodName = (opts.method as string | undefined ?? DEFAULT_EVAL_METHOD) as MethodName;
  if (!METHODS.includes(methodName)) {
    throw new UsageError(`--method must be one of ${METHODS.join(", ")} (got '${methodName}')`);
  }
  const sequential = intOption(opts, "sequential", 1, 1);
  if (methodName === "none" && sequential > 1) {
    throw new UsageError("--sequential needs an editing method, not none");
  }
  const shard = opts.shard === undefined ? { index: 0, count: 1 } : (() => {
    try {
      return parseShard(String(opts.shard));
    } catch (e) {
      throw new UsageError(`--shard: ${(e as Error).message}`);
    }
  })();
  const seed = intOption(opts, "seed", DEFAULT_EVAL_SEED, 0, MAX_SEED);
  const genLength = intOption(opts, "generation-length", REFERENCE_GENERATION.maxOutLen);
  const layerOverride = opts.layer === undefined ? undefined : intOption(opts, "layer", 0);
  // options of another method would be ignored: refused, before anything is loaded
  if (methodName === "none") {
    for (const k of ["hparams", "layer", "variant"]) {
      if (opts[k] !== undefined) throw new UsageError(`--${k} is for an editing method, not --method none`);
    }
  }
  if (methodName !== "rome" && opts.variant !== undefined) {
    throw new UsageError(`--variant is for --method rome, not ${methodName}`);
  }
  const statsFrom = methodName === "rome" ? statsRequest(opts) : {};
  if (methodName !== "rome") refuseStatsOptions(opts, `--method ${methodName}`);

  const datasetPath = (opts.dataset as string | undefined) ?? DEFAULT_EDIT_DATASET;
  const datasetBytes = await readBytes(datasetPath, "dataset");
  let dataset: EvalDataset;
  try {
    dataset = parseDataset(JSON.parse(new TextDecoder().decode(datasetBytes)), datasetPath);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UsageError(`dataset '${datasetPath}': invalid JSON (${e.message})`);
    }
    throw e;
  }
  if (opts.limit !== undefined) {
    dataset = {
      ...dataset,
      records: dataset.records.slice(0, intOption(opts, "limit", 0, 1)),
    } as EvalDataset;
  }

  let generation: GenerationTests | undefined;
  let tfidfId = "";
  const generationOptions = ["snippets", "tfidf", ...dataset.kind === "zsre" ? ["generation-length"] : []];
  for (const k of generationOptions) {
    if (opts[k] !== undefined && (dataset.kind === "zsre" || genLength === 0)) {
      throw new UsageError(
        `--${k} is for the generation tests (GE, RS) of CounterFact, which ${
          dataset.kind === "zsre" ? "a zsRE dataset does not have" : "--generation-length 0 skips"
        }`,
      );
    }
  }
  if (dataset.kind === "counterfact" && genLength > 0) {
    const snipsPath = (opts.snippets as string | undefined) ??
      join(dirname(datasetPath), "attribute_snippets.json");
    if (!exists(snipsPath)) {
      throw new UsageError(
        `no attribute snippets at ${snipsPath} (RS needs them): give --snippets FILE, or --generation-length 0 to skip GE and RS`,
      );
    }
    const snipsBytes = await readBytes(snipsPath, "snippets file");
    const snips = parseAttributeSnippets(JSON.parse(new TextDecoder().decode(snipsBytes)), snipsPath);
    const missing = recordsWithoutSnippets(dataset.records, snips);
    if (missing.length > 0) {
      const rw = missing[0].requested_rewrite;
      throw new UsageError(
        `${snipsPath} has no snippets for case ${
          missing[0].case_id
        }'s new object (${rw.relation_id}, ${rw.target_new.id})` +
          `${missing.length > 1 ? ` nor for ${missing.length - 1} more case(s)` : ""}; RS needs them`,
      );
    }
    const tf = await evalVectorizer(opts, datasetPath, snips, await sha16(snipsBytes));
    tfidfId = tf.id;
    generation = {
      settings: { maxOutLen: genLength, topK: REFERENCE_GENERATION.topK, seed },
      snippets: snips,
      vectorizer: tf.vectorizer,
    };
  }

  const dir = editModelDir(opts);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const base = baseModelHash(dir, model);
  if (layerOverride !== undefined) layerInRange(model, layerOverride);
  let method: EditMethod | null = null;
  let disposeStats = () => {};
  if (methodName === "rome") {
    const hp = opts.hparams !== undefined
      ? parseHparams(await readJsonFile(opts.hparams as string, "--hparams"), opts.hparams as string)
      : defaultHparams(model.config).hparams;
    const layer = layerOverride ?? hp.layers[0];
    layerInRange(model, layer);
    const variant = String(opts.variant ?? "rome") as RomeVariant;
    if (!ROME_VARIANTS.includes(variant)) {
      throw new UsageError(`--variant must be rome or r-rome (got '${variant}')`);
    }
    if (!hp.mom2_adjustment) {
      refuseStatsOptions(opts, `these hparams (${opts.hparams ?? "the default"}: mom2_adjustment false)`);
    }
    const stats = hp.mom2_adjustment
      ? await layerStatsInterruptible(model, tokenizer, {
        layer,
        dir,
        baseHash: base,
        ...statsFrom,
        defaultSamples: hp.mom2_n_samples,
        quiet: json,
      })
      : undefined;
    disposeStats = () => stats?.C.dispose();
    const { templates } = await contextTemplatesCached(
      model,
      tokenizer,
      base,
      hp.context_template_length_params,
      seed,
      json,
    );
    method = romeMethod({
      hparams: hp,
      layer,
      variant,
      templates,
      secondMoment: stats ? { C: stats.C, count: stats.count } : null,
      statsId: stats?.id ?? "identity",
      templateSeed: seed,
    });
  } else if (methodName === "ft" || methodName === "ft-l") {
    let hp = opts.hparams !== undefined
      ? parseFtHparams(
        await readJsonFile(opts.hparams as string, "--hparams"),
        opts.hparams as string,
        methodName === "ft-l",
      )
      : defaultFtHparams(methodName, model.config, defaultHparams(model.config).hparams.layers[0]).hparams;
    if (layerOverride !== undefined) hp = { ...hp, layers: [layerOverride] };
    layerInRange(model, hp.layers[0]);
    method = fineTuneMethod(methodName, hp);
  }

  try {
    const run: RunIdentity = {
      dataset_kind: dataset.kind,
      dataset_hash: await sha16(datasetBytes),
      method: methodName,
      hparams_hash: method ? await sha16(canonicalJson(method.settings)) : "none",
      model_hash: model.hash,
      sequential,
      generation: {
        max_out_len: generation ? genLength : 0,
        top_k: REFERENCE_GENERATION.topK,
        seed,
        tfidf: tfidfId,
      },
    };
    const slug = basename(datasetPath).replace(/\.json$/i, "");
    const out = (opts.out as string | undefined) ??
      join(DEFAULT_EVAL_OUT, `${slug}-${methodName}${sequential > 1 ? `-seq${sequential}` : ""}`);
    await Deno.mkdir(out, { recursive: true });
    const { method: _m, hparams_hash: _h, sequential: _s, ...preIdentity } = run;
    const pre = preStore(join(romeCacheDir(model.hash), "eval-pre", await sha16(canonicalJson(preIdentity))));

    // The bar counts only the cases still to compute, so that its ETA is the remaining work's.
    const store = caseStore(out);
    const key = runKey(run);
    let found = 0;
    for (
      const r of shardItems(editGroups(dataset.records as { case_id: number }[], sequential), shard).flat()
    ) {
      if (
        exists(caseFile(out, r.case_id)) && runKey((await readCase(caseFile(out, r.case_id))).run) === key
      ) found++;
    }
    const mine = shardItems(dataset.records as unknown[], shard, sequential).length;
    const bar = new Progress(
      `eval ${methodName}${sequential > 1 ? ` (${sequential} in sequence)` : ""}`,
      mine - found,
      json || mine === found,
    );
    let computedCount = 0;
    const t0 = performance.now();
    const res = await runEvaluation({
      model,
      tokenizer,
      dataset,
      method,
      run,
      generation,
      shard,
      store,
      preStore: pre,
      onCase: (_done, _total, computed, r) => {
        if (computed) bar.update(Math.min(bar.total, ++computedCount), `case ${r.case_id}`);
      },
    });
    const computedSeconds = (performance.now() - t0) / 1000;
    bar.done();

    const inDir = (await readCaseDir(out)).filter((c) => runKey(c.result.run) === key).map((c) => c.result);
    const report: ReportRun = { label: runLabel(run), run, summary: summarize(inDir), cases: inDir };
    const title = `deno task eval: ${runLabel(run)} on ${basename(datasetPath)}`;
    const timing = res.results.filter((r) => r.seconds && (r.seconds.post > 0 || r.seconds.pre > 0));
    const perCase = (k: "edit" | "post" | "pre") =>
      timing.length ? timing.reduce((a, r) => a + r.seconds![k], 0) / timing.length : 0;
    const record = jsonRecord(report, {
      out,
      computed: res.computed,
      skipped: res.skipped,
      shard: `${shard.index}/${shard.count}`,
      seconds_per_case: { edit: perCase("edit"), post_tests: perCase("post"), pre_tests: perCase("pre") },
    });
    const enc = new TextEncoder();
    await writeFileAtomic(join(out, "summary.json"), [
      enc.encode(JSON.stringify({ ...record, full: report.summary }, null, 1) + "\n"),
    ]);
    await writeFileAtomic(join(out, "report.md"), [enc.encode(markdownReport([report], title))]);
    await writeFileAtomic(join(out, "report.html"), [enc.encode(htmlReport([report], title))]);
    if (json) return console.log(JSON.stringify(record));
    console.log(textTable([report]));
    console.log(
      `${res.results.length} case(s) of this shard: ${res.computed} computed${
        res.skipped ? `, ${res.skipped} already in ${out}` : ""
      }; ` +
        `the table covers the ${inDir.length} case(s) of this run in ${out}`,
    );
    if (res.computed > 0) {
      console.log(
        `per case: edit ${fmtSeconds(perCase("edit"))}, post tests ${
          fmtSeconds(perCase("post"))
        }, pre tests ` +
          `${fmtSeconds(perCase("pre"))} (${fmtSeconds(computedSeconds / res.computed)} in all)`,
      );
    }
    console.log(`wrote ${join(out, "report.md")}, report.html and summary.json`);
  } finally {
    disposeStats();
  }
}

/** `--merge DIR...`: the case files of several folders, one table row per run (shards of a run combine). */
async function evalMerge(dirs: string[], opts: Record<string, unknown>): Promise<void> {
  if (dirs.length === 0) {
    throw new UsageError("--merge needs at least one results folder: deno task eval --merge DIR...");
  }
  const items = (await Promise.all(dirs.map(readCaseDir))).flat();
  if (items.length === 0) throw new UsageError(`no case_<id>.json files in ${dirs.join(", ")}`);
  const groups = groupRuns(items);
  const kinds = new Set(groups.map((g) => g.run.dataset_kind));
  if (kinds.size > 1) {
    throw new UsageError("the folders mix CounterFact and zsRE results; merge them separately");
  }
  const labels = groups.map((g) => runLabel(g.run));
  const runs: ReportRun[] = groups.map((g, i) => ({
    label: labels.filter((l) => l === labels[i]).length > 1
      ? `${labels[i]} [${g.run.hparams_hash.slice(0, 6)}]`
      : labels[i],
    run: g.run,
    summary: summarize(g.cases),
    cases: g.cases,
  }));
  const title = `deno task eval --merge (${dirs.length} folder${dirs.length > 1 ? "s" : ""})`;
  const records = runs.map((r) => jsonRecord(r, { label: r.label }));
  if (opts.out !== undefined) {
    const out = opts.out as string;
    await Deno.mkdir(out, { recursive: true });
    const enc = new TextEncoder();
    await writeFileAtomic(join(out, "summary.json"), [
      enc.encode(
        JSON.stringify(
          runs.length === 1
            ? { ...records[0], full: runs[0].summary }
            : records.map((r, i) => ({ ...r, full: runs[i].summary })),
          null,
          1,
        ) + "\n",
      ),
    ]);
    await writeFileAtomic(join(out, "report.md"), [enc.encode(markdownReport(runs, title))]);
    await writeFileAtomic(join(out, "report.html"), [enc.encode(htmlReport(runs, title))]);
  }
  if (opts.json) return console.log(JSON.stringify(records.length === 1 ? records[0] : records));
  console.log(textTable(runs));
  console.log(
    `${items.length} case file(s) from ${dirs.length} folder(s), ${runs.length} run(s)${
      opts.out !== undefined
        ? `; wrote ${join(opts.out as string, "report.md")}, report.html and summary.json`
        : ""
    }`,
  );
}

// ------------------------------------------------------------------ info

const INFO_USAGE = `deno task info [--json]
  Prints the WebGPU adapter, its limits and features as this engine sees them.`;

async function cmdInfo(args: string[]): Promise<void> {
  const opts = parse(args, { json: { type: "boolean" } }, INFO_USAGE);
  const engine = await openEngine();
  const info = engine.gpu.info;
  if (opts.json) {
    console.log(JSON.stringify(info, null, 2));
    return;
  }
  console.log(
    `adapter     ${info.description} (vendor ${info.vendor}${
      info.architecture ? ", " + info.architecture : ""
    })`,
  );
  console.log(`software    ${info.isFallbackAdapter ? "yes (fallback / CPU adapter)" : "no"}`);
  console.log(`features    ${info.features.join(", ")}`);
  const l = engine.limits;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(
    `binding     ${mib(l.maxBindingBytes)} per storage binding, buffers up to ${mib(l.maxBufferSize)}`,
  );
  console.log(
    `workgroups  ${l.maxInvocations} invocations, ${l.workgroupStorage} B shared, ${l.maxWorkgroupsPerDim}/dim`,
  );
  console.log(`alignment   storage ${l.storageOffsetAlignment} B, uniform ${l.uniformOffsetAlignment} B`);
}

// ------------------------------------------------------------------ trace (causal tracing)

// Defaults that land with the bundled model: each is one line. Until then --model (and --prompt/--subject,
// or --facts) must be given.
const DEFAULT_TRACE_MODEL: string | undefined = BUNDLED_MODEL;
const DEFAULT_TRACE_FACTS: string | undefined = fileURLToPath(
  new URL("./data/world/known_facts.json", import.meta.url),
);
/** Subjects whose embedding std sets the noise level when neither --subjects nor --facts says otherwise. */
const BUNDLED_SUBJECTS = fileURLToPath(new URL("./data/world/known_facts.json", import.meta.url));

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

async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${path}' not found`);
    throw new Error(`${what} '${path}': ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${what} '${path}': invalid JSON (${(e as Error).message})`);
  }
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
  let subjects: string[];
  try {
    subjects = parseSubjects(await readJsonFile(subjectsFile, "subjects file"), subjectsFile);
  } catch (e) {
    if (e instanceof FactsFormatError) throw new UsageError(e.message);
    throw e;
  }
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

/** `${XDG_CACHE_HOME:-~/.cache}/rome-webgpu/<hash>/suggested_layer.json`: where `edit --layer auto` looks. */
export function suggestedLayerPath(hash: string): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  const root = xdg ? xdg : home ? join(home, ".cache") : undefined;
  if (!root) throw new Error("no cache directory: set XDG_CACHE_HOME or HOME");
  return join(root, "rome-webgpu", hash, "suggested_layer.json");
}

/** What `trace --facts` stores for a model: the layer and where it came from. */
export interface SuggestedLayer {
  layer: number;
  model_hash: string;
  facts_file: string;
  /** Facts the average was taken over. */
  n: number;
  /** The MLP AIE at the last subject token per layer. */
  mlp_aie_last_subject: number[];
  samples: number;
  noise: number;
  window: number;
  seed: number;
}

/** The suggested edit layer stored by `trace --facts` for this model hash, or undefined if none is stored. */
export async function readSuggestedLayer(hash: string): Promise<SuggestedLayer | undefined> {
  const path = suggestedLayerPath(hash);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  let r: SuggestedLayer;
  try {
    r = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message}); delete it and rerun trace --facts`);
  }
  if (!Number.isInteger(r?.layer) || r.model_hash !== hash) {
    throw new Error(`${path}: not a suggested-layer record for model ${hash}`);
  }
  return r;
}

async function cmdTrace(args: string[]): Promise<void> {
  const opts = parse(args, TRACE_OPTIONS, TRACE_USAGE);
  opts.model ??= DEFAULT_TRACE_MODEL;
  modelDir(opts); // the first thing missing is the model: say so before anything else
  if (opts.facts !== undefined || opts["suggest-layer"]) return await traceFactsCli(opts);
  return await tracePromptCli(opts);
}

/** The fact traced when no --prompt and --subject are given: the bundled world's example (the page's too). */
async function exampleFact(): Promise<KnownFact> {
  const facts = parseKnownFacts(await readJsonFile(BUNDLED_SUBJECTS, "facts file"), BUNDLED_SUBJECTS);
  const fact = facts.find((f) => f.known_id === EXAMPLE_KNOWN_ID);
  if (!fact) {
    throw new UsageError(
      `${BUNDLED_SUBJECTS} has no known_id ${EXAMPLE_KNOWN_ID}; give --prompt and --subject`,
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
  const noise = await traceNoise(
    model,
    tokenizer,
    settings.noiseSpec,
    (opts.subjects as string | undefined) ?? BUNDLED_SUBJECTS,
    json,
  );
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
  const factsFile = (opts.facts as string | undefined) ?? DEFAULT_TRACE_FACTS;
  if (!factsFile) throw new UsageError("--facts FILE is required (a known_1000.json-format file)");
  for (const f of ["prompt", "subject", "expect", "sever", "force"]) {
    if (opts[f] !== undefined) throw new UsageError(`--${f} is for single-prompt tracing, not --facts`);
  }
  const kinds = traceKinds(opts, false) as TraceKind[];
  windowUsed(opts, kinds, false);
  const settings = traceSettings(opts);
  const onlyLayer = Boolean(opts["suggest-layer"]);
  if (onlyLayer && !kinds.includes("mlp")) throw new UsageError("--suggest-layer needs the mlp kind");
  const quiet = Boolean(opts.json) || onlyLayer;
  let facts: KnownFact[];
  try {
    facts = parseKnownFacts(await readJsonFile(factsFile, "facts file"), factsFile);
  } catch (e) {
    if (e instanceof FactsFormatError) throw new UsageError(e.message);
    throw e;
  }
  const limit = opts.limit === undefined ? facts.length : intOption(opts, "limit", 0, 1);
  const t0 = performance.now();
  const { model, tokenizer } = await loadModel(opts, quiet);
  settings.window ??= defaultWindow(model.config.nLayer);
  // The std is over the whole file's subjects (as the reference's knowns), whatever --limit keeps.
  const noise = await traceNoise(
    model,
    tokenizer,
    settings.noiseSpec,
    (opts.subjects as string | undefined) ?? factsFile,
    quiet,
  );
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
    const path = suggestedLayerPath(model.hash);
    await Deno.mkdir(dirname(path), { recursive: true });
    await writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify(stored, null, 1) + "\n")]);
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

// ------------------------------------------------------------------ main

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  info: cmdInfo,
  trace: cmdTrace,
  predict: cmdPredict,
  generate: cmdGenerate,
  tokenize: cmdTokenize,
  download: cmdDownload,
  train: cmdTrain,
  "train-demo": cmdTrainDemo,
  facts: cmdFacts,
  edit: cmdEdit,
  stats: cmdStats,
  eval: cmdEval,
};

const USAGE = `usage: deno task <command> [options]   (or: deno run -A cli.ts <command> ...)
commands: ${Object.keys(COMMANDS).join(", ")}
Each command takes --help.`;

/**
 * Test-only: ROME_DRILL_DEVICE_LOSS=N destroys the GPU device right after the engine's N-th submit and reports
 * it as a lost device (tests/device_loss_test.ts checks that a loss is one error line and exit code 1).
 */
function deviceLossDrill(): number | undefined {
  const raw = Deno.env.get("ROME_DRILL_DEVICE_LOSS");
  if (raw === undefined || raw === "") return undefined;
  const n = decimalValue(raw);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`ROME_DRILL_DEVICE_LOSS must be an integer ≥ 1 (a submit count), got '${raw}'`);
  }
  return n;
}

export async function main(argv: string[]): Promise<number> {
  quietMesa();
  const [cmd, ...rest] = argv;
  const run = cmd ? COMMANDS[cmd] : undefined;
  if (!run) {
    console.error(cmd ? `unknown command '${cmd}'\n${USAGE}` : USAGE);
    return 2;
  }
  try {
    setDeviceLossDrill(deviceLossDrill());
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    Progress.endLine();
    if (Deno.env.get("ROME_DEBUG")) console.error(err.stack);
    console.error(`error: ${err.message}`);
    return err instanceof InputError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
