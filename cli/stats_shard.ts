// deno task stats --shard i/n --out DIR: one shard of a job array's statistics C, the partial sum Σ k kᵀ
// over a contiguous range of the corpus's documents, written to the folder the shards share (with a
// checkpoint beside it; a rerun resumes, or finds the shard finished). stats --merge adds the shards.
import { join } from "node:path";
import { exists, killPoint, readSafetensorsFile, writeFileAtomic } from "../engine/files.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import {
  type CorpusDocuments,
  decodeSecondMoment,
  encodeSecondMoment,
  type SecondMomentCheckpoint,
  secondMomentStats,
  StatsInterrupted,
} from "../rome/stats.ts";
import { currentShardSettings, shardMetadata, shardRange } from "../rome/stats_shards.ts";
import { UsageError } from "./args.ts";
import {
  DEFAULT_STATS_CORPUS,
  readCheckpoint,
  readStatsCorpus,
  statsInfo,
  statsRunCallbacks,
  statsSampleCount,
  tokenizedCorpus,
} from "./layer_stats.ts";
import { Progress } from "./progress.ts";
import type { Shard } from "./shard.ts";

/** A shard's file in the --out folder: the layer and the shard, so that one folder holds a whole array. */
export const shardFileName = (layer: number, shard: Shard) =>
  `layer${layer}.shard${shard.index}-of-${shard.count}.safetensors`;

export interface StatsShardOptions {
  layer: number;
  baseHash: string;
  corpus?: string;
  samples?: number;
  defaultSamples?: number;
  shard: Shard;
  /** The folder the shards write to (--out). */
  outDir: string;
  quiet?: boolean;
}

export interface StatsShardRun {
  path: string;
  /** "computed" now (perhaps resumed), or "finished" already by an earlier run. */
  source: "computed" | "finished";
  start: number;
  end: number;
  samples: number;
  count: number;
  seconds: number;
  /** Documents summed by this process (fewer than end − start after a resume). */
  documents: number;
  tokensPerSecond: number;
}

/** The first header field whose value is not the run's, or undefined when all agree. */
function differingField(md: Record<string, string>, want: Record<string, string>): string | undefined {
  return Object.keys(want).find((k) => md[k] !== want[k]);
}

/** `docs` from `start`, `length` of them: a shard's documents as a run from 0. */
function documentRange(docs: CorpusDocuments, start: number, length: number): CorpusDocuments {
  return { length, tokens: (i) => docs.tokens(start + i) };
}

/**
 * Computes (or resumes, or finds finished) shard i/n of C at a layer: documents [start, end) of the first
 * `samples` of the corpus. A file of another run under the shard's name is refused, never overwritten.
 */
export async function computeStatsShard(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  o: StatsShardOptions,
): Promise<StatsShardRun> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  const corpus = await readStatsCorpus(o.corpus ?? DEFAULT_STATS_CORPUS);
  const samples = statsSampleCount(corpus, o);
  const settings = currentShardSettings({
    model_hash: o.baseHash,
    layer: o.layer,
    corpus_hash: corpus.hash,
    corpus_documents: corpus.texts.length,
    samples,
    group_size: 100, // secondMomentStats' default group, which this run uses
    max_positions: model.config.nPositions,
  });
  const extra = shardMetadata(settings, o.shard);
  const { start, end } = shardRange(samples, o.shard.index, o.shard.count);
  const path = join(o.outDir, shardFileName(o.layer, o.shard));
  // not .safetensors: a glob of the finished shards (DIR/*.safetensors) leaves checkpoints out
  const partial = `${path}.partial`;
  const base = { path, start, end, samples };

  if (exists(path)) {
    let md: Record<string, string> | undefined;
    try {
      md = (await readSafetensorsFile(path)).metadata;
    } catch { /* not a safetensors file */ }
    const field = md ? differingField(md, extra) : undefined;
    if (md === undefined || md.kind !== "shard") {
      throw new UsageError(`'${path}' exists and is not a statistics shard; refusing to overwrite it`);
    }
    if (field !== undefined) {
      throw new UsageError(
        `'${path}' holds shard ${md.shard} of another run (${field} ${md[field]}, this run's ${
          extra[field]
        }); remove it or give another --out folder`,
      );
    }
    if (Number(md.cursor) === end) {
      const { count } = decodeSecondMoment(await Deno.readFile(path), path);
      return { ...base, source: "finished", count, seconds: seconds(), documents: 0, tokensPerSecond: 0 };
    }
  }

  const resume = await readCheckpoint(partial, (r) => {
    const cursor = r.info.cursor ?? -1;
    return differingField(r.metadata, extra) === undefined && cursor >= start && cursor <= end
      ? { mom2: r.mom2, count: r.count, cursor: cursor - start }
      : undefined;
  });
  const info = statsInfo(o.baseHash, o.layer, corpus, samples);
  const enc = (s: SecondMomentCheckpoint) =>
    encodeSecondMoment(s.mom2, s.count, { ...info, cursor: start + s.cursor }, extra);
  await Deno.mkdir(o.outDir, { recursive: true });
  if (resume && !o.quiet) {
    console.error(`resuming ${partial} at document ${start + resume.cursor} of [${start}, ${end})`);
  }

  const dff = model.config.nInner;
  // a checkpoint at the range's end, or an empty range (more shards than documents), has nothing to sum
  let final: SecondMomentCheckpoint = resume ?? { mom2: new Float32Array(dff * dff), count: 0, cursor: 0 };
  if (end > start) {
    const bar = new Progress(
      `statistics C, layer ${o.layer}, shard ${o.shard.index}/${o.shard.count}`,
      end - start,
      o.quiet,
    );
    const calls = statsRunCallbacks(bar, resume?.count ?? 0, seconds, end - start, partial, enc);
    const ac = new AbortController();
    const onInt = () => ac.abort();
    Deno.addSignalListener("SIGINT", onInt);
    try {
      const run = await secondMomentStats(
        model,
        o.layer,
        documentRange(tokenizedCorpus(corpus, tokenizer), start, end - start),
        {
          resume,
          signal: ac.signal,
          onProgress: calls.onProgress,
          checkpoint: calls.checkpoint,
        },
      );
      run.mom2.dispose();
      final = calls.finalState() ?? final;
    } catch (e) {
      if (e instanceof StatsInterrupted) {
        throw new Error(
          `statistics shard ${o.shard.index}/${o.shard.count} interrupted at document ${start + e.cursor} ` +
            `of [${start}, ${end}); run the same command again to resume`,
        );
      }
      throw e;
    } finally {
      Deno.removeSignalListener("SIGINT", onInt);
    }
    bar.done();
  }
  await writeFileAtomic(path, enc(final));
  killPoint("stats:final-written", path);
  await Deno.remove(partial).catch(() => {});
  const s = seconds();
  return {
    ...base,
    source: "computed",
    count: final.count,
    seconds: s,
    documents: end - start - (resume?.cursor ?? 0),
    tokensPerSecond: (final.count - (resume?.count ?? 0)) / s,
  };
}
