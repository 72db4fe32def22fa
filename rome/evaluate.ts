// What an edit did, measured the same way before and after: next-token probabilities of the new and the
// true target's first token on the rewrite prompt, its paraphrases and neighbourhood prompts, and greedy
// continuations. Runtime-neutral.
import { generate, logSoftmaxRow } from "../engine/gpt2/generate.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { fillTemplate, RomeInputError, type RomeRequest } from "./request.ts";

/** Tokens of the greedy pre/post generations when none is given (the CLI's --max-tokens and the page's). */
export const DEFAULT_GENERATION_TOKENS = 20;

/** Prompts an edit is checked on (CounterFact's fields, or just the rewrite prompt). */
export interface EvaluationPrompts {
  paraphrases?: readonly string[];
  neighbours?: readonly string[];
  /** Prompts continued greedily (the rewrite prompt is always one). */
  generation?: readonly string[];
}

export interface TargetProbabilities {
  prompt: string;
  target_new: number;
  target_true?: number;
}

export interface Evaluation {
  rewrite: TargetProbabilities;
  paraphrases: TargetProbabilities[];
  neighbours: TargetProbabilities[];
  generations: { prompt: string; text: string }[];
}

/** P(first token of each target | prompt) for every prompt, [prompt][target] (one batched forward). */
export async function firstTokenProbabilities(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  prompts: readonly string[],
  targets: readonly string[],
): Promise<number[][]> {
  if (prompts.length === 0) return [];
  const ids = prompts.map((p) => {
    const t = tokenizer.encode(p);
    if (t.length === 0) throw new RomeInputError(`the prompt ${JSON.stringify(p)} has no tokens`);
    if (t.length > model.config.nPositions) {
      throw new RomeInputError(
        `the prompt ${
          JSON.stringify(p)
        } is ${t.length} tokens, past the model's context of ${model.config.nPositions}`,
      );
    }
    return t;
  });
  const first = targets.map((t) => {
    const tok = tokenizer.encode(t);
    if (tok.length === 0) throw new RomeInputError(`the target ${JSON.stringify(t)} has no tokens`);
    return tok[0];
  });
  const { logits } = model.forward(ids, { logits: "last" });
  const flat = await logits!.read();
  logits!.dispose();
  const V = model.config.vocabSize;
  return ids.map((_, r) => {
    const lp = logSoftmaxRow(flat.subarray(r * V, (r + 1) * V));
    return first.map((id) => Math.exp(lp[id]));
  });
}

/** Greedy continuations of up to `maxTokens` tokens, each ending at <|endoftext|> (all prompts in one batch per step). */
export async function greedyContinuations(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  prompts: readonly string[],
  maxTokens: number,
): Promise<string[]> {
  if (prompts.length === 0 || maxTokens === 0) return prompts.map(() => "");
  const ids = prompts.map((p) => tokenizer.encode(p).slice(-(model.config.nPositions - 1)));
  // A continuation ends at <|endoftext|> (not printed): past it a small model writes runs of it, or a new
  // document about something else.
  const eos = tokenizer.eosId >= 0 ? tokenizer.eosId : undefined;
  const out = await generate(model, ids, { maxTokens, topK: 1, seed: 0, stopId: eos });
  return out.map((o) => tokenizer.decode(o.at(-1) === eos ? o.slice(0, -1) : o));
}

/** Probabilities on the rewrite prompt, paraphrases and neighbours, and greedy generations. */
export async function evaluateRequest(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  prompts: EvaluationPrompts = {},
  opts: { generationTokens?: number } = {},
): Promise<Evaluation> {
  const rewrite = fillTemplate(request.prompt, request.subject);
  const paraphrases = prompts.paraphrases ?? [];
  const neighbours = prompts.neighbours ?? [];
  const targets = [request.target_new, ...(request.target_true !== undefined ? [request.target_true] : [])];
  const all = [rewrite, ...paraphrases, ...neighbours];
  const p = await firstTokenProbabilities(model, tokenizer, all, targets);
  const row = (i: number): TargetProbabilities => ({
    prompt: all[i],
    target_new: p[i][0],
    ...(request.target_true !== undefined ? { target_true: p[i][1] } : {}),
  });
  const gen = [rewrite, ...(prompts.generation ?? [])];
  const texts = await greedyContinuations(model, tokenizer, gen, opts.generationTokens ?? 20);
  return {
    rewrite: row(0),
    paraphrases: paraphrases.map((_, i) => row(1 + i)),
    neighbours: neighbours.map((_, i) => row(1 + paraphrases.length + i)),
    generations: gen.map((prompt, i) => ({ prompt, text: texts[i] })),
  };
}
