// Which results folders may be merged into one table, and what each run's merged cases are. A sharded run
// leaves a manifest per shard beside its case files (shard i of n, the run, the records it covers and the
// case ids it owns), so a merge can prove that a run's shards belong together and cover it: every index
// 0..n-1 exactly once, with the same n and records, and each shard's cases all in its folder. Runs in one
// table must share model, dataset, engine and generation tests; one method's runs may differ in --sequential
// (the sequential curve) and, when asked for with `sweep`, in hparams. Pure: folders come in as plain data.
import {
  canonicalJson,
  type CaseResult,
  groupRuns,
  MergeError,
  type RunIdentity,
  runKey,
  shardItems,
} from "./metrics.ts";
import { shardsByIndex } from "../engine/shards.ts";

/** What one sharded (or whole, 0 of 1) run writes beside its case files before computing them. */
export interface ShardManifest {
  run: RunIdentity;
  shard: { index: number; count: number };
  /** Records the run covers (the dataset's first `records`: --limit, or all of them). */
  records: number;
  /** Records in the dataset file. */
  dataset_records: number;
  /** The cases this shard is responsible for, in dataset order. */
  case_ids: number[];
}

/** The manifest's file name in a run folder (one per shard, so shards may share a folder). */
export function manifestName(shard: { index: number; count: number }): string {
  return `shard_${shard.index}_of_${shard.count}.json`;
}

export const MANIFEST_NAME = /^shard_\d+_of_\d+\.json$/;

/** The manifest of shard `shard` of a run over `caseIds` (the records evaluated, in dataset order). */
export function shardManifest(
  run: RunIdentity,
  shard: { index: number; count: number },
  caseIds: readonly number[],
  datasetRecords: number,
): ShardManifest {
  return {
    run,
    shard: { index: shard.index, count: shard.count },
    records: caseIds.length,
    dataset_records: datasetRecords,
    case_ids: shardItems(caseIds, shard, run.sequential),
  };
}

/** A parsed manifest, or a one-line reason why `json` is not one. */
export function parseManifest(json: unknown, where: string): ShardManifest {
  const m = json as ShardManifest;
  const nat = (x: unknown) => Number.isInteger(x) && (x as number) >= 0;
  if (
    !m || typeof m !== "object" || !m.run || typeof m.run !== "object" || !m.shard ||
    !nat(m.shard.index) || !(m.shard.count >= 1) || !(m.shard.index < m.shard.count) || !nat(m.records) ||
    !Array.isArray(m.case_ids) || !m.case_ids.every(nat)
  ) {
    throw new MergeError(
      `${where} is not a shard manifest of deno task eval (run, shard, records, case_ids)`,
    );
  }
  return m;
}

/** One results folder as the merge sees it. */
export interface MergeFolder {
  dir: string;
  cases: CaseResult[];
  manifests: ShardManifest[];
}

export interface MergeOptions {
  /** Merge runs with missing shards or cases (or no manifest) and say what is missing. */
  allowMissing?: boolean;
  /** One method's runs may differ in hparams (a sweep table, one row each). */
  sweep?: boolean;
}

/** What a run's merge covers; `count` null when the run has no manifest (shards unknown). */
export interface ShardCoverage {
  count: number | null;
  records: number | null;
  /** Shard indices with no manifest in any folder. */
  missing_shards: number[];
  /** Listed cases whose file is not in their shard's folder. */
  missing_cases: number[];
  /** Case files of the run that no shard lists (left out of the table). */
  unlisted_cases: number[];
}

export interface MergedRun {
  run: RunIdentity;
  cases: CaseResult[];
  /** The folders the run's cases come from, in the order given. */
  dirs: string[];
  coverage: ShardCoverage;
}

const ENGINE_BEFORE = "none (case files from before engine versions)";

/** The identity fields every run of one table shares, with the words a refusal uses for them. */
const SHARED: [what: string, value: (r: RunIdentity) => string][] = [
  ["dataset kinds", (r) => r.dataset_kind],
  ["models", (r) => r.model_hash],
  ["datasets", (r) => r.dataset_hash],
  ["engine versions", (r) => r.engine_version ?? ENGINE_BEFORE],
  ["generation settings", (r) => canonicalJson(r.generation)],
];

