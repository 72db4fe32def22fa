// What the evaluation asks of a model, on the GPT-2 graph: length-normalised NLLs of target continuations
// (one batched forward, the cross-entropy on the GPU, one readback of a float per target token), sampled
// generations as generate_fast makes them, the perplexity of a text, and teacher-forced top-1 checks.
// Runtime-neutral.
import { generate } from "../engine/gpt2/generate.ts";
import type { Pos } from "../engine/gpt2/hooks.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { argmax, crossEntropy } from "../engine/ops.ts";
import type { TargetNll } from "./metrics.ts";
import { InputError } from "../engine/errors.ts";

/** A prompt or target the model cannot take (empty, or longer than its context): one line, names the text. */
export class EvalInputError extends InputError {
  override name = "EvalInputError";
}

/** Rows per forward: bounds the activations and the logits readback of one batch. */
export const PROBE_BATCH_ROWS = 64;

/**
 * For each row: ids, and the tokens to score from position `start` on (each predicted by the logits one
 * position earlier). Returns the mean NLL over each row's scored tokens, in float64 from the f32 per-token
 * losses, batching rows `PROBE_BATCH_ROWS` at a time.
 */
export async function meanContinuationNll(
  model: Gpt2Model,
  rows: readonly { prefix: readonly number[]; target: readonly number[] }[],
): Promise<number[]> {
  const e = model.engine, ctx = model.config.nPositions;
  const out: number[] = [];
  for (let r0 = 0; r0 < rows.length; r0 += PROBE_BATCH_ROWS) {
    const chunk = rows.slice(r0, r0 + PROBE_BATCH_ROWS);
    const inputs: number[][] = [], positions: Pos[] = [], targets: number[] = [];
    chunk.forEach(({ prefix, target }, i) => {
      if (prefix.length === 0 || target.length === 0) {
        throw new EvalInputError("a scored continuation needs a non-empty prompt and target");
      }
      // The last target token is never an input of a scored position, so the row stops before it.
      const ids = [...prefix, ...target.slice(0, -1)];
      if (ids.length > ctx) {
        throw new EvalInputError(
          `a prompt with its target is ${ids.length + 1} tokens, past the model's context of ${ctx}`,
        );
      }
      inputs.push(ids);
      target.forEach((t, j) => {
        positions.push([i, prefix.length + j - 1]);
        targets.push(t);
      });
    });
    const losses = await e.scopeAsync(async () => {
      const { logits } = model.forward(inputs, { logits: positions });
      const t = e.upload(Uint32Array.from(targets), [targets.length], "u32");
      return await crossEntropy(logits!, t).read();
    });
    let k = 0;
    for (const { target } of chunk) {
      let s = 0;
      for (let j = 0; j < target.length; j++) s += losses[k++];
      out.push(s / target.length);
    }
  }
  return out;
}

/**
 * test_batch_prediction (eval_utils_counterfact.py:105-145): for each prefix p, the mean per-token NLL of
 * " " + target_new and of " " + target_true after it, (1/n) Σ_j −log p(tok_j | p, tok_<j): multi-token
 * targets are compared length-normalised, not by total sequence probability.
 *
 * The reference tokenizes the joined string f"{p} {target}" and scores tok(" " + target) from
 * len(tok(p)) on; here the row is tok(p) followed by tok(" " + target), which is the same token sequence
 * whenever p does not end in white space (GPT-2's pre-tokenizer always splits before " word"), and which
 * keeps the scored tokens aligned with the input when it does.
 */
export async function targetNlls(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  prefixes: readonly string[],
  targetNew: string,
  targetTrue: string,
): Promise<TargetNll[]> {
  return await targetPairNlls(
    model,
    tokenizer,
    prefixes.map((prompt) => ({ prompt, targetNew, targetTrue })),
  );
}

/** targetNlls with a pair of targets of each prompt's own (portability prompts ask different relations). */
export async function targetPairNlls(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  items: readonly { prompt: string; targetNew: string; targetTrue: string }[],
): Promise<TargetNll[]> {
  const rows = items.flatMap(({ prompt, targetNew, targetTrue }) => {
    const prefix = tokenizer.encode(prompt);
    if (prefix.length === 0) throw new EvalInputError(`the prompt ${JSON.stringify(prompt)} has no tokens`);
    return [{ prefix, target: tokenizer.encode(" " + targetNew) }, {
      prefix,
      target: tokenizer.encode(" " + targetTrue),
    }];
  });
  const nll = await meanContinuationNll(model, rows);
  return items.map((_, i) => ({ target_new: nll[2 * i], target_true: nll[2 * i + 1] }));
}

