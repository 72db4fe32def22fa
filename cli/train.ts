// deno task train / train-demo / facts: training a GPT-2-architecture model on a corpus (checkpoint folders
// that resume exactly), rebuilding the bundled model, and counting the facts a model knows. The training
// loop itself is engine/gpt2/train_run.ts; this is its files and terminal.
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { exists, readSafetensorsFile } from "../engine/files.ts";
import { loadGpt2Folder, loadTokenizer, saveGpt2Folder } from "../engine/gpt2/folder.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { Trainer } from "../engine/gpt2/train.ts";
import {
  initialModel,
  loadOptimizerState,
  optimizerState,
  planTraining,
  runTraining,
  type TrainConfig,
} from "../engine/gpt2/train_run.ts";
import { worldKnowledge, type WorldKnowledgeInput } from "../eval/knowledge.ts";
import { intOption, MAX_SEED, MODEL_OPTION, parse, UsageError } from "./args.ts";
import { isFile, readJsonFile } from "./files.ts";
import { loadModel, modelDir, openEngine } from "./open.ts";
import { fmtSeconds, Progress } from "./progress.ts";

const TRAIN_USAGE =
  `deno task train --config FILE --corpus FILE --out DIR [--tokenizer DIR] [--steps N] [--fresh] [--json]
  Trains a GPT-2-architecture model from scratch on a text corpus (documents separated by lines holding
  only <|endoftext|>) and writes Hugging Face checkpoints to DIR (config.json, model.safetensors,
  vocab.json, merges.txt, plus trainer state). Each checkpoint replaces DIR whole, so DIR must be new,
  empty or an earlier checkpoint, and hold no input. An interrupted run resumes from DIR's last checkpoint
  unless --fresh. --tokenizer defaults to the corpus's folder (vocab.json + merges.txt). --init starts
  from a model folder's weights (a second stage) instead of GPT-2's initialisation.`;

function readTrainConfig(path: string): TrainConfig {
  let j: TrainConfig;
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

/**
 * A training run into the checkpoint folder `out` (resumed from its last checkpoint unless `fresh`); its
 * inputs and the folder are checked before the GPU starts.
 */
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
  const plan = planTraining(cfg, docs, tokenizer.vocabSize, opts.steps);
  const { config, hyper } = plan;
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
  } else model = initialModel(engine, config, hyper.seed);
  /** The --init folder the run started from (kept in trainer_state.json, so a resume can check it). */
  const startedFrom = resumed ? resumed.init : initDir;
  const trainer = new Trainer(model, hyper);
  if (resumed) {
    loadOptimizerState(trainer, await readSafetensorsFile(`${opts.out}/optimizer.safetensors`), resumed.step);
  }
  const losses: [number, number][] = resumed?.losses ?? [];
  const t0 = performance.now() - (resumed?.seconds ?? 0) * 1000;
  const tokenizerFiles = {
    "vocab.json": Deno.readTextFileSync(`${tokDir}/vocab.json`),
    "merges.txt": Deno.readTextFileSync(`${tokDir}/merges.txt`),
  };
  const checkpoint = async () => {
    const tensors = await optimizerState(trainer);
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
  const bar = new Progress("training", cfg.train.stop_at ?? plan.totalSteps, opts.json);
  const run = await runTraining(trainer, plan, losses, {
    onStep: (step, loss, tps) => bar.update(step, `loss ${loss.toFixed(3)} ${tps.toFixed(0)} tok/s`),
    checkpoint,
  });
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  const result = {
    steps: trainer.step,
    // a finished run that is resumed trains no step: its last recorded loss
    loss: Number.isNaN(run.lastLoss) ? losses.at(-1)?.[1] ?? NaN : run.lastLoss,
    seconds,
    tokensPerSecond: run.tokensPerSecond,
  };
  trainer.dispose();
  return result;
}

export async function cmdTrain(args: string[]): Promise<void> {
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

export async function cmdTrainDemo(args: string[]): Promise<void> {
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

const FACTS_USAGE = `deno task facts [--model DIR] [--world DIR] [--phrasings] [--json]
  How many facts of the facts world the model knows: top-1 next token = the true object, over every fact (first
  training phrasing of its relation), over the CounterFact rewrite prompts, and over phrasings the model never
  saw: every fact in each of its relation's held-out phrasings, and the CounterFact paraphrase prompts.
  --phrasings: recall per held-out phrasing, and how its misses went (another object of the relation, or
  another word); --json always has it.`;

export async function cmdFacts(args: string[]): Promise<void> {
  const opts = parse(
    args,
    { ...MODEL_OPTION, world: { type: "string" }, phrasings: { type: "boolean" }, json: { type: "boolean" } },
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
  const facts = await readJsonFile(join(world, "facts.json"), "facts file") as WorldKnowledgeInput["facts"];
  const counterfact = await readJsonFile(
    join(world, "counterfact.json"),
    "CounterFact file",
  ) as WorldKnowledgeInput["counterfact"];
  const { model, tokenizer } = await loadModel(opts);
  let bar: Progress | undefined;
  const known = await worldKnowledge(model, tokenizer, { facts, counterfact }, (done, total) => {
    bar ??= new Progress("checking facts", total, Boolean(opts.json));
    bar.update(done);
  });
  bar?.done();
  if (opts.json) return console.log(JSON.stringify({ model: modelDir(opts), ...known }));
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log(`facts known (top-1): ${pct(known.facts.accuracy)} of ${known.facts.n}`);
  for (const [rel, r] of Object.entries(known.facts.by_relation)) {
    console.log(`  ${rel}: ${pct(r.accuracy)} of ${r.n} (held-out phrasings ${pct(r.held_out_accuracy)})`);
  }
  const { rewrite_prompts: rewrite, held_out_phrasings: held, paraphrase_prompts: para } = known;
  console.log(`CounterFact rewrite prompts (true object top-1): ${pct(rewrite.accuracy)} of ${rewrite.n}`);
  console.log(`held-out phrasings of every fact: ${pct(held.accuracy)} of ${held.n}`);
  console.log(`CounterFact paraphrase prompts: ${pct(para.accuracy)} of ${para.n}`);
  if (!opts.phrasings) return;
  console.log("held-out phrasings, one by one (a miss: another object of the relation, or another word):");
  for (const p of held.by_phrasing) {
    const others = p.other_answers.map((o) => `${JSON.stringify(o.token)} ×${o.n}`).join(", ");
    console.log(
      `  ${p.relation_id} ${JSON.stringify(p.phrasing)}: ${pct(p.accuracy)} of ${p.n}; ` +
        `other object ${pct(p.same_relation_miss)}${others ? `; other words: ${others}` : ""}`,
    );
  }
}
