// deno task edit: one ROME edit with its before/after measurements, saved as a patch and/or an edited model
// folder; --apply and --revert replay or undo a patch bit for bit; --list shows a folder's edits.
import { writeFileAtomic } from "../engine/files.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { type CounterFactCase, counterFactEdit } from "../rome/cases.ts";
import { checkLayer } from "../rome/compute.ts";
import { executeRome, type RomeEdit } from "../rome/edit.ts";
import {
  DEFAULT_GENERATION_TOKENS,
  evaluateRequest,
  type EvaluationPrompts,
  type TargetProbabilities,
} from "../rome/evaluate.ts";
import type { RomeHparams } from "../rome/hparams.ts";
import {
  buildPatch,
  checkApply,
  checkRevert,
  decodePatch,
  emptyEditsLog,
  logEntry,
  matrixHash,
  modelContentHash,
  patchBytes,
  PatchError,
  readMatrix,
  rewriteProbabilities,
  xorMatrix,
} from "../rome/patch.ts";
import { fillTemplate, normalizeRequest, type RequestInput } from "../rome/request.ts";
import { romeVariant } from "../rome/setup.ts";
import { DEFAULT_TEMPLATE_SEED } from "../rome/templates.ts";
import { fmt } from "../tracing/render.ts";
import { decimalValue, intOption, MAX_SEED, MODEL_OPTION, parse, requireText, UsageError } from "./args.ts";
import { readSuggestedLayer } from "./cache.ts";
import { baseModelHash, editOutputDir, readEditsLog, saveEditedFolder } from "./edited_folder.ts";
import { readBytes, readJsonFile } from "./files.ts";
import { refuseStatsOptions, statsRequest } from "./layer_stats.ts";
import { loadModel, modelDir } from "./open.ts";
import { fmtSeconds, Progress } from "./progress.ts";
import { DEFAULT_DATASET, ROME_OPTIONS, romeFromFiles, romeHparams } from "./rome_setup.ts";

/** The CounterFact case edited with no arguments. */
const DEFAULT_CASE = 0;

const EDIT_USAGE =
  `deno task edit [--model DIR] --prompt "{} is located in" --subject S --target T [--target-true T]
                [--layer L|auto] [--hparams FILE] [--variant rome|r-rome] [--seed S]
                [--stats FILE | --npz FILE] [--corpus FILE|DIR] [--samples N] [--damping λ]
                [--out DIR | --in-place] [--patch FILE] [--max-tokens N] [--json]
deno task edit [--model DIR] --case ID [--dataset FILE] ...     (a CounterFact record)
deno task edit --apply PATCH  --model DIR (--out DIR2 | --in-place) [--json]
deno task edit --revert PATCH --model DIR (--out DIR2 | --in-place) [--json]
deno task edit --list --model DIR [--json]
  Rewrites one fact with ROME (Meng et al. 2022): the subject's MLP key k̄ at layer L (averaged over
  context prefixes sampled from the model, seeded by --seed) is mapped to a value v* optimised so that
  the model says T after the prompt; the change is one rank-one update of mlp.c_proj at L. Prints the
  probabilities of the new and the true target on the prompt, its paraphrases and neighbours before and
  after, and greedy generations. --case takes all of that from a CounterFact record of --dataset
  (default ${DEFAULT_DATASET}). With no arguments: case ${DEFAULT_CASE} on the bundled model.
  --layer auto uses causal tracing's suggestion for this model (deno task trace --facts). Hyperparameters:
  --hparams FILE, else rome/hparams/<model>.json chosen by the model's shape. --variant r-rome uses the
  averaged key in the update's denominator too (R-ROME, Gupta et al. 2024). C: see deno task stats.
  --out DIR saves the edited model (a complete Hugging Face folder, written atomically, with edits.json
  and a copy of the patch); --patch FILE writes the edit as a patch. The input folder is only changed
  with --in-place. --apply / --revert replay or undo a patch bit for bit (the last edit of a matrix must
  be reverted first); --list shows the edits recorded in a folder.`;

