// Interrupted writes (issue #16, item 5): `edit --out --patch`, `stats --out` and `train` killed with SIGKILL
// mid-write, as subprocesses on tiny inputs. After every kill: (a) the input folder (model, corpus, train
// config, hparams) holds the same files with the same bytes; (b) every output under its final name is
// either absent or complete and valid (an edited folder equal to the reference run's, a statistics file that
// decodes, a checkpoint that loads); (c) a rerun resumes or starts clean and ends with the reference's bytes.
//
// Kill points are of two kinds. Deterministic: ROME_DRILL_KILL_AT=POINT#N makes the process SIGKILL itself
// right after a named write step (engine/files.ts `killPoint`: a temp file half or wholly written, a temp
// folder complete, between the two renames of a folder swap, before the old copy is removed, the statistics
// file written but its checkpoint not yet removed); each run starts from the state the previous kill left.
// Timed: SIGKILL from outside at fractions of an uninterrupted run's wall time, for whatever lies between.
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { exists, readSafetensorsFile } from "../engine/files.ts";
import { decodePatch } from "../rome/patch.ts";
import { decodeSecondMoment } from "../rome/stats.ts";
import { CLI, SHARED_CACHES } from "./lib/cli_process.ts";
import {
  EDIT_CONFIG,
  layerOneStatsArgs,
  QUICK_ROME_HPARAMS,
  quickEditArgs,
  sensitiveWeights,
  tinyCorpusText,
  tinyVocab,
  writeTinyModel,
} from "./lib/fixtures.ts";

const DOCS = 350; // statistics groups of 100 documents: checkpoints at 100, 200, 300, the file at 350
const TIMED = [0.45, 0.7, 0.9]; // timed kills, as fractions of the reference run's wall time

// ------------------------------------------------------------------------------------------ fixtures

/** in/model (a GPT-2 folder), in/corpus (corpus.txt, vocab.json, merges.txt, train.json), in/hparams.json. */
async function setup(): Promise<
  { dir: string; input: string; model: string; corpus: string; hparams: string }
> {
  const dir = await Deno.makeTempDir({ prefix: "rome-killtest-" });
  const input = join(dir, "in"), model = join(input, "model"), corpusDir = join(input, "corpus");
  await writeTinyModel(model, { config: EDIT_CONFIG, weights: sensitiveWeights(EDIT_CONFIG, 31) });
  const { vocab, merges } = tinyVocab();
  await Deno.mkdir(corpusDir, { recursive: true });
  await Deno.writeTextFile(join(corpusDir, "vocab.json"), JSON.stringify(vocab));
  await Deno.writeTextFile(join(corpusDir, "merges.txt"), merges);
  const corpus = join(corpusDir, "corpus.txt");
  await Deno.writeTextFile(corpus, tinyCorpusText(DOCS));
  await Deno.writeTextFile(
    join(corpusDir, "train.json"),
    JSON.stringify({
      model: { n_layer: 2, n_head: 2, n_embd: 16, n_positions: 32 },
      train: { batch_size: 4, lr: 3e-3, warmup_steps: 2, steps: 6, checkpoint_every: 2, seed: 5 },
    }),
  );
  const hparams = join(input, "hparams.json");
  await Deno.writeTextFile(
    hparams,
    JSON.stringify(QUICK_ROME_HPARAMS),
  );
  await Deno.mkdir(join(dir, "out"));
  return { dir, input, model, corpus, hparams };
}

// ------------------------------------------------------------------------------------------ processes

/** The children keep the test's compiled-module and shader caches; only the ROME cache is theirs. */
const shared = SHARED_CACHES;

interface Run {
  code: number;
  killed: boolean;
  out: string;
  err: string;
  ms: number;
}

/** Runs the CLI; `at` arms a kill point (the run must die there), `afterMs` kills it from outside. */
async function cli(
  args: string[],
  env: Record<string, string>,
  kill: { at?: string; afterMs?: number } = {},
): Promise<Run> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { ...shared, ...env, ...(kill.at ? { ROME_DRILL_KILL_AT: kill.at } : {}) },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = kill.afterMs === undefined ? undefined : setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, kill.afterMs);
  const o = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  const r = {
    code: o.code,
    killed: o.signal === "SIGKILL",
    out: dec.decode(o.stdout),
    err: dec.decode(o.stderr),
    ms: performance.now() - t0,
  };
  if (kill.at) {
    ok(
      r.killed && r.err.includes(`kill point ${kill.at}`),
      `${kill.at}: not reached (exit ${r.code}): ${r.err}`,
    );
  } else if (kill.afterMs === undefined || !r.killed) equal(r.code, 0, `${args[0]}: ${r.err}`);
  return r;
}

