// deno task eval: an editing method evaluated as the ROME paper does (CounterFact, zsRE), case files that
// resume, sharded runs and their merge into one report.
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { exists, writeFileAtomic } from "../engine/files.ts";
import { ENGINE_VERSION } from "../engine/version.ts";
import {
  type AttributeSnippets,
  type EvalDataset,
  parseAttributeSnippets,
  parseDataset,
  recordsWithoutSnippets,
  snippetTexts,
} from "../eval/datasets.ts";
import { defaultFtHparams, parseFtHparams } from "../eval/finetune.ts";
import {
  checkStoredRun,
  editGroups,
  type EvalCaseStore,
  type PreStore,
  RunConflictError,
  runEvaluation,
} from "../eval/harness.ts";
import type { GenerationTests } from "../eval/measure.ts";
import {
  coverageNote,
  MANIFEST_NAME,
  manifestName,
  type MergeFolder,
  parseManifest,
  planMerge,
  type ShardManifest,
  shardManifest,
} from "../eval/merge.ts";
import {
  canonicalJson,
  type CaseMetrics,
  type CaseResult,
  type RunIdentity,
  runKey,
  shardItems,
  summarize,
} from "../eval/metrics.ts";
import { type EditMethod, fineTuneMethod, type MethodName, METHODS, romeMethod } from "../eval/methods.ts";
import { REFERENCE_GENERATION } from "../eval/probes.ts";
import {
  htmlReport,
  jsonRecord,
  markdownReport,
  type ReportRun,
  runLabel,
  textTable,
} from "../eval/report.ts";
import { TfidfVectorizer } from "../eval/text.ts";
import { defaultHparams } from "../rome/hparams.ts";
import { checkLayer } from "../rome/compute.ts";
import { intOption, MAX_SEED, MODEL_OPTION, parseCommand, UsageError } from "./args.ts";
import { romeCacheDir } from "./cache.ts";
import { baseModelHash } from "./edited_folder.ts";
import { sha16 } from "../engine/digest.ts";
import { readBytes, readJsonFile } from "./files.ts";
import { refuseStatsOptions, statsRequest } from "./layer_stats.ts";
import { loadModel, modelDir } from "./open.ts";
import { fmtSeconds, Progress } from "./progress.ts";
import { DEFAULT_DATASET, ROME_OPTIONS, romeFromFiles, romeHparams } from "./rome_setup.ts";
import { resolveShard } from "./shard.ts";

/** The method evaluated when --method is not given. */
const DEFAULT_EVAL_METHOD: MethodName = "rome";
/** Where runs go without --out: out/eval/<dataset>-<method>[-seq<N>]. */
const DEFAULT_EVAL_OUT = fileURLToPath(new URL("../out/eval", import.meta.url));
/** Seed of the sampled generations (and of ROME's context templates). */
const DEFAULT_EVAL_SEED = 1;

