// Merging results folders (eval/merge.ts) on synthetic case files and shard manifests: shards merged equal
// the whole run, the README's four-method table, sequential and hparams sweeps, and each refusal (another
// model, dataset, engine or generation setting, other hparams, a missing index, an index twice, an
// incomplete shard, different counts or records, no manifest) with its one-line message, and what
// --allow-missing reports instead.
import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import {
  coverageNote,
  manifestName,
  type MergeFolder,
  type MergeOptions,
  parseManifest,
  planMerge,
  shardManifest,
} from "../eval/merge.ts";
import {
  type CaseResult,
  type CounterFactMetrics,
  MergeError,
  type RunIdentity,
  shardItems,
  summarize,
} from "../eval/metrics.ts";
import { SYNTHETIC_RUN } from "./lib/fixtures.ts";

const RUN: RunIdentity = { ...SYNTHETIC_RUN, engine_version: "0.18.0" };

const IDS = [2, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];

function caseOf(id: number, run = RUN): CaseResult {
  const m = (x: number): CounterFactMetrics => ({
    rewrite_prompts_probs: [{ target_new: x, target_true: 2 }],
    paraphrase_prompts_probs: [{ target_new: x / 2, target_true: 1 }],
    neighborhood_prompts_probs: [{ target_new: 3, target_true: x / 3 }],
    attribute_prompts_probs: [],
  });
  return { case_id: id, requested_rewrite: {}, time: id / 7, post: m((id % 5) / 2), pre: m(id % 3), run };
}

/** The folder shard i of n of `run` leaves: its manifest and its cases (less `drop`). */
function shardFolder(dir: string, index: number, count: number, run = RUN, drop: number[] = []): MergeFolder {
  const manifest = shardManifest(run, { index, count }, IDS, 40);
  return {
    dir,
    manifests: [manifest],
    cases: manifest.case_ids.filter((id) => !drop.includes(id)).map((id) => caseOf(id, run)),
  };
}

const wholeRun = (dir: string, run = RUN) => shardFolder(dir, 0, 1, run);

const refused = (folders: MergeFolder[], message: RegExp, o: MergeOptions = {}) =>
  throws(
    () => planMerge(folders, o),
    (e: unknown) => e instanceof MergeError && !e.message.includes("\n") && message.test(e.message),
  );

Deno.test("merge: shards in separate folders or one folder give the whole run's cases and summary", () => {
  const whole = planMerge([wholeRun("all")]);
  equal(whole.length, 1);
  deepEqual(whole[0].cases.map((c) => c.case_id), IDS);
  deepEqual(whole[0].coverage, {
    count: 1,
    records: 11,
    missing_shards: [],
    missing_cases: [],
    unlisted_cases: [],
  });
  const shards = planMerge([2, 0, 1].map((i) => shardFolder(`s${i}`, i, 3)));
  equal(shards.length, 1);
  deepEqual(shards[0].cases, whole[0].cases, "the same case files");
  deepEqual(summarize(shards[0].cases), summarize(whole[0].cases), "the same summary");
  deepEqual(shards[0].dirs, ["s2", "s0", "s1"], "in the order given");
  equal(coverageNote("ROME", shards[0].coverage), "");
  // every shard's manifest and cases in one folder (a shared file system)
  const together: MergeFolder = {
    dir: "one",
    manifests: [0, 1, 2].map((i) => shardManifest(RUN, { index: i, count: 3 }, IDS, 40)),
    cases: IDS.map((id) => caseOf(id)),
  };
  deepEqual(planMerge([together])[0].cases, whole[0].cases);
});

Deno.test("merge: a shard's manifest lists its cases (sequential groups whole) and parses back", () => {
  const m = shardManifest({ ...RUN, sequential: 2 }, { index: 1, count: 2 }, IDS, 40);
  deepEqual(m.case_ids, shardItems(IDS, { index: 1, count: 2 }, 2));
  deepEqual(m.case_ids, [7, 11, 19, 23, 37]);
  equal(m.records, 11);
  equal(m.dataset_records, 40);
  equal(manifestName(m.shard), "shard_1_of_2.json");
  deepEqual(parseManifest(JSON.parse(JSON.stringify(m)), "x"), m);
  for (const bad of [null, {}, { ...m, shard: { index: 2, count: 2 } }, { ...m, case_ids: ["a"] }]) {
    throws(() => parseManifest(bad, "f/shard_1_of_2.json"), /f\/shard_1_of_2\.json is not a shard manifest/);
  }
});

Deno.test("merge: the README's table (none, FT, FT+L, ROME folders) is four runs, in the order given", () => {
  const methods = ["none", "ft", "ft-l", "rome"];
  const runs = planMerge(methods.map((method) =>
    wholeRun(`counterfact-${method}`, {
      ...RUN,
      method,
      hparams_hash: method === "none" ? "none" : `h-${method}`,
    })
  ));
  deepEqual(runs.map((r) => r.run.method), methods);
  ok(runs.every((r) => r.cases.length === IDS.length));
});

Deno.test("merge: one method's runs may differ in --sequential; in hparams only with --sweep", () => {
  const seq = planMerge([wholeRun("a"), wholeRun("b", { ...RUN, sequential: 3 })]);
  deepEqual(seq.map((r) => r.run.sequential), [1, 3]);
  const other = wholeRun("b", { ...RUN, hparams_hash: "h2" });
  refused([wholeRun("a"), other], /^two rome runs differ in hparams \(h in a, h2 in b\); pass --sweep/);
  deepEqual(planMerge([wholeRun("a"), other], { sweep: true }).map((r) => r.run.hparams_hash), ["h", "h2"]);
  // a shard run with other hparams is named as such, not as a missing shard
  refused(
    [shardFolder("s0", 0, 2), shardFolder("s1", 1, 2, { ...RUN, hparams_hash: "h2" })],
    /differ in hparams/,
  );
});

