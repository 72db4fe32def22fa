// One record's tests on the model as it is now (reference §3.3, §3.4, §3.6): what compute_rewrite_quality_
// counterfact and compute_rewrite_quality_zsre store for "pre" or "post". Runtime-neutral.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { fillTemplate } from "../rome/request.ts";
import type { AttributeSnippets, CounterFactRecord, ZsreRecord } from "./datasets.ts";
import type { CounterFactMetrics, ZsreMetrics } from "./metrics.ts";
import {
  EvalInputError,
  generateTexts,
  type GenerationSettings,
  perplexity,
  targetPairNlls,
  topOneCorrect,
} from "./probes.ts";
import { generationEntropy, tfidfSimilarity, type TfidfVectorizer } from "./text.ts";

/** What the generation tests need; absent, they are skipped (the reference's --skip_generation_tests). */
export interface GenerationTests {
  settings: GenerationSettings;
  snippets: AttributeSnippets;
  vectorizer: TfidfVectorizer;
}

/**
 * compute_rewrite_quality_counterfact: mean per-token NLLs of target_new and target_true after the
 * rewrite prompt, the paraphrases, the neighbourhood and the attribute prompts (one batch); then, with
 * generation tests, one sampled text per generation prompt (duplicates included, as the reference), GE
 * (n_gram_entropy), RS (tf-idf cosine of the joined texts against the joined snippets of
 * (relation_id, target_new.id)), and the essence perplexity when snippets about the subject exist.
 */
export async function counterFactMetrics(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  record: CounterFactRecord,
  generation?: GenerationTests,
): Promise<CounterFactMetrics> {
  const rw = record.requested_rewrite;
  const groups = [
    [fillTemplate(rw.prompt, rw.subject)],
    record.paraphrase_prompts,
    record.neighborhood_prompts,
    record.attribute_prompts,
  ];
  // the portability prompts (each with targets of its own) ride in the same batched forward
  const portability = record.portability_prompts ?? [];
  const nll = await targetPairNlls(model, tokenizer, [
    ...groups.flat().map((prompt) => ({
      prompt,
      targetNew: rw.target_new.str,
      targetTrue: rw.target_true.str,
    })),
    ...portability.map((p) => ({
      prompt: p.prompt,
      targetNew: p.target_new.str,
      targetTrue: p.target_true.str,
    })),
  ]);
  const cut: number[] = [0];
  for (const g of [...groups, portability]) cut.push(cut.at(-1)! + g.length);
  const part = (i: number) => nll.slice(cut[i], cut[i + 1]);
  const out: CounterFactMetrics = {
    rewrite_prompts_probs: part(0),
    paraphrase_prompts_probs: part(1),
    neighborhood_prompts_probs: part(2),
    attribute_prompts_probs: part(3),
  };
  if (portability.length > 0) out.portability_prompts_probs = part(4);
  if (!generation) return out;
  const snips = generation.snippets.get(rw.relation_id)?.get(rw.target_new.id) ?? [];
  if (snips.length === 0) {
    throw new EvalInputError(
      `case ${record.case_id}: no attribute snippets for (${rw.relation_id}, ${rw.target_new.id}), which RS needs`,
    );
  }
  const texts = await generateTexts(model, tokenizer, record.generation_prompts, generation.settings);
  out.ngram_entropy = generationEntropy(texts);
  out.reference_score = tfidfSimilarity(
    texts.join(" "),
    snips.map((s) => s.text).join(" "),
    generation.vectorizer,
  );
  out.text = texts;
  const essence = snips.filter((s) => s.name === rw.subject).map((s) => s.text);
  if (essence.length > 0) {
    out.essence_score = await perplexity(model, tokenizer, essence.join(" "), 100);
    out.essence_text = essence;
  }
  return out;
}

/**
 * compute_rewrite_quality_zsre: with t = tok(" " + answer), prompt + decode(t[:i]) must have t[i]'s string
 * as its top-1 next token, for the rewrite prompt and the paraphrase (Efficacy, Paraphrase); the NQ
 * question + "?" + decode(a[:i]) against its gold answer's tokens a = tok(" " + loc_ans) (Specificity).
 */
export async function zsreMetrics(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  record: ZsreRecord,
): Promise<ZsreMetrics> {
  const rw = record.requested_rewrite;
  const target = tokenizer.encode(" " + rw.target_new.str);
  const answer = tokenizer.encode(" " + record.loc_ans);
  if (target.length === 0 || answer.length === 0) {
    throw new EvalInputError(`case ${record.case_id}: an answer has no tokens`);
  }
  const forced = (prompts: readonly string[], t: readonly number[]) => ({
    prompts: prompts.flatMap((p) => t.map((_, i) => p + tokenizer.decode(t.slice(0, i)))),
    targets: prompts.flatMap(() => t.map((id) => tokenizer.decode([id]))),
  });
  const rewrite = forced([fillTemplate(rw.prompt, rw.subject)], target);
  const para = forced(record.paraphrase_prompts, target);
  const loc = forced([record.loc + "?"], answer);
  const all = await topOneCorrect(
    model,
    tokenizer,
    [...rewrite.prompts, ...para.prompts, ...loc.prompts],
    [...rewrite.targets, ...para.targets, ...loc.targets],
  );
  const a = rewrite.prompts.length, b = a + para.prompts.length;
  return {
    rewrite_prompts_correct: all.slice(0, a),
    paraphrase_prompts_correct: all.slice(a, b),
    neighborhood_prompts_correct: all.slice(b),
  };
}
