// deno task edit / stats as a user runs them (subprocesses on tiny model folders): --json shape, the
// statistics cache, patches and saved folders that apply and revert bit for bit, refusals, one-line errors,
// and folder saves that survive SIGKILL at any moment.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { readSafetensorsFile } from "../engine/files.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import {
  EDIT_CONFIG,
  QUICK_ROME_HPARAMS,
  quickEditArgs,
  sensitiveWeights,
  tinyCorpusText,
  writeTinyModel,
} from "./lib/fixtures.ts";
import { cli } from "./lib/cli_process.ts";
import { randomGpt2Weights } from "./lib/gpt2_reference.ts";

/** A model folder whose logits are sensitive enough for an edit to show; returns its weights. */
async function writeModel(dir: string, seed: number, c: Gpt2Config = EDIT_CONFIG) {
  const weights = sensitiveWeights(c, seed);
  await writeTinyModel(dir, { config: c, weights });
  return weights;
}

/** Every tensor's raw bytes of a folder's model.safetensors. */
async function tensorBytes(dir: string): Promise<Map<string, Uint8Array>> {
  const st = await readSafetensorsFile(join(dir, "model.safetensors"));
  return new Map([...st.tensors.keys()].map((n) => [n, st.raw(n)]));
}

function sameTensors(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>): boolean {
  return a.size === b.size && [...a].every(([n, x]) => {
    const y = b.get(n);
    return y !== undefined && x.length === y.length && x.every((v, i) => v === y[i]);
  });
}

async function setup() {
  const dir = await Deno.makeTempDir({ prefix: "rome-cli-" });
  const model = join(dir, "model");
  await writeModel(model, 31);
  await Deno.writeTextFile(join(dir, "corpus.txt"), tinyCorpusText(40));
  await Deno.writeTextFile(join(dir, "hparams.json"), JSON.stringify(QUICK_ROME_HPARAMS));
  const env = { XDG_CACHE_HOME: join(dir, "cache") };
  const edit = (extra: string[]) => [
    ...quickEditArgs(join(dir, "corpus.txt"), join(dir, "hparams.json")),
    ...extra,
  ];
  return { dir, model, env, edit };
}