const EDIT_OPTIONS = {
  ...MODEL_OPTION,
  ...ROME_OPTIONS,
  prompt: { type: "string" },
  subject: { type: "string" },
  target: { type: "string" },
  "target-true": { type: "string" },
  case: { type: "string" },
  dataset: { type: "string" },
  damping: { type: "string" },
  out: { type: "string" },
  "in-place": { type: "boolean" },
  patch: { type: "string" },
  "max-tokens": { type: "string" },
  json: { type: "boolean" },
  apply: { type: "string" },
  revert: { type: "string" },
  list: { type: "boolean" },
} as const;

/** The request and its evaluation prompts: from --prompt/--subject/--target, or a CounterFact --case. */
async function editRequest(
  opts: Record<string, unknown>,
): Promise<{ input: RequestInput; caseId?: number; prompts: EvaluationPrompts }> {
  const explicit = ["prompt", "subject", "target"].filter((k) => opts[k] !== undefined);
  if (opts.case === undefined && explicit.length > 0) {
    if (opts.dataset !== undefined) {
      throw new UsageError("--dataset is for --case; the request is --prompt, --subject and --target");
    }
    return {
      input: {
        prompt: requireText(opts, "prompt"),
        subject: requireText(opts, "subject"),
        target_new: opts.target === undefined ? requireText(opts, "target") : String(opts.target),
        target_true: opts["target-true"] as string | undefined,
      },
      prompts: {},
    };
  }
  if (explicit.length > 0) {
    throw new UsageError(`--case takes the request from the dataset; drop --${explicit[0]}`);
  }
  const id = opts.case === undefined ? DEFAULT_CASE : intOption(opts, "case", 0);
  const file = (opts.dataset as string | undefined) ?? DEFAULT_DATASET;
  const data = await readJsonFile(file, "dataset");
  if (!Array.isArray(data)) throw new UsageError(`dataset '${file}' is not a list of CounterFact records`);
  const r = (data as CounterFactCase[]).find((x) => x?.case_id === id);
  if (!r?.requested_rewrite?.target_new) throw new UsageError(`dataset '${file}' has no case_id ${id}`);
  return counterFactEdit(r, opts["target-true"] as string | undefined);
}

/** --layer of edit: absent, "auto" or an integer ≥ 0 (its range is checked against the model). */
function editLayerOption(opts: Record<string, unknown>): number | "auto" | undefined {
  if (opts.layer === undefined || opts.layer === "auto") return opts.layer;
  const v = decimalValue(opts.layer);
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new UsageError(`--layer must be an integer ≥ 0 or auto (got '${opts.layer}')`);
  }
  return v === 0 ? 0 : v;
}

async function editLayer(
  opts: Record<string, unknown>,
  model: Gpt2Model,
  base: string,
  hp: RomeHparams,
): Promise<number> {
  const option = editLayerOption(opts);
  if (option === undefined) return hp.layers[0];
  if (option === "auto") {
    const s = await readSuggestedLayer(model.hash) ??
      (base !== model.hash ? await readSuggestedLayer(base) : undefined);
    if (!s) {
      throw new UsageError(
        `--layer auto: no causal-tracing result for this model (hash ${model.hash}); run ` +
          `\`deno task trace [--model DIR] --facts FILE --suggest-layer\` first, or give --layer L`,
      );
    }
    return s.layer;
  }
  return option;
}

function probabilityLine(label: string, pre: TargetProbabilities, post: TargetProbabilities): string {
  const pct = (p: number | undefined) => p === undefined ? "      -" : `${(p * 100).toFixed(2).padStart(6)}%`;
  return `${label.padEnd(14)} ${pct(pre.target_new)} → ${pct(post.target_new)}   ${pct(pre.target_true)} → ${
    pct(post.target_true)
  }   ${JSON.stringify(pre.prompt)}`;
}

