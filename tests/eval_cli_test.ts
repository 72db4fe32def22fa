// deno task eval as a user runs it (subprocesses on a tiny model folder and a tiny CounterFact-format file
// written here): --limit 2 end to end with the reference's case files and the --json shape, resuming,
// shards merged back into the unsharded summary (and merges of shards that do not make the run refused,
// or with --allow-missing reported), a zsRE file, and one-line refusals.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { TINY_CONFIG, tinyRewrite, writeTinyModel, ZSRE_RIVER } from "./lib/fixtures.ts";
import { cli } from "./lib/cli_process.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

function record(id: number, subject: string, tnew: string, ttrue: string) {
  return {
    case_id: id,
    pararel_idx: 100 + id,
    requested_rewrite: tinyRewrite(subject, tnew, ttrue),
    paraphrase_prompts: [`The cat sat. I saw ${subject} on`, `On a mat, ${subject} is in`],
    neighborhood_prompts: ["I saw a mat in", "I saw the cat in"],
    attribute_prompts: [`the ${tnew} is in`],
    generation_prompts: [`${subject} is`, `${subject} is`, `In ${subject}, the`],
  };
}

async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "eval-cli-" });
  const model = join(dir, "model");
  await writeTinyModel(model, {
    config: { ...TINY_CONFIG, nEmbd: 32, nInner: 128, nPositions: 48 },
    seed: 5,
  });
  const data = join(dir, "data");
  await Deno.mkdir(data);
  const records = [
    record(3, "the river", "the", "a"),
    record(8, "Eiffel Tower", "on", "the"),
    record(11, "a mat", "he", "in"),
  ];
  await Deno.writeTextFile(join(data, "counterfact.json"), JSON.stringify(records));
  // the reference's list form of attribute_snippets.json
  await Deno.writeTextFile(
    join(data, "attribute_snippets.json"),
    JSON.stringify(["the", "on", "he"].map((t) => ({
      name: t,
      relation_id: "P1",
      target_id: "N" + t,
      samples: [{ name: "x", text: `${t} cat sat on ${t} mat` }, { name: "y", text: `the river in ${t}` }],
    }))),
  );
  await Deno.writeTextFile(
    join(dir, "ft.json"),
    JSON.stringify({ layers: [1], num_steps: 6, lr: 0.02, weight_decay: 0, norm_constraint: false }),
  );
  const env = { XDG_CACHE_HOME: join(dir, "cache") };
  /** `eval` of the model with METHOD on DATASET (the CounterFact file unless given). */
  const evalArgs = (method: string, dataset = join(data, "counterfact.json")) => [
    "eval",
    "--model",
    model,
    "--dataset",
    dataset,
    "--method",
    method,
  ];
  const base = [...evalArgs("ft"), "--hparams", join(dir, "ft.json"), "--generation-length", "12"];
  return { dir, model, env, base, evalArgs };
}

