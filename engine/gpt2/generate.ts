// Next-token distributions and text generation on a Gpt2Model. Sampling happens on the host from one
// readback of the last positions' logits per step (one row per prompt: 200 KB for GPT-2's vocabulary);
// generation decodes incrementally over a KV cache (decode.ts).
import { decodeStep, newKvCache } from "./decode.ts";
import type { Gpt2Model } from "./model.ts";
import { mulberry32 } from "../random.ts";

/** log-softmax of one logits row, in float64 on the host. */
export function logSoftmaxRow(logits: ArrayLike<number>): Float64Array {
  let mx = -Infinity;
  for (let i = 0; i < logits.length; i++) mx = Math.max(mx, logits[i]);
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += Math.exp(logits[i] - mx);
  const lz = mx + Math.log(z);
  return Float64Array.from(logits as ArrayLike<number>, (v) => v - lz);
}

export interface TopEntry {
  id: number;
  logprob: number;
}

/** The k most likely ids of a log-prob row (ties broken by lower id). */
export function topK(logprobs: ArrayLike<number>, k: number): TopEntry[] {
  const best: TopEntry[] = [];
  for (let id = 0; id < logprobs.length; id++) {
    const lp = logprobs[id];
    if (best.length < k || lp > best[best.length - 1].logprob) {
      let i = best.length;
      while (i > 0 && best[i - 1].logprob < lp) i--;
      best.splice(i, 0, { id, logprob: lp });
      if (best.length > k) best.pop();
    }
  }
  return best;
}

/** Next-token log-probs after each prompt (one row per prompt, float64). */
export async function nextTokenLogprobs(
  model: Gpt2Model,
  prompts: readonly (readonly number[])[],
): Promise<Float64Array[]> {
  const { logits } = model.forward(prompts, { logits: "last" });
  const flat = await logits!.read();
  logits!.dispose();
  const V = model.config.vocabSize;
  return prompts.map((_, r) => logSoftmaxRow(flat.subarray(r * V, (r + 1) * V)));
}

export interface GenerateOptions {
  maxTokens: number;
  /** 1 = greedy; otherwise sample among the k most likely tokens. */
  topK: number;
  seed: number;
  /** Stop a row when it emits this id (e.g. <|endoftext|>). */
  stopId?: number;
  onToken?: (step: number) => void;
}

/**
 * Continues every prompt by up to `maxTokens` tokens (stopping at the model's context). Rows are batched
 * together over one KV cache: the prompts run once, then each step runs one token per live row.
 */
export async function generate(
  model: Gpt2Model,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<number[][]> {
  if (!(opts.topK >= 1)) throw new RangeError(`top-k must be at least 1 (got ${opts.topK})`);
  const ctx = model.config.nPositions;
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new RangeError(`generate: prompt ${i} has no tokens`);
    if (p.length > ctx) {
      throw new RangeError(
        `generate: prompt ${i} has ${p.length} tokens, over the model's context of ${ctx}`,
      );
    }
  });
  const rand = mulberry32(opts.seed);
  const out: number[][] = prompts.map(() => []);
  if (prompts.length === 0 || opts.maxTokens <= 0) return out;
  const Tmax = Math.min(ctx, Math.max(...prompts.map((p) => p.length)) + opts.maxTokens);
  const cache = newKvCache(model, prompts.length, Tmax);
  const V = model.config.vocabSize;
  try {
    // a row generates while its sequence is shorter than the context: a full-context prompt gets nothing
    let feed: number[][] = prompts.map((p) => p.length < ctx ? [...p] : []);
    for (let step = 0; step < opts.maxTokens; step++) {
      const live = feed.map((f, i) => f.length > 0 ? i : -1).filter((i) => i >= 0);
      if (live.length === 0) break;
      const logits = decodeStep(model, cache, feed);
      const flat = await logits.read();
      logits.dispose();
      feed = prompts.map(() => []);
      live.forEach((i, j) => {
        const id = sampleTopK(logSoftmaxRow(flat.subarray(j * V, (j + 1) * V)), opts.topK, rand);
        out[i].push(id);
        if (id !== opts.stopId && cache.lengths[i] + 1 < ctx) feed[i] = [id];
      });
      opts.onToken?.(step + 1);
    }
  } finally {
    cache.dispose();
  }
  return out;
}

/** Samples in proportion to the renormalised probabilities of the k most likely tokens (HF's top-k). */
function sampleTopK(logprobs: Float64Array, k: number, rand: () => number): number {
  const top = topK(logprobs, Math.max(1, Math.floor(k)));
  if (top.length === 1) return top[0].id;
  const ps = top.map((e) => Math.exp(e.logprob - top[0].logprob));
  let u = rand() * ps.reduce((a, b) => a + b, 0);
  for (let e = 0; e < top.length; e++) {
    u -= ps[e];
    if (u <= 0) return top[e].id;
  }
  return top[top.length - 1].id;
}
