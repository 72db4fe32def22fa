// A CounterFact record as an edit: the request and the prompts its effect is measured on. `deno task edit
// --case ID` and the web page's example cases both build edits this way, so they measure the same prompts.
// Runtime-neutral.
import type { EvaluationPrompts } from "./evaluate.ts";
import type { RequestInput } from "./request.ts";

/** The fields of a CounterFact record an edit reads (eval/datasets.ts checks whole records). */
export interface CounterFactCase {
  case_id: number;
  requested_rewrite: {
    prompt: string;
    subject: string;
    target_new: { str: string };
    target_true: { str: string };
  };
  paraphrase_prompts?: string[];
  neighborhood_prompts?: string[];
  generation_prompts?: string[];
}

/**
 * The request (target_true from the record unless `targetTrue` overrides it) and its evaluation prompts:
 * paraphrases, neighbours, and the first distinct generation prompt (greedy continuations are slow).
 */
export function counterFactEdit(
  r: CounterFactCase,
  targetTrue?: string,
): { input: RequestInput; caseId: number; prompts: EvaluationPrompts } {
  const rw = r.requested_rewrite;
  return {
    input: {
      prompt: rw.prompt,
      subject: rw.subject,
      target_new: rw.target_new.str,
      target_true: targetTrue ?? rw.target_true?.str,
    },
    caseId: r.case_id,
    prompts: {
      paraphrases: r.paraphrase_prompts ?? [],
      neighbours: r.neighborhood_prompts ?? [],
      generation: [...new Set(r.generation_prompts ?? [])].slice(0, 1),
    },
  };
}