const list = (xs: readonly (string | number)[], most = 8) =>
  xs.length <= most ? xs.join(", ") : `${xs.slice(0, most).join(", ")} and ${xs.length - most} more`;

const label = (r: RunIdentity) =>
  `${r.method}${r.sequential > 1 ? ` ×${r.sequential} sequential` : ""} (hparams ${
    r.hparams_hash.slice(0, 8)
  })`;

interface RunParts {
  run: RunIdentity;
  /** Case files of the run by folder. */
  cases: Map<string, Map<number, CaseResult>>;
  manifests: { dir: string; m: ShardManifest }[];
  order: number;
}

/**
 * The runs of a merge and their cases, or a MergeError (one line, naming the problem and the folders) when
 * the folders do not make one table: different models, datasets, dataset kinds, engine versions or
 * generation tests; one method with different hparams (without `sweep`); shards of one run with different
 * counts or records, an index twice, an index missing or a shard missing cases (the last two allowed with
 * `allowMissing`, and reported in the coverage).
 */
export function planMerge(folders: readonly MergeFolder[], o: MergeOptions = {}): MergedRun[] {
  const seenDirs = new Set<string>();
  for (const f of folders) {
    if (seenDirs.has(f.dir)) throw new MergeError(`folder ${f.dir} is given twice`);
    seenDirs.add(f.dir);
  }
  const runs = new Map<string, RunParts>();
  const partsOf = (run: RunIdentity) => {
    const key = runKey(run);
    const p: RunParts = runs.get(key) ?? { run, cases: new Map(), manifests: [], order: runs.size };
    runs.set(key, p);
    return p;
  };
  for (const f of folders) {
    for (const m of f.manifests) partsOf(m.run).manifests.push({ dir: f.dir, m });
    for (const c of f.cases) {
      const byDir = partsOf(c.run).cases;
      const here = byDir.get(f.dir) ?? new Map<number, CaseResult>();
      byDir.set(f.dir, here.set(c.case_id, c));
    }
  }
  if (runs.size === 0) throw new MergeError(`no case_<id>.json files in ${list(folders.map((f) => f.dir))}`);
  const all = [...runs.values()];
  const dirsOf = (p: RunParts) => [...new Set([...p.manifests.map((x) => x.dir), ...p.cases.keys()])];

  for (const [what, value] of SHARED) {
    const byValue = new Map<string, string[]>();
    for (const p of all) byValue.set(value(p.run), [...byValue.get(value(p.run)) ?? [], ...dirsOf(p)]);
    if (byValue.size > 1) {
      const [[v1, d1], [v2, d2]] = [...byValue.entries()];
      const show = (v: string) => what === "generation settings" ? v : `'${v}'`;
      throw new MergeError(
        `cannot merge runs of different ${what}: ${show(v1)} in ${list([...new Set(d1)])} and ${
          show(v2)
        } in ${list([...new Set(d2)])}`,
      );
    }
  }
  if (!o.sweep) {
    for (const p of all) {
      const other = all.find((q) =>
        q.run.method === p.run.method && q.run.hparams_hash !== p.run.hparams_hash
      );
      if (other) {
        throw new MergeError(
          `two ${p.run.method} runs differ in hparams (${p.run.hparams_hash.slice(0, 8)} in ${
            list(dirsOf(p))
          }, ${other.run.hparams_hash.slice(0, 8)} in ${
            list(dirsOf(other))
          }); pass --sweep for a table of both`,
        );
      }
    }
  }
  return all.sort((a, b) => a.order - b.order).map((p) => mergeRun(p, o));
}