const EVAL_USAGE =
  `deno task eval [--model DIR] [--dataset FILE] [--method none|rome|ft|ft-l] [--limit N] [--shard i/n|auto]
               [--out DIR] [--json] [--sequential N] [--hparams FILE] [--layer L] [--seed S]
               [--snippets FILE] [--tfidf DIR] [--generation-length N]
               [--variant rome|r-rome] [--stats FILE | --npz FILE] [--corpus FILE|DIR] [--samples N]
deno task eval --merge DIR... [--out DIR] [--json] [--allow-missing] [--sweep]
  Evaluates an editing method as the ROME paper does (CounterFact Table 4, zsRE Table 1). For each record
  of --dataset (default ${DEFAULT_DATASET}; a CounterFact or a zsRE
  file, told apart by its records) the edit is applied to the clean model and timed, the tests run
  ("post"), the edit is reverted bit for bit and the tests run again ("pre"). CounterFact: ES/EM (rewrite
  prompt), PS/PM (paraphrases), NS/NM (neighbourhood) from length-normalised target NLLs; GE (n-gram
  entropy) and RS (tf-idf similarity to the new object's attribute snippets) of texts sampled to
  --generation-length tokens (default ${REFERENCE_GENERATION.maxOutLen}; 0 skips both); S = harmonic mean of ES, PS, NS. zsRE:
  teacher-forced top-1 accuracy (Efficacy, Paraphrase, Specificity).
  --method: none (the unedited model), rome (default; hparams as deno task edit), ft / ft-l (fine-tuning
  of h.L.mlp.c_proj.weight, unconstrained / L∞-bounded; hparams eval/hparams/ft[-l]-<model>.json or
  --hparams FILE). --limit N takes the first N records (default all); --shard i/n runs every n-th record
  from the i-th (several processes or machines; --shard auto or auto/N takes i and n from a Slurm array,
  a Kubernetes Indexed Job or ROME_SHARD_INDEX/ROME_SHARD_COUNT); each shard (0/1 when unsharded) first
  writes shard_<i>_of_<n>.json beside its case files: the run, the records it covers, its case ids.
  --merge DIR... combines folders into one table: the shards of each run, refused unless they are every
  index 0..n-1 once, with the same n and records, each with all its cases (--allow-missing merges what is
  there and names the missing shards and cases in the output and summary.json); and runs of different
  methods. All runs of a table share model, dataset, engine version and generation settings; one method's
  runs may differ in --sequential (a row each, and the sequential curve), and in hparams only with --sweep
  (a row each, labelled by hparams hash). A refused merge writes nothing. --sequential N applies N edits
  one after another and tests them all on the model carrying them (then reverts them all). Snippets:
  --snippets FILE, default attribute_snippets.json beside the dataset; the tf-idf idf/vocabulary: --tfidf
  DIR with the reference's idf.npy and tfidf_vocab.json (default: beside the dataset if both are there),
  else fitted on all snippet texts. Writes case_<id>.json per case (the reference's {case_id,
  requested_rewrite, time, post, pre}), summary.json, report.md and report.html to --out (default
  ${DEFAULT_EVAL_OUT}/<dataset>-<method>[-seq<N>]); cases already there from the same run (method,
  hparams, model, settings, engine version) are skipped, so an interrupted run resumes; another run's
  cases there are refused. The unedited model's results are cached per model in ${
    romeCacheDir("<model hash>")
  }/eval-pre.`;

const EVAL_OPTIONS = {
  ...MODEL_OPTION,
  ...ROME_OPTIONS,
  dataset: { type: "string" },
  method: { type: "string" },
  limit: { type: "string" },
  shard: { type: "string" },
  out: { type: "string" },
  json: { type: "boolean" },
  sequential: { type: "string" },
  snippets: { type: "string" },
  tfidf: { type: "string" },
  "generation-length": { type: "string" },
  merge: { type: "boolean" },
  "allow-missing": { type: "boolean" },
  sweep: { type: "boolean" },
} as const;

/** The options of `--merge` (the rest are a run's). */
const MERGE_OPTIONS = ["merge", "out", "json", "allow-missing", "sweep"];

export async function cmdEval(args: string[]): Promise<void> {
  const { values, positionals } = parseCommand(args, EVAL_OPTIONS, EVAL_USAGE, true);
  if (values.merge) {
    const unused = Object.keys(values).find((k) => values[k] !== undefined && !MERGE_OPTIONS.includes(k));
    if (unused !== undefined) {
      throw new UsageError(`--${unused} is not used by --merge (it reads results folders)`);
    }
    return await evalMerge(positionals, values);
  }
  if (positionals.length > 0) {
    throw new UsageError(`unexpected argument '${positionals[0]}' (folders are given to --merge)`);
  }
  for (const k of ["allow-missing", "sweep"]) {
    if (values[k as keyof typeof values] !== undefined) throw new UsageError(`--${k} is for --merge`);
  }
  return await evalRun(values);
}

const caseFile = (dir: string, id: number) => join(dir, `case_${id}.json`);

/** Every case_<id>.json and shard manifest of a results folder. */
async function readFolder(dir: string): Promise<MergeFolder> {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => e.name).sort();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`results folder '${dir}' not found`);
    throw e;
  }
  const cases: CaseResult[] = [], manifests: ShardManifest[] = [];
  for (const name of names) {
    if (/^case_\d+\.json$/.test(name)) cases.push(await readCase(join(dir, name)));
    if (MANIFEST_NAME.test(name)) {
      manifests.push(parseManifest(await readJsonFile(join(dir, name), "shard manifest"), join(dir, name)));
    }
  }
  return { dir, cases, manifests };
}