Deno.test("merge: runs of another model, dataset, kind, engine or generation setting are refused", () => {
  const cases: [Partial<RunIdentity>, RegExp][] = [
    [{ model_hash: "m2" }, /^cannot merge runs of different models: 'm' in a and 'm2' in b$/],
    [{ dataset_hash: "d2" }, /different datasets: 'd' in a and 'd2' in b/],
    [{ dataset_kind: "zsre" }, /different dataset kinds: 'counterfact' in a and 'zsre' in b/],
    [{ engine_version: "0.19.0" }, /different engine versions: '0\.18\.0' in a and '0\.19\.0' in b/],
    [
      { generation: { ...RUN.generation, seed: 2 } },
      /different generation settings: .*"seed":1.* in a and .*"seed":2/,
    ],
    // another method with other settings is still another table
    [{ method: "ft", hparams_hash: "f", model_hash: "m2" }, /different models/],
  ];
  for (const [change, message] of cases) {
    refused([wholeRun("a"), wholeRun("b", { ...RUN, ...change })], message);
  }
  // case files from before engine versions (no engine_version) never merge with versioned ones
  const { engine_version: _, ...old } = RUN;
  const legacy: MergeFolder = {
    dir: "old",
    manifests: [],
    cases: IDS.map((id) => caseOf(id, old as RunIdentity)),
  };
  refused(
    [wholeRun("a"), legacy],
    /different engine versions: '0\.18\.0' in a and 'none \(case files from before/,
    {
      allowMissing: true,
    },
  );
});

Deno.test("merge: missing shard indices are listed; --allow-missing merges the rest and says which", () => {
  const folders = [shardFolder("s0", 0, 4), shardFolder("s2", 2, 4)];
  refused(folders, /^rome \(hparams h\): shards 1, 3 of 4 missing \(merged: 0\/4 in s0, 2\/4 in s2\)/);
  refused([shardFolder("s0", 0, 2)], /shard 1 of 2 missing/);
  const [r] = planMerge(folders, { allowMissing: true });
  deepEqual(r.coverage.missing_shards, [1, 3]);
  deepEqual(
    r.cases.map((c) => c.case_id),
    [...shardItems(IDS, { index: 0, count: 4 }), ...shardItems(IDS, { index: 2, count: 4 })].sort((a, b) =>
      a - b
    ),
  );
  equal(coverageNote("ROME", r.coverage), "ROME: shards 1, 3 of 4 missing");
});

Deno.test("merge: an incomplete shard is named with its missing cases; --allow-missing reports them", () => {
  const folders = [shardFolder("s0", 0, 2, RUN, [7]), shardFolder("s1", 1, 2)];
  refused(
    folders,
    /^shard 0\/2 in s0 of rome \(hparams h\) is incomplete: 1 of its 6 cases missing \(case 7\)/,
  );
  const [r] = planMerge(folders, { allowMissing: true });
  deepEqual(r.coverage.missing_cases, [7]);
  equal(r.cases.length, IDS.length - 1);
  equal(coverageNote("ROME", r.coverage), "ROME: case 7 missing from their shards");
  // a shard that computed nothing yet (manifest only) is incomplete, not missing
  refused(
    [shardFolder("s0", 0, 2), { dir: "s1", manifests: shardFolder("s1", 1, 2).manifests, cases: [] }],
    /shard 1\/2 in s1 .* is incomplete: 5 of its 5 cases missing/,
  );
});

Deno.test("merge: the same shard twice, other counts or records, a folder twice, no manifest: refused", () => {
  // an index twice, even when the copies agree
  refused(
    [shardFolder("s0", 0, 2), shardFolder("s1", 1, 2), shardFolder("copy", 1, 2)],
    /^shard 1\/2 of rome \(hparams h\) is in two folders: s1 and copy$/,
  );
  refused(
    [shardFolder("s0", 0, 2), shardFolder("s1", 1, 3)],
    /^shards of rome \(hparams h\) have different counts: 0\/2 in s0, 1\/3 in s1$/,
  );
  const short: MergeFolder = {
    dir: "s1",
    manifests: [shardManifest(RUN, { index: 1, count: 2 }, IDS.slice(0, 6), 40)],
    cases: shardItems(IDS.slice(0, 6), { index: 1, count: 2 }).map((id) => caseOf(id)),
  };
  refused(
    [shardFolder("s0", 0, 2), short],
    /cover different records: 0\/2 in s0 the first 11, 1\/2 in s1 the first 6/,
  );
  refused([wholeRun("a"), wholeRun("a")], /^folder a is given twice$/);
  refused([], /no case_<id>\.json files/);
  const bare: MergeFolder = { dir: "bare", manifests: [], cases: IDS.map((id) => caseOf(id)) };
  refused([bare], /^rome \(hparams h\) in bare has no shard manifest .*pass --allow-missing$/);
  const [r] = planMerge([bare], { allowMissing: true });
  equal(r.coverage.count, null);
  equal(r.cases.length, IDS.length);
  match(coverageNote("ROME", r.coverage), /no shard manifest, completeness unknown/);
});

Deno.test("merge: case files no shard lists (a run resumed with a smaller --limit) are left out and named", () => {
  const folder: MergeFolder = {
    dir: "a",
    manifests: [shardManifest(RUN, { index: 0, count: 1 }, IDS.slice(0, 8), 40)],
    cases: IDS.map((id) => caseOf(id)),
  };
  const [r] = planMerge([folder]);
  equal(r.cases.length, 8);
  deepEqual(r.coverage.unlisted_cases, [29, 31, 37]);
  match(coverageNote("ROME", r.coverage), /case 29, 31, 37 left out/);
});
