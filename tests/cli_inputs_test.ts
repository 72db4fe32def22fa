// Honest inputs (issue #16): every command's bad option values as a user types them (negative, zero,
// fractional, "abc", "", "1e999", options another setting makes meaningless, files that are not there) are
// refused with one line on stderr and exit code 2: never parseArgs' "ambiguous" message with the usage
// text, a stack trace, or a silent clamp. And an option given explicitly is never answered by a model
// folder's shipped statistics that are over something else. Almost every case fails before the GPU starts.
import { deepEqual, equal, match, notEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { encodeSecondMoment } from "../rome/stats.ts";
import { cli, messageLines, ROOT, run } from "./lib/cli_process.ts";
import { sawEditArgs, TINY_CONFIG, tinyCorpusText, tinyVocab, writeTinyModel } from "./lib/fixtures.ts";
import { concat } from "./lib/util.ts";

const KNOWN_FACTS = join(ROOT, "data/world/known_facts.json");

/** The corpus hash readStatsCorpus computes for one file: SHA-256 of its bytes and a 0 byte, 16 hex digits. */
async function corpusHash(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  const all = new Uint8Array(bytes.length + 1);
  all.set(bytes);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "cli-inputs-" });
  const model = join(dir, "model");
  await writeTinyModel(model, { seed: 3 });
  const corpus = join(dir, "corpus.txt"), other = join(dir, "other.txt");
  await Deno.writeTextFile(corpus, tinyCorpusText(40));
  await Deno.writeTextFile(other, tinyCorpusText(40, "there "));
  const { vocab, merges } = tinyVocab();
  await Deno.writeTextFile(join(dir, "vocab.json"), JSON.stringify(vocab));
  await Deno.writeTextFile(join(dir, "merges.txt"), merges);
  const trainConfig = (model: Record<string, number>) => ({
    model: { n_layer: 2, n_head: 2, n_embd: 16, n_positions: 32, ...model },
    train: { batch_size: 4, lr: 3e-3, steps: 2 },
  });
  await Deno.writeTextFile(join(dir, "train.json"), JSON.stringify(trainConfig({})));
  await Deno.writeTextFile(join(dir, "train_bad.json"), JSON.stringify(trainConfig({ n_layer: 2.5 })));
  // a training run's checkpoint folder that did not start from --init (only its state is read)
  await Deno.mkdir(join(dir, "run"));
  await Deno.writeTextFile(
    join(dir, "run", "trainer_state.json"),
    JSON.stringify({ step: 1, seconds: 0, losses: [] }),
  );
  await Deno.writeTextFile(
    join(dir, "hparams_identity.json"),
    JSON.stringify({
      layers: [1],
      fact_token: "subject_last",
      v_num_grad_steps: 2,
      v_lr: 0.5,
      v_loss_layer: 2,
      v_weight_decay: 0.5,
      clamp_norm_factor: 4,
      kl_factor: 0.0625,
      mom2_adjustment: false,
      context_template_length_params: [[5, 1]],
      mom2_n_samples: 100000,
    }),
  );
  await Deno.mkdir(join(dir, "results"));
  // XDG_CACHE_HOME: statistics and templates stay in the temporary folder
  return { dir, model, corpus, other, env: { XDG_CACHE_HOME: join(dir, "cache") } };
}