/** The case files of one run in a folder. */
async function runCases(dir: string, key: string): Promise<CaseResult[]> {
  return (await readFolder(dir)).cases.filter((c) => runKey(c.run) === key);
}

async function readCase(path: string): Promise<CaseResult> {
  const j = await readJsonFile(path, "case file") as CaseResult;
  if (!j || typeof j !== "object" || !Number.isInteger(j.case_id) || !j.run || !j.pre || !j.post) {
    throw new UsageError(`${path} is not a case file of deno task eval (no case_id, run, pre or post)`);
  }
  return j;
}

/** Case files in a folder: what the harness resumes from and writes to. */
function caseStore(dir: string): EvalCaseStore {
  return {
    get: async (id) => exists(caseFile(dir, id)) ? await readCase(caseFile(dir, id)) : undefined,
    put: async (r) =>
      await writeFileAtomic(caseFile(dir, r.case_id), [
        new TextEncoder().encode(JSON.stringify(r, null, 1) + "\n"),
      ]),
  };
}

/** "pre" results of one model, dataset and test settings, shared by every method's run. */
function preStore(dir: string): PreStore {
  return {
    get: async (id) => {
      const path = caseFile(dir, id);
      if (!exists(path)) return undefined;
      try {
        return (JSON.parse(await Deno.readTextFile(path)) as { pre: CaseMetrics }).pre;
      } catch {
        return undefined; // recomputed and rewritten
      }
    },
    put: async (id, pre) => {
      await Deno.mkdir(dir, { recursive: true });
      await writeFileAtomic(caseFile(dir, id), [
        new TextEncoder().encode(JSON.stringify({ case_id: id, pre }) + "\n"),
      ]);
    },
  };
}

/** The tf-idf of the RS test: the reference's idf.npy + tfidf_vocab.json when given or beside the dataset, else fitted. */
async function evalVectorizer(
  opts: Record<string, unknown>,
  datasetPath: string,
  snips: AttributeSnippets,
  snipsHash: string,
): Promise<{ vectorizer: TfidfVectorizer; id: string }> {
  const dir = (opts.tfidf as string | undefined) ?? dirname(datasetPath);
  const idfPath = join(dir, "idf.npy"), vocabPath = join(dir, "tfidf_vocab.json");
  if (exists(idfPath) && exists(vocabPath)) {
    const idfBytes = await readBytes(idfPath, "idf file");
    const vocabBytes = await readBytes(vocabPath, "tf-idf vocabulary");
    let vocab: unknown;
    try {
      vocab = JSON.parse(new TextDecoder().decode(vocabBytes));
    } catch (e) {
      throw new UsageError(`${vocabPath}: invalid JSON (${(e as Error).message})`);
    }
    try {
      const vectorizer = TfidfVectorizer.fromReference(vocab, idfBytes, dir);
      return { vectorizer, id: `file:${await sha16(idfBytes)}:${await sha16(vocabBytes)}` };
    } catch (e) {
      if (e instanceof RangeError) throw new UsageError(e.message);
      throw e;
    }
  }
  if (opts.tfidf !== undefined) throw new UsageError(`--tfidf ${dir}: needs idf.npy and tfidf_vocab.json`);
  return { vectorizer: TfidfVectorizer.fit(snippetTexts(snips)), id: `fit:${snipsHash}` };
}

