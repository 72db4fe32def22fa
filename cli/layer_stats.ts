// Where the statistics C of a layer come from on disk: an explicit --stats/--npz file, the model folder's
// shipped file, the per-model cache, or computed now over a corpus (resumable checkpoints, Ctrl-C safe).
// The computing itself is rome/stats.ts; this is its files and terminal.
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { exists, killPoint, readSafetensorsFile, writeFileAtomic } from "../engine/files.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { RomeHparams } from "../rome/hparams.ts";
import { readReferenceMom2 } from "../rome/npz.ts";
import {
  type CorpusDocuments,
  decodeSecondMoment,
  encodeSecondMoment,
  meanDiagonal,
  type SecondMomentCheckpoint,
  secondMomentMatrix,
  secondMomentStats,
  shippedStatsFile,
  splitCorpus,
  statsCacheName,
  statsFitModel,
  type StatsInfo,
  StatsInterrupted,
  uploadSecondMoment,
} from "../rome/stats.ts";
import { intOption, UsageError } from "./args.ts";
import { romeCacheDir } from "./cache.ts";
import { sha16 } from "../engine/digest.ts";
import { isFile, readBytes } from "./files.ts";
import { Progress } from "./progress.ts";

/** Text the statistics C are taken over unless --corpus says otherwise: the bundled model's training corpus. */
export const DEFAULT_STATS_CORPUS = fileURLToPath(new URL("../data/world/corpus.txt", import.meta.url));
/** Shipped statistics inside a model folder, checked before the cache: `<model>/stats/layer<L>.safetensors`. */
export const shippedStatsPath = (dir: string, layer: number) => join(dir, shippedStatsFile(layer));
/** Checkpoints of an interrupted statistics run are saved at most this often. */
const STATS_CHECKPOINT_SECONDS = 30;
/** The checkpoint interval; ROME_STATS_CHECKPOINT_SECONDS overrides it (tests/kill_test.ts: 0, every group). */
export function statsCheckpointSeconds(): number {
  const raw = Deno.env.get("ROME_STATS_CHECKPOINT_SECONDS");
  const s = raw === undefined || raw === "" ? NaN : Number(raw);
  return Number.isFinite(s) && s >= 0 ? s : STATS_CHECKPOINT_SECONDS;
}

// ---- the corpus and the statistics C

export interface Corpus {
  path: string;
  /** Documents in order (files sorted by name). */
  texts: string[];
  /** First 16 hex digits of the SHA-256 of the files' bytes, in order. */
  hash: string;
}

export async function readStatsCorpus(path: string): Promise<Corpus> {
  let files: string[];
  try {
    const st = Deno.statSync(path);
    files = st.isDirectory
      ? [...Deno.readDirSync(path)].filter((e) => e.isFile && e.name.endsWith(".txt")).map((e) =>
        join(path, e.name)
      )
        .sort()
      : [path];
  } catch {
    throw new UsageError(`--corpus '${path}' not found (a text file, or a folder of .txt files)`);
  }
  if (files.length === 0) throw new UsageError(`--corpus '${path}' holds no .txt files`);
  const parts: Uint8Array[] = [];
  const texts: string[] = [];
  for (const f of files) {
    const bytes = await Deno.readFile(f);
    parts.push(bytes, new Uint8Array([0]));
    texts.push(...splitCorpus(new TextDecoder().decode(bytes)));
  }
  if (texts.length === 0) throw new UsageError(`--corpus '${path}' holds no documents`);
  const all = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) (all.set(p, at), at += p.byteLength);
  return { path, texts, hash: await sha16(all) };
}

export function tokenizedCorpus(corpus: Corpus, tokenizer: Gpt2Tokenizer): CorpusDocuments {
  return { length: corpus.texts.length, tokens: (i) => tokenizer.encode(corpus.texts[i]) };
}

/** What a statistics file's header says of its run (StatsInfo without the cursor). */
export function statsInfo(baseHash: string, layer: number, corpus: Corpus, samples: number) {
  return { model_hash: baseHash, layer, corpus_hash: corpus.hash, samples, source: corpus.path };
}

/**
 * The checkpoint of an interrupted run at `partial`, if there is one that `accept` takes (it returns the state
 * to resume from, or undefined for a checkpoint of another run). An unreadable checkpoint is recomputed, not
 * trusted.
 */
