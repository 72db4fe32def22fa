// rome-webgpu command line: argument parsing, files and terminal output. Everything below this file
// (engine/, kernels/, and later tracing/, rome/, eval/) is runtime-neutral and also runs in a browser.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { getEngine } from "./engine/engine.ts";
import { type LoadedModel, loadGpt2Folder, loadTokenizer } from "./engine/gpt2/folder.ts";
import { generate, nextTokenLogprobs, topK } from "./engine/gpt2/generate.ts";
import { downloadModel } from "./engine/hub.ts";
import { basename, dirname, join } from "node:path";
import { existsSync } from "node:fs";
import { readSafetensorsFile } from "./engine/files.ts";
import type { Gpt2Config } from "./engine/gpt2/config.ts";
import { buildGpt2 } from "./engine/gpt2/load.ts";
import { expectedWeightShapes, type Gpt2Model } from "./engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "./engine/gpt2/tokenizer.ts";
import { epochOrder, initGpt2Weights, packDocuments, Trainer, type TrainHyper } from "./engine/gpt2/train.ts";
import { saveGpt2Folder } from "./engine/gpt2/folder.ts";
import { topOneAccuracy } from "./eval/knowledge.ts";
import { fileURLToPath } from "node:url";
import { writeFileAtomic } from "./engine/files.ts";
import { findSubjectRange } from "./engine/gpt2/tokenizer.ts";
import { fmt } from "./tracing/render.ts";
import { LAST_SUBJECT } from "./tracing/aggregate.ts";
import { type CaseStore, summarizeFacts, traceFacts } from "./tracing/dataset.ts";
import { FactsFormatError, type KnownFact, parseKnownFacts, parseSubjects } from "./tracing/facts.ts";
import { type NoiseSpec, parseNoiseSpec, subjectEmbeddingStd } from "./tracing/noise.ts";
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
  type TraceRecord,
  type TraceRunInfo,
} from "./tracing/report.ts";
import {
  BasePass,
  DEFAULT_SAMPLES,
  DEFAULT_WINDOW,
  severedTrace,
  TRACE_KINDS,
  type TraceKind,
  traceKind,
} from "./tracing/trace.ts";

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

function parse(args: string[], options: Options, usage: string): Record<string, unknown> {
  try {
    const { values } = parseArgs({
      args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
    });
    if (values.help) {
      console.log(usage);
      Deno.exit(0);
    }
    return values as Record<string, unknown>;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
}

// ------------------------------------------------------------------ terminal output

/**
 * A progress bar on stderr: redrawn in place on a terminal, a plain line every 10% otherwise (CI logs).
 * Call `update` after each awaited GPU chunk: the event loop is blocked while the GPU works, so timers
 * would not fire.
 */
export class Progress {
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
  }
}

export function fmtSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

// ------------------------------------------------------------------ model loading

const MODEL_OPTION = { model: { type: "string" } } as const;

function modelDir(opts: Record<string, unknown>): string {
  const dir = opts.model as string | undefined;
  if (!dir) {
    throw new UsageError("--model DIR is required (a Hugging Face GPT-2 folder; see `deno task download`)");
  }
  return dir;
}

async function loadModel(opts: Record<string, unknown>, quiet = false): Promise<LoadedModel> {
  const dir = modelDir(opts);
  const engine = await getEngine();
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

function intOption(opts: Record<string, unknown>, name: string, fallback: number, min = 0): number {
  const raw = opts[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min) {
    throw new UsageError(`--${name} must be an integer ≥ ${min} (got '${raw}')`);
  }
  return v;
}

function requireText(opts: Record<string, unknown>, name: string): string {
  const v = opts[name];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`--${name} TEXT is required`);
  return v;
}

// ------------------------------------------------------------------ predict / generate / tokenize