async function evalRun(opts: Record<string, unknown>): Promise<void> {
  const json = Boolean(opts.json);
  const methodName = (opts.method as string | undefined ?? DEFAULT_EVAL_METHOD) as MethodName;
  if (!METHODS.includes(methodName)) {
    throw new UsageError(`--method must be one of ${METHODS.join(", ")} (got '${methodName}')`);
  }
  const sequential = intOption(opts, "sequential", 1, 1);
  if (methodName === "none" && sequential > 1) {
    throw new UsageError("--sequential needs an editing method, not none");
  }
  const { index, count } = resolveShard(opts.shard) ?? { index: 0, count: 1 };
  const shard = { index, count };
  const seed = intOption(opts, "seed", DEFAULT_EVAL_SEED, 0, MAX_SEED);
  const genLength = intOption(opts, "generation-length", REFERENCE_GENERATION.maxOutLen);
  const layerOverride = opts.layer === undefined ? undefined : intOption(opts, "layer", 0);
  // options of another method would be ignored: refused, before anything is loaded
  if (methodName === "none") {
    for (const k of ["hparams", "layer", "variant"]) {
      if (opts[k] !== undefined) throw new UsageError(`--${k} is for an editing method, not --method none`);
    }
  }
  if (methodName !== "rome" && opts.variant !== undefined) {
    throw new UsageError(`--variant is for --method rome, not ${methodName}`);
  }
  const statsFrom = methodName === "rome" ? statsRequest(opts) : {};
  if (methodName !== "rome") refuseStatsOptions(opts, `--method ${methodName}`);

  const datasetPath = (opts.dataset as string | undefined) ?? DEFAULT_DATASET;
  const datasetBytes = await readBytes(datasetPath, "dataset");
  let dataset: EvalDataset;
  try {
    dataset = parseDataset(JSON.parse(new TextDecoder().decode(datasetBytes)), datasetPath);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UsageError(`dataset '${datasetPath}': invalid JSON (${e.message})`);
    }
    throw e;
  }
  const datasetRecords = dataset.records.length;
  if (opts.limit !== undefined) {
    dataset = {
      ...dataset,
      records: dataset.records.slice(0, intOption(opts, "limit", 0, 1)),
    } as EvalDataset;
  }

  let generation: GenerationTests | undefined;
  let tfidfId = "";
  const generationOptions = ["snippets", "tfidf", ...dataset.kind === "zsre" ? ["generation-length"] : []];
  for (const k of generationOptions) {
    if (opts[k] !== undefined && (dataset.kind === "zsre" || genLength === 0)) {
      throw new UsageError(
        `--${k} is for the generation tests (GE, RS) of CounterFact, which ${
          dataset.kind === "zsre" ? "a zsRE dataset does not have" : "--generation-length 0 skips"
        }`,
      );
    }
  }
  if (dataset.kind === "counterfact" && genLength > 0) {
    const snipsPath = (opts.snippets as string | undefined) ??
      join(dirname(datasetPath), "attribute_snippets.json");
    if (!exists(snipsPath)) {
      throw new UsageError(
        `no attribute snippets at ${snipsPath} (RS needs them): give --snippets FILE, or --generation-length 0 to skip GE and RS`,
      );
    }
    const snipsBytes = await readBytes(snipsPath, "snippets file");
    const snips = parseAttributeSnippets(JSON.parse(new TextDecoder().decode(snipsBytes)), snipsPath);
    const missing = recordsWithoutSnippets(dataset.records, snips);
    if (missing.length > 0) {
      const rw = missing[0].requested_rewrite;
      throw new UsageError(
        `${snipsPath} has no snippets for case ${
          missing[0].case_id
        }'s new object (${rw.relation_id}, ${rw.target_new.id})` +
          `${missing.length > 1 ? ` nor for ${missing.length - 1} more case(s)` : ""}; RS needs them`,
      );
    }
    const tf = await evalVectorizer(opts, datasetPath, snips, await sha16(snipsBytes));
    tfidfId = tf.id;
    generation = {
      settings: { maxOutLen: genLength, topK: REFERENCE_GENERATION.topK, seed },
      snippets: snips,
      vectorizer: tf.vectorizer,
    };
  }

  const dir = modelDir(opts);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const base = baseModelHash(dir, model);
  if (layerOverride !== undefined) checkLayer(model, layerOverride);
  let method: EditMethod | null = null;
  let disposeStats = () => {};
  if (methodName === "rome") {
    const { hparams: hp } = await romeHparams(opts, model);
    const { layer, variant, secondMoment: stats, templates } = await romeFromFiles(model, tokenizer, {
      dir,
      baseHash: base,
      hparams: hp,
      layer: layerOverride,
      variant: opts.variant as string | undefined,
      statsRequest: statsFrom,
      refuseStats: () =>
        refuseStatsOptions(opts, `these hparams (${opts.hparams ?? "the default"}: mom2_adjustment false)`),
      seed,
      quiet: json,
    });
    disposeStats = () => stats?.C.dispose();
    method = romeMethod({
      hparams: hp,
      layer,
      variant,
      templates,
      secondMoment: stats ? { C: stats.C, count: stats.count } : null,
      statsId: stats?.id ?? "identity",
      templateSeed: seed,
    });
  } else if (methodName === "ft" || methodName === "ft-l") {
    let hp = opts.hparams !== undefined
      ? parseFtHparams(
        await readJsonFile(opts.hparams as string, "--hparams"),
        opts.hparams as string,
        methodName === "ft-l",
      )
      : defaultFtHparams(methodName, model.config, defaultHparams(model.config).hparams.layers[0]).hparams;
    if (layerOverride !== undefined) hp = { ...hp, layers: [layerOverride] };
    checkLayer(model, hp.layers[0]);
    method = fineTuneMethod(methodName, hp);
  }

  try {
    const run: RunIdentity = {
      dataset_kind: dataset.kind,
      dataset_hash: await sha16(datasetBytes),
      method: methodName,
      hparams_hash: method ? await sha16(canonicalJson(method.settings)) : "none",
      model_hash: model.hash,
      sequential,
      engine_version: ENGINE_VERSION,
      generation: {
        max_out_len: generation ? genLength : 0,
        top_k: REFERENCE_GENERATION.topK,
        seed,
        tfidf: tfidfId,
      },
    };
    const slug = basename(datasetPath).replace(/\.json$/i, "");
    const out = (opts.out as string | undefined) ??
      join(DEFAULT_EVAL_OUT, `${slug}-${methodName}${sequential > 1 ? `-seq${sequential}` : ""}`);
    await Deno.mkdir(out, { recursive: true });
    const { method: _m, hparams_hash: _h, sequential: _s, ...preIdentity } = run;
    const pre = preStore(join(romeCacheDir(model.hash), "eval-pre", await sha16(canonicalJson(preIdentity))));

    // The bar counts only the cases still to compute, so that its ETA is the remaining work's.
    const store = caseStore(out);
    const key = runKey(run);
    let found = 0;
    // another run's cases or manifest in the folder are refused before anything is written
    for (
      const r of shardItems(editGroups(dataset.records as { case_id: number }[], sequential), shard).flat()
    ) {
      if (!exists(caseFile(out, r.case_id))) continue;
      checkStoredRun(await readCase(caseFile(out, r.case_id)), key);
      found++;
    }
    const manifestPath = join(out, manifestName(shard));
    if (exists(manifestPath)) {
      const prev = parseManifest(await readJsonFile(manifestPath, "shard manifest"), manifestPath);
      if (runKey(prev.run) !== key) {
        throw new RunConflictError(
          `${manifestPath} is shard ${shard.index}/${shard.count} of another run (method ${prev.run.method}); write this run elsewhere`,
        );
      }
    }
    // written before the cases, so that an interrupted shard reads as incomplete, not as missing
    const manifest = shardManifest(run, shard, dataset.records.map((r) => r.case_id), datasetRecords);
    await writeFileAtomic(manifestPath, [new TextEncoder().encode(JSON.stringify(manifest, null, 1) + "\n")]);
    const mine = shardItems(dataset.records as unknown[], shard, sequential).length;
    const bar = new Progress(
      `eval ${methodName}${sequential > 1 ? ` (${sequential} in sequence)` : ""}`,
      mine - found,
      json || mine === found,
    );
    let computedCount = 0;
    const t0 = performance.now();
    const res = await runEvaluation({
      model,
      tokenizer,
      dataset,
      method,
      run,
      generation,
      shard,
      store,
      preStore: pre,
      onCase: (_done, _total, computed, r) => {
        if (computed) bar.update(Math.min(bar.total, ++computedCount), `case ${r.case_id}`);
      },
    });
    const computedSeconds = (performance.now() - t0) / 1000;
    bar.done();

    const inDir = await runCases(out, key);
    const report: ReportRun = { label: runLabel(run), run, summary: summarize(inDir), cases: inDir };
    const title = `deno task eval: ${runLabel(run)} on ${basename(datasetPath)}`;
    const timing = res.results.filter((r) => r.seconds && (r.seconds.post > 0 || r.seconds.pre > 0));
    const perCase = (k: "edit" | "post" | "pre") =>
      timing.length ? timing.reduce((a, r) => a + r.seconds![k], 0) / timing.length : 0;
    const record = jsonRecord(report, {
      out,
      computed: res.computed,
      skipped: res.skipped,
      shard: `${shard.index}/${shard.count}`,
      seconds_per_case: { edit: perCase("edit"), post_tests: perCase("post"), pre_tests: perCase("pre") },
    });
    const enc = new TextEncoder();
    await writeFileAtomic(join(out, "summary.json"), [
      enc.encode(JSON.stringify({ ...record, full: report.summary }, null, 1) + "\n"),
    ]);
    await writeFileAtomic(join(out, "report.md"), [enc.encode(markdownReport([report], title))]);
    await writeFileAtomic(join(out, "report.html"), [enc.encode(htmlReport([report], title))]);
    if (json) return console.log(JSON.stringify(record));
    console.log(textTable([report]));
    console.log(
      `${res.results.length} case(s) of this shard: ${res.computed} computed${
        res.skipped ? `, ${res.skipped} already in ${out}` : ""
      }; ` +
        `the table covers the ${inDir.length} case(s) of this run in ${out}`,
    );
    if (res.computed > 0) {
      console.log(
        `per case: edit ${fmtSeconds(perCase("edit"))}, post tests ${
          fmtSeconds(perCase("post"))
        }, pre tests ` +
          `${fmtSeconds(perCase("pre"))} (${fmtSeconds(computedSeconds / res.computed)} in all)`,
      );
    }
    console.log(`wrote ${join(out, "report.md")}, report.html and summary.json`);
  } finally {
    disposeStats();
  }
}

