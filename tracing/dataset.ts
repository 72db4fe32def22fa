// Dataset mode: trace every fact of a known_1000-format list for several kinds, with the reference's filter
// (a fact counts only if the clean top-1 token is its attribute) and per-fact results kept in a caller's
// store so an interrupted run resumes. Runtime-neutral: the store is an interface (files in cli.ts).
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { findSubjectRange, type Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { type AieSummary, averageIndirectEffect, suggestedEditLayer } from "./aggregate.ts";
import type { KnownFact } from "./facts.ts";
import { BasePass, type TraceKind, traceKind } from "./trace.ts";

/** Everything a cached case depends on: a mismatch in any field means recompute. */
export interface CaseKey {
  version: 1;
  model_hash: string;
  samples: number;
  noise: number;
  window: number;
  seed: number;
  prompt: string;
  subject: string;
  attribute: string;
}

/** One fact traced for one kind (the reference's `knowledge_{id}_{kind}.npz`, as JSON). */
export interface CaseRecord {
  key: CaseKey;
  known_id: number;
  kind: TraceKind;
  /** False when the clean top-1 token is not the attribute: such cases are skipped. */
  correct_prediction: boolean;
  answer: string;
  answer_id: number;
  high_score: number;
  low_score: number;
  subject_range: [number, number];
  tokens: string[];
  window: number;
  /** [T][nLayer]; absent for skipped cases. */
  scores?: number[][];
}

export interface TraceCaseStore {
  load(knownId: number, kind: TraceKind): Promise<unknown | undefined>;
  save(record: CaseRecord): Promise<void>;
}

export interface FactsTraceOptions {
  samples: number;
  /** ν (absolute). */
  noise: number;
  seed: number;
  window: number;
  kinds: readonly TraceKind[];
  store?: TraceCaseStore;
  maxRows?: number;
  /** After each fact: how it went. */
  onFact?: (done: number, total: number, fact: KnownFact, status: "cached" | "traced" | "skipped") => void;
}

export interface FactsTrace {
  /** Cases with a correct prediction, per kind. */
  cases: Record<TraceKind, CaseRecord[]>;
  facts: number;
  /** Facts whose clean top-1 token is not the attribute. */
  skipped: number;
  /** Facts served entirely from the store. */
  cached: number;
  /** Forward rows run (0 when everything was cached). */
  rows: number;
}

function sameKey(a: unknown, b: CaseKey): boolean {
  if (typeof a !== "object" || a === null) return false;
  const r = a as Record<string, unknown>;
  return Object.entries(b).every(([k, v]) => r[k] === v);
}

function validCached(x: unknown, key: CaseKey, kind: TraceKind): CaseRecord | undefined {
  if (typeof x !== "object" || x === null) return undefined;
  const r = x as CaseRecord;
  if (!sameKey(r.key, key) || r.kind !== kind || typeof r.correct_prediction !== "boolean") return undefined;
  if (r.correct_prediction && !Array.isArray(r.scores)) return undefined;
  return r;
}

export async function traceFacts(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  facts: readonly KnownFact[],
  opts: FactsTraceOptions,
): Promise<FactsTrace> {
  const out: FactsTrace = {
    cases: { hidden: [], mlp: [], attn: [] },
    facts: facts.length,
    skipped: 0,
    cached: 0,
    rows: 0,
  };
  let done = 0;
  for (const fact of facts) {
    const key: CaseKey = {
      version: 1,
      model_hash: model.hash,
      samples: opts.samples,
      noise: opts.noise,
      window: opts.window,
      seed: opts.seed,
      prompt: fact.prompt,
      subject: fact.subject,
      attribute: fact.attribute,
    };
    const have = new Map<TraceKind, CaseRecord>();
    for (const kind of opts.kinds) {
      const r = validCached(await opts.store?.load(fact.known_id, kind), key, kind);
      if (r) have.set(kind, r);
    }
    const knownWrong = [...have.values()].some((r) => !r.correct_prediction);
    let status: "cached" | "traced" | "skipped";
    if (knownWrong || have.size === opts.kinds.length) {
      status = knownWrong ? "skipped" : "cached";
      out.cached++;
    } else {
      try {
        status = await traceOne(model, tokenizer, fact, key, opts, have, out);
      } catch (e) {
        throw new Error(`fact known_id ${fact.known_id}: ${(e as Error).message}`, { cause: e });
      }
    }
    if (status === "skipped" || knownWrong) out.skipped++;
    else for (const kind of opts.kinds) out.cases[kind].push(have.get(kind)!);
    opts.onFact?.(++done, facts.length, fact, status);
  }
  return out;
}

async function traceOne(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  fact: KnownFact,
  key: CaseKey,
  opts: FactsTraceOptions,
  have: Map<TraceKind, CaseRecord>,
  out: FactsTrace,
): Promise<"traced" | "skipped"> {
  const ids = tokenizer.encode(fact.prompt);
  const subjectRange = findSubjectRange(tokenizer, fact.prompt, fact.subject);
  const base = await BasePass.run(model, { ids, subjectRange }, opts);
  try {
    out.rows += opts.samples + 1;
    const answer = tokenizer.decode([base.answerId]);
    const correct = answer.trim() === fact.attribute.trim();
    const common = {
      key,
      known_id: fact.known_id,
      correct_prediction: correct,
      answer,
      answer_id: base.answerId,
      high_score: base.highScore,
      low_score: base.lowScore,
      subject_range: subjectRange,
      tokens: ids.map((id) => tokenizer.decode([id])),
      window: opts.window,
    };
    for (const kind of opts.kinds) {
      if (have.has(kind)) continue;
      let record: CaseRecord;
      if (!correct) record = { ...common, kind };
      else {
        const t = await traceKind(base, kind, { window: opts.window, maxRows: opts.maxRows });
        out.rows += t.rows;
        record = { ...common, kind, scores: t.scores };
      }
      await opts.store?.save(record);
      have.set(kind, record);
    }
    return correct ? "traced" : "skipped";
  } finally {
    base.dispose();
  }
}

export interface FactsSummary {
  n: number;
  facts: number;
  skipped: number;
  kinds: Partial<Record<TraceKind, AieSummary>>;
  /** Argmax over layers of the MLP AIE at the last subject token (needs the mlp kind). */
  suggestedLayer?: number;
}

export function summarizeFacts(t: FactsTrace, kinds: readonly TraceKind[]): FactsSummary {
  const n = t.cases[kinds[0]]?.length ?? 0;
  if (n === 0) {
    throw new RangeError(
      `none of the ${t.facts} facts is predicted correctly by the model (top-1 token = attribute): nothing to average`,
    );
  }
  const summary: FactsSummary = { n, facts: t.facts, skipped: t.skipped, kinds: {} };
  for (const kind of kinds) {
    summary.kinds[kind] = averageIndirectEffect(t.cases[kind].map((c) => ({
      scores: c.scores!,
      lowScore: c.low_score,
      highScore: c.high_score,
      subjectRange: c.subject_range,
    })));
  }
  if (summary.kinds.mlp) summary.suggestedLayer = suggestedEditLayer(summary.kinds.mlp);
  return summary;
}