const PREDICT_USAGE = `deno task predict --model DIR --prompt TEXT [--top-k K] [--json]
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

const GENERATE_USAGE =
  `deno task generate --model DIR --prompt TEXT [--max-tokens N] [--top-k K] [--seed S] [--json]
  Continues the prompt: greedy with --top-k 1, seeded top-k sampling otherwise (default k 5, 20 tokens).`;

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
  const seed = intOption(opts, "seed", 0);
  const { model, tokenizer } = await loadModel(opts);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  if (ids.length >= model.config.nPositions) {
    throw new UsageError(
      `--prompt has ${ids.length} tokens; the model's context is ${model.config.nPositions}`,
    );
  }
  const bar = new Progress("generating", maxTokens, Boolean(opts.json));
  const [out] = await generate(model, [ids], { maxTokens, topK: k, seed, onToken: (s) => bar.update(s) });
  bar.done();
  const text = tokenizer.decode(out);
  if (opts.json) console.log(JSON.stringify({ prompt, ids, generated_ids: out, text: prompt + text }));
  else console.log(prompt + text);
}

const TOKENIZE_USAGE = `deno task tokenize --model DIR --text TEXT [--json]
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
  let positionals: string[];
  let values: Record<string, unknown>;
  try {
    ({ positionals, values } = parseArgs({
      args,
      options: {
        dir: { type: "string" },
        revision: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${DOWNLOAD_USAGE}`);
  }
  if (values.help) return console.log(DOWNLOAD_USAGE);
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
  });
  bar?.done();
  console.log(`downloaded ${res.files.length} files to ${res.dir}`);
}

// ------------------------------------------------------------------ train / train-demo / facts

const TRAIN_USAGE =
  `deno task train --config FILE --corpus FILE --out DIR [--tokenizer DIR] [--steps N] [--fresh] [--json]
  Trains a GPT-2-architecture model from scratch on a text corpus (documents separated by lines holding
  only <|endoftext|>) and writes Hugging Face checkpoints to DIR (config.json, model.safetensors,
  vocab.json, merges.txt, plus trainer state). An interrupted run resumes from DIR's last checkpoint
  unless --fresh. --tokenizer defaults to the corpus's folder (vocab.json + merges.txt).`;

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
  };
}

