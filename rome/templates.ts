// Context templates (reference §2.2): "{}" plus short texts sampled from the model itself, each followed
// by ". {}". k* averages the subject's key over all of them, and v* is optimised on the rewrite prompt
// behind each, so the edit holds in varied contexts. Runtime-neutral.
import { generate } from "../engine/gpt2/generate.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { RomeInputError } from "./request.ts";

/** Top-k of the reference's sampler (util/generate.py: generate_fast). */
export const TEMPLATE_TOP_K = 5;
/** Seed of the context templates when none is given (the CLI's --seed default and the page's). */
export const DEFAULT_TEMPLATE_SEED = 1;

/**
 * The templates ["{}", prefix_1 + ". {}", ...]: for each [length, count] of `lengthParams` (the
 * reference's [[5, 10], [10, 10]]), `count` texts sampled with top-k 5 from "<|endoftext|>", `length`
 * tokens long counting that token (so 4 and 9 sampled tokens). Decoded, NFKD-normalised, "\n\n" → " ",
 * "<|endoftext|>" removed, as the reference does.
 *
 * Deliberate differences: the reference draws unseeded (its templates change from run to run); here
 * group i of `lengthParams` samples with the seeded generator at `seed + i`, so an edit is reproducible.
 * Braces in the sampled text are replaced by spaces (as MEMIT and EasyEdit do; the original ROME does
 * not), so that "{}" only ever marks the subject.
 */
export async function generateContextTemplates(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  lengthParams: readonly (readonly [number, number])[],
  seed: number,
  onGroup?: (done: number, total: number) => void,
): Promise<string[]> {
  const eos = tokenizer.eosId;
  if (eos < 0) {
    throw new RomeInputError(
      "the tokenizer has no <|endoftext|> token, which ROME's context templates start from",
    );
  }
  const out = ["{}"];
  for (const [i, [length, n]] of lengthParams.entries()) {
    if (n === 0) continue;
    if (length > model.config.nPositions) {
      throw new RomeInputError(
        `context templates of ${length} tokens do not fit the model's context of ${model.config.nPositions}`,
      );
    }
    const prompts = Array.from({ length: n }, () => [eos]);
    const sampled = await generate(model, prompts, {
      maxTokens: length - 1,
      topK: TEMPLATE_TOP_K,
      seed: seed + i,
    });
    for (const row of sampled) {
      const text = tokenizer.decode([eos, ...row]).normalize("NFKD").replaceAll("\n\n", " ")
        .replaceAll("<|endoftext|>", "").replace(/[{}]/g, " ");
      out.push(text + ". {}");
    }
    onGroup?.(i + 1, lengthParams.length);
  }
  return out;
}

/** Checks templates read from a cache or a file: a list of strings, each with exactly one "{}". */
export function parseContextTemplates(json: unknown, where: string): string[] {
  if (
    !Array.isArray(json) || json.length === 0 ||
    !json.every((t) => typeof t === "string" && t.split("{}").length === 2)
  ) {
    throw new RomeInputError(`${where}: expected a non-empty list of templates, each with exactly one "{}"`);
  }
  return json as string[];
}
