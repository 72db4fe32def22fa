// The evaluation loop (reference §3.2, experiments/evaluate.py): for each record, apply the edit and time
// it, run the tests ("post"), revert the edit bit for bit, run the tests on the unedited model ("pre"),
// and store the case. Every edit starts from the clean model. Sequential mode applies N edits one after
// another, tests all N on the model carrying them, then reverts them in reverse order. Runtime-neutral:
// where results live (files, a cache) is the caller's EvalCaseStore.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { matrixHash, readMatrix } from "../rome/patch.ts";
import { normalizeRequest, type RomeRequest } from "../rome/request.ts";
import type { CounterFactRecord, EvalDataset, ZsreRecord } from "./datasets.ts";
import { counterFactMetrics, type GenerationTests, zsreMetrics } from "./measure.ts";
import { type CaseMetrics, type CaseResult, type RunIdentity, runKey, shardItems } from "./metrics.ts";
import { type AppliedEdit, type EditMethod, revertEdit } from "./methods.ts";
import { InputError } from "../engine/errors.ts";

/** Where case results are kept (case_<id>.json files for the CLI). */
export interface EvalCaseStore {
  get(caseId: number): Promise<CaseResult | undefined>;
  put(result: CaseResult): Promise<void>;
}

/** An optional cache of "pre" results (they depend on the model, record and test settings, not the method). */
export interface PreStore {
  get(caseId: number): Promise<CaseMetrics | undefined>;
  put(caseId: number, pre: CaseMetrics): Promise<void>;
}

/** Results of another run where this one would write (a different method, hparams, model or settings). */
export class RunConflictError extends InputError {
  override name = "RunConflictError";
}

/** Refuses a stored case of another run than the one keyed `key` (it would be overwritten or mixed in). */
export function checkStoredRun(stored: CaseResult, key: string): void {
  if (runKey(stored.run) === key) return;
  const r = stored.run;
  throw new RunConflictError(
    `case ${stored.case_id} is already stored from another run (method ${r.method}, model ${r.model_hash}, ` +
      `sequential ${r.sequential}, engine ${
        r.engine_version ?? "before versions"
      }); write this run elsewhere`,
  );
}

export interface EvalRunOptions {
  model: Gpt2Model;
  tokenizer: Gpt2Tokenizer;
  dataset: EvalDataset;
  /** null: the unedited model ("none"; post = pre). */
  method: EditMethod | null;
  run: RunIdentity;
  /** CounterFact generation tests (absent: skipped). */
  generation?: GenerationTests;
  shard?: { index: number; count: number };
  store: EvalCaseStore;
  preStore?: PreStore;
  /** After each case, computed or found: cases done (of `total`), and whether it was computed now. */
  onCase?: (done: number, total: number, computed: boolean, result: CaseResult) => void;
}

export interface EvalRunResult {
  /** This shard's cases, computed now or found in the store, in dataset order. */
  results: CaseResult[];
  computed: number;
  skipped: number;
}

type AnyRecord = CounterFactRecord | ZsreRecord;

/** The ROME-style request of a record (a leading space on the targets; zsRE's placeholder target_true dropped). */
export function recordRequest(kind: EvalDataset["kind"], r: AnyRecord): RomeRequest {
  const rw = r.requested_rewrite;
  return normalizeRequest({
    prompt: rw.prompt,
    subject: rw.subject,
    target_new: rw.target_new.str,
    ...(kind === "counterfact" ? { target_true: rw.target_true.str } : {}),
  });
}

/** Seed of a case's sampled generations: the run's seed mixed with the case id (the same for pre and post). */
export function caseSeed(seed: number, caseId: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ caseId;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The consecutive groups of `size` records that sequential mode edits together (size 1: one per record). */
export function editGroups<T>(records: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < records.length; i += size) out.push(records.slice(i, i + size));
  return out;
}

/**
 * Runs the evaluation of this shard's records (groups of `run.sequential` records go to shard g mod n).
 * A case whose stored result has the same run identity (and, in sequential mode, the same group) is
 * skipped; a stored result of another run is a RunConflictError, never overwritten.
 */