export async function cmdEdit(args: string[]): Promise<void> {
  const opts = parse(args, EDIT_OPTIONS, EDIT_USAGE);
  const modes = ["apply", "revert", "list"].filter((k) => opts[k] !== undefined);
  if (modes.length > 1) throw new UsageError(`give only one of --${modes.join(", --")}`);
  if (modes.length === 1) {
    if (opts.model === undefined) throw new UsageError(`--${modes[0]} needs --model DIR`);
    const takes = modes[0] === "list"
      ? ["list", "model", "json"]
      : [modes[0], "model", "out", "in-place", "json"];
    const unused = Object.keys(opts).find((k) => opts[k] !== undefined && !takes.includes(k));
    if (unused !== undefined) throw new UsageError(`--${unused} is not used by --${modes[0]}`);
    if (modes[0] === "list") return editList(opts);
    return await applyOrRevert(opts, modes[0] as "apply" | "revert");
  }
  return await editOnce(opts);
}

function editList(opts: Record<string, unknown>): void {
  const dir = modelDir(opts);
  const log = readEditsLog(dir);
  if (opts.json) return console.log(JSON.stringify(log ?? null));
  if (!log || log.edits.length === 0) return console.log(`${dir}: no edits recorded`);
  console.log(`${dir}: ${log.edits.length} edit(s) on base model ${log.base_model_hash}, oldest first`);
  for (const [i, e] of log.edits.entries()) {
    const r = e.request;
    console.log(
      `${String(i + 1).padStart(3)}. ${e.id}  layer ${e.layer} ${e.variant}  ${
        JSON.stringify(r.prompt.replace("{}", r.subject))
      } → ${JSON.stringify(r.target_new)}  (${e.applied}, ${e.file})`,
    );
  }
}