Deno.test("CLI: bad option values are one line naming the valid range, exit code 2 (nearly all before the GPU starts)", async () => {
  const { dir, model, corpus, env } = await setup();
  try {
    const request = ["--prompt", "I saw {}", "--subject", "the cat", "--target", "a"];
    const train = (extra: string[], out = join(dir, "t")) => [
      "train",
      "--config",
      join(dir, "train.json"),
      "--corpus",
      corpus,
      "--out",
      out,
      ...extra,
    ];
    const cases: [string[], RegExp][] = [
      // trace: parseArgs used to call "-2" ambiguous and print the whole usage
      [["trace", "--window", "-2"], /--window must be an integer ≥ 1 \(got '-2'\)/],
      [["trace", "--window=-2"], /--window must be an integer ≥ 1 \(got '-2'\)/],
      [["trace", "--window", "abc"], /--window must be an integer ≥ 1 \(got 'abc'\)/],
      [["trace", "--window", "0"], /--window must be an integer ≥ 1 \(got '0'\)/],
      [["trace", "--window", "1.5"], /--window must be an integer ≥ 1 \(got '1\.5'\)/],
      [["trace", "--window", "1e999"], /--window must be an integer ≥ 1 \(got '1e999'\)/],
      [["trace", "--window", ""], /--window must be an integer ≥ 1 \(got ''\)/],
      [["trace", "--samples", "0"], /--samples must be an integer ≥ 1 \(got '0'\)/],
      [["trace", "--samples", "-3"], /--samples must be an integer ≥ 1 \(got '-3'\)/],
      [["trace", "--samples", "0x10"], /--samples must be an integer ≥ 1 \(got '0x10'\)/],
      [["trace", "--seed", "-1"], /--seed must be an integer from 0 to 4294967295 \(got '-1'\)/],
      [["trace", "--seed", "4294967296"], /--seed must be an integer from 0 to 4294967295/],
      [["trace", "--max-rows", "3"], /--max-rows must be an integer ≥ --samples \(10\)/],
      [["trace", "--noise", "-2"], /--noise must be a positive multiple .* \(got '-2'\)/],
      [["trace", "--noise", "1e999"], /--noise must be a positive multiple .* \(got '1e999'\)/],
      [["trace", "--noise", "0.1", "--subjects", KNOWN_FACTS], /--subjects .* --noise 0\.1 is absolute/],
      [["trace", "--kind", "hidden", "--window", "3"], /--window is for the mlp and attn kinds/],
      [["trace", "--sever", "mlp", "--kind", "attn"], /--sever traces severed paths, not --kind attn/],
      [["trace", "--limit", "3"], /--limit is for --facts/],
      [["trace", "--facts", KNOWN_FACTS, "--limit", "-1"], /--limit must be an integer ≥ 1 \(got '-1'\)/],
      // stats: --corpus that is not there used to print the shipped statistics and exit 0
      [["stats", "--corpus", "/nonexistent.txt"], /--corpus '\/nonexistent\.txt' not found/],
      // stats --out replaced whatever file it named, a model's weights included
      [
        ["stats", "--out", corpus],
        /--out '.*' exists and is not a statistics file; refusing to overwrite it/,
      ],
      [["stats", "--out", dir], /--out '.*' is a folder; name the statistics file to write/],
      [["stats", "--layer", "-2"], /--layer must be an integer ≥ 0 \(got '-2'\)/],
      [["stats", "--samples", "0"], /--samples must be an integer ≥ 1 \(got '0'\)/],
      [["stats", "--samples", "1e999"], /--samples must be an integer ≥ 1 \(got '1e999'\)/],
      [["stats", "--out", ""], /--out must not be empty/],
      [
        ["stats", "--model", model, "--corpus", corpus, "--samples", "41"],
        /--samples must be an integer from 1 to 40: '.*corpus\.txt' holds 40 documents \(got '41'\)/,
      ],
      [["stats", "--model", model, "--layer", "9"], /layer 9 is out of range: the model has layers 0\.\.2/],
      // stats --shard / --merge (issue 18): a shard writes into a folder; a merge reads shard files only
      [
        ["stats", "--shard", "1/4"],
        /--shard needs --out DIR, the folder the shards write their partial sums to/,
      ],
      [["stats", "--shard", "4/4", "--out", join(dir, "s")], /--shard: a shard is i\/n with 0 ≤ i < n/],
      [
        ["stats", "--shard", "0/2", "--out", corpus],
        /--out '.*' is a file; with --shard it names the folder/,
      ],
      [["stats", "--shard", "0/2", "--npz", corpus], /--shard is for computing statistics, not with --npz/],
      [["stats", "--allow-missing"], /--allow-missing is for --merge/],
      [["stats", "--merge", "--out", join(dir, "m.safetensors")], /--merge needs the shard files/],
      [["stats", "--merge", corpus], /--merge needs --out FILE/],
      [
        ["stats", "--merge", corpus, "--layer", "1", "--out", join(dir, "m")],
        /--layer is not used by --merge/,
      ],
      [["stats", "--merge", corpus, "--out", corpus], /--out '.*' is one of the shard files/],
      [
        ["stats", "--merge", join(dir, "none.safetensors"), "--out", join(dir, "m")],
        /shard file '.*none\.safetensors' not found/,
      ],
      [
        ["stats", "--merge", corpus, "--out", join(dir, "m")],
        /'.*corpus\.txt' is not a statistics shard \(not a safetensors file\)/,
      ],
      // edit
      [["edit", "--layer", "-2"], /--layer must be an integer ≥ 0 or auto \(got '-2'\)/],
      [["edit", "--damping", ""], /--damping must be a finite number ≥ 0 \(got ''\)/],
      [["edit", "--damping", "-1"], /--damping must be a finite number ≥ 0 \(got '-1'\)/],
      [["edit", "--damping", "1e999"], /--damping must be a finite number ≥ 0 \(got '1e999'\)/],
      [["edit", "--seed", "-5"], /--seed must be an integer from 0 to 4294967295 \(got '-5'\)/],
      [["edit", "--case", "abc"], /--case must be an integer ≥ 0 \(got 'abc'\)/],
      [["edit", "--max-tokens", "-1"], /--max-tokens must be an integer ≥ 0 \(got '-1'\)/],
      [["edit", "--samples", "-1"], /--samples must be an integer ≥ 1 \(got '-1'\)/],
      [["edit", "--corpus", "/nonexistent.txt"], /--corpus '\/nonexistent\.txt' not found/],
      [["edit", "--stats", join(dir, "none.safetensors")], /statistics file '.*none\.safetensors' not found/],
      [["edit", "--stats", corpus, "--corpus", corpus], /--corpus is for computing the statistics C/],
      [
        ["edit", ...request, "--dataset", join(ROOT, "data/world/counterfact.json")],
        /--dataset is for --case/,
      ],
      [["edit", "--list", "--model", model, "--out", join(dir, "x")], /--out is not used by --list/],
      [
        [
          "edit",
          "--model",
          model,
          ...request,
          "--hparams",
          join(dir, "hparams_identity.json"),
          "--corpus",
          corpus,
        ],
        /--corpus is for the statistics C, which is not used with these hparams .*mom2_adjustment false/,
      ],
      // eval
      [["eval", "--limit", "0"], /--limit must be an integer ≥ 1 \(got '0'\)/],
      [["eval", "--limit", "-2"], /--limit must be an integer ≥ 1 \(got '-2'\)/],
      [["eval", "--sequential", "0"], /--sequential must be an integer ≥ 1 \(got '0'\)/],
      [["eval", "--generation-length", "-1"], /--generation-length must be an integer ≥ 0/],
      [["eval", "--seed", "1e999"], /--seed must be an integer from 0 to 4294967295/],
      [["eval", "--shard", "-1/2"], /--shard: a shard is i\/n/],
      [["eval", "--layer", "-1"], /--layer must be an integer ≥ 0 \(got '-1'\)/],
      [["eval", "--samples", "abc"], /--samples must be an integer ≥ 1 \(got 'abc'\)/],
      [["eval", "--method", "none", "--layer", "1"], /--layer is for an editing method, not --method none/],
      [
        ["eval", "--method", "ft", "--corpus", corpus],
        /--corpus is for the statistics C, which is not used with --method ft/,
      ],
      [["eval", "--method", "ft", "--variant", "r-rome"], /--variant is for --method rome, not ft/],
      [
        ["eval", "--generation-length", "0", "--snippets", corpus],
        /--snippets .* --generation-length 0 skips/,
      ],
      [["eval", "--merge", join(dir, "results"), "--limit", "3"], /--limit is not used by --merge/],
      // predict / generate / tokenize
      [["predict", "--prompt", "hi", "--top-k", "0"], /--top-k must be an integer ≥ 1 \(got '0'\)/],
      [["predict", "--prompt", "hi", "--top-k", "-1"], /--top-k must be an integer ≥ 1 \(got '-1'\)/],
      [["predict", "--model", "/nonexistent", "--prompt", "hi"], /model folder '\/nonexistent' not found/],
      [
        ["predict", "--model", model, "--prompt", "the", "--top-k", "100000"],
        new RegExp(`--top-k must be an integer from 1 to ${TINY_CONFIG.vocabSize}, the vocabulary's size`),
      ],
      [
        ["generate", "--prompt", "hi", "--seed", ""],
        /--seed must be an integer from 0 to 4294967295 \(got ''\)/,
      ],
      [["generate", "--prompt", "hi", "--top-k", "1.5"], /--top-k must be an integer ≥ 1 \(got '1\.5'\)/],
      [["generate", "--prompt", "hi", "--max-tokens", "-4"], /--max-tokens must be an integer ≥ 1/],
      [
        ["generate", "--model", model, "--prompt", "the", "--max-tokens", "1000"],
        /--max-tokens must be an integer from 1 to \d+ for this prompt: .* context of 32 \(got '1000'\)/,
      ],
      [["tokenize", "--model", "/nonexistent", "--text", "hi"], /model folder '\/nonexistent' not found/],
      // train / facts / download
      [train(["--steps", "-1"]), /--steps must be an integer ≥ 1 \(got '-1'\)/],
      [train(["--steps", "abc"]), /--steps must be an integer ≥ 1 \(got 'abc'\)/],
      [
        train(["--tokenizer", "/nonexistent"]),
        /--tokenizer '\/nonexistent' has no vocab\.json and merges\.txt/,
      ],
      [train(["--init", "/nonexistent"]), /--init '\/nonexistent' is not a model folder/],
      [
        [
          "train",
          "--config",
          join(dir, "train.json"),
          "--corpus",
          "/nonexistent.txt",
          "--out",
          join(dir, "t"),
        ],
        /--corpus '\/nonexistent\.txt' not found/,
      ],
      [
        ["train", "--config", join(dir, "train_bad.json"), "--corpus", corpus, "--out", join(dir, "t")],
        /model\.n_layer must be a positive integer/,
      ],
      [
        train(["--init", model], join(dir, "run")),
        /holds a checkpoint of a run that did not start from --init .*; add --fresh/,
      ],
      [["facts", "--world", "/nonexistent"], /--world '\/nonexistent' has no facts\.json/],
      [["download", "gpt2", "--dir", ""], /--dir must not be empty/],
      [["download", "not a model"], /unknown model "not a model"/],
    ];
    const world = (
      extra: string[],
    ) => ["run", "--allow-read", "--allow-env", "--allow-sys", "data/world/build.ts", ...extra];
    const worldCases: [string[], RegExp][] = [
      [world(["--seed", "-2"]), /--seed must be an integer from 0 to 4294967295 \(got '-2'\)/],
      [world(["--seed", "abc"]), /--seed must be an integer from 0 to 4294967295 \(got 'abc'\)/],
    ];
    const all = [
      ...cases.map(([args, want]) => ({ args, want, go: () => cli(args, env) })),
      // not in the test's XDG_CACHE_HOME: Deno's own cache (the world's npm packages) lives under it
      ...worldCases.map(([args, want]) => ({ args, want, go: () => run(args, {}) })),
    ];
    // two at a time: the cases are independent
    const results = new Array<Awaited<ReturnType<typeof cli>>>(all.length);
    let next = 0;
    await Promise.all([0, 1].map(async () => {
      while (next < all.length) {
        const i = next++;
        results[i] = await all[i].go();
      }
    }));
    const failures: string[] = [];
    all.forEach(({ args, want }, i) => {
      const r = results[i], lines = messageLines(r.err);
      const label = args.join(" ");
      if (r.code !== 2) failures.push(`${label}: exit ${r.code}, stderr ${JSON.stringify(r.err)}`);
      else if (lines.length !== 1) {
        failures.push(`${label}: ${lines.length} lines on stderr: ${JSON.stringify(r.err)}`);
      } else if (!/^error: /.test(lines[0]) || !want.test(lines[0])) {
        failures.push(`${label}: '${lines[0]}' !~ ${want}`);
      }
    });
    deepEqual(failures, [], `${failures.length} of ${all.length} cases:\n${failures.join("\n")}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: stats --corpus/--samples are honoured over the folder's shipped statistics", async () => {
  const { dir, model, corpus, other, env } = await setup();
  try {
    // shipped statistics over corpus.txt's 40 documents at layer 1 (a recognisable count, not real sums)
    const n = TINY_CONFIG.nInner;
    const mom2 = new Float32Array(n * n);
    for (let i = 0; i < n; i++) mom2[i * n + i] = 7;
    await Deno.mkdir(join(model, "stats"));
    const shippedBytes = encodeSecondMoment(mom2, 7, {
      model_hash: "",
      layer: 1,
      corpus_hash: await corpusHash(corpus),
      samples: 40,
      cursor: 40,
      source: "the test",
    });
    await Deno.writeFile(join(model, "stats", "layer1.safetensors"), concat(shippedBytes));
    const stats = async (extra: string[]) => {
      const r = await cli(["stats", "--model", model, "--layer", "1", "--json", ...extra], env);
      equal(r.code, 0, `${extra.join(" ")}: ${r.err}`);
      return JSON.parse(r.out) as { source: string; count: number; path: string };
    };
    // nothing asked: the shipped file; the same corpus and count asked: the shipped file too (what computing gives)
    equal((await stats([])).source, "shipped");
    equal((await stats(["--corpus", corpus])).source, "shipped");
    // another corpus: computed over it (then cached under its hash), never the shipped file
    const computed = await stats(["--corpus", other]);
    equal(computed.source, "computed");
    notEqual(computed.count, 7);
    ok(!computed.path.startsWith(model), computed.path);
    const again = await stats(["--corpus", other]);
    equal(again.source, "cache");
    equal(again.count, computed.count);
    // the shipped file's corpus, but fewer documents than it holds: not the shipped file either
    const fewer = await cli(
      ["stats", "--model", model, "--layer", "1", "--corpus", corpus, "--samples", "3"],
      env,
    );
    equal(fewer.code, 0, fewer.err);
    match(fewer.err, /note: .*layer1\.safetensors is over another corpus or number of documents/);
    match(fewer.out, /computed over 3 documents/);
    // an explicit --stats file of another layer is refused, not used for this edit's layer
    const hparams = JSON.parse(await Deno.readTextFile(join(dir, "hparams_identity.json")));
    await Deno.writeTextFile(
      join(dir, "hparams.json"),
      JSON.stringify({ ...hparams, mom2_adjustment: true }),
    );
    const edit = await cli([
      ...sawEditArgs("the cat", "a", "--model", model),
      "--hparams",
      join(dir, "hparams.json"),
      "--max-tokens",
      "0",
      "--layer",
      "0",
      "--stats",
      join(model, "stats", "layer1.safetensors"),
    ], env);
    equal(edit.code, 2, edit.err);
    deepEqual(messageLines(edit.err), [
      `error: statistics file '${
        join(model, "stats", "layer1.safetensors")
      }' holds C of layer 1, not of layer 0`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
