// Next-token distributions and text generation on a Gpt2Model. Sampling happens on the host from one
// readback of the last positions' logits per step (one row per prompt: 200 KB for GPT-2's vocabulary).
import type { Gpt2Model } from "./model.ts";

/** A seeded PRNG (mulberry32): generations are reproducible from their seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
 * Continues every prompt by up to `maxTokens` tokens. Rows are batched together; each step re-runs the
 * whole (growing) prefix: GPT-2 contexts here are short and this keeps the graph free of KV caches.
 */
export async function generate(
  model: Gpt2Model,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<number[][]> {
  if (!(opts.topK >= 1)) throw new RangeError(`top-k must be at least 1 (got ${opts.topK})`);
  const rand = seededRandom(opts.seed);
  const rows = prompts.map((p) => [...p]);
  const done = rows.map(() => false);
  const out: number[][] = rows.map(() => []);
  const ctx = model.config.nPositions;
  for (let step = 0; step < opts.maxTokens; step++) {
    const live = rows.map((_, i) => i).filter((i) => !done[i] && rows[i].length < ctx);
    if (live.length === 0) break;
    const lps = await nextTokenLogprobs(model, live.map((i) => rows[i]));
    live.forEach((i, j) => {
      const top = topK(lps[j], Math.max(1, Math.floor(opts.topK)));
      let id = top[0].id;
      if (top.length > 1) {
        // Sample in proportion to the renormalised probabilities of the top k (HF's top-k sampling).
        const ps = top.map((e) => Math.exp(e.logprob - top[0].logprob));
        let u = rand() * ps.reduce((a, b) => a + b, 0);
        for (let e = 0; e < top.length; e++) {
          u -= ps[e];
          if (u <= 0 || e === top.length - 1) {
            id = top[e].id;
            break;
          }
        }
      }
      rows[i].push(id);
      out[i].push(id);
      if (id === opts.stopId) done[i] = true;
    });
    opts.onToken?.(step + 1);
  }
  return out;
}