async function editOnce(opts: Record<string, unknown>): Promise<void> {
  const json = Boolean(opts.json);
  const { input, caseId, prompts } = await editRequest(opts);
  const request = normalizeRequest(input);
  romeVariant(opts.variant as string | undefined); // before the model loads
  const seed = intOption(opts, "seed", DEFAULT_TEMPLATE_SEED, 0, MAX_SEED);
  const maxTokens = intOption(opts, "max-tokens", DEFAULT_GENERATION_TOKENS);
  const damping = opts.damping === undefined ? 0 : decimalValue(opts.damping);
  if (!(damping >= 0) || !Number.isFinite(damping)) {
    throw new UsageError(`--damping must be a finite number ≥ 0 (got '${opts.damping}')`);
  }
  const statsFrom = statsRequest(opts);
  editLayerOption(opts);
  const dir = modelDir(opts);
  const out = editOutputDir(opts, dir, false);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const base = baseModelHash(dir, model);
  const { hparams: hp, source: hpSource } = await romeHparams(opts, model);
  const refuseStats = () =>
    refuseStatsOptions(opts, `these hparams (${hpSource}: mom2_adjustment false)`, ["damping"]);
  if (!hp.mom2_adjustment) refuseStats();
  const chosenLayer = await editLayer(opts, model, base, hp);
  checkLayer(model, chosenLayer);
  const hashBefore = model.hash;

  // The unedited model's view of the request; checks the request's prompts fit before any long work.
  const pre = await evaluateRequest(model, tokenizer, request, prompts, { generationTokens: maxTokens });

  const { layer, variant, secondMoment: stats, templates, templateSeconds } = await romeFromFiles(
    model,
    tokenizer,
    {
      dir,
      baseHash: base,
      hparams: hp,
      layer: chosenLayer,
      variant: opts.variant as string | undefined,
      statsRequest: statsFrom,
      refuseStats,
      seed,
      quiet: json,
    },
  );
  let edit: RomeEdit;
  try {
    const bar = new Progress("v* (Adam on δ)", hp.v_num_grad_steps, json);
    edit = await executeRome(model, tokenizer, request, {
      hparams: hp,
      layer,
      variant,
      templates,
      secondMoment: stats ? { C: stats.C, count: stats.count } : null,
      damping,
      onValueStep: (step, loss) => bar.update(step + 1, `loss ${loss.toFixed(4)}`),
    });
    bar.done(`loss ${edit.losses.at(-1)!.toFixed(4)}`);
  } finally {
    stats?.C.dispose();
  }
  const post = await evaluateRequest(model, tokenizer, request, prompts, { generationTokens: maxTokens });

  const wantFiles = out !== undefined || opts.patch !== undefined;
  const hashAfter = wantFiles ? await modelContentHash(model) : "";
  if (wantFiles) model.hash = hashAfter;
  let patchInfo: { id: string; file?: string } | undefined;
  if (wantFiles) {
    const patch = await buildPatch(edit, {
      layer,
      variant,
      request: { ...request, ...(caseId !== undefined ? { case_id: caseId } : {}) },
      hparams: hp,
      seed,
      c_hash: stats?.id ?? "identity",
      hashBefore,
      hashAfter,
      pre,
      post,
    });
    const bytes = patchBytes(patch);
    patchInfo = { id: patch.meta.id };
    if (opts.patch !== undefined) {
      await writeFileAtomic(opts.patch as string, [bytes]);
      patchInfo.file = opts.patch as string;
    }
    if (out !== undefined) {
      const rel = `edits/${patch.meta.id}.safetensors`;
      const log = readEditsLog(dir) ?? emptyEditsLog(hashBefore);
      log.edits.push(logEntry(patch, rel));
      await saveEditedFolder(dir, out, model, {
        "edits.json": JSON.stringify(log, null, 1) + "\n",
        [rel]: bytes,
      });
    }
  }

  const pair = (a: TargetProbabilities, b: TargetProbabilities) => ({
    prompt: a.prompt,
    pre: { target_new: a.target_new, target_true: a.target_true ?? null },
    post: { target_new: b.target_new, target_true: b.target_true ?? null },
  });
  const record = {
    request: { ...request, ...(caseId !== undefined ? { case_id: caseId } : {}) },
    layer,
    variant,
    hparams: hpSource,
    pre: rewriteProbabilities(pre),
    post: rewriteProbabilities(post),
    paraphrases: pre.paraphrases.map((p, i) => pair(p, post.paraphrases[i])),
    neighbours: pre.neighbours.map((p, i) => pair(p, post.neighbours[i])),
    generations: pre.generations.map((g, i) => ({
      prompt: g.prompt,
      pre: g.text,
      post: post.generations[i].text,
    })),
    delta_norm: edit.deltaNorm,
    v0_norm: edit.v0Norm,
    losses: edit.losses,
    seconds: {
      stats: stats?.seconds ?? 0,
      k: templateSeconds + edit.seconds.k,
      v: edit.seconds.v,
      update: edit.seconds.update,
    },
    stats: stats ? { source: stats.source, path: stats.path, count: stats.count } : null,
    model_hash_before: hashBefore,
    ...(wantFiles ? { model_hash_after: hashAfter } : {}),
    ...(patchInfo ? { patch: patchInfo } : {}),
    ...(out !== undefined ? { out } : {}),
  };
  if (json) return console.log(JSON.stringify(record));
  const r = request;
  console.log(
    `edit: ${JSON.stringify(fillTemplate(r.prompt, r.subject))} → ${JSON.stringify(r.target_new.trim())}${
      r.target_true ? ` (was ${JSON.stringify(r.target_true.trim())})` : ""
    }; layer ${layer}, ${variant}, hparams ${hpSource}`,
  );
  if (stats) {
    console.log(`C: ${stats.count} tokens (${stats.source} ${stats.path})`);
  } else console.log("C: identity (mom2_adjustment false)");
  console.log(
    `v*: ${edit.forwards} forwards, loss ${edit.losses[0].toFixed(4)} → ${edit.losses.at(-1)!.toFixed(4)}, ` +
      `‖δ‖ ${fmt(edit.deltaNorm, 4)} (‖v₀‖ ${fmt(edit.v0Norm, 4)})`,
  );
  console.log(`\n${"".padEnd(14)}  P(new): pre → post    P(true): pre → post`);
  console.log(probabilityLine("rewrite", pre.rewrite, post.rewrite));
  pre.paraphrases.forEach((p, i) =>
    console.log(probabilityLine(`paraphrase ${i + 1}`, p, post.paraphrases[i]))
  );
  pre.neighbours.forEach((p, i) => console.log(probabilityLine(`neighbour ${i + 1}`, p, post.neighbours[i])));
  for (const [i, g] of pre.generations.entries()) {
    console.log(`\n${g.prompt}`);
    console.log(`  pre:  …${JSON.stringify(g.text)}`);
    console.log(`  post: …${JSON.stringify(post.generations[i].text)}`);
  }
  const s = record.seconds;
  console.log(
    `\ntime: C ${fmtSeconds(s.stats)}, k* ${fmtSeconds(s.k)}, v* ${fmtSeconds(s.v)}, update ${
      fmtSeconds(s.update)
    }`,
  );
  if (patchInfo?.file) console.log(`wrote patch ${patchInfo.id} to ${patchInfo.file}`);
  if (out !== undefined) console.log(`saved the edited model to ${out} (edits.json lists ${patchInfo!.id})`);
  if (!wantFiles) console.log("(not saved: --out DIR saves the edited model, --patch FILE the patch)");
}

