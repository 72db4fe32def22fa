// An edit request (reference §2.1) and the token-index rules every ROME stage shares (§2.3).
// Runtime-neutral.
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { InputError } from "../engine/errors.ts";

/** A request as the user gives it: prompt with one "{}" for the subject (or with the subject written out). */
export interface RequestInput {
  prompt: string;
  subject: string;
  target_new: string;
  /** The true object (CounterFact's target_true): only reported, never optimised. */
  target_true?: string;
}

/** A checked request: `prompt` has exactly one "{}", targets carry GPT-2's leading space. */
export interface RomeRequest {
  prompt: string;
  subject: string;
  target_new: string;
  target_true?: string;
}

/** Bad input to an edit: one line naming the problem and the fix (the CLI prints it without a stack). */
export class RomeInputError extends InputError {
  override name = "RomeInputError";
}

const count = (s: string, part: string) => s.split(part).length - 1;

/**
 * Checks and normalises a request the way the reference does before editing (rome_main.py:72-74): a
 * leading space is put on the targets (GPT-2's BPE encodes " Paris", not "Paris", after a word). The
 * subject is trimmed (the reference strips it whenever a prefix precedes it, §2.3). A prompt without
 * "{}" that contains the subject has its first occurrence replaced by "{}".
 */
export function normalizeRequest(r: RequestInput): RomeRequest {
  const subject = r.subject.trim();
  if (subject === "") throw new RomeInputError("the subject is empty: give --subject TEXT");
  if (subject.includes("{}")) {
    throw new RomeInputError(`the subject ${JSON.stringify(subject)} contains "{}"`);
  }
  let prompt = r.prompt;
  const holes = count(prompt, "{}");
  if (holes === 0) {
    const at = prompt.indexOf(subject);
    if (at < 0) {
      throw new RomeInputError(
        `the subject ${JSON.stringify(subject)} is not in the prompt ${JSON.stringify(prompt)}: ` +
          `write the prompt with "{}" where the subject goes, e.g. "{} is located in"`,
      );
    }
    prompt = prompt.slice(0, at) + "{}" + prompt.slice(at + subject.length);
  } else if (holes > 1) {
    throw new RomeInputError(
      `the prompt ${JSON.stringify(prompt)} has ${holes} "{}"; it needs exactly one, where the subject goes`,
    );
  }
  if (fillTemplate(prompt, subject).trim() === subject) {
    throw new RomeInputError(
      `the prompt ${JSON.stringify(prompt)} is only the subject: add the relation, e.g. "{} is located in"`,
    );
  }
  const target = (t: string | undefined, flag: string) => {
    if (t === undefined) return undefined;
    if (t.trim() === "") {
      throw new RomeInputError(`the ${flag} is empty: give the new object, e.g. --target Paris`);
    }
    return t.startsWith(" ") ? t : " " + t;
  };
  return {
    prompt,
    subject,
    target_new: target(r.target_new, "target")!,
    ...(r.target_true !== undefined ? { target_true: target(r.target_true, "true target") } : {}),
  };
}

/** The template with its single "{}" replaced by `fill` (other text, braces included, stays literal). */
export function fillTemplate(template: string, fill: string): string {
  const at = template.indexOf("{}");
  if (at < 0 || template.indexOf("{}", at + 2) >= 0) {
    throw new RomeInputError(`template ${JSON.stringify(template)} must contain exactly one "{}"`);
  }
  return template.slice(0, at) + fill + template.slice(at + 2);
}

/** Which token of the subject a template's index names (repr_tools.get_words_idxs_in_templates). */
export type Subtoken = "last" | "first" | "first_after_last";

/**
 * The token index of the subject in `template` ("{}" where the subject goes), computed exactly as the
 * reference does (repr_tools.py:43-99): split at "{}" into prefix and suffix; a non-empty prefix must end
 * with a space, which is moved onto the subject (" " + subject.strip()); prefix, subject and suffix are
 * tokenized separately, giving lengths P, W, S; "last" = P + W − 1, "first" = P, "first_after_last" =
 * P + W (P + W − 1 when the suffix is empty). The model is run on the tokens of the whole filled string;
 * the two agree for GPT-2's BPE at space boundaries.
 */
export function subjectTokenIndex(
  tokenizer: Gpt2Tokenizer,
  template: string,
  subject: string,
  subtoken: Subtoken = "last",
): number {
  const at = template.indexOf("{}");
  if (at < 0 || template.indexOf("{}", at + 2) >= 0) {
    throw new RomeInputError(`template ${JSON.stringify(template)} must contain exactly one "{}"`);
  }
  let prefix = template.slice(0, at);
  const suffix = template.slice(at + 2);
  let word = subject;
  if (prefix.length > 0) {
    if (!prefix.endsWith(" ")) {
      throw new RomeInputError(
        `the text before the subject must end with a space (got ${JSON.stringify(prefix)} in ` +
          `${JSON.stringify(template)}): ROME tokenizes the subject as its own word`,
      );
    }
    prefix = prefix.slice(0, -1);
    word = " " + subject.trim();
  }
  const P = tokenizer.encode(prefix).length;
  const W = tokenizer.encode(word).length;
  const S = tokenizer.encode(suffix).length;
  if (W === 0) throw new RomeInputError(`the subject ${JSON.stringify(subject)} encodes to no tokens`);
  if (subtoken === "first") return P;
  if (subtoken === "last") return P + W - 1;
  return P + W - (S === 0 ? 1 : 0);
}

/** A prompt's tokens and the position whose MLP key / output ROME reads and writes (compute_v.find_fact_lookup_idx). */
export interface LookupPrompt {
  /** The template with the subject filled in. */
  text: string;
  ids: number[];
  /** `fact_token` "subject_last": the subject's last token; "last": the prompt's last token. */
  index: number;
}

/**
 * Tokens and lookup index of a template filled with the subject. Throws a RomeInputError when the
 * prompt does not fit the model's context or the index falls outside it (a tokenization that merges
 * across the subject boundary).
 */
export function lookupPrompt(
  tokenizer: Gpt2Tokenizer,
  template: string,
  subject: string,
  factToken: "subject_last" | "last",
  nPositions: number,
  what = "prompt",
): LookupPrompt {
  const text = fillTemplate(template, subject);
  const ids = tokenizer.encode(text);
  if (ids.length > nPositions) {
    throw new RomeInputError(
      `the ${what} ${JSON.stringify(text)} is ${ids.length} tokens, past the model's context of ` +
        `${nPositions}: use a shorter prompt or target`,
    );
  }
  const index = factToken === "last"
    ? ids.length - 1
    : subjectTokenIndex(tokenizer, template, subject, "last");
  if (index < 0 || index >= ids.length) {
    throw new RomeInputError(
      `the subject's last token (${index}) lies outside the ${ids.length} tokens of ${JSON.stringify(text)}`,
    );
  }
  return { text, ids, index };
}