Deno.test("CLI: stats are computed once then cached; edit --json; --out/--patch, --list, --apply and --revert bit for bit", async () => {
  const { dir, model, env, edit } = await setup();
  try {
    const stats = ["stats", "--model", model, "--layer", "1", "--corpus", join(dir, "corpus.txt"), "--json"];
    const s1 = await cli(stats, env);
    equal(s1.code, 0, s1.err);
    const r1 = JSON.parse(s1.out);
    equal(r1.source, "computed");
    ok(r1.count > EDIT_CONFIG.nInner && r1.tokens_per_second > 0);
    const s2 = JSON.parse((await cli(stats, env)).out);
    equal(s2.cached, true);
    equal(s2.count, r1.count);

    const out = join(dir, "edited"), patch = join(dir, "p1.safetensors");
    const e = await cli(edit(["--model", model, "--json", "--out", out, "--patch", patch]), env);
    equal(e.code, 0, e.err);
    const j = JSON.parse(e.out);
    for (const k of ["request", "layer", "pre", "post", "delta_norm", "seconds"]) {
      ok(k in j, `--json has ${k}`);
    }
    for (const k of ["stats", "k", "v", "update"]) ok(j.seconds[k] >= 0, `seconds.${k}`);
    equal(j.request.target_new, " the");
    equal(j.layer, 1);
    equal(j.stats.source, "cache");
    ok(j.post.target_new > j.pre.target_new, `P(new) ${j.pre.target_new} → ${j.post.target_new}`);
    equal(typeof j.pre.target_true, "number");

    const list = JSON.parse((await cli(["edit", "--list", "--model", out, "--json"], env)).out);
    equal(list.edits.length, 1);
    equal(list.edits[0].id, j.patch.id);
    ok((await Deno.stat(join(out, list.edits[0].file))).isFile, "the folder keeps a copy of the patch");

    const original = await tensorBytes(model), edited = await tensorBytes(out);
    ok(!sameTensors(original, edited));
    const rev = await cli([
      "edit",
      "--revert",
      patch,
      "--model",
      out,
      "--out",
      join(dir, "reverted"),
      "--json",
    ], env);
    equal(rev.code, 0, rev.err);
    equal(JSON.parse(rev.out).restores_original, true);
    ok(sameTensors(await tensorBytes(join(dir, "reverted")), original), "revert restores every byte");
    const app = await cli(
      ["edit", "--apply", patch, "--model", model, "--out", join(dir, "applied")],
      env,
    );
    equal(app.code, 0, app.err);
    ok(sameTensors(await tensorBytes(join(dir, "applied")), edited), "apply reproduces the edit");

    // refusals: applying twice, reverting what is not applied, writing over the input without --in-place
    const twice = await cli(["edit", "--apply", patch, "--model", out, "--out", join(dir, "x1")], env);
    equal(twice.code, 2);
    match(twice.err, /already applied/);
    const notThere = await cli(
      ["edit", "--revert", patch, "--model", model, "--out", join(dir, "x2")],
      env,
    );
    equal(notThere.code, 2);
    match(notThere.err, /not applied to this model/);
    const over = await cli(edit(["--model", model, "--out", model]), env);
    equal(over.code, 2);
    match(over.err, /--in-place/);

    // a second edit of the same matrix: the first cannot be reverted before it
    const out2 = join(dir, "edited2"), patch2 = join(dir, "p2.safetensors");
    const second = edit(["--model", out, "--out", out2, "--patch", patch2]);
    second[second.indexOf("--target") + 1] = "at";
    const e2 = await cli(second, env);
    equal(e2.code, 0, e2.err);
    const early = await cli(["edit", "--revert", patch, "--model", out2, "--out", join(dir, "x3")], env);
    equal(early.code, 2);
    match(early.err, /revert the last one first/);
    const back1 = await cli(["edit", "--revert", patch2, "--model", out2, "--in-place"], env);
    equal(back1.code, 0, back1.err);
    const back2 = await cli(["edit", "--revert", patch, "--model", out2, "--in-place", "--json"], env);
    equal(back2.code, 0, back2.err);
    ok(sameTensors(await tensorBytes(out2), original), "reverting both, last first, restores the original");
    equal(JSON.parse((await cli(["edit", "--list", "--model", out2, "--json"], env)).out).edits.length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: bad input is one line naming the problem, exit code 2", async () => {
  const { dir, model, env, edit } = await setup();
  try {
    const bad = join(dir, "bad.safetensors");
    await Deno.writeTextFile(bad, "not a patch at all");
    const withArg = (name: string, value: string) => {
      const a = edit(["--model", model]);
      a[a.indexOf(name) + 1] = value;
      return a;
    };
    const cases: [string[], RegExp][] = [
      [withArg("--prompt", "The tower is tall"), /subject "Eiffel Tower" is not in the prompt/],
      [withArg("--prompt", "{} and {} are"), /needs exactly one/],
      [withArg("--target", " "), /target is empty/],
      [[...edit(["--model", model]), "--layer", "7"], /layer 7 is out of range: the model has layers 0\.\.2/],
      [withArg("--target", "the ".repeat(60)), /past the model's context of 96/],
      [[...edit(["--model", model]), "--layer", "auto"], /no causal-tracing result.*deno task trace/],
      [[...edit(["--model", model]), "--variant", "memit"], /--variant must be rome or r-rome/],
      [
        [...edit(["--model", model]), "--samples", "1"],
        /singular: it sums \d+ token keys, fewer than d_ff = 128.*at least \d+ more tokens/,
      ],
      [
        ["edit", "--apply", bad, "--model", model, "--out", join(dir, "o")],
        /malformed patch .*bad\.safetensors/,
      ],
      [
        ["edit", "--apply", join(dir, "missing.safetensors"), "--model", model, "--out", join(dir, "o")],
        /not found/,
      ],
      [
        ["edit", "--model", join(dir, "nowhere"), "--prompt", "{} is", "--subject", "A", "--target", "B"],
        /not found/,
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await cli(args, env);
      equal(r.code, 2, `${args.join(" ")}: exit ${r.code}, ${r.err}`);
      const lines = r.err.trim().split("\n").filter((l) => l.startsWith("error:") || /^\s+at /.test(l));
      equal(lines.length, 1, r.err);
      match(lines[0], msg);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: an edited-model save killed (SIGKILL) at random moments leaves a folder that loads, old or new", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rome-kill-" });
  const big: Gpt2Config = { ...EDIT_CONFIG, nEmbd: 256, nInner: 1024, nHead: 4, nLayer: 4 }; // ~13 MB of weights
  try {
    const src = join(dir, "src"), out = join(dir, "out");
    const wa = await writeModel(src, 1, big);
    const wb = randomGpt2Weights(big, 2);
    // The child alternates saving weights B and A (the source) over `out`, printing after each save.
    const child = `
      import { getEngine } from "${new URL("../engine/engine.ts", import.meta.url)}";
      import { loadGpt2Folder } from "${new URL("../engine/gpt2/folder.ts", import.meta.url)}";
      import { randomGpt2Weights } from "${new URL("./lib/gpt2_reference.ts", import.meta.url)}";
      import { saveEditedFolder } from "${new URL("../cli/edited_folder.ts", import.meta.url)}";
      const e = await getEngine();
      const { model } = await loadGpt2Folder(e, ${JSON.stringify(src)});
      const names = [...model.weights.keys()];
      const a = new Map(names.map((n, i) => [n, null]));
      for (const n of names) a.set(n, await model.w(n).read());
      const b = randomGpt2Weights(${JSON.stringify(big)}, 2);
      for (let i = 0; ; i++) {
        for (const n of names) {
          const t = model.w(n), up = e.upload((i % 2 ? a : b).get(n), t.shape);
          e.copy(up.buffer, 0, t.buffer, 0, t.byteLength);
          up.dispose();
        }
        await saveEditedFolder(${JSON.stringify(src)}, ${JSON.stringify(out)}, model, {});
        console.log("saved", i);
      }`;
    const weightsA = new Map([...wa].map(([n, v]) => [n, new Uint8Array(v.buffer.slice(0))]));
    const weightsB = new Map([...wb].map(([n, v]) => [n, new Uint8Array(v.buffer.slice(0))]));
    let seed = 7;
    for (let round = 0; round < 3; round++) {
      const p = new Deno.Command(Deno.execPath(), {
        args: ["eval", child],
        stdout: "piped",
        stderr: "null",
        env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
      }).spawn();
      const reader = p.stdout.getReader();
      const first = await reader.read(); // the first save finished: `out` exists from here on
      ok(first.value && new TextDecoder().decode(first.value).includes("saved"), "the child saved once");
      seed = (seed * 1103515245 + 12345) % 2147483648;
      await new Promise((r) => setTimeout(r, 50 + (seed % 1200)));
      p.kill("SIGKILL");
      await p.status;
      reader.releaseLock();
      await p.stdout.cancel().catch(() => {});
      let folder = out;
      try {
        await Deno.stat(out);
      } catch {
        // killed between the two renames of the swap: the previous copy waits under out.old-*
        folder = join(dir, [...Deno.readDirSync(dir)].find((e) => e.name.startsWith("out.old-"))!.name);
      }
      const got = await tensorBytes(folder);
      ok(
        sameTensors(got, weightsA) || sameTensors(got, weightsB),
        `round ${round}: a mix of old and new weights`,
      );
      for (const f of ["config.json", "vocab.json", "merges.txt"]) {
        ok((await Deno.stat(join(folder, f))).isFile, f);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
