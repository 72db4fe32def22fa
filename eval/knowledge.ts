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

/** The parts of a facts world (`data/world/facts.json`, `counterfact.json`) the knowledge report reads. */
export interface WorldKnowledgeInput {
  facts: {
    relations: { relation_id: string; training: string[]; held_out?: string[] }[];
    facts: { subject: string; relation_id: string; object: string }[];
  };
  counterfact: {
    requested_rewrite: { prompt: string; subject: string; target_true: { str: string } };
    paraphrase_prompts: string[];
  }[];
}

/**
 * One held-out phrasing's recall. A miss is either another object of the same relation (the relation was
 * read, the subject's value was not: a recall failure) or some other word (the phrasing did not lead to an
 * object at all: often a function word, as "the" after "lies in").
 */
export interface PhrasingRecall {
  relation_id: string;
  phrasing: string;
  n: number;
  accuracy: number;
  /** Share of the probes answered with another object of this relation. */
  same_relation_miss: number;
  /** The most frequent other answers (not objects of this relation), most frequent first. */
  other_answers: { token: string; n: number }[];
}

/** How much of a facts world a model knows (`deno task facts`): shares of top-1 correct probes. */
export interface WorldKnowledge {
  /** Every fact in its relation's first training phrasing, overall and per relation (with held-out phrasings). */
  facts: {
    n: number;
    accuracy: number;
    by_relation: Record<string, { n: number; accuracy: number; held_out_accuracy: number }>;
  };
  rewrite_prompts: { n: number; accuracy: number };
  /**
   * Every fact in each of its relation's held-out phrasings (never in the training corpus), overall and per
   * phrasing, with how the misses went wrong.
   */
  held_out_phrasings: { n: number; accuracy: number; by_phrasing: PhrasingRecall[] };
  paraphrase_prompts: { n: number; accuracy: number };
}

/**
 * Top-1 recall of a facts world's facts (first training phrasing), its CounterFact rewrite prompts, and the
 * phrasings the model never saw (held-out phrasings, CounterFact paraphrase prompts). `onProgress` gets the
 * number of probes done out of `total` (first with 0).
 */
export async function worldKnowledge(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  world: WorldKnowledgeInput,
  onProgress?: (done: number, total: number) => void,
): Promise<WorldKnowledge> {
  const { facts, counterfact } = world;
  const relations = new Map(facts.relations.map((r) => [r.relation_id, r]));
  const factProbes = facts.facts.map((f) => ({
    prompt: relations.get(f.relation_id)!.training[0].replace("{}", f.subject),
    target: f.object,
  }));
  const heldOut = facts.facts.flatMap((f) =>
    (relations.get(f.relation_id)!.held_out ?? []).map((t) => ({
      relation: f.relation_id,
      phrasing: t,
      probe: { prompt: t.replace("{}", f.subject), target: f.object },
    }))
  );
  const heldOutProbes = heldOut.map((h) => h.probe);
  const rewriteProbes = counterfact.map((r) => ({
    prompt: r.requested_rewrite.prompt.replace("{}", r.requested_rewrite.subject),
    target: r.requested_rewrite.target_true.str,
  }));
  const paraphraseProbes = counterfact.flatMap((r) =>
    r.paraphrase_prompts.map((prompt) => ({ prompt, target: r.requested_rewrite.target_true.str }))
  );
  const sets = [factProbes, rewriteProbes, heldOutProbes, paraphraseProbes];
  const total = sets.reduce((n, s) => n + s.length, 0);
  const results: ProbeResult[] = [];
  let done = 0;
  onProgress?.(0, total);
  for (const probes of sets) {
    results.push(
      await topOneAccuracy(model, tokenizer, probes, { onBatch: (k) => onProgress?.(done + k, total) }),
    );
    done += probes.length;
  }
  const share = (correct: boolean[], idx: number[]) => idx.filter((i) => correct[i]).length / idx.length;
  const byRelation: WorldKnowledge["facts"]["by_relation"] = {};
  for (const rel of relations.keys()) {
    const idx = facts.facts.flatMap((f, i) => f.relation_id === rel ? [i] : []);
    const held = heldOut.flatMap((h, i) => h.relation === rel ? [i] : []);
    byRelation[rel] = {
      n: idx.length,
      accuracy: share(results[0].correct, idx),
      held_out_accuracy: share(results[2].correct, held),
    };
  }
  return {
    facts: { n: factProbes.length, accuracy: results[0].accuracy, by_relation: byRelation },
    rewrite_prompts: { n: rewriteProbes.length, accuracy: results[1].accuracy },
    held_out_phrasings: {
      n: heldOutProbes.length,
      accuracy: results[2].accuracy,
      by_phrasing: phrasingRecall(facts.facts, heldOut, results[2], tokenizer),
    },
    paraphrase_prompts: { n: paraphraseProbes.length, accuracy: results[3].accuracy },
  };
}

/** Held-out probes grouped by phrasing, in first-seen order, with their misses classified. */
export function phrasingRecall(
  facts: WorldKnowledgeInput["facts"]["facts"],
  heldOut: { relation: string; phrasing: string }[],
  result: ProbeResult,
  tokenizer: Gpt2Tokenizer,
): PhrasingRecall[] {
  const objects = new Map<string, Set<string>>();
  for (const f of facts) {
    if (!objects.has(f.relation_id)) objects.set(f.relation_id, new Set());
    objects.get(f.relation_id)!.add(f.object);
  }
  const groups = new Map<
    string,
    { rel: string; phrasing: string; n: number; ok: number; same: number; other: Map<string, number> }
  >();
  heldOut.forEach((h, i) => {
    const key = `${h.relation}\u0000${h.phrasing}`;
    const g = groups.get(key) ??
      { rel: h.relation, phrasing: h.phrasing, n: 0, ok: 0, same: 0, other: new Map() };
    groups.set(key, g);
    g.n++;
    if (result.correct[i]) return void g.ok++;
    const answer = tokenizer.decode([result.predicted[i]]).trim();
    if (objects.get(h.relation)?.has(answer)) g.same++;
    else g.other.set(answer, (g.other.get(answer) ?? 0) + 1);
  });
  return [...groups.values()].map((g) => ({
    relation_id: g.rel,
    phrasing: g.phrasing,
    n: g.n,
    accuracy: g.ok / g.n,
    same_relation_miss: g.same / g.n,
    other_answers: [...g.other].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 3)
      .map(([token, n]) => ({ token, n })),
  }));
}