async function applyOrRevert(opts: Record<string, unknown>, mode: "apply" | "revert"): Promise<void> {
  const json = Boolean(opts.json);
  const file = opts[mode] as string;
  const dir = modelDir(opts);
  const out = editOutputDir(opts, dir, true)!;
  const bytes = await readBytes(file, "patch");
  const patch = decodePatch(bytes, file);
  const m = patch.meta;
  const log = readEditsLog(dir);
  const { model } = await loadModel({ ...opts, model: dir }, json);
  const W = model.weights.get(m.matrix);
  if (!W) {
    throw new PatchError(
      `patch ${m.id} edits ${m.matrix}, which this model (${model.config.nLayer} layers) lacks`,
    );
  }
  if (W.shape[0] !== patch.u.length || W.shape[1] !== patch.lambda.length) {
    throw new PatchError(
      `patch ${m.id} is for a [${patch.u.length}, ${patch.lambda.length}] matrix; ${m.matrix} here is [${W.shape}]`,
    );
  }
  const current = matrixHash(m.matrix, W.shape, await readMatrix(model, m.matrix));
  const hashBefore = model.hash;
  if (mode === "apply") checkApply(patch, current, log, model.hash);
  else checkRevert(patch, current, log, model.hash);
  const res = await xorMatrix(model, m.matrix, patch.xor);
  const want = mode === "apply" ? m.matrix_hash_after : m.matrix_hash_before;
  if (res.after !== want) {
    throw new Error(`${m.matrix} hashes to ${res.after} after the XOR, expected ${want}`);
  }
  model.hash = await modelContentHash(model);
  const newLog = log ?? emptyEditsLog(hashBefore);
  const files: Record<string, string | Uint8Array> = {};
  const drop = new Set<string>();
  if (mode === "apply") {
    const rel = `edits/${m.id}.safetensors`;
    newLog.edits.push(logEntry(patch, rel));
    files[rel] = bytes;
  } else {
    const at = newLog.edits.findIndex((e) => e.id === m.id);
    if (at >= 0) drop.add(newLog.edits.splice(at, 1)[0].file);
  }
  files["edits.json"] = JSON.stringify(newLog, null, 1) + "\n";
  await saveEditedFolder(dir, out, model, files, drop);
  const record = {
    mode,
    patch: m.id,
    matrix: m.matrix,
    model: dir,
    out,
    model_hash_before: hashBefore,
    model_hash_after: model.hash,
    edits: newLog.edits.length,
    restores_original: mode === "revert" && model.hash === m.model_hash_before,
  };
  if (json) return console.log(JSON.stringify(record));
  console.log(
    `${mode === "apply" ? "applied" : "reverted"} patch ${m.id} (${m.matrix}, ${
      JSON.stringify(m.request.prompt.replace("{}", m.request.subject))
    } →${JSON.stringify(m.request.target_new)}): model ${hashBefore} → ${model.hash}${
      record.restores_original ? " (the model before the edit, bit for bit)" : ""
    }`,
  );
  console.log(`saved to ${out}; ${newLog.edits.length} edit(s) recorded in edits.json`);
}