export interface GenerationSettings {
  /** Tokens per text including the prompt (generate_fast's max_out_len: 100 in the tests). */
  maxOutLen: number;
  topK: number;
  seed: number;
}

/** The reference's settings for the generation tests: 100 tokens in all, top-k 5 sampling. */
export const REFERENCE_GENERATION = { maxOutLen: 100, topK: 5 } as const;

/**
 * generate_fast(model, tok, prompts, n_gen_per_prompt=1, max_out_len, top_k): each prompt continued by
 * top-k sampling until it is max_out_len tokens long (the prompt included; capped at the model's context);
 * the text returned is the whole sequence decoded, NFKD-normalised, with "\n\n" → " " and
 * "<|endoftext|>" removed. Deliberate difference: sampling is seeded (the reference's is not), so the
 * "pre" and "post" texts of a case are drawn with the same random numbers and reruns reproduce them.
 */
export async function generateTexts(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  prompts: readonly string[],
  g: GenerationSettings,
): Promise<string[]> {
  if (prompts.length === 0) return [];
  const total = Math.min(g.maxOutLen, model.config.nPositions);
  const ids = prompts.map((p) => {
    const t = tokenizer.encode(p);
    if (t.length === 0) throw new EvalInputError(`the generation prompt ${JSON.stringify(p)} has no tokens`);
    if (t.length > model.config.nPositions) {
      throw new EvalInputError(
        `the generation prompt ${
          JSON.stringify(p)
        } is ${t.length} tokens, past the model's context of ${model.config.nPositions}`,
      );
    }
    return t;
  });
  const longest = Math.max(0, ...ids.map((t) => total - t.length));
  const more = longest > 0
    ? await generate(model, ids, { maxTokens: longest, topK: g.topK, seed: g.seed })
    : ids.map(() => []);
  return ids.map((t, i) => {
    const full = [...t, ...more[i].slice(0, Math.max(0, total - t.length))];
    return tokenizer.decode(full).normalize("NFKD").replaceAll("\n\n", " ").replaceAll("<|endoftext|>", "");
  });
}

/**
 * util/perplexity.py: exp(−(1/N) Σ log p(x_i | x_<i)) over the text's first `maxLength` tokens (capped
 * at the context), N the number of input tokens (the first token is not predicted but counts in N, as
 * the reference divides by input_ids.size(1)).
 */
export async function perplexity(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  text: string,
  maxLength = 100,
): Promise<number> {
  const ids = tokenizer.encode(text).slice(0, Math.min(maxLength, model.config.nPositions));
  if (ids.length === 0) {
    throw new EvalInputError(`the text ${JSON.stringify(text.slice(0, 40))} has no tokens`);
  }
  if (ids.length === 1) return 1;
  const [nll] = await meanContinuationNll(model, [{ prefix: ids.slice(0, 1), target: ids.slice(1) }]);
  return Math.exp(nll * (ids.length - 1) / ids.length);
}

/**
 * test_batch_prediction_acc (eval_utils_zsre.py): is the most likely token after each prompt the first
 * token of tok(target)? (The reference's "hack" for foreign characters: the gold id is the first token of
 * the re-tokenised target string.) One readback of argmax ids per batch.
 */
export async function topOneCorrect(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  prompts: readonly string[],
  targets: readonly string[],
): Promise<boolean[]> {
  const e = model.engine, ctx = model.config.nPositions;
  const out: boolean[] = [];
  for (let r0 = 0; r0 < prompts.length; r0 += PROBE_BATCH_ROWS) {
    const ids = prompts.slice(r0, r0 + PROBE_BATCH_ROWS).map((p) => {
      const t = tokenizer.encode(p);
      if (t.length === 0) throw new EvalInputError(`the prompt ${JSON.stringify(p)} has no tokens`);
      if (t.length > ctx) {
        throw new EvalInputError(
          `the prompt ${JSON.stringify(p)} is ${t.length} tokens, past the model's context of ${ctx}`,
        );
      }
      return t;
    });
    const gold = targets.slice(r0, r0 + PROBE_BATCH_ROWS).map((t) => tokenizer.encode(t)[0] ?? -1);
    const top = await e.scopeAsync(async () => {
      const { logits } = model.forward(ids, { logits: "last" });
      return await argmax(logits!).read();
    });
    gold.forEach((g, i) => out.push(top[i] === g));
  }
  return out;
}
