// deno task stats: the second-moment statistics C of a layer's MLP keys, computed (cached, resumable) or
// converted from the reference's .npz.
import { basename, dirname } from "node:path";
import { readSafetensorsFile, writeFileAtomic } from "../engine/files.ts";
import { checkLayer } from "../rome/compute.ts";
import { defaultHparams } from "../rome/hparams.ts";
import { readReferenceMom2 } from "../rome/npz.ts";
import { encodeSecondMoment, meanDiagonal } from "../rome/stats.ts";
import { fmt } from "../tracing/render.ts";
import { intOption, MODEL_OPTION, parse, UsageError } from "./args.ts";
import { romeCacheDir } from "./cache.ts";
import { baseModelHash } from "./edited_folder.ts";
import { readBytes } from "./files.ts";
import { DEFAULT_STATS_CORPUS, editStatistics, statsRequest } from "./layer_stats.ts";
import { loadModel, modelDir } from "./open.ts";
import { fmtSeconds } from "./progress.ts";

const STATS_USAGE =
  `deno task stats [--model DIR] [--layer L] [--corpus FILE|DIR] [--samples N] [--out FILE] [--json]
deno task stats --npz FILE [--model DIR] [--out FILE] [--json]
  Second-moment statistics C = E[k kᵀ] of the MLP keys (the input of mlp.c_proj) at layer L, which ROME's
  update solves against (u = C⁻¹ k̄). Summed on the GPU over the first N documents of the corpus (default:
  the hparams' mom2_n_samples, 100000, or all there are; --samples N needs N documents) of --corpus (default
  ${DEFAULT_STATS_CORPUS}; documents are separated by lines holding only <|endoftext|>;
  a folder means every .txt in it), each cut at the model's context length. Cached under
  ${romeCacheDir("<model hash>")}/stats/layer<L>_<corpus hash>_<N>.safetensors ('mom2' = Σ k kᵀ,
  'count' = tokens); an interrupted run (Ctrl-C, or killed) resumes from its last checkpoint. A model folder
  may ship its own: <model>/stats/layer<L>.safetensors is used before the cache (--out writes such a file),
  unless --corpus or --samples ask for statistics over another corpus or number of documents than it holds.
  --layer defaults to the model's default edit layer (its hparams). --npz reads the reference's precomputed
  statistics (keys mom2.mom2, mom2.count; e.g. transformer.h.17.mlp.c_proj_float32_mom2_100000.npz),
  checks them against --model when given and converts them with --out.`;

/**
 * `stats --out` replaces the file it names: only a statistics file (one holding 'mom2') or a new path. A
 * model's weights, a corpus or any other file the user owns is refused before any work starts.
 */
async function statsOutIsFree(out: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(out);
  } catch {
    return; // a new file
  }
  if (!info.isFile) throw new UsageError(`--out '${out}' is a folder; name the statistics file to write`);
  let isStats = false;
  try {
    isStats = (await readSafetensorsFile(out)).tensors.has("mom2");
  } catch { /* not a safetensors file */ }
  if (!isStats) {
    throw new UsageError(`--out '${out}' exists and is not a statistics file; refusing to overwrite it`);
  }
}

export async function cmdStats(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    layer: { type: "string" },
    corpus: { type: "string" },
    samples: { type: "string" },
    npz: { type: "string" },
    out: { type: "string" },
    json: { type: "boolean" },
  }, STATS_USAGE);
  const json = Boolean(opts.json);
  if (opts.out !== undefined) await statsOutIsFree(opts.out as string);
  if (opts.npz !== undefined) return await statsFromNpz(opts);
  const request = statsRequest(opts);
  const explicitLayer = opts.layer === undefined ? undefined : intOption(opts, "layer", 0);
  const dir = modelDir(opts);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, json);
  const hp = defaultHparams(model.config).hparams;
  const layer = explicitLayer ?? hp.layers[0];
  checkLayer(model, layer);
  // edit's statistics (the hparams' mom2_n_samples by default), so that both find the same cache entry
  const baseHash = baseModelHash(dir, model);
  const s = await editStatistics(model, tokenizer, { dir, baseHash, request, hparams: hp, quiet: json })(
    layer,
  );
  const diag = s.meanDiagonal;
  s.C.dispose();
  if (opts.out) {
    const bytes = await Deno.readFile(s.path);
    await Deno.mkdir(dirname(opts.out as string), { recursive: true });
    await writeFileAtomic(opts.out as string, [bytes]);
  }
  const record = {
    model: dir,
    model_hash: model.hash,
    layer,
    source: s.source,
    cached: s.source !== "computed",
    path: s.path,
    ...(opts.out ? { out: opts.out } : {}),
    count: s.count,
    mean_diagonal: diag,
    seconds: s.seconds,
    ...(s.tokensPerSecond !== undefined
      ? { documents: s.documents, tokens_per_second: s.tokensPerSecond }
      : {}),
  };
  if (json) return console.log(JSON.stringify(record));
  console.log(
    `C at layer ${layer}: ${s.count} tokens, mean diagonal ${fmt(diag, 4)} (${
      s.source === "computed"
        ? `computed over ${s.documents} documents, ${s.tokensPerSecond!.toFixed(0)} tokens/s, ${
          fmtSeconds(s.seconds)
        }`
        : `${s.source}`
    })`,
  );
  console.log(
    `${s.source === "computed" ? "cached in" : "from"} ${s.path}${opts.out ? `; copied to ${opts.out}` : ""}`,
  );
}

async function statsFromNpz(opts: Record<string, unknown>): Promise<void> {
  const file = opts.npz as string;
  for (const f of ["corpus", "samples"]) {
    if (opts[f] !== undefined) throw new UsageError(`--${f} is for computing statistics, not with --npz`);
  }
  const { mom2, dff, count } = await readReferenceMom2(await readBytes(file, "--npz"), file);
  const named = /\.h\.(\d+)\.mlp/.exec(basename(file));
  const layer = opts.layer !== undefined ? intOption(opts, "layer", 0) : named ? Number(named[1]) : undefined;
  let hash = "unknown";
  if (opts.model !== undefined) {
    const dir = modelDir(opts);
    const { model } = await loadModel({ ...opts, model: dir }, Boolean(opts.json));
    if (model.config.nInner !== dff) {
      throw new UsageError(
        `${file} is a ${dff}² matrix; ${dir}'s MLP keys have d_ff = ${model.config.nInner}`,
      );
    }
    if (layer !== undefined) checkLayer(model, layer);
    hash = baseModelHash(dir, model);
  }
  if (opts.out) {
    if (layer === undefined) {
      throw new UsageError("--layer L is needed to convert (the file name does not say)");
    }
    await Deno.mkdir(dirname(opts.out as string), { recursive: true });
    await writeFileAtomic(
      opts.out as string,
      encodeSecondMoment(mom2, count, {
        model_hash: hash,
        layer,
        corpus_hash: "npz",
        samples: 0,
        cursor: 0,
        source: basename(file),
      }),
    );
  }
  const diag = meanDiagonal(mom2, count);
  const record = {
    npz: file,
    d_ff: dff,
    count,
    layer: layer ?? null,
    mean_diagonal: diag,
    out: opts.out ?? null,
  };
  if (opts.json) return console.log(JSON.stringify(record));
  console.log(
    `${file}: Σ k kᵀ over ${count} tokens, d_ff = ${dff}${layer !== undefined ? `, layer ${layer}` : ""}, ` +
      `mean diagonal of C ${fmt(diag, 4)}${opts.out ? `; wrote ${opts.out}` : ""}`,
  );
}