export async function readCheckpoint(
  partial: string,
  accept: (r: ReturnType<typeof decodeSecondMoment>) => SecondMomentCheckpoint | undefined,
): Promise<SecondMomentCheckpoint | undefined> {
  if (!exists(partial)) return undefined;
  try {
    return accept(decodeSecondMoment(await Deno.readFile(partial), partial));
  } catch {
    return undefined;
  }
}

/**
 * secondMomentStats' progress and checkpoint callbacks for a run over `total` documents: the bar shows tokens/s
 * since this process started (after `startTokens` resumed ones); checkpoints go to `partial` (encoded by `enc`)
 * at most every statsCheckpointSeconds(); the finished state is kept, not written (finalState), since the
 * caller writes the final file under its own name.
 */
export function statsRunCallbacks(
  bar: Progress,
  startTokens: number,
  seconds: () => number,
  total: number,
  partial: string,
  enc: (s: SecondMomentCheckpoint) => Uint8Array[],
) {
  let lastSave = performance.now(), final: SecondMomentCheckpoint | undefined;
  return {
    onProgress: (docs: number, tokens: number) =>
      bar.update(docs, `${((tokens - startTokens) / seconds()).toFixed(0)} tok/s`),
    checkpoint: {
      due: () => performance.now() - lastSave >= statsCheckpointSeconds() * 1000,
      save: async (s: SecondMomentCheckpoint) => {
        lastSave = performance.now();
        if (s.cursor === total) final = s;
        else await writeFileAtomic(partial, enc(s));
      },
    },
    finalState: () => final,
  };
}

/** Documents C is taken over: --samples (which the corpus must hold), else the default or all there are. */
export function statsSampleCount(corpus: Corpus, o: { samples?: number; defaultSamples?: number }): number {
  const n = corpus.texts.length;
  if (o.samples !== undefined && o.samples > n) {
    throw new UsageError(
      `--samples must be an integer from 1 to ${n}: '${corpus.path}' holds ${n} documents (got '${o.samples}')`,
    );
  }
  return o.samples ?? Math.min(n, o.defaultSamples ?? n);
}

/**
 * `stats --out` replaces the file it names: only a statistics file (one holding 'mom2') or a new path. A
 * model's weights, a corpus or any other file the user owns is refused before any work starts.
 */
