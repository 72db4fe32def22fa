// Per-case results in the reference's case-file shape and the summary table (reference §3.5,
// experiments/summarize.py): per case, the mean over its prompts; over cases, mean, standard deviation
// and the 95% interval 1.96·std/√n; S the harmonic mean of the case-averaged ES, PS and NS (zsRE: of
// the three accuracies); everything but time ×100. Pure functions on plain records; runtime-neutral.
import { InputError } from "../engine/errors.ts";

/** Mean per-token NLLs of the two targets after one prompt (test_batch_prediction; lower = more likely). */
export interface TargetNll {
  target_new: number;
  target_true: number;
}

/** What the CounterFact tests store for one model state ("pre" or "post"), as compute_rewrite_quality_counterfact. */
export interface CounterFactMetrics {
  rewrite_prompts_probs: TargetNll[];
  paraphrase_prompts_probs: TargetNll[];
  neighborhood_prompts_probs: TargetNll[];
  /** Computed and stored, not summarised (as the reference). */
  attribute_prompts_probs: TargetNll[];
  /** The record's portability prompts (our extension; absent when it has none). */
  portability_prompts_probs?: TargetNll[];
  /** Absent when the generation tests are skipped. */
  ngram_entropy?: number;
  reference_score?: number;
  text?: string[];
  /** Perplexity on the snippets about the subject itself (stored when there are any; not in the table). */
  essence_score?: number;
  essence_text?: string[];
}

/** What the zsRE tests store: one boolean per target token (teacher-forced top-1), as compute_rewrite_quality_zsre. */
export interface ZsreMetrics {
  rewrite_prompts_correct: boolean[];
  paraphrase_prompts_correct: boolean[];
  neighborhood_prompts_correct: boolean[];
}

export type CaseMetrics = CounterFactMetrics | ZsreMetrics;

/** A case file (`case_<id>.json`): the reference's {case_id, requested_rewrite, time, post, pre}, plus ours. */
export interface CaseResult<M extends CaseMetrics = CaseMetrics> {
  case_id: number;
  requested_rewrite: unknown;
  /** Seconds the edit took (0 for "none"; in sequential mode, this case's own edit). */
  time: number;
  post: M;
  pre: M;
  /** The run this case belongs to (what resuming and merging compare). */
  run: RunIdentity;
  /** Method-specific facts about the edit (losses, steps, norms, matrix hashes). */
  edit?: Record<string, unknown>;
  /** Wall seconds of the edit, the post tests and the pre tests (a cached pre costs only its lookup). */
  seconds?: { edit: number; post: number; pre: number };
  /** Sequential mode: the group of edits the case was in (its index and case ids) and its place in it. */
  sequential?: { n: number; group: number; position: number; members: number[] };
}

/** Everything that makes two case files comparable: equal identities may be merged or resumed. */
export interface RunIdentity {
  dataset_kind: "counterfact" | "zsre";
  /** Content hash of the dataset file. */
  dataset_hash: string;
  method: string;
  /** Hash of the method's hyperparameters (and, for ROME, its templates and statistics). */
  hparams_hash: string;
  model_hash: string;
  /** 1 = independent edits (the reference); N = N edits applied in sequence before evaluating. */
  sequential: number;
  /** Generation tests: total tokens per text (0 = skipped), top-k, seed; and the tf-idf's identity. */
  generation: { max_out_len: number; top_k: number; seed: number; tfidf: string };
  /**
   * The engine's numerics (engine/version.ts ENGINE_VERSION): results of another engine are another run, never
   * resumed or merged with these. Case files written before it existed lack it (undefined when read back).
   */
  engine_version: string;
}

export function isZsreMetrics(m: CaseMetrics): m is ZsreMetrics {
  return "rewrite_prompts_correct" in m;
}

// ------------------------------------------------------------------ statistics

/** Arithmetic mean (NaN for none). */
export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Population standard deviation (numpy's np.std, ddof = 0), which summarize.py uses. */
export function std(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) * (x - m), 0) / xs.length);
}

/**
 * Harmonic mean n / Σ 1/x (scipy.stats.hmean). Any zero makes it 0, as scipy ≥ 1.9 returns (the limit);
 * a negative value or an empty list is NaN (scipy refuses those).
 */
export function harmonicMean(xs: readonly number[]): number {
  if (xs.length === 0 || xs.some((x) => !(x >= 0))) return NaN;
  if (xs.some((x) => x === 0)) return 0;
  return xs.length / xs.reduce((a, x) => a + 1 / x, 0);
}

/** One column of the table over cases: mean, population std, 95% half-width 1.96·std/√n, and n. */
export interface Stat {
  mean: number;
  std: number;
  ci95: number;
  n: number;
}

