// deno task stats: the second-moment statistics C of a layer's MLP keys, computed (cached, resumable) or
// converted from the reference's .npz.
import { basename, dirname, join } from "node:path";
import { writeFileAtomic } from "../engine/files.ts";
import { checkLayer } from "../rome/compute.ts";
import { defaultHparams } from "../rome/hparams.ts";
import { readReferenceMom2 } from "../rome/npz.ts";
import { encodeSecondMoment, meanDiagonal } from "../rome/stats.ts";
import { fmt } from "../tracing/render.ts";
import { intOption, MODEL_OPTION, parseCommand, UsageError } from "./args.ts";
import { romeCacheDir } from "./cache.ts";
import { baseModelHash } from "./edited_folder.ts";
import { isFile, readBytes } from "./files.ts";
import { DEFAULT_STATS_CORPUS, editStatistics, statsOutIsFree, statsRequest } from "./layer_stats.ts";
import { loadModel, modelDir } from "./open.ts";
import { fmtSeconds } from "./progress.ts";
import { resolveShard } from "./shard.ts";
import { cmdStatsMerge } from "./stats_merge.ts";
import { computeStatsShard } from "./stats_shard.ts";

const STATS_USAGE =
  `deno task stats [--model DIR] [--layer L] [--corpus FILE|DIR] [--samples N] [--out FILE] [--json]
deno task stats --shard i/n|auto|auto/N --out DIR [--model DIR] [--layer L] [--corpus FILE|DIR]
                [--samples N] [--json]
deno task stats --merge FILE... --out FILE [--allow-missing] [--json]
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
  checks them against --model when given and converts them with --out.
  --shard i/n computes one part of a job array: the partial sum Σ k kᵀ and token count over documents
  [⌊i·N/n⌋, ⌊(i+1)·N/n⌋) of the N, written to DIR/layer<L>.shard<i>-of-<n>.safetensors (--out names the
  folder all shards share; its header records the model, layer, corpus, range, settings and engine
  version). --shard auto or auto/N takes i and n from a Slurm array, a Kubernetes Indexed Job or
  ROME_SHARD_INDEX/ROME_SHARD_COUNT. A rerun resumes the shard from its checkpoint (the same name with
  .partial added) or finds it finished. --merge adds the shard files into one statistics file (as --out
  writes; edit --stats FILE reads it), after checking they are shards 0..n-1 of one run, each once;
  --allow-missing merges without the missing ones, and the file's header lists them.`;

export async function cmdStats(args: string[]): Promise<void> {
  // positionals only with --merge, so that every other usage parses (and fails) exactly as before
  const { values: opts, positionals } = parseCommand(
    args,
    {
      ...MODEL_OPTION,
      layer: { type: "string" },
      corpus: { type: "string" },
      samples: { type: "string" },
      npz: { type: "string" },
      out: { type: "string" },
      json: { type: "boolean" },
      shard: { type: "string" },
      merge: { type: "boolean" },
      "allow-missing": { type: "boolean" },
    },
    STATS_USAGE,
    args.includes("--merge"),
  );
  if (opts.merge) return await cmdStatsMerge(opts, positionals);
  if (opts["allow-missing"]) throw new UsageError("--allow-missing is for --merge");
  const json = Boolean(opts.json);
  if (opts.shard !== undefined) return await statsShard(opts);
  if (opts.out !== undefined) await statsOutIsFree(opts.out as string);
  if (opts.npz !== undefined) return await statsFromNpz(opts);
  const { request, dir, model, tokenizer, hp, layer } = await statsTarget(opts, json);
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

/**
 * Where C is to come from (checked before any model loads), the model, its ROME hparams and the layer:
 * --layer, or the hparams' edit layer.
 */
async function statsTarget(opts: Record<string, unknown>, quiet: boolean) {
  const request = statsRequest(opts);
  const explicitLayer = opts.layer === undefined ? undefined : intOption(opts, "layer", 0);
  const dir = modelDir(opts);
  const { model, tokenizer } = await loadModel({ ...opts, model: dir }, quiet);
  const hp = defaultHparams(model.config).hparams;
  const layer = explicitLayer ?? hp.layers[0];
  checkLayer(model, layer);
  return { request, dir, model, tokenizer, hp, layer };
}

/** `--shard`: one shard's partial sum into the --out folder (cli/stats_shard.ts). */
async function statsShard(opts: Record<string, unknown>): Promise<void> {
  if (opts.npz !== undefined) throw new UsageError("--shard is for computing statistics, not with --npz");
  const shard = resolveShard(opts.shard)!;
  const outDir = opts.out as string | undefined;
  if (outDir === undefined) {
    throw new UsageError("--shard needs --out DIR, the folder the shards write their partial sums to");
  }
  if (isFile(outDir)) {
    throw new UsageError(`--out '${outDir}' is a file; with --shard it names the folder the shards share`);
  }
  const json = Boolean(opts.json);
  const { request, dir, model, tokenizer, hp, layer } = await statsTarget(opts, json);
  const r = await computeStatsShard(model, tokenizer, {
    layer,
    baseHash: baseModelHash(dir, model),
    corpus: request.corpus,
    samples: request.samples,
    defaultSamples: hp.mom2_n_samples,
    shard,
    outDir,
    quiet: json,
  });
  const record = {
    model: dir,
    model_hash: model.hash,
    layer,
    shard: `${shard.index}/${shard.count}`,
    shard_source: shard.source,
    doc_start: r.start,
    doc_end: r.end,
    samples: r.samples,
    source: r.source,
    path: r.path,
    count: r.count,
    seconds: r.seconds,
    documents: r.documents,
    tokens_per_second: r.tokensPerSecond,
  };
  if (json) return console.log(JSON.stringify(record));
  console.log(
    `shard ${record.shard} of C at layer ${layer}: documents [${r.start}, ${r.end}) of ${r.samples}, ` +
      `${r.count} tokens (${
        r.source === "finished"
          ? "finished before; nothing to do"
          : `computed over ${r.documents} documents, ${r.tokensPerSecond.toFixed(0)} tokens/s, ${
            fmtSeconds(r.seconds)
          }`
      })`,
  );
  console.log(
    `wrote ${r.path}; when all ${shard.count} are there: deno task stats --merge ${
      join(outDir, `layer${layer}.shard*-of-${shard.count}.safetensors`)
    } --out FILE`,
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
