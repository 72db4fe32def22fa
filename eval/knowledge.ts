// Does the model know a fact? Top-1 next-token checks over many prompts, batched, with one small
// readback (argmax ids) per batch. Used to verify the bundled model and to pick traceable facts.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { argmax } from "../engine/ops.ts";

export interface FactProbe {
  /** The prompt text, ending right before the object (no trailing space). */
  prompt: string;
  /** The object, without its leading space (" " + target is what must come next). */
  target: string;
}

export interface ProbeResult {
  correct: boolean[];
  predicted: number[];
  accuracy: number;
}

/**
 * For each probe: is the model's most likely next token the first token of " " + target? Rows are
 * batched `batchSize` at a time; `onBatch` reports progress after each awaited readback.
 */
export async function topOneAccuracy(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  probes: readonly FactProbe[],
  opts: { batchSize?: number; onBatch?: (done: number) => void } = {},
): Promise<ProbeResult> {
  const bs = opts.batchSize ?? 64;
  const e = model.engine;
  const correct: boolean[] = [], predicted: number[] = [];
  for (let i = 0; i < probes.length; i += bs) {
    const chunk = probes.slice(i, i + bs);
    const ids = chunk.map((p) => tokenizer.encode(p.prompt));
    const want = chunk.map((p) => tokenizer.encode(" " + p.target.trim())[0]);
    const top = await e.scopeAsync(async () => {
      const { logits } = model.forward(ids, { logits: "last" });
      return await argmax(logits!).read();
    });
    chunk.forEach((_, k) => {
      predicted.push(top[k]);
      correct.push(top[k] === want[k]);
    });
    opts.onBatch?.(Math.min(i + bs, probes.length));
  }
  const n = correct.filter(Boolean).length;
  return { correct, predicted, accuracy: probes.length ? n / probes.length : NaN };
}
