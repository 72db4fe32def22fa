// A training run on the engine: the schedule a training config asks for, the model it starts from, the loop
// over seeded epochs with its checkpoint calls, and the optimiser state a checkpoint holds. Runtime-neutral:
// reading the config and corpus and writing checkpoint folders are the caller's (cli/train.ts).
import type { Engine } from "../engine.ts";
import { InputError } from "../errors.ts";
import type { Gpt2Config } from "./config.ts";
import { buildGpt2 } from "./load.ts";
import { expectedWeightShapes, type Gpt2Model } from "./model.ts";
import { epochOrder, initGpt2Weights, packDocuments, Trainer, type TrainHyper } from "./train.ts";

/** A training config file (`train_config.json`): the model's shape and the schedule, in the file's names. */
export interface TrainConfig {
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

/** What a run does: the model's shape, the optimiser's schedule, the rows it cycles over, where it stops. */
export interface TrainPlan {
  config: Gpt2Config;
  hyper: TrainHyper;
  rows: number[][];
  stepsPerEpoch: number;
  /** The schedule's length (the learning rate's cosine ends here). */
  totalSteps: number;
  /** The step this run stops after: the schedule's end or its train.stop_at, whichever comes first. */
  stopAt: number;
  checkpointEvery: number;
}

/**
 * The plan for tokenized documents (each ending with <|endoftext|>): `steps` overrides the config's
 * steps, which override its epochs (default 1).
 */
export function planTraining(
  cfg: TrainConfig,
  docs: number[][],
  vocabSize: number,
  steps?: number,
): TrainPlan {
  const T = cfg.model.n_positions;
  const rows = packDocuments(docs, T, cfg.train.pack ?? true);
  const t = cfg.train;
  const B = t.batch_size;
  const stepsPerEpoch = Math.floor(rows.length / B);
  if (stepsPerEpoch < 1) {
    throw new InputError(`the corpus packs into ${rows.length} rows, fewer than one batch of ${B}`);
  }
  const totalSteps = steps ?? t.steps ?? Math.round((t.epochs ?? 1) * stepsPerEpoch);
  const hyper: TrainHyper = {
    batchSize: B,
    lr: t.lr,
    minLrRatio: t.min_lr_ratio ?? 0.1,
    warmupSteps: t.warmup_steps ?? Math.min(100, Math.ceil(totalSteps / 20)),
    steps: totalSteps,
    weightDecay: t.weight_decay ?? 0.1,
    gradClip: t.grad_clip ?? 1,
    seed: t.seed ?? 1,
  };
  const config: Gpt2Config = {
    nLayer: cfg.model.n_layer,
    nHead: cfg.model.n_head,
    nEmbd: cfg.model.n_embd,
    nInner: 4 * cfg.model.n_embd,
    nPositions: T,
    vocabSize,
    layerNormEps: 1e-5,
  };
  return {
    config,
    hyper,
    rows,
    stepsPerEpoch,
    totalSteps,
    stopAt: Math.min(totalSteps, t.stop_at ?? totalSteps),
    checkpointEvery: t.checkpoint_every ?? 200,
  };
}

/** A model of this shape with GPT-2's initialisation, seeded. */
export function initialModel(engine: Engine, config: Gpt2Config, seed: number): Gpt2Model {
  const init = initGpt2Weights(config, seed);
  return buildGpt2(engine, config, {
    tensors: new Map(
      [...init.keys()].map((n) => [n, { shape: [...expectedWeightShapes(config).get(n)!], dtype: "F32" }]),
    ),
    read: (n) => init.get(n)!,
    describe: () => "initialisation",
  });
}

/** The optimisers' moments as tensors named `m.<weight>` and `v.<weight>`, read from the GPU. */
export async function optimizerState(
  trainer: Trainer,
): Promise<{ name: string; data: Float32Array; shape: number[] }[]> {
  const engine = trainer.model.engine;
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
  return tensors;
}

/** Restores what optimizerState saved, and the step count, for an exact resume. */
export function loadOptimizerState(
  trainer: Trainer,
  state: { read(name: string): Float32Array },
  step: number,
): void {
  for (const opt of [trainer.decay, trainer.noDecay]) {
    opt.params.forEach((p, i) => {
      const name = trainer.names[trainer.params.indexOf(p)];
      opt.loadState(i, state.read(`m.${name}`), state.read(`v.${name}`), step, step);
    });
  }
  trainer.step = step;
}

export interface TrainLoopHooks {
  onStep(step: number, loss: number, tokensPerSecond: number): void;
  /** Called every plan.checkpointEvery steps and after the last one. */
  checkpoint(): Promise<void>;
}

/**
 * Steps from the trainer's step to plan.stopAt, each batch taken from its epoch's seeded order (so a
 * resumed run sees the batches an uninterrupted one would). Appends [step, loss] to `losses`. The loss is
 * read after every step: a diverged run stops at once.
 */
export async function runTraining(
  trainer: Trainer,
  plan: TrainPlan,
  losses: [number, number][],
  hooks: TrainLoopHooks,
): Promise<{ lastLoss: number; tokensPerSecond: number }> {
  const { rows, stepsPerEpoch, stopAt } = plan;
  const B = plan.hyper.batchSize;
  let tokens = 0, lastLoss = NaN;
  const runStart = performance.now();
  while (trainer.step < stopAt) {
    const s = trainer.step;
    const order = epochOrder(rows.length, plan.hyper.seed, Math.floor(s / stepsPerEpoch));
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
    hooks.onStep(trainer.step, lastLoss, tokens / ((performance.now() - runStart) / 1000));
    if (trainer.step % plan.checkpointEvery === 0 || trainer.step === stopAt) await hooks.checkpoint();
  }
  return { lastLoss, tokensPerSecond: tokens / ((performance.now() - runStart) / 1000) };
}