function readTrainConfig(path: string): TrainFileConfig {
  let j: TrainFileConfig;
  try {
    j = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    throw new UsageError(`--config ${path}: ${(e as Error).message}`);
  }
  const need = (o: Record<string, unknown> | undefined, k: string, where: string) => {
    const v = o?.[k];
    if (typeof v !== "number" || !(v > 0)) {
      throw new UsageError(`--config ${path}: ${where}.${k} must be a positive number`);
    }
  };
  for (const k of ["n_layer", "n_head", "n_embd", "n_positions"]) need(j.model as never, k, "model");
  for (const k of ["batch_size", "lr"]) need(j.train as never, k, "train");
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
}): Promise<{ steps: number; loss: number; seconds: number; tokensPerSecond: number }> {
  const cfg = readTrainConfig(opts.config);
  const tokDir = opts.tokenizerDir ?? dirname(opts.corpus);
  const tokenizer = loadTokenizer(tokDir);
  const docs = readCorpus(opts.corpus, tokenizer);
  const T = cfg.model.n_positions;
  const rows = packDocuments(docs, T);
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
  const engine = await getEngine();
  const statePath = `${opts.out}/trainer_state.json`;
  let resumed: { step: number; seconds: number; losses: [number, number][] } | undefined;
  let model: Gpt2Model;
  if (!opts.fresh && existsSync(statePath)) {
    resumed = JSON.parse(Deno.readTextFileSync(statePath));
    model = (await loadGpt2Folder(engine, opts.out)).model;
    if (JSON.stringify(model.config) !== JSON.stringify(config)) {
      throw new UsageError(
        `${opts.out} holds a checkpoint of another model shape; use --fresh or another --out`,
      );
    }
  } else {
    const init = initGpt2Weights(config, hyper.seed);
    model = buildGpt2(engine, config, {
      tensors: new Map(
        [...init].map(([n, d]) => [n, { shape: [...expectedWeightShapes(config).get(n)!], dtype: "F32" }]),
      ),
      read: (n) => init.get(n)!,
      describe: () => "initialisation",
    });
  }
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
    const state = { step: trainer.step, seconds: (performance.now() - t0) / 1000, hyper, losses };
    await saveGpt2Folder(opts.out, model, {
      extraFiles: { ...tokenizerFiles, "trainer_state.json": JSON.stringify(state, null, 1) + "\n" },
      extraTensors: { "optimizer.safetensors": tensors },
      metadata: { trained_steps: String(trainer.step) },
    });
  };
  const bar = new Progress("training", totalSteps, opts.json);
  let tokens = 0, lastLoss = NaN;
  const runStart = performance.now();
  while (trainer.step < totalSteps) {
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
    if (trainer.step % every === 0 || trainer.step === totalSteps) await checkpoint();
  }
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  const result = {
    steps: trainer.step,
    loss: lastLoss,
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
    fresh: { type: "boolean" },
    json: { type: "boolean" },
  }, TRAIN_USAGE);
  for (const k of ["config", "corpus", "out"]) {
    if (!opts[k]) throw new UsageError(`--${k} is required\n\n${TRAIN_USAGE}`);
  }
  const res = await train({
    config: opts.config as string,
    corpus: opts.corpus as string,
    out: opts.out as string,
    tokenizerDir: opts.tokenizer as string | undefined,
    steps: opts.steps === undefined ? undefined : intOption(opts, "steps", 0, 1),
    fresh: Boolean(opts.fresh),
    json: Boolean(opts.json),
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
  Rebuilds the bundled model from the facts world: trains with ${WORLD_DIR}/train_config.json on
  ${WORLD_DIR}/corpus.txt (default --out out/train-demo), then checks how many facts it knows.`;

async function cmdTrainDemo(args: string[]): Promise<void> {
  const opts = parse(args, { out: { type: "string" }, fresh: { type: "boolean" } }, TRAIN_DEMO_USAGE);
  const out = (opts.out as string | undefined) ?? "out/train-demo";
  const res = await train({
    config: `${WORLD_DIR}/train_config.json`,
    corpus: `${WORLD_DIR}/corpus.txt`,
    out,
    fresh: Boolean(opts.fresh),
  });
  console.log(`trained ${res.steps} steps in ${fmtSeconds(res.seconds)} (final loss ${res.loss.toFixed(4)})`);
  await cmdFacts(["--model", out]);
}

const FACTS_USAGE = `deno task facts [--model DIR] [--world DIR] [--json]
  How many facts of the facts world the model knows: top-1 next token = the true object, over every
  fact (first training phrasing of its relation) and over the CounterFact rewrite prompts.`;

async function cmdFacts(args: string[]): Promise<void> {
  const opts = parse(
    args,
    { ...MODEL_OPTION, world: { type: "string" }, json: { type: "boolean" } },
    FACTS_USAGE,
  );
  const world = (opts.world as string | undefined) ?? WORLD_DIR;
  const { model, tokenizer } = await loadModel(opts);
  const facts = JSON.parse(Deno.readTextFileSync(`${world}/facts.json`)) as {
    relations: { relation_id: string; training: string[] }[];
    facts: { subject: string; relation_id: string; object: string }[];
  };
  const template = new Map(facts.relations.map((r) => [r.relation_id, r.training[0]]));
  const factProbes = facts.facts.map((f) => ({
    prompt: template.get(f.relation_id)!.replace("{}", f.subject),
    target: f.object,
  }));
  const cf = JSON.parse(Deno.readTextFileSync(`${world}/counterfact.json`)) as {
    requested_rewrite: { prompt: string; subject: string; target_true: { str: string } };
  }[];
  const rewriteProbes = cf.map((r) => ({
    prompt: r.requested_rewrite.prompt.replace("{}", r.requested_rewrite.subject),
    target: r.requested_rewrite.target_true.str,
  }));
  const bar = new Progress("checking facts", factProbes.length + rewriteProbes.length, Boolean(opts.json));
  const a = await topOneAccuracy(model, tokenizer, factProbes, { onBatch: (d) => bar.update(d) });
  const b = await topOneAccuracy(model, tokenizer, rewriteProbes, {
    onBatch: (d) => bar.update(factProbes.length + d),
  });
  bar.done();
  const byRelation: Record<string, { n: number; accuracy: number }> = {};
  for (const rel of template.keys()) {
    const idx = facts.facts.flatMap((f, i) => f.relation_id === rel ? [i] : []);
    byRelation[rel] = { n: idx.length, accuracy: idx.filter((i) => a.correct[i]).length / idx.length };
  }
  const res = {
    model: modelDir(opts),
    facts: { n: factProbes.length, accuracy: a.accuracy, by_relation: byRelation },
    rewrite_prompts: { n: rewriteProbes.length, accuracy: b.accuracy },
  };
  if (opts.json) return console.log(JSON.stringify(res));
  console.log(`facts known (top-1): ${(a.accuracy * 100).toFixed(1)}% of ${factProbes.length}`);
  for (const [rel, r] of Object.entries(byRelation)) {
    console.log(`  ${rel}: ${(r.accuracy * 100).toFixed(1)}% of ${r.n}`);
  }
  console.log(
    `CounterFact rewrite prompts (true object top-1): ${
      (b.accuracy * 100).toFixed(1)
    }% of ${rewriteProbes.length}`,
  );
}

// ------------------------------------------------------------------ info

const INFO_USAGE = `deno task info [--json]
  Prints the WebGPU adapter, its limits and features as this engine sees them.`;

async function cmdInfo(args: string[]): Promise<void> {
  const opts = parse(args, { json: { type: "boolean" } }, INFO_USAGE);
  const engine = await getEngine();
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
const DEFAULT_TRACE_MODEL: string | undefined = undefined;
const DEFAULT_TRACE_FACT: { prompt: string; subject: string; expect?: string } | undefined = undefined;
const DEFAULT_TRACE_FACTS: string | undefined = undefined; // e.g. the bundled data/world/known_facts.json
/** Subjects whose embedding std sets the noise level when neither --subjects nor --facts says otherwise. */
const BUNDLED_SUBJECTS = fileURLToPath(new URL("./data/world/known_facts.json", import.meta.url));

const TRACE_USAGE = `deno task trace --model DIR --prompt TEXT --subject TEXT [--expect TEXT] [--force]
                 [--kind hidden|mlp|attn|all|severed] [--sever mlp|attn|both]
                 [--samples 10] [--noise 3x|FLOAT] [--subjects FILE] [--window 10] [--seed 1]
                 [--max-rows N] [--out DIR] [--json]
deno task trace --model DIR --facts FILE [--limit N] [--kind hidden|mlp|attn|all] [--out DIR]
                 [--json | --suggest-layer]   (plus the noise/sample options above)
  Causal tracing (Meng et al. 2022): corrupt the subject's token embeddings with Gaussian noise
  (--samples draws of --noise: '3x' = 3 × the std of the subjects' token embeddings, or an absolute
  number), restore clean states one (token, layer) cell at a time and report p(answer) per cell.
  --kind all (default) traces hidden states, MLP and attention windows of --window layers; severed
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
  window: number;
  seed: number;
  maxRows?: number;
  noiseSpec: NoiseSpec;
}

function traceSettings(opts: Record<string, unknown>): TraceCliSettings {
  let noiseSpec: NoiseSpec;
  try {
    noiseSpec = parseNoiseSpec(String(opts.noise ?? "3x"));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return {
    samples: intOption(opts, "samples", DEFAULT_SAMPLES, 1),
    window: intOption(opts, "window", DEFAULT_WINDOW, 1),
    seed: intOption(opts, "seed", 1),
    maxRows: opts["max-rows"] === undefined ? undefined : intOption(opts, "max-rows", 0, 1),
    noiseSpec,
  };
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

async function tracePromptCli(opts: Record<string, unknown>): Promise<void> {
  const fact = opts.prompt === undefined && opts.subject === undefined ? DEFAULT_TRACE_FACT : undefined;
  const prompt = fact?.prompt ?? requireText(opts, "prompt");
  const subject = fact?.subject ?? requireText(opts, "subject");
  const expect = (opts.expect as string | undefined) ?? fact?.expect;
  const kinds = traceKinds(opts, true);
  const severArg = opts.sever === undefined ? undefined : String(opts.sever);
  if (severArg !== undefined && !["mlp", "attn", "both"].includes(severArg)) {
    throw new UsageError(`--sever must be mlp, attn or both (got '${severArg}')`);
  }
  const sever: ("attn" | "mlp")[] | undefined = kinds === "severed" || severArg === "both"
    ? ["attn", "mlp"]
    : severArg
    ? [severArg as "attn" | "mlp"]
    : undefined;
  const settings = traceSettings(opts);
  const json = Boolean(opts.json);
  const t0 = performance.now();
  if (!prompt.includes(subject)) {
    throw new UsageError(
      `--subject ${JSON.stringify(subject)} does not occur in --prompt ${JSON.stringify(prompt)}`,
    );
  }
  const { model, tokenizer } = await loadModel(opts);
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
    const answer = tokenizer.decode([base.answerId]);
    if (expect !== undefined && answer.trim() !== expect.trim() && !opts.force) {
      throw new Error(
        `the model's top-1 answer is ${JSON.stringify(answer)} (p = ${fmt(base.highScore, 3)}), not ` +
          `${JSON.stringify(expect)}: tracing shows how a known fact is recalled (the reference skips such ` +
          `prompts); pass --force to trace it anyway`,
      );
    }
    const tokens = ids.map((id) => tokenizer.decode([id]));
    const common = {
      prompt,
      subject,
      tokens,
      subject_range: [subjectRange[0], subjectRange[1]] as [number, number],
      answer,
      answer_id: base.answerId,
      high_score: base.highScore,
      low_score: base.lowScore,
    };
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
    const records: TraceRecord[] = [];
    let traceSeconds = 0;
    for (const [k, kind] of kindList.entries()) {
      const r = await traceKind(base, kind, {
        window: settings.window,
        maxRows: settings.maxRows,
        onProgress: (d) => bar.update(k * cellsPerKind + d, kind),
      });
      rows += r.rows;
      traceSeconds += r.seconds;
      records.push({
        ...common,
        kind,
        window: settings.window,
        samples: settings.samples,
        noise: noise.noise,
        seconds: r.seconds,
        scores: r.scores,
      });
    }
    bar.done();
    await writeOutputs(out, await traceFiles(records, info));
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
function fileCaseStore(dir: string): CaseStore {
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
  await writeOutputs(out, await factsFiles(summary.kinds, record));
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
};

const USAGE = `usage: deno task <command> [options]   (or: deno run -A cli.ts <command> ...)
commands: ${Object.keys(COMMANDS).join(", ")}
Each command takes --help.`;

/** Mesa's Vulkan loader complains on stderr when XDG_RUNTIME_DIR is unset; give it a private one. */
export function quietMesa(): void {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  try {
    const dir = "/tmp/xdg-runtime-rome-webgpu";
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch { /* only cosmetics */ }
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
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    if (Deno.env.get("ROME_DEBUG")) console.error(err.stack);
    console.error(`error: ${err.message}`);
    return err instanceof UsageError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