export function stat(xs: readonly number[], scale = 1): Stat {
  const s = std(xs) * scale;
  return {
    mean: mean(xs) * scale,
    std: s,
    ci95: xs.length ? 1.96 * s / Math.sqrt(xs.length) : NaN,
    n: xs.length,
  };
}

// ------------------------------------------------------------------ per-case values

export const COUNTERFACT_COLUMNS = ["S", "ES", "EM", "PS", "PM", "NS", "NM", "PT", "GE", "RS"] as const;
export type CounterFactColumn = typeof COUNTERFACT_COLUMNS[number];
export const ZSRE_COLUMNS = ["S", "Efficacy", "Paraphrase", "Specificity"] as const;
export type ZsreColumn = typeof ZSRE_COLUMNS[number];
export type Column = CounterFactColumn | ZsreColumn;

const success = (xs: readonly TargetNll[], newWins: boolean) =>
  mean(xs.map((x) => (newWins ? x.target_true > x.target_new : x.target_true < x.target_new) ? 1 : 0));
const magnitude = (xs: readonly TargetNll[], newWins: boolean) =>
  mean(
    xs.map((x) =>
      newWins
        ? Math.exp(-x.target_new) - Math.exp(-x.target_true)
        : Math.exp(-x.target_true) - Math.exp(-x.target_new)
    ),
  );

/**
 * One case's values before scaling (fractions; GE in bits), summarize.py lines 53-90: ES = mean over
 * rewrite prompts of [NLL_true > NLL_new], EM = mean[exp(−NLL_new) − exp(−NLL_true)]; PS/PM the same over
 * paraphrases; NS = mean[NLL_true < NLL_new], NM = mean[exp(−NLL_true) − exp(−NLL_new)] over
 * neighbourhood prompts; GE and RS as stored. A column is left out when the case has no prompts of its
 * kind (numpy would give NaN and poison the mean; such a case simply does not count for that column).
 */
export function counterFactCaseValues(m: CounterFactMetrics): Partial<Record<CounterFactColumn, number>> {
  const out: Partial<Record<CounterFactColumn, number>> = {};
  const put = (k: CounterFactColumn, v: number | undefined) => {
    if (v !== undefined && Number.isFinite(v)) out[k] = v;
  };
  put("ES", success(m.rewrite_prompts_probs, true));
  put("EM", magnitude(m.rewrite_prompts_probs, true));
  put("PS", success(m.paraphrase_prompts_probs, true));
  put("PM", magnitude(m.paraphrase_prompts_probs, true));
  put("NS", success(m.neighborhood_prompts_probs, false));
  put("NM", magnitude(m.neighborhood_prompts_probs, false));
  // Portability (not in the paper; the records that have portability prompts): the share of the subject's
  // other attributes whose implied new value now beats the old one. Not part of S.
  if (m.portability_prompts_probs?.length) put("PT", success(m.portability_prompts_probs, true));
  put("GE", m.ngram_entropy);
  put("RS", m.reference_score);
  return out;
}

/** One zsRE case's accuracies: the mean of each list of per-token booleans (summarize.py lines 92-100). */
export function zsreCaseValues(m: ZsreMetrics): Partial<Record<ZsreColumn, number>> {
  const out: Partial<Record<ZsreColumn, number>> = {};
  const put = (k: ZsreColumn, xs: readonly boolean[]) => {
    if (xs.length > 0) out[k] = mean(xs.map((b) => (b ? 1 : 0)));
  };
  put("Efficacy", m.rewrite_prompts_correct);
  put("Paraphrase", m.paraphrase_prompts_correct);
  put("Specificity", m.neighborhood_prompts_correct);
  return out;
}

// ------------------------------------------------------------------ the summary table

/** One row of the table (pre or post): each column's statistics in the paper's units (×100). */
export type SummaryRow = Partial<Record<Column, Stat>>;

export interface Summary {
  kind: "counterfact" | "zsre";
  /** Cases summarised. */
  n: number;
  post: SummaryRow;
  pre: SummaryRow;
  /** Mean and std of the edit time in seconds (not scaled). */
  time: Stat;
}

/**
 * The summary of a set of case results (all of one dataset kind), summarize.py: per column, mean and
 * std over cases ×100; S = hmean of the case-averaged ES, PS, NS (or the three zsRE accuracies), ×100,
 * with std and interval NaN as the reference. Cases are taken in case_id order, so the same cases give the
 * same floating-point sums however they were split into shards.
 */