export async function statsOutIsFree(out: string): Promise<void> {
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

/** Where statistics C came from, and the GPU matrix (mom2 / count) the caller disposes. */
export interface LayerStats {
  C: Tensor;
  count: number;
  /** Identity recorded in patches: the cache key, "npz:<file>", or the file used. */
  id: string;
  source: "file" | "shipped" | "cache" | "computed";
  path: string;
  seconds: number;
  /** Mean of C's diagonal (E[k_i²] averaged over i): a scale for --damping. */
  meanDiagonal: number;
  documents?: number;
  tokensPerSecond?: number;
}

export interface LayerStatsOptions {
  layer: number;
  /** Model folder (for shipped statistics) and the base hash the cache is keyed by. */
  dir: string;
  baseHash: string;
  /**
   * --corpus: C over this text. Shipped statistics stand in for it only when they record this very corpus
   * and number of documents (then they are what computing would give, as a cache entry is).
   */
  corpus?: string;
  /** --samples: the first N documents of the corpus, which must have that many; shipped files as --corpus. */
  samples?: number;
  /** Documents without --samples (the hparams' mom2_n_samples), or all the corpus has if fewer. */
  defaultSamples?: number;
  /** An explicit statistics file (.safetensors of ours, or the reference's .npz). */
  file?: string;
  quiet?: boolean;
  signal?: AbortSignal;
}

/** What C is to come from, as --stats/--npz/--corpus/--samples say: checked before any model is loaded. */
export interface StatsRequest {
  file?: string;
  corpus?: string;
  samples?: number;
}

export function statsRequest(opts: Record<string, unknown>): StatsRequest {
  if (opts.stats !== undefined && opts.npz !== undefined) {
    throw new UsageError("give either --stats FILE or --npz FILE");
  }
  const fileOption = opts.stats !== undefined ? "stats" : "npz";
  const file = opts[fileOption] as string | undefined;
  if (file !== undefined) {
    for (const k of ["corpus", "samples"]) {
      if (opts[k] !== undefined) {
        throw new UsageError(
          `--${k} is for computing the statistics C; --${fileOption} reads them from a file`,
        );
      }
    }
    if (!isFile(file)) throw new UsageError(`statistics file '${file}' not found`);
  }
  const corpus = opts.corpus as string | undefined;
  if (corpus !== undefined) {
    try {
      Deno.statSync(corpus);
    } catch {
      throw new UsageError(`--corpus '${corpus}' not found (a text file, or a folder of .txt files)`);
    }
  }
  const samples = opts.samples === undefined ? undefined : intOption(opts, "samples", 0, 1);
  return { file, corpus, samples };
}

/** Options that only say where C comes from, refused where no C is used (`why` says which setting). */
export function refuseStatsOptions(opts: Record<string, unknown>, why: string, also: string[] = []): void {
  for (const k of ["stats", "npz", "corpus", "samples", ...also]) {
    if (opts[k] !== undefined) {
      throw new UsageError(`--${k} is for the statistics C, which is not used with ${why}`);
    }
  }
}

/**
 * A statistics file given to an edit must hold all of C: a shard's partial sum is refused (its cursor alone
 * would call it an unfinished checkpoint), and a merge made with --allow-missing is used with a note saying
 * which shards it lacks, wherever it comes from (--stats, or copied into a model folder).
 */
function checkWholeStats(path: string, metadata: Record<string, string>, quiet?: boolean): void {
  if (metadata.kind === "shard") {
    throw new UsageError(
      `statistics file '${path}' is shard ${metadata.shard} of a sharded run (a partial sum); ` +
        `merge the shards first: deno task stats --merge FILE... --out FILE`,
    );
  }
  if (metadata.shards_missing && !quiet) {
    console.error(
      `note: ${path} was merged without shard(s) ${metadata.shards_missing} of ${metadata.shards} ` +
        `(${metadata.documents} of ${metadata.samples} documents)`,
    );
  }
}

/**
 * C at a layer: an explicit --stats/--npz file, else the folder's shipped `stats/layer<L>.safetensors`,
 * else the cache (model hash, layer, corpus hash, samples), else computed now over the corpus on the GPU
 * (progress bar, checkpoints every 30 s, resumable after an interruption) and cached.
 */
export async function layerStats(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: LayerStatsOptions,
): Promise<LayerStats> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  if (o.file) {
    const bytes = await readBytes(o.file, "statistics file");
    const { mom2, count, info, metadata } = o.file.endsWith(".npz")
      ? { ...await readReferenceMom2(bytes, o.file), info: {} as Partial<StatsInfo>, metadata: {} }
      : decodeSecondMoment(bytes, o.file);
    checkWholeStats(o.file, metadata, o.quiet);
    // what the file records about itself must fit this edit (the reference's .npz records nothing)
    if (info.layer !== undefined && info.layer !== o.layer) {
      throw new UsageError(
        `statistics file '${o.file}' holds C of layer ${info.layer}, not of layer ${o.layer}`,
      );
    }
    if (info.model_hash !== undefined && info.model_hash !== "unknown" && info.model_hash !== o.baseHash) {
      throw new UsageError(
        `statistics file '${o.file}' belongs to model ${info.model_hash}, not to this one (${o.baseHash})`,
      );
    }
    if (info.cursor !== undefined && info.samples !== undefined && info.cursor < info.samples) {
      throw new UsageError(
        `statistics file '${o.file}' is an unfinished checkpoint (${info.cursor} of ${info.samples} documents)`,
      );
    }
    const C = await uploadSecondMoment(model, mom2, count, o.file);
    return {
      C,
      count,
      id: `file:${basename(o.file)}`,
      source: "file",
      path: o.file,
      seconds: seconds(),
      meanDiagonal: meanDiagonal(mom2, count),
    };
  }
  // With --corpus or --samples the corpus is read first: its hash and the count decide whether shipped
  // statistics are the ones asked for; without them the folder's shipped file is used as it is.
  const explicit = o.corpus !== undefined || o.samples !== undefined;
  let corpus: Corpus | undefined, samples = 0;
  const readCorpus = async () => {
    corpus = await readStatsCorpus(o.corpus ?? DEFAULT_STATS_CORPUS);
    samples = statsSampleCount(corpus, o);
    return corpus;
  };
  if (explicit) await readCorpus();
  const shipped = shippedStatsPath(o.dir, o.layer);
  if (exists(shipped)) {
    const { mom2, count, info, metadata } = decodeSecondMoment(await Deno.readFile(shipped), shipped);
    const fits = statsFitModel(info, o.layer, o.baseHash);
    const asked = !explicit || (info.corpus_hash === corpus!.hash && info.samples === samples);
    if (fits && asked) {
      checkWholeStats(shipped, metadata, o.quiet);
      const C = await uploadSecondMoment(model, mom2, count, shipped);
      const id = info.corpus_hash ? statsCacheName(o.layer, info.corpus_hash, info.samples ?? 0) : shipped;
      return {
        C,
        count,
        id,
        source: "shipped",
        path: shipped,
        seconds: seconds(),
        meanDiagonal: meanDiagonal(mom2, count),
      };
    }
    if (!o.quiet) {
      console.error(
        fits
          ? `note: ${shipped} is over another corpus or number of documents; C is taken over ${
            corpus!.path
          } as asked`
          : `note: ${shipped} belongs to another model or layer; not used`,
      );
    }
  }
  const c = corpus ?? await readCorpus();
  const name = statsCacheName(o.layer, c.hash, samples);
  const dir = join(romeCacheDir(o.baseHash), "stats");
  const path = join(dir, name);
  if (exists(path)) {
    const { mom2, count } = decodeSecondMoment(await Deno.readFile(path), path);
    const C = await uploadSecondMoment(model, mom2, count, path);
    return {
      C,
      count,
      id: name,
      source: "cache",
      path,
      seconds: seconds(),
      meanDiagonal: meanDiagonal(mom2, count),
    };
  }
  await Deno.mkdir(dir, { recursive: true });
  const partial = path.replace(/\.safetensors$/, ".partial.safetensors");
  const resume = await readCheckpoint(
    partial,
    (r) =>
      r.info.cursor !== undefined && r.info.cursor <= samples ? { ...r, cursor: r.info.cursor } : undefined,
  );
  const info = statsInfo(o.baseHash, o.layer, c, samples);
  const bar = new Progress(`statistics C, layer ${o.layer}`, samples, o.quiet);
  const startTokens = resume?.count ?? 0;
  const enc = (s: SecondMomentCheckpoint) =>
    encodeSecondMoment(s.mom2, s.count, { ...info, cursor: s.cursor });
  if (resume && !o.quiet) console.error(`resuming ${partial} at document ${resume.cursor} of ${samples}`);
  const calls = statsRunCallbacks(bar, startTokens, seconds, samples, partial, enc);
  const run = await secondMomentStats(model, o.layer, tokenizedCorpus(c, tokenizer), {
    samples,
    resume,
    signal: o.signal,
    ...calls,
  });
  const final = calls.finalState();
  bar.done();
  await writeFileAtomic(path, enc(final!));
  killPoint("stats:final-written", path);
  await Deno.remove(partial).catch(() => {});
  const C = model.engine.scope(() => model.engine.keep(secondMomentMatrix(run.mom2, run.count)));
  run.mom2.dispose();
  const s = seconds();
  return {
    C,
    count: run.count,
    id: name,
    source: "computed",
    path,
    seconds: s,
    meanDiagonal: meanDiagonal(final!.mom2, final!.count),
    documents: samples - (resume?.cursor ?? 0),
    tokensPerSecond: (run.count - startTokens) / s,
  };
}

/** layerStats with Ctrl-C stopping after the current group (its checkpoint saved) instead of losing the run. */
export async function layerStatsInterruptible(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: LayerStatsOptions,
): Promise<LayerStats> {
  const ac = new AbortController();
  const onInt = () => ac.abort();
  Deno.addSignalListener("SIGINT", onInt);
  try {
    return await layerStats(model, tokenizer, { ...o, signal: ac.signal });
  } catch (e) {
    if (e instanceof StatsInterrupted) throw new Error(`statistics ${e.message}`);
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
  }
}

/**
 * C for ROME at the edit layer, as the options asked (`request`), by default over the hparams'
 * mom2_n_samples documents (as `deno task stats`, so that both find the same cache entry).
 */
export function editStatistics(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: { dir: string; baseHash: string; request: StatsRequest; hparams: RomeHparams; quiet: boolean },
): (layer: number) => Promise<LayerStats> {
  return (layer) =>
    layerStatsInterruptible(model, tokenizer, {
      layer,
      dir: o.dir,
      baseHash: o.baseHash,
      ...o.request,
      defaultSamples: o.hparams.mom2_n_samples,
      quiet: o.quiet,
    });
}
