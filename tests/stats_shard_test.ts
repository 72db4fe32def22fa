// Sharded statistics C (issue 18): `stats --shard i/n` writes partial sums over contiguous document
// ranges, `stats --merge` adds them into the file a single run writes. As a user runs them, on a tiny model
// folder: the merge equals the single run's C (to float32 rounding of a different summation order) and an
// edit with it gives the same probabilities; merges of shards that are not one run's, whole and once each,
// fail with one line before writing anything; a killed shard resumes to the bytes of an uninterrupted one.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { exists } from "../engine/files.ts";
import { decodeSecondMoment, encodeSecondMoment } from "../rome/stats.ts";
import { checkShardSet, readShardHeader, shardRange } from "../rome/stats_shards.ts";
import { cli, messageLines } from "./lib/cli_process.ts";
import {
  layerOneStatsArgs,
  QUICK_ROME_HPARAMS,
  sawEditArgs,
  TINY_CONFIG,
  tinyCorpusText,
  writeTinyModel,
} from "./lib/fixtures.ts";
import { concat } from "./lib/util.ts";

const DOCS = 250; // 3 shards of 83, 83 and 84 documents; groups of 100, so the single run's groups differ

async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "stats-shard-" });
  const model = join(dir, "model");
  // a context of 96 tokens: the edit's context templates do not fit in the tiny model's 32
  await writeTinyModel(model, { seed: 7, config: { ...TINY_CONFIG, nPositions: 96 } });
  const corpus = join(dir, "corpus.txt");
  await Deno.writeTextFile(corpus, tinyCorpusText(DOCS));
  await Deno.writeTextFile(join(dir, "hparams.json"), JSON.stringify(QUICK_ROME_HPARAMS));
  return { dir, model, corpus, env: { XDG_CACHE_HOME: join(dir, "cache") } };
}

async function ok0(args: string[], env: Record<string, string>) {
  const r = await cli(args, env);
  equal(r.code, 0, `${args.join(" ")}: ${r.err}`);
  return r;
}

Deno.test("stats shards: contiguous ranges cover every document once", () => {
  for (const [total, n] of [[250, 3], [7, 7], [3, 5], [100000, 64]]) {
    let at = 0;
    for (let i = 0; i < n; i++) {
      const { start, end } = shardRange(total, i, n);
      equal(start, at);
      ok(end >= start && end - start <= Math.ceil(total / n));
      at = end;
    }
    equal(at, total);
  }
});