export function summarize(results: readonly CaseResult[]): Summary {
  const cases = [...results].sort((a, b) => a.case_id - b.case_id);
  const kind = cases.length > 0 && isZsreMetrics(cases[0].post) ? "zsre" : "counterfact";
  const row = (which: "pre" | "post"): SummaryRow => {
    const values = cases.map((c) => {
      const m = c[which];
      if (isZsreMetrics(m) !== (kind === "zsre")) {
        throw new RangeError(
          `case ${c.case_id} is not a ${kind} result; summarise one dataset kind at a time`,
        );
      }
      return (kind === "zsre"
        ? zsreCaseValues(m as ZsreMetrics)
        : counterFactCaseValues(m as CounterFactMetrics)) as Partial<Record<Column, number>>;
    });
    const out: SummaryRow = {};
    const columns: readonly Column[] = kind === "zsre" ? ZSRE_COLUMNS : COUNTERFACT_COLUMNS;
    for (const col of columns) {
      if (col === "S") continue;
      const xs = values.map((v) => v[col]).filter((x): x is number => x !== undefined);
      if (xs.length > 0) out[col] = stat(xs, 100);
    }
    const parts: Column[] = kind === "zsre" ? ["Efficacy", "Paraphrase", "Specificity"] : ["ES", "PS", "NS"];
    if (parts.every((p) => out[p])) {
      const h = harmonicMean(parts.map((p) => out[p]!.mean / 100));
      out.S = { mean: h * 100, std: NaN, ci95: NaN, n: Math.min(...parts.map((p) => out[p]!.n)) };
    }
    return out;
  };
  return { kind, n: cases.length, post: row("post"), pre: row("pre"), time: stat(cases.map((c) => c.time)) };
}

/** The table's means rounded as summarize.py rounds them (np.around(·, 2)); absent columns are null. */
export function roundedMeans(row: SummaryRow, kind: "counterfact" | "zsre"): Record<string, number | null> {
  const columns: readonly Column[] = kind === "zsre" ? ZSRE_COLUMNS : COUNTERFACT_COLUMNS;
  return Object.fromEntries(
    columns.map((
      c,
    ) => [c, row[c] && Number.isFinite(row[c]!.mean) ? Math.round(row[c]!.mean * 100) / 100 : null]),
  );
}

// ------------------------------------------------------------------ shards and merging

/** "i/n" → {index: i, count: n} with 0 ≤ i < n. */
export function parseShard(text: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN, count = m ? Number(m[2]) : NaN;
  if (!m || !(count >= 1) || !(index < count)) {
    throw new RangeError(`a shard is i/n with 0 ≤ i < n, e.g. 0/4 (got '${text}')`);
  }
  return { index, count };
}

/**
 * The items of shard i of n: items are cut into consecutive groups of `groupSize` (the sequential edit
 * groups; 1 for independent edits) and group g goes to shard g mod n. Every item lands in exactly one
 * shard, and a sequential group is never split.
 */
export function shardItems<T>(
  items: readonly T[],
  shard: { index: number; count: number },
  groupSize = 1,
): T[] {
  const out: T[] = [];
  for (let g = 0; g * groupSize < items.length; g++) {
    if (g % shard.count === shard.index) out.push(...items.slice(g * groupSize, (g + 1) * groupSize));
  }
  return out;
}

/** JSON with object keys sorted at every level, so that equal settings give equal text (and hashes). */
export function canonicalJson(v: unknown): string {
  const canon = (x: unknown): unknown =>
    Array.isArray(x)
      ? x.map(canon)
      : x && typeof x === "object"
      ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, canon((x as Record<string, unknown>)[k])]))
      : x;
  return JSON.stringify(canon(v));
}

/** What names a run: the canonical JSON of its identity (equal keys may be resumed and merged). */
export function runKey(run: RunIdentity): string {
  return canonicalJson(run);
}

export class MergeError extends InputError {
  override name = "MergeError";
}

/** Results of one run (equal identities) gathered from several places, one per case. */
export interface RunGroup {
  run: RunIdentity;
  cases: CaseResult[];
}

/**
 * Groups case results by run identity, in order of first appearance. A case present in several inputs of
 * the same run (a shard copied twice) is kept once when the copies agree on every metric, and refused
 * when they do not.
 */
export function groupRuns(results: readonly { result: CaseResult; source: string }[]): RunGroup[] {
  const groups = new Map<
    string,
    { run: RunIdentity; byId: Map<number, { result: CaseResult; source: string }> }
  >();
  for (const item of results) {
    const key = runKey(item.result.run);
    const g = groups.get(key) ?? { run: item.result.run, byId: new Map() };
    groups.set(key, g);
    const prev = g.byId.get(item.result.case_id);
    if (prev) {
      const same = JSON.stringify([prev.result.pre, prev.result.post]) ===
        JSON.stringify([item.result.pre, item.result.post]);
      if (!same) {
        throw new MergeError(
          `case ${item.result.case_id} of the same run has different results in ${prev.source} and ${item.source}`,
        );
      }
      continue;
    }
    g.byId.set(item.result.case_id, item);
  }
  return [...groups.values()].map((g) => ({
    run: g.run,
    cases: [...g.byId.values()].map((x) => x.result).sort((a, b) => a.case_id - b.case_id),
  }));
}