Deno.test("CLI: eval --limit 2 end to end, resume, shards merged equal the unsharded run, zsRE, refusals", async () => {
  const { dir, model, env, base, evalArgs } = await setup();
  try {
    const a = join(dir, "a");
    const r1 = await cli([...base, "--limit", "2", "--out", a, "--json"], env);
    equal(r1.code, 0, r1.err);
    const j = JSON.parse(r1.out);
    deepEqual(Object.keys(j).slice(0, 4), ["method", "n", "summary", "pre"]);
    equal(j.method, "ft");
    equal(j.n, 2);
    equal(j.computed, 2);
    deepEqual(Object.keys(j.summary), ["S", "ES", "EM", "PS", "PM", "NS", "NM", "GE", "RS"]);
    deepEqual(Object.keys(j.pre), Object.keys(j.summary));
    for (const k of Object.keys(j.summary)) ok(typeof j.summary[k] === "number", `summary.${k} is a number`);
    ok(j.summary.ES >= j.pre.ES, "FT does not lower ES");
    // the reference's case files, one per case
    const files = [...Deno.readDirSync(a)].map((e) => e.name).sort();
    deepEqual(files, [
      "case_3.json",
      "case_8.json",
      "report.html",
      "report.md",
      "shard_0_of_1.json",
      "summary.json",
    ]);
    const c3 = JSON.parse(await Deno.readTextFile(join(a, "case_3.json")));
    deepEqual(Object.keys(c3).slice(0, 5), ["case_id", "requested_rewrite", "time", "post", "pre"]);
    equal(c3.post.rewrite_prompts_probs.length, 1);
    equal(c3.post.paraphrase_prompts_probs.length, 2);
    equal(c3.post.neighborhood_prompts_probs.length, 2);
    equal(c3.post.attribute_prompts_probs.length, 1);
    equal(c3.post.text.length, 3);
    ok(typeof c3.post.ngram_entropy === "number" && typeof c3.post.reference_score === "number");
    match(
      await Deno.readTextFile(join(a, "report.md")),
      /\| Editor \| S \| ES \| EM \| PS \| PM \| NS \| NM \| GE \| RS \| n \|/,
    );

    // resumed: nothing recomputed, files untouched
    const mtime = (await Deno.stat(join(a, "case_3.json"))).mtime!.getTime();
    const r2 = await cli([...base, "--limit", "2", "--out", a, "--json"], env);
    equal(r2.code, 0, r2.err);
    const j2 = JSON.parse(r2.out);
    equal(j2.computed, 0);
    equal(j2.skipped, 2);
    deepEqual(j2.summary, j.summary);
    equal((await Deno.stat(join(a, "case_3.json"))).mtime!.getTime(), mtime);

    // two shards in two folders, merged: the same table as the unsharded run
    for (const s of ["0/2", "1/2"]) {
      const r = await cli(
        [...base, "--limit", "2", "--shard", s, "--out", join(dir, `s${s[0]}`), "--json"],
        env,
      );
      equal(r.code, 0, r.err);
      equal(JSON.parse(r.out).n, 1);
    }
    const m = await cli([
      "eval",
      "--merge",
      join(dir, "s0"),
      join(dir, "s1"),
      "--out",
      join(dir, "merged"),
      "--json",
    ], env);
    equal(m.code, 0, m.err);
    const jm = JSON.parse(m.out);
    equal(jm.n, 2);
    deepEqual(jm.summary, j.summary);
    deepEqual(jm.pre, j.pre);
    ok((await Deno.stat(join(dir, "merged", "report.html"))).isFile);
    deepEqual(jm.shards, { count: 2, records: 2, missing_shards: [], missing_cases: [], unlisted_cases: [] });
    // each shard's case files are the unsharded run's, apart from the timing fields
    const timeless = async (path: string) => {
      const { time: _t, seconds: _s, ...rest } = JSON.parse(await Deno.readTextFile(path));
      return rest;
    };
    for (const [s, id] of [["s0", 3], ["s1", 8]] as const) {
      deepEqual(await timeless(join(dir, s, `case_${id}.json`)), await timeless(join(a, `case_${id}.json`)));
    }
    const manifest = JSON.parse(await Deno.readTextFile(join(dir, "s1", "shard_1_of_2.json")));
    deepEqual([manifest.shard, manifest.records, manifest.dataset_records, manifest.case_ids], [
      { index: 1, count: 2 },
      2,
      3,
      [8],
    ]);
    // merges of shards that do not make the run: one line, exit code 2, nothing written
    await Deno.mkdir(join(dir, "s1copy"));
    await Deno.mkdir(join(dir, "s1part"));
    for (const f of Deno.readDirSync(join(dir, "s1"))) {
      await Deno.copyFile(join(dir, "s1", f.name), join(dir, "s1copy", f.name));
      if (f.name !== "case_8.json") await Deno.copyFile(join(dir, "s1", f.name), join(dir, "s1part", f.name));
    }
    const badMerges: [string[], RegExp][] = [
      [[join(dir, "s0")], /: shard 1 of 2 missing \(merged: 0\/2 in .*s0\)/],
      [
        [join(dir, "s0"), join(dir, "s1"), join(dir, "s1copy")],
        /shard 1\/2 of .* is in two folders: .*s1 and .*s1copy$/,
      ],
      [
        [join(dir, "s0"), join(dir, "s1part")],
        /shard 1\/2 in .*s1part of .* is incomplete: 1 of its 1 cases missing \(case 8\)/,
      ],
      [[a, join(dir, "s0"), join(dir, "s1")], /have different counts: 0\/1 in .*a, 0\/2 in .*s0/],
    ];
    for (const [dirs, want] of badMerges) {
      const r = await cli(["eval", "--merge", ...dirs, "--out", join(dir, "refused")], env);
      equal(r.code, 2, r.err);
      const lines = r.err.trim().split("\n").filter((l) => l.startsWith("error:"));
      equal(lines.length, 1, r.err);
      match(lines[0], want);
      ok(!(await exists(join(dir, "refused"))), "a refused merge writes nothing");
    }
    // --allow-missing merges what is there and says what is not
    const partial = join(dir, "partial");
    const p = await cli(["eval", "--merge", join(dir, "s0"), "--allow-missing", "--out", partial], env);
    equal(p.code, 0, p.err);
    match(p.out, /note: FT: shard 1 of 2 missing/);
    const ps = JSON.parse(await Deno.readTextFile(join(partial, "summary.json")));
    deepEqual([ps.n, ps.shards.missing_shards], [1, [1]]);
    // merging two methods gives one row each
    const none = await cli([
      ...evalArgs("none"),
      "--limit",
      "2",
      "--generation-length",
      "12",
      "--out",
      join(dir, "none"),
    ], env);
    equal(none.code, 0, none.err);
    const both = await cli(["eval", "--merge", a, join(dir, "none")], env);
    equal(both.code, 0, both.err);
    match(both.out, /unedited model \(pre\)/);
    match(both.out, /\nFT /);

    // zsRE, told apart by its records
    const zsre = join(dir, "zsre.json");
    await Deno.writeTextFile(
      zsre,
      JSON.stringify([ZSRE_RIVER]),
    );
    const z = await cli([
      ...evalArgs("ft", zsre),
      "--hparams",
      join(dir, "ft.json"),
      "--out",
      join(dir, "z"),
      "--json",
    ], env);
    equal(z.code, 0, z.err);
    const jz = JSON.parse(z.out);
    equal(jz.dataset, "zsre");
    deepEqual(Object.keys(jz.summary), ["S", "Efficacy", "Paraphrase", "Specificity"]);
    const cz = JSON.parse(await Deno.readTextFile(join(dir, "z", "case_0.json")));
    ok(Array.isArray(cz.post.rewrite_prompts_correct) && cz.post.rewrite_prompts_correct.length > 1);

    // refusals: one line, exit code 2
    const refusals: [string[], RegExp][] = [
      [[...base, "--method", "xx"], /--method must be one of none, rome, ft, ft-l/],
      [[...base, "--shard", "2/2"], /--shard: a shard is i\/n/],
      [["eval", "--model", model, "--dataset", join(dir, "nope.json")], /dataset '.*nope\.json' not found/],
      [
        [...base, "--limit", "2", "--out", a, "--hparams", join(dir, "ft.json"), "--seed", "9"],
        /already stored from another run/,
      ],
      [
        [...base, "--snippets", join(dir, "none.json")],
        /no attribute snippets at .*: give --snippets FILE, or --generation-length 0/,
      ],
      [["eval", "--merge"], /--merge needs at least one results folder/],
      [["eval", "stray"], /unexpected argument 'stray'/],
      [[...base, "--allow-missing"], /--allow-missing is for --merge/],
    ];
    for (const [args, want] of refusals) {
      const r = await cli(args, env);
      equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
      const lines = r.err.trim().split("\n").filter((l) => l.startsWith("error:"));
      equal(lines.length, 1, r.err);
      match(lines[0], want);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