/**
 * `--merge DIR...`: the case files of several folders, one table row per run (shards of a run combine), after
 * planMerge has checked that they belong together; nothing is written when it refuses.
 */
async function evalMerge(dirs: string[], opts: Record<string, unknown>): Promise<void> {
  if (dirs.length === 0) {
    throw new UsageError("--merge needs at least one results folder: deno task eval --merge DIR...");
  }
  const folders: MergeFolder[] = [];
  for (const dir of dirs) folders.push(await readFolder(dir));
  const merged = planMerge(folders, {
    allowMissing: Boolean(opts["allow-missing"]),
    sweep: Boolean(opts.sweep),
  });
  const labels = merged.map((g) => runLabel(g.run));
  const runs: ReportRun[] = merged.map((g, i) => ({
    label: labels.filter((l) => l === labels[i]).length > 1
      ? `${labels[i]} [${g.run.hparams_hash.slice(0, 6)}]`
      : labels[i],
    run: g.run,
    summary: summarize(g.cases),
    cases: g.cases,
  }));
  const notes = merged.map((g, i) => coverageNote(runs[i].label, g.coverage)).filter((n) => n !== "");
  const title = `deno task eval --merge (${dirs.length} folder${dirs.length > 1 ? "s" : ""})`;
  const records = runs.map((r, i) =>
    jsonRecord(r, { label: r.label, folders: merged[i].dirs, shards: merged[i].coverage })
  );
  if (opts.out !== undefined) {
    const out = opts.out as string;
    await Deno.mkdir(out, { recursive: true });
    const enc = new TextEncoder();
    await writeFileAtomic(join(out, "summary.json"), [
      enc.encode(
        JSON.stringify(
          runs.length === 1
            ? { ...records[0], full: runs[0].summary }
            : records.map((r, i) => ({ ...r, full: runs[i].summary })),
          null,
          1,
        ) + "\n",
      ),
    ]);
    const md = markdownReport(runs, title) + (notes.length ? `\nNot merged: ${notes.join(". ")}.\n` : "");
    await writeFileAtomic(join(out, "report.md"), [enc.encode(md)]);
    await writeFileAtomic(join(out, "report.html"), [enc.encode(htmlReport(runs, title))]);
  }
  if (opts.json) return console.log(JSON.stringify(records.length === 1 ? records[0] : records));
  console.log(textTable(runs));
  for (const n of notes) console.log(`note: ${n}`);
  const cases = merged.reduce((a, g) => a + g.cases.length, 0);
  console.log(
    `${cases} case(s) from ${dirs.length} folder(s), ${runs.length} run(s)${
      opts.out !== undefined
        ? `; wrote ${join(opts.out as string, "report.md")}, report.html and summary.json`
        : ""
    }`,
  );
}