/** One run's cases from its shards, after checking that the shards fit together. */
function mergeRun(p: RunParts, o: MergeOptions): MergedRun {
  const name = label(p.run);
  const caseDirs = [...p.cases.keys()];
  if (p.manifests.length === 0) {
    // case files with no manifest (written before manifests, or copied without them): coverage unknown
    if (!o.allowMissing) {
      throw new MergeError(
        `${name} in ${
          list(caseDirs)
        } has no shard manifest (shard_<i>_of_<n>.json), so its completeness is unknown; rerun it, or pass --allow-missing`,
      );
    }
    const items = [...p.cases.entries()].flatMap(([dir, cs]) =>
      [...cs.values()].map((result) => ({ result, source: `${dir}/case_${result.case_id}.json` }))
    );
    return {
      run: p.run,
      cases: groupRuns(items)[0].cases,
      dirs: caseDirs,
      coverage: { count: null, records: null, missing_shards: [], missing_cases: [], unlisted_cases: [] },
    };
  }

  const shardText = (x: { dir: string; m: ShardManifest }) =>
    `${x.m.shard.index}/${x.m.shard.count} in ${x.dir}`;
  const first = p.manifests[0];
  const otherCount = p.manifests.find((x) => x.m.shard.count !== first.m.shard.count);
  if (otherCount) {
    throw new MergeError(
      `shards of ${name} have different counts: ${shardText(first)}, ${shardText(otherCount)}`,
    );
  }
  const otherRecords = p.manifests.find((x) => x.m.records !== first.m.records);
  if (otherRecords) {
    throw new MergeError(
      `shards of ${name} cover different records: ${shardText(first)} the first ${first.m.records}, ${
        shardText(otherRecords)
      } the first ${otherRecords.m.records}`,
    );
  }
  const count = first.m.shard.count;
  const { byIndex, missing: missingShards } = shardsByIndex(
    p.manifests,
    (x) => x.m.shard.index,
    count,
    (prev, x) =>
      new MergeError(
        `shard ${x.m.shard.index}/${x.m.shard.count} of ${name} is in two folders: ${prev.dir} and ${x.dir}`,
      ),
  );
  if (missingShards.length > 0 && !o.allowMissing) {
    throw new MergeError(
      `${name}: shard${missingShards.length > 1 ? "s" : ""} ${list(missingShards)} of ${count} missing ` +
        `(merged: ${list(p.manifests.map(shardText))}); pass --allow-missing to merge the rest`,
    );
  }
  const cases: CaseResult[] = [], missingCases: number[] = [], listed = new Set<number>();
  for (const x of [...byIndex.values()].sort((a, b) => a.m.shard.index - b.m.shard.index)) {
    const here = p.cases.get(x.dir);
    const absent = x.m.case_ids.filter((id) => !here?.has(id));
    if (absent.length > 0 && !o.allowMissing) {
      throw new MergeError(
        `shard ${
          shardText(x)
        } of ${name} is incomplete: ${absent.length} of its ${x.m.case_ids.length} cases ` +
          `missing (case ${list(absent)}); finish it (rerun resumes), or pass --allow-missing`,
      );
    }
    missingCases.push(...absent);
    for (const id of x.m.case_ids) {
      listed.add(id);
      if (here?.has(id)) cases.push(here.get(id)!);
    }
  }
  const unlisted = [...new Set([...p.cases.values()].flatMap((cs) => [...cs.keys()]))].filter((id) =>
    !listed.has(id)
  );
  return {
    run: p.run,
    cases: cases.sort((a, b) => a.case_id - b.case_id),
    dirs: [...byIndex.values()].map((x) => x.dir).filter((d, i, a) => a.indexOf(d) === i),
    coverage: {
      count,
      records: first.m.records,
      missing_shards: missingShards,
      missing_cases: missingCases.sort((a, b) => a - b),
      unlisted_cases: unlisted.sort((a, b) => a - b),
    },
  };
}

/** A line saying what a merged run lacks (empty when it is complete and nothing was left out). */
export function coverageNote(label: string, c: ShardCoverage): string {
  const parts: string[] = [];
  if (c.count === null) parts.push("no shard manifest, completeness unknown");
  if (c.missing_shards.length) {
    parts.push(
      `shard${c.missing_shards.length > 1 ? "s" : ""} ${list(c.missing_shards)} of ${c.count} missing`,
    );
  }
  if (c.missing_cases.length) parts.push(`case ${list(c.missing_cases)} missing from their shards`);
  if (c.unlisted_cases.length) {
    parts.push(`case ${list(c.unlisted_cases)} left out (in no shard's list: another --limit?)`);
  }
  return parts.length ? `${label}: ${parts.join("; ")}` : "";
}
