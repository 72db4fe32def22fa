// Training a GPT-2 on the engine: GPT-2's initialisation, packing documents into rows, and one step
// (forward with logits at every position, mean cross-entropy, tape backward, gradient clipping, AdamW).
// Runtime-neutral; the CLI owns files, checkpoints and progress.
import { Tape } from "../autograd.ts";
import { crossEntropy, scale, sumAll } from "../ops.ts";
import { Adam, clipGradNorm } from "../optim.ts";
import { mulberry32 } from "../random.ts";
import type { Tensor } from "../tensor.ts";
import type { Gpt2Config } from "./config.ts";
import { expectedWeightShapes, type Gpt2Model } from "./model.ts";

export interface TrainHyper {
  /** Rows per step. */
  batchSize: number;
  /** Peak learning rate, reached after `warmupSteps`, then cosine decay to `minLrRatio`·lr at `steps`. */
  lr: number;
  minLrRatio: number;
  warmupSteps: number;
  steps: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
}

/** GPT-2's initialisation: N(0, 0.02) weights, residual projections scaled by 1/√(2·layers), LN 1/0. */
export function initGpt2Weights(c: Gpt2Config, seed: number): Map<string, Float32Array> {
  const rand = mulberry32(seed);
  const normal = () => {
    const u = Math.max(rand(), 1e-12), v = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of expectedWeightShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const w = new Float32Array(n);
    if (/ln_[12f]\.weight$/.test(name)) w.fill(1);
    else if (!name.endsWith(".bias")) {
      const std = name.endsWith("c_proj.weight") ? 0.02 / Math.sqrt(2 * c.nLayer) : 0.02;
      for (let i = 0; i < n; i++) w[i] = std * normal();
    }
    out.set(name, w);
  }
  return out;
}

/**
 * Packs tokenized documents (each already ending with <|endoftext|>) greedily into rows of at most
 * `T + 1` tokens (or, with `pack` false, one document per row) (inputs are row[0..-1], targets row[1..]), never splitting a document, so every row
 * starts at a document boundary as prompts do at inference. Longer documents are cut into pieces.
 */
export function packDocuments(docs: readonly (readonly number[])[], T: number, pack = true): number[][] {
  if (!pack) {
    // One document per row, each starting at position 0 exactly as prompts do at inference: with learned
    // absolute positions a small model memorises a fact at the positions it saw it, so facts drilled
    // mid-row are not recalled from a prompt that starts a sequence.
    return docs.flatMap((d) =>
      Array.from({ length: Math.ceil(d.length / (T + 1)) }, (_, i) => d.slice(i * (T + 1), (i + 1) * (T + 1)))
    )
      .filter((r) => r.length > 1);
  }
  const rows: number[][] = [];
  let cur: number[] = [];
  for (const doc of docs) {
    for (let i = 0; i < doc.length; i += T + 1) {
      const piece = doc.slice(i, i + T + 1);
      if (cur.length + piece.length > T + 1) {
        if (cur.length > 1) rows.push(cur);
        cur = [];
      }
      cur.push(...piece);
    }
  }
  if (cur.length > 1) rows.push(cur);
  return rows;
}

/** A seeded permutation of 0..n-1 for epoch `epoch` (reproducible after a resume). */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  const rand = mulberry32((seed * 1000003 + epoch * 7919) >>> 0);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

export function learningRate(h: TrainHyper, step: number): number {
  if (step < h.warmupSteps) return h.lr * (step + 1) / h.warmupSteps;
  const p = Math.min(1, (step - h.warmupSteps) / Math.max(1, h.steps - h.warmupSteps));
  return h.lr * (h.minLrRatio + (1 - h.minLrRatio) * 0.5 * (1 + Math.cos(Math.PI * p)));
}

/** Weights that get weight decay: matrices (GPT-2 practice: not biases, not layer norms). */
export function decays(name: string): boolean {
  return name.endsWith(".weight") && !/ln_[12f]\./.test(name);
}

export class Trainer {
  readonly params: Tensor[];
  readonly names: string[];
  readonly decay: Adam;
  readonly noDecay: Adam;
  step = 0;

  constructor(readonly model: Gpt2Model, readonly hyper: TrainHyper) {
    this.names = [...model.weights.keys()];
    this.params = this.names.map((n) => model.w(n));
    for (const p of this.params) p.requiresGrad = true;
    const pick = (d: boolean) => this.names.flatMap((n, i) => decays(n) === d ? [this.params[i]] : []);
    const common = {
      lr: hyper.lr,
      betas: [0.9, 0.95] as [number, number],
      eps: 1e-8,
      decoupledWeightDecay: true,
    };
    this.decay = new Adam(pick(true), { ...common, weightDecay: hyper.weightDecay });
    this.noDecay = new Adam(pick(false), { ...common, weightDecay: 0 });
  }

  /**
   * One optimisation step on `rows` (each at least 2 tokens). Returns the mean loss per predicted token
   * as a [1] tensor the caller reads (or not) and disposes; nothing is read back here.
   */
  trainStep(rows: readonly (readonly number[])[]): Tensor {
    const e = this.model.engine;
    const lr = learningRate(this.hyper, this.step);
    this.decay.lr = this.noDecay.lr = lr;
    const inputs = rows.map((r) => r.slice(0, -1));
    const targets = rows.flatMap((r) => r.slice(1));
    const tape = new Tape();
    const loss = e.scope(() => {
      const t = e.upload(Uint32Array.from(targets), [targets.length], "u32");
      const mean = tape.run(() => {
        const { logits } = this.model.forward(inputs, { logits: "all" });
        return scale(sumAll(crossEntropy(logits!, t)), 1 / targets.length);
      });
      const grads = tape.backward(mean);
      const gs = this.params.map((p) => grads.get(p));
      const present = gs.filter((g): g is Tensor => g !== undefined);
      clipGradNorm(present, this.hyper.gradClip);
      this.decay.step(this.decay.params.map((p) => grads.get(p)));
      this.noDecay.step(this.noDecay.params.map((p) => grads.get(p)));
      for (const g of present) g.dispose();
      return mean;
    });
    this.step++;
    return loss;
  }

  dispose(): void {
    this.decay.dispose();
    this.noDecay.dispose();
    for (const p of this.params) p.requiresGrad = false;
  }
}