/** The detail (path) a kill point printed. */
function killedAt(r: Run): string {
  return /kill point \S+ (.*)/.exec(r.err)![1];
}

// ------------------------------------------------------------------------------------------ files

async function sha256(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every file under `dir` (relative path → SHA-256), directories included as entries so none can appear. */
async function snapshot(
  dir: string,
  rel = "",
  into = new Map<string, string>(),
): Promise<Map<string, string>> {
  for (const e of [...Deno.readDirSync(join(dir, rel))].sort((a, b) => a.name.localeCompare(b.name))) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) {
      into.set(`${r}/`, "dir");
      await snapshot(dir, r, into);
    } else into.set(r, e.isFile ? await sha256(await Deno.readFile(join(dir, r))) : "not a file");
  }
  return into;
}

function list(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** A patch with its creation time blanked (the only thing two runs of the same edit disagree on). */
function normalPatch(bytes: Uint8Array, name: string) {
  const p = decodePatch(bytes, name);
  const raw = (a: Float32Array | Uint32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return { meta: { ...p.meta, created: "" }, arrays: [p.u, p.lambda, p.key, p.vStar, p.xor].map(raw) };
}

/** An edited folder as compared: every file's bytes, edits.json without its `applied` times, patches normalised. */
async function editedFolder(dir: string): Promise<Map<string, unknown>> {
  const files = new Map<string, unknown>();
  for (const [rel] of await snapshot(dir)) {
    if (rel.endsWith("/")) {
      files.set(rel, "dir");
      continue;
    }
    const bytes = await Deno.readFile(join(dir, rel));
    if (rel === "edits.json") {
      const log = JSON.parse(new TextDecoder().decode(bytes));
      for (const e of log.edits) e.applied = "";
      files.set(rel, log);
    } else if (rel.startsWith("edits/")) files.set(rel, normalPatch(bytes, rel));
    else files.set(rel, await sha256(bytes));
  }
  // and it loads: every tensor of model.safetensors is readable
  const st = await readSafetensorsFile(join(dir, "model.safetensors"));
  for (const n of st.tensors.keys()) st.raw(n);
  return files;
}

// ------------------------------------------------------------------------------------------ edit --out --patch

Deno.test("kill: edit --out --patch killed at every write step and at timed moments leaves the input untouched and no half-written output; a rerun writes the reference's bytes", async () => {
  const { dir, input, model, corpus, hparams } = await setup();
  try {
    const inputBefore = await snapshot(input);
    const env = { XDG_CACHE_HOME: join(dir, "cache") };
    const edit = (out: string, patch: string) => [
      ...quickEditArgs(corpus, hparams),
      "--model",
      model,
      "--json",
      "--out",
      out,
      "--patch",
      patch,
    ];
    // the reference (it also fills the cache: statistics and context templates, so the runs below only write
    // the patch and the folder; `stats` covers the cache's writes)
    const ref = await cli(edit(join(dir, "ref"), join(dir, "ref.safetensors")), env);
    const refFolder = await editedFolder(join(dir, "ref"));
    const refPatch = normalPatch(await Deno.readFile(join(dir, "ref.safetensors")), "ref");

    const outDir = join(dir, "out"), out = join(outDir, "edited"), patch = join(outDir, "edit.safetensors");
    const check = async (what: string, mustExist = false) => {
      deepStrictEqual(await snapshot(input), inputBefore, `${what}: the input folder changed`);
      if (mustExist || exists(out)) deepStrictEqual(await editedFolder(out), refFolder, `${what}: --out`);
      if (mustExist || exists(patch)) {
        deepStrictEqual(normalPatch(await Deno.readFile(patch), patch), refPatch, `${what}: --patch`);
      }
    };
    const steps: [string, RegExp | null][] = [
      ["atomic:partial#1", /edit\.safetensors$/], // the patch's temp file holds its header only
      ["atomic:written#1", /edit\.safetensors$/], // the patch's temp file complete, not renamed
      ["atomic:renamed#1", /edit\.safetensors$/], // the patch in place, the folder not begun
      ["atomic:partial#2", /edited\.stage-\w+\.tmp-\w+\/model\.safetensors$/], // the weights half written
      ["folder:staged#1", /edited\.stage-\w+\.tmp-\w+$/], // the weights folder complete, not moved to the stage
      ["edited:staged#1", /edited\.stage-\w+$/], // the stage holds everything; --out not there yet
      ["", null], // a complete rerun over the leftovers
      ["edited:moved-aside#1", /edited\.old-\w+$/], // between the two renames: --out is missing
      ["", null],
      ["edited:swapped#1", /edited$/], // the new folder in place, the old one not yet removed
    ];
    let warm = ref.ms; // the wall time of a run with the cache filled (the timed kills' scale)
    for (const [at, where] of steps) {
      const r = await cli(edit(out, patch), env, at ? { at } : {});
      if (where) ok(where.test(killedAt(r)), `${at} killed at ${killedAt(r)}`);
      else warm = r.ms;
      await check(at || "a complete rerun", !at);
    }
    for (const f of TIMED) {
      const r = await cli(edit(out, patch), env, { afterMs: f * warm });
      await check(`killed after ${(f * warm).toFixed(0)} ms (${r.killed ? "killed" : "finished"})`);
    }
    await cli(edit(out, patch), env);
    await check("the final rerun", true);
    // whatever the kills left beside the outputs is temp names only, never under a final name
    for (const name of list(outDir)) ok(/^edit(ed|\.safetensors)($|\.(stage|old|tmp)-)/.test(name), name);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------------------------------ stats --out

Deno.test("kill: stats --out killed at its checkpoints, its file and its copy resumes to the reference's bytes; the input is untouched", async () => {
  const { dir, input, model, corpus } = await setup();
  try {
    const inputBefore = await snapshot(input);
    // a checkpoint after every group of 100 documents
    const env = { XDG_CACHE_HOME: join(dir, "cache"), ROME_STATS_CHECKPOINT_SECONDS: "0" };
    // without --json: a resumed run says so on stderr ("resuming ... at document N of 350")
    const stats = (out: string, json = false) => [
      ...layerOneStatsArgs(model, corpus),
      "--samples",
      String(DOCS),
      ...(json ? ["--json"] : []),
      "--out",
      out,
    ];
    const ref = await cli(stats(join(dir, "ref.safetensors"), true), {
      ...env,
      XDG_CACHE_HOME: join(dir, "refcache"),
    });
    const refJson = JSON.parse(ref.out);
    const refBytes = await Deno.readFile(join(dir, "ref.safetensors"));
    deepStrictEqual(await Deno.readFile(refJson.path), refBytes, "--out is a copy of the cached file");
    const cached = refJson.path.replace(join(dir, "refcache"), join(dir, "cache")) as string;
    const partial = cached.replace(/\.safetensors$/, ".partial.safetensors");
    const out = join(dir, "out", "stats.safetensors");

    const check = async (what: string, mustExist = false) => {
      deepStrictEqual(await snapshot(input), inputBefore, `${what}: the input folder changed`);
      for (const f of [cached, out]) {
        if (mustExist || exists(f)) deepStrictEqual(await Deno.readFile(f), refBytes, `${what}: ${f}`);
      }
      if (exists(partial)) {
        const p = decodeSecondMoment(await Deno.readFile(partial), partial);
        ok(
          p.count > 0 && [100, 200, 300].includes(p.info.cursor!),
          `${what}: checkpoint at ${p.info.cursor}`,
        );
      }
    };
    const reset = async () => {
      for (const f of [cached, partial, out]) await Deno.remove(f).catch(() => {});
    };
    // [kill point, what it must have hit, the document the run must resume from]
    const steps: [string, RegExp, number][] = [
      ["atomic:written#2", /partial\.safetensors$/, 0], // checkpoint 100 saved, 200 written but not renamed
      ["atomic:partial#2", /partial\.safetensors$/, 100], // checkpoint 200 saved, 300 half written
      ["stats:final-written#1", /_350\.safetensors$/, 200], // the file in place, the checkpoint not yet removed
      ["atomic:written#1", /stats\.safetensors$/, -1], // the cached file copied to --out, not renamed
    ];
    for (const [at, where, from] of steps) {
      const r = await cli(stats(out), env, { at });
      ok(where.test(killedAt(r)), `${at} killed at ${killedAt(r)}`);
      ok(from <= 0 || r.err.includes(`at document ${from} of ${DOCS}`), `${at}: did not resume at ${from}`);
      await check(at);
    }
    await cli(stats(out), env);
    await check("a rerun", true);
    await reset();
    for (const f of TIMED) {
      const r = await cli(stats(out), env, { afterMs: f * ref.ms });
      await check(`killed after ${(f * ref.ms).toFixed(0)} ms (${r.killed ? "killed" : "finished"})`);
    }
    const last = JSON.parse((await cli(stats(out, true), env)).out);
    await check("the final rerun", true);
    equal(last.count, refJson.count);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------------------------------ train

Deno.test("kill: train killed inside its checkpoints resumes (or starts over) to the reference's weights; the corpus is untouched", async () => {
  const { dir, input, corpus } = await setup();
  try {
    const inputBefore = await snapshot(input);
    const config = join(input, "corpus", "train.json");
    const train = (out: string) => ["train", "--config", config, "--corpus", corpus, "--out", out, "--json"];
    const ref = await cli(train(join(dir, "ref")), {});
    const refModel = await Deno.readFile(join(dir, "ref", "model.safetensors"));
    const refOptim = await Deno.readFile(join(dir, "ref", "optimizer.safetensors"));
    const refLosses = JSON.parse(await Deno.readTextFile(join(dir, "ref", "trainer_state.json"))).losses;
    const out = join(dir, "out", "trained");

    /** A checkpoint folder is complete: every file, every tensor readable, its losses the reference's; its step. */
    const checkpoint = async (folder: string, what: string): Promise<number> => {
      deepStrictEqual(
        list(folder),
        [
          "config.json",
          "merges.txt",
          "model.safetensors",
          "optimizer.safetensors",
          "trainer_state.json",
          "vocab.json",
        ],
        what,
      );
      const state = JSON.parse(await Deno.readTextFile(join(folder, "trainer_state.json")));
      ok([2, 4, 6].includes(state.step), `${what}: checkpoint at step ${state.step}`);
      deepStrictEqual(state.losses, refLosses.slice(0, state.step), `${what}: losses`);
      const m = await readSafetensorsFile(join(folder, "model.safetensors"));
      equal(m.metadata.trained_steps, String(state.step), what);
      const o = await readSafetensorsFile(join(folder, "optimizer.safetensors"));
      for (const st of [m, o]) for (const n of st.tensors.keys()) st.raw(n);
      equal(o.tensors.size, 2 * m.tensors.size, what);
      return state.step;
    };
    /**
     * The input untouched; --out, if there, a complete checkpoint (at the reference's end with `finished`);
     * if not, any previous checkpoint a killed swap moved aside is complete. Returns the step a rerun resumes at
     * (0 without --out: a rerun starts over, and ends with the same weights).
     */
    const check = async (what: string, finished = false): Promise<number> => {
      deepStrictEqual(await snapshot(input), inputBefore, `${what}: the input folder changed`);
      if (exists(out)) {
        const step = await checkpoint(out, what);
        if (finished) {
          equal(step, 6, what);
          deepStrictEqual(await Deno.readFile(join(out, "model.safetensors")), refModel, `${what}: weights`);
          deepStrictEqual(
            await Deno.readFile(join(out, "optimizer.safetensors")),
            refOptim,
            `${what}: optimizer`,
          );
        }
        return step;
      }
      ok(!finished, `${what}: no --out`);
      for (const name of list(join(dir, "out")).filter((n) => n.startsWith("trained.old-"))) {
        await checkpoint(join(dir, "out", name), `${what}: ${name}`);
      }
      return 0;
    };
    // [kill point, what it must have hit, the step of the checkpoint the run resumes from]
    const steps: [string, RegExp, number][] = [
      ["folder:partial#1", /trained\.tmp-\w+$/, 0], // checkpoint 2: its temp folder holds the weights only
      ["folder:moved-aside#1", /trained\.old-\w+$/, 0], // checkpoint 4: between the renames, --out missing
      ["folder:staged#1", /trained\.tmp-\w+$/, 0], // checkpoint 2 staged, not swapped in
      ["folder:swapped#1", /trained$/, 0], // checkpoint 4 in place, checkpoint 2 not yet removed
      ["atomic:written#2", /optimizer\.safetensors$/, 4], // checkpoint 6: optimizer state written, not renamed
    ];
    let resumeAt = 0;
    for (const [at, where, from] of steps) {
      equal(resumeAt, from, `${at} resumes at step ${from}`);
      const r = await cli(train(out), {}, { at });
      ok(where.test(killedAt(r)), `${at} killed at ${killedAt(r)}`);
      // the folder it staged is the checkpoint after the one it resumed from
      if (at.startsWith("folder:staged")) {
        equal(await checkpoint(killedAt(r), at), from + 2, `${at}: staged step`);
      }
      resumeAt = await check(at);
    }
    await cli(train(out), {});
    await check("a resumed run", true);
    for (const name of list(join(dir, "out"))) await Deno.remove(join(dir, "out", name), { recursive: true });
    for (const f of TIMED) {
      const r = await cli(train(out), {}, { afterMs: f * ref.ms });
      await check(`killed after ${(f * ref.ms).toFixed(0)} ms (${r.killed ? "killed" : "finished"})`);
    }
    await cli(train(out), {});
    await check("the final rerun", true);

    // --out must never be a folder holding inputs: every checkpoint replaces the whole folder
    for (const bad of [join(input, "corpus"), input, join(input, "model")]) {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, ...train(bad)],
        env: shared,
        stdout: "null",
        stderr: "piped",
      }).output();
      equal(r.code, 2, new TextDecoder().decode(r.stderr));
    }
    deepStrictEqual(await snapshot(input), inputBefore, "train --out <an input folder> changed it");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