Deno.test("stats shards: 3 shards merged are the single run's C, edit --stats gives the same edit; bad merges write nothing", async () => {
  const { dir, model, corpus, env } = await setup();
  try {
    const base = ["stats", "--model", model, "--layer", "1", "--corpus", corpus, "--json"];
    const single = join(dir, "single.safetensors"), shards = join(dir, "shards");
    const one = JSON.parse((await ok0([...base, "--out", single], env)).out);
    // (first in a fresh XDG_CACHE_HOME, it also fills Mesa's shader cache: slower than the shards for that)
    console.log(`  single run: ${one.count} tokens, ${one.seconds.toFixed(2)} s`);
    const shardFiles: string[] = [];
    for (let i = 0; i < 3; i++) {
      // shard 1 as a job array runs it: the index from the environment
      const args = i === 1 ? ["--shard", "auto"] : ["--shard", `${i}/3`];
      const shardEnv = i === 1 ? { ...env, ROME_SHARD_INDEX: "1", ROME_SHARD_COUNT: "3" } : env;
      const r = JSON.parse((await ok0([...base, ...args, "--out", shards], shardEnv)).out);
      deepEqual([r.shard, r.doc_start, r.doc_end, r.source], [
        `${i}/3`,
        [0, 83, 166][i],
        [83, 166, 250][i],
        "computed",
      ]);
      console.log(`  shard ${i}/3: ${r.count} tokens, ${r.seconds.toFixed(2)} s`);
      shardFiles.push(r.path);
    }
    deepEqual(Array.from(Deno.readDirSync(shards), (e) => e.name).sort(), [
      "layer1.shard0-of-3.safetensors",
      "layer1.shard1-of-3.safetensors",
      "layer1.shard2-of-3.safetensors",
    ]);
    // a rerun of a finished shard computes nothing
    const again = JSON.parse((await ok0([...base, "--shard", "2/3", "--out", shards], env)).out);
    equal(again.source, "finished");

    // (a) the merge, files in any order, is the single run's C
    const merged = join(dir, "merged.safetensors");
    const m = JSON.parse(
      (await ok0(
        ["stats", "--merge", shardFiles[2], shardFiles[0], shardFiles[1], "--out", merged, "--json"],
        env,
      ))
        .out,
    );
    deepEqual([m.shards, m.merged, m.missing, m.documents], [3, [0, 1, 2], [], DOCS]);
    const a = decodeSecondMoment(await Deno.readFile(single), single);
    const b = decodeSecondMoment(await Deno.readFile(merged), merged);
    equal(b.count, a.count);
    deepEqual(
      [b.info.layer, b.info.model_hash, b.info.corpus_hash, b.info.samples, b.info.cursor],
      [a.info.layer, a.info.model_hash, a.info.corpus_hash, a.info.samples, a.info.cursor],
    );
    let maxDiff = 0, maxAbs = 0, num = 0, den = 0;
    for (let i = 0; i < a.mom2.length; i++) {
      const d = Math.abs(a.mom2[i] - b.mom2[i]);
      maxDiff = Math.max(maxDiff, d);
      maxAbs = Math.max(maxAbs, Math.abs(a.mom2[i]));
      num += d * d;
      den += a.mom2[i] * a.mom2[i];
    }
    console.log(
      `  merged vs single: max |Δ| / max |C| = ${(maxDiff / maxAbs).toExponential(2)}, ` +
        `‖Δ‖/‖C‖ = ${Math.sqrt(num / den).toExponential(2)} (${a.count} tokens)`,
    );
    ok(maxDiff / maxAbs <= 1e-6, `merged C differs by ${maxDiff / maxAbs} relative`);

    // (b) the same edit with either file
    const edit = (stats: string) => [
      ...sawEditArgs("Eiffel Tower", "the", "--target-true", "a", "--model", model),
      "--hparams",
      join(dir, "hparams.json"),
      "--max-tokens",
      "0",
      "--stats",
      stats,
      "--json",
    ];
    const e1 = JSON.parse((await ok0(edit(single), env)).out);
    const e2 = JSON.parse((await ok0(edit(merged), env)).out);
    // every probability the edit reports: the prompt's, its paraphrases' and neighbours', before and after
    const probs = (e: Record<string, unknown>) =>
      JSON.stringify([e.pre, e.post, e.paraphrases, e.neighbours]).match(/-?\d+(\.\d+)?(e[+-]?\d+)?/g)!
        .map(Number);
    const p1 = probs(e1), p2 = probs(e2);
    equal(p1.length, p2.length);
    const worst = Math.max(...p1.map((x, i) => Math.abs(x - p2[i])));
    console.log(
      `  edit with merged vs single C: max |Δ| over ${p1.length} numbers = ${worst.toExponential(2)}`,
    );
    ok(worst <= 1e-5, `post-edit numbers differ by ${worst}`);
    // a shard alone is not C
    const alone = await cli(edit(shardFiles[0]), env);
    equal(alone.code, 2);
    match(messageLines(alone.err).join("\n"), /^error: statistics file '.*' is shard 0\/3 of a sharded run/);

    // (c) merges that are not one run's shards, each once, all there: one line, exit 2, nothing written
    const crafted = async (name: string, meta: Record<string, string>) => {
      const s = decodeSecondMoment(await Deno.readFile(shardFiles[1]), shardFiles[1]);
      const md = { ...s.metadata, ...meta };
      const path = join(dir, name);
      await Deno.writeFile(
        path,
        concat(encodeSecondMoment(s.mom2, s.count, {
          model_hash: md.model_hash,
          layer: Number(md.layer),
          corpus_hash: md.corpus_hash,
          samples: Number(md.samples),
          cursor: Number(md.cursor),
          source: md.source,
        }, md)),
      );
      return path;
    };
    const out = join(dir, "bad.safetensors");
    const dup = join(dir, "copy.safetensors");
    await Deno.copyFile(shardFiles[1], dup);
    const cases: [string[], RegExp][] = [
      [[await crafted("model.safetensors", { model_hash: "0123456789abcdef" })], /differ in model_hash/],
      [[await crafted("layer.safetensors", { layer: "2" })], /differ in layer \(2 vs 1\)/],
      [[await crafted("corpus.safetensors", { corpus_hash: "feedfeedfeedfeed" })], /differ in corpus_hash/],
      [[await crafted("engine.safetensors", { engine_version: "0" })], /differ in engine_version \(0 vs/],
      [[await crafted("samples.safetensors", { samples: "240" })], /differ in samples \(240 vs 250\)/],
      [[shardFiles[1], dup], /'.*shard1-of-3\.safetensors' and '.*copy\.safetensors' are both shard 1\/3/],
      [
        [
          await crafted("count.safetensors", {
            shard: "1/4",
            doc_start: "62",
            doc_end: "125",
            cursor: "125",
          }),
        ],
        /differ in the shard count \(shard 1\/4 vs 0\/3\)/,
      ],
      [
        [await crafted("range.safetensors", { doc_start: "80" })],
        /covers documents \[80, 166\), but shard 1\/3/,
      ],
      [[await crafted("unfinished.safetensors", { cursor: "100" })], /is an unfinished shard/],
      [[single], /'.*single\.safetensors' is not a statistics shard/],
    ];
    const failures: string[] = [];
    for (const [bad, want] of cases) {
      // the odd file against shards 0 and 2 (as the first file, the reference the others are compared with)
      const files = [shardFiles[0], ...bad, shardFiles[2]];
      const r = await cli(["stats", "--merge", ...files, "--out", out], env);
      const lines = messageLines(r.err);
      if (r.code !== 2 || lines.length !== 1 || !want.test(lines[0]) || exists(out)) {
        failures.push(`${bad.join(" ")}: code ${r.code}, wrote ${exists(out)}, ${JSON.stringify(lines)}`);
      }
    }
    deepEqual(failures, [], failures.join("\n"));
    // a missing index is named
    const missing = await cli(["stats", "--merge", shardFiles[0], shardFiles[2], "--out", out], env);
    deepEqual([missing.code, messageLines(missing.err), exists(out)], [
      2,
      ["error: shard 1 of 3 is missing; give its file (or --allow-missing to merge without them)"],
      false,
    ]);
    // --allow-missing writes what there is and says so, in its output and in the file's header
    const partial = await ok0(
      ["stats", "--merge", shardFiles[0], shardFiles[2], "--out", out, "--allow-missing"],
      env,
    );
    match(partial.out, /merged 2 of 3 shards: C at layer 1 over 167 of 250 documents/);
    match(partial.out, /without shard 1 \(--allow-missing/);
    const p = decodeSecondMoment(await Deno.readFile(out), out);
    deepEqual([p.metadata.shards_merged, p.metadata.shards_missing, p.metadata.documents], [
      "0,2",
      "1",
      "167",
    ]);
    // copied into the model folder as its shipped statistics, the partial merge is used with the same note
    await Deno.mkdir(join(model, "stats"), { recursive: true });
    await Deno.copyFile(out, join(model, "stats", "layer1.safetensors"));
    const edited = await ok0(
      [
        ...sawEditArgs("Eiffel Tower", "the", "--model", model),
        "--hparams",
        join(dir, "hparams.json"),
        "--max-tokens",
        "0",
      ],
      env,
    );
    match(
      edited.err,
      /note: .*layer1\.safetensors was merged without shard\(s\) 1 of 3 \(167 of 250 documents\)/,
    );
    await Deno.remove(join(model, "stats"), { recursive: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stats shards: a shard killed after a checkpoint resumes to the bytes of an uninterrupted one", async () => {
  const { dir, model, corpus, env } = await setup();
  try {
    // shard 0/2 is documents [0, 125): a checkpoint after the group of 100, the file at 125
    const shard = (out: string) => [
      ...layerOneStatsArgs(model, corpus),
      "--shard",
      "0/2",
      "--out",
      out,
    ];
    const ckEnv = { ...env, ROME_STATS_CHECKPOINT_SECONDS: "0" };
    await ok0(shard(join(dir, "ref")), ckEnv);
    const ref = await Deno.readFile(join(dir, "ref", "layer1.shard0-of-2.safetensors"));
    const out = join(dir, "out");
    const killed = await cli(shard(out), { ...ckEnv, ROME_DRILL_KILL_AT: "atomic:renamed#1" });
    ok(killed.code !== 0, "the kill point was not reached");
    match(killed.err, /kill point atomic:renamed#1 .*layer1\.shard0-of-2\.safetensors\.partial/);
    ok(!exists(join(out, "layer1.shard0-of-2.safetensors")));
    const resumed = await ok0(shard(out), ckEnv);
    match(resumed.err, /resuming .*\.partial at document 100 of \[0, 125\)/);
    deepEqual(await Deno.readFile(join(out, "layer1.shard0-of-2.safetensors")), ref);
    ok(!exists(join(out, "layer1.shard0-of-2.safetensors.partial")), "the checkpoint is removed");
    // the merge needs shard 1 as well: nothing is written without it
    const header = readShardHeader("x", decodeSecondMoment(ref, "ref").metadata);
    deepEqual([header.start, header.end, header.cursor], [0, 125, 125]);
    ok(checkShardSet([header], true).missing.includes(1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