export async function runEvaluation(o: EvalRunOptions): Promise<EvalRunResult> {
  const { model, tokenizer, dataset, method, run } = o;
  const N = run.sequential;
  if (!Number.isInteger(N) || N < 1) throw new RangeError(`sequential must be an integer ≥ 1, got ${N}`);
  const records = dataset.records as readonly AnyRecord[];
  const groups = shardItems(editGroups(records, N), o.shard ?? { index: 0, count: 1 }, 1);
  const groupIndex = new Map(editGroups(records, N).map((g, i) => [g[0].case_id, i]));
  const total = groups.reduce((a, g) => a + g.length, 0);
  const key = runKey(run);
  const measure = async (r: AnyRecord): Promise<CaseMetrics> =>
    dataset.kind === "zsre" ? await zsreMetrics(model, tokenizer, r as ZsreRecord) : await counterFactMetrics(
      model,
      tokenizer,
      r as CounterFactRecord,
      o.generation && {
        ...o.generation,
        settings: { ...o.generation.settings, seed: caseSeed(o.generation.settings.seed, r.case_id) },
      },
    );
  const cleanHash = method
    ? matrixHash(method.matrix, model.w(method.matrix).shape, await readMatrix(model, method.matrix))
    : "";

  const results: CaseResult[] = [];
  let done = 0, computed = 0, skipped = 0;
  for (const group of groups) {
    const g = groupIndex.get(group[0].case_id)!;
    const members = group.map((r) => r.case_id);
    const stored = await Promise.all(group.map((r) => o.store.get(r.case_id)));
    for (const s of stored) if (s) checkStoredRun(s, key);
    const complete = stored.every((s) =>
      s !== undefined && (N === 1 || JSON.stringify(s.sequential?.members ?? []) === JSON.stringify(members))
    );
    if (complete) {
      for (const s of stored) {
        results.push(s!);
        skipped++;
        o.onCase?.(++done, total, false, s!);
      }
      continue;
    }

    const requests = group.map((r) => recordRequest(dataset.kind, r));
    const edits: AppliedEdit[] = [];
    const posts: CaseMetrics[] = [], postSeconds: number[] = [];
    if (method) {
      try {
        for (const req of requests) edits.push(await method.apply(model, tokenizer, req));
        for (const r of group) {
          const t0 = performance.now();
          posts.push(await measure(r));
          postSeconds.push((performance.now() - t0) / 1000);
        }
      } finally {
        for (const e of [...edits].reverse()) await revertEdit(model, e);
      }
      const now = matrixHash(
        method.matrix,
        model.w(method.matrix).shape,
        await readMatrix(model, method.matrix),
      );
      if (now !== cleanHash) {
        throw new Error(
          `the model was not restored after case ${
            group[0].case_id
          } (${method.matrix}: ${now} ≠ ${cleanHash})`,
        );
      }
    }
    for (const [k, r] of group.entries()) {
      const t0 = performance.now();
      let pre = await o.preStore?.get(r.case_id);
      if (!pre) {
        pre = await measure(r);
        await o.preStore?.put(r.case_id, pre);
      }
      const preSeconds = (performance.now() - t0) / 1000;
      const result: CaseResult = {
        case_id: r.case_id,
        requested_rewrite: r.requested_rewrite,
        time: method ? edits[k].seconds : 0,
        post: method ? posts[k] : pre,
        pre,
        run,
        ...(method
          ? {
            edit: {
              ...edits[k].info,
              matrix: edits[k].matrix,
              matrix_hash_before: edits[k].matrixHashBefore,
              matrix_hash_after: edits[k].matrixHashAfter,
            },
          }
          : {}),
        seconds: { edit: method ? edits[k].seconds : 0, post: method ? postSeconds[k] : 0, pre: preSeconds },
        ...(N > 1 ? { sequential: { n: N, group: g, position: k, members } } : {}),
      };
      await o.store.put(result);
      results.push(result);
      computed++;
      o.onCase?.(++done, total, true, result);
    }
  }
  return { results, computed, skipped };
}
