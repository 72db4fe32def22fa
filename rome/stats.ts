// Second-moment statistics C = E[k kᵀ] of the MLP keys at one layer (reference §2.5, layer_stats.py): the
// keys (inputs of mlp.c_proj, after GELU) of every non-pad token of a corpus, accumulated on the GPU as
// mom2 += Kᵀ K with a count of tokens. C is the uncentred second moment, not a covariance.
//
// Documents are taken in order, `groupSize` at a time (the reference's DataLoader batch of 100 articles),
// sorted by length within a group and split into forwards of at most `maxBatchTokens` padded tokens (its
// length collation). A group is the unit of progress and of checkpoints: the state after a group (the
// partial sum read back, the count and the document cursor) resumes to exactly the same sums, because a
// resumed run forms the same groups and batches and the GPU adds them in the same order.
//
// Runtime-neutral: documents come from a caller's source, checkpoints go to a caller's store.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { Gpt2Model as Gpt2Graph } from "../engine/gpt2/model.ts";
import { choleskySolveChecked, matmulAccumulate, NotPositiveDefiniteError, scale } from "../engine/ops.ts";
import { parseSafetensorsHeader, readTensorRaw, serializeSafetensors } from "../engine/safetensors.ts";
import type { Tensor } from "../engine/tensor.ts";
import { InputError } from "../engine/errors.ts";

/** Documents by index, each already tokenized (the caller truncates nothing; this module cuts at n_positions). */
export interface CorpusDocuments {
  readonly length: number;
  tokens(i: number): readonly number[];
}

/** Where a run stands after a whole group: enough to continue it exactly. */
export interface SecondMomentCheckpoint {
  /** Σ k kᵀ so far, [d_ff · d_ff] row-major. */
  mom2: Float32Array;
  /** Tokens summed so far. */
  count: number;
  /** Documents consumed so far (from the start of the source). */
  cursor: number;
}

export interface SecondMomentOptions {
  /** Documents to use, from the start of the source (default: all). */
  samples?: number;
  /** Documents per group (the unit of resumption); default 100, the reference's DataLoader batch. */
  groupSize?: number;
  /** Padded tokens per forward (default: what keeps the captured keys under 64 MiB, at most 8192). */
  maxBatchTokens?: number;
  /** Continue from this state (as saved by `checkpoint.save`). */
  resume?: SecondMomentCheckpoint;
  /** After each group: `due(cursor)` says whether to save now; `save` stores the state. */
  checkpoint?: {
    due(cursor: number): boolean;
    save(state: SecondMomentCheckpoint): Promise<void>;
  };
  /** Progress after each group: documents consumed and tokens summed (both counting a resumed start). */
  onProgress?: (documents: number, tokens: number) => void;
  /** Stops after the current group, saving a checkpoint first; the promise rejects with StatsInterrupted. */
  signal?: AbortSignal;
}

export interface SecondMoment {
  /** Σ k kᵀ over the tokens, [d_ff, d_ff], on the GPU (the caller disposes it). */
  mom2: Tensor;
  /** Number of tokens summed. */
  count: number;
  /** Documents used. */
  documents: number;
}

export class StatsError extends InputError {
  override name = "StatsError";
}

/** Raised when `signal` stopped a run; the last checkpoint holds its state. */
export class StatsInterrupted extends Error {
  override name = "StatsInterrupted";
  constructor(readonly cursor: number, readonly total: number) {
    super(`interrupted after ${cursor} of ${total} documents; run the same command again to resume`);
  }
}

/**
 * Σ k kᵀ of the MLP keys at `layer` over the first `samples` documents (each cut at the model's context
 * length, as the reference's TokenizedDataset does), summed on the GPU in float32 (the reference's
 * mom2_dtype). The forwards stop after block `layer`: a view of the model with layer + 1 blocks, sharing
 * its weight tensors, produces no logits.
 */
export async function secondMomentStats(
  model: Gpt2Model,
  layer: number,
  docs: CorpusDocuments,
  opts: SecondMomentOptions = {},
): Promise<SecondMoment> {
  const c = model.config, e = model.engine;
  if (!Number.isInteger(layer) || layer < 0 || layer >= c.nLayer) {
    throw new StatsError(`layer ${layer} is outside 0..${c.nLayer - 1}`);
  }
  const dff = c.nInner;
  const total = Math.min(docs.length, opts.samples ?? docs.length);
  const groupSize = opts.groupSize ?? 100;
  const maxTokens = Math.max(
    c.nPositions,
    opts.maxBatchTokens ?? Math.min(8192, Math.floor(64 * 2 ** 20 / (4 * dff))),
  );
  const truncated = new Gpt2Graph(e, { ...c, nLayer: layer + 1 }, model.weights, model.hash);

  const mom2 = e.keep(e.zeros([dff, dff]));
  let count = 0, cursor = 0;
  try {
    if (opts.resume) {
      const r = opts.resume;
      if (r.mom2.length !== dff * dff || !(r.cursor >= 0 && r.cursor <= total) || !(r.count >= 0)) {
        throw new StatsError(
          `the checkpoint does not fit this run (${r.mom2.length} values for d_ff² = ${dff * dff}, ` +
            `cursor ${r.cursor} of ${total} documents)`,
        );
      }
      e.scope(() => {
        const up = e.upload(r.mom2, [dff, dff]);
        e.copy(up.buffer, 0, mom2.buffer, 0, mom2.byteLength);
      });
      count = r.count;
      cursor = r.cursor;
    }
    while (cursor < total) {
      const end = Math.min(total, cursor + groupSize);
      const group: number[][] = [];
      for (let i = cursor; i < end; i++) {
        const ids = docs.tokens(i).slice(0, c.nPositions);
        if (ids.length > 0) group.push(ids);
      }
      group.sort((a, b) => a.length - b.length);
      for (const batch of lengthBatches(group, maxTokens)) {
        e.scope(() => {
          const at = batch.flatMap((ids, r) => ids.map((_, t) => [r, t] as const));
          const { captures } = truncated.forward(batch, {
            logits: "none",
            hooks: [{ site: "mlpKey", layer, kind: "read", name: "k", at }],
          });
          const k = captures.get("k")!;
          matmulAccumulate(k, k, mom2, { transA: true });
          k.dispose();
          count += at.length;
        });
      }
      cursor = end;
      opts.onProgress?.(cursor, count);
      const stop = opts.signal?.aborted ?? false;
      if (opts.checkpoint && (stop || opts.checkpoint.due(cursor) || cursor === total)) {
        const [sum] = await e.readMany([mom2]);
        await opts.checkpoint.save({ mom2: sum as Float32Array, count, cursor });
      }
      if (stop && cursor < total) throw new StatsInterrupted(cursor, total);
      // one wait per group: progress reflects finished work, and the caller's signal handlers get to run
      await e.sync();
    }
  } catch (err) {
    mom2.dispose();
    throw err;
  }
  return { mom2, count, documents: total };
}

/** Greedy batches of consecutive (length-sorted) documents whose padded size stays within maxTokens. */
function lengthBatches(docs: readonly number[][], maxTokens: number): number[][][] {
  const out: number[][][] = [];
  let cur: number[][] = [];
  for (const d of docs) {
    const longest = Math.max(d.length, ...cur.map((x) => x.length));
    if (cur.length > 0 && longest * (cur.length + 1) > maxTokens) {
      out.push(cur);
      cur = [];
    }
    cur.push(d);
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** C = mom2 / count, a new [d_ff, d_ff] tensor. */
export function secondMomentMatrix(mom2: Tensor, count: number): Tensor {
  if (!(count > 0)) throw new StatsError("the statistics hold no tokens (count 0)");
  return scale(mom2, 1 / count);
}

/**
 * Uploads Σ k kᵀ read from a file and returns C = mom2 / count on the GPU (the caller disposes it); refuses a
 * matrix whose width is not this model's d_ff. `where` names the file in the error.
 */
export async function uploadSecondMoment(
  model: Gpt2Model,
  mom2: Float32Array,
  count: number,
  where: string,
): Promise<Tensor> {
  const dff = model.config.nInner;
  if (mom2.length !== dff * dff) {
    throw new StatsError(
      `${where} holds a ${Math.sqrt(mom2.length)}² matrix; this model's MLP keys have d_ff = ${dff}`,
    );
  }
  const e = model.engine;
  const C = e.scope(() => e.keep(secondMomentMatrix(e.upload(mom2, [dff, dff]), count)));
  await e.sync();
  return C;
}

/**
 * x = C⁻¹ k by the GPU Cholesky solve; a readable error when C is singular: with fewer tokens than d_ff
 * it cannot be positive definite (say how many more are needed), otherwise suggest damping.
 */
export async function solveSecondMoment(
  C: Tensor,
  k: Tensor,
  count: number,
  opts: { damping?: number; layer?: number } = {},
): Promise<Tensor> {
  const dff = C.shape[0];
  try {
    return await choleskySolveChecked(C, k, { damping: opts.damping ?? 0 });
  } catch (err) {
    if (!(err instanceof NotPositiveDefiniteError)) throw err;
    const where = opts.layer === undefined ? "C" : `C at layer ${opts.layer}`;
    if (count < dff) {
      throw new StatsError(
        `${where} is singular: it sums ${count} token keys, fewer than d_ff = ${dff}, so it cannot be ` +
          `positive definite; compute it over at least ${
            dff - count
          } more tokens (raise --samples or use a ` +
          `larger --corpus), or pass --damping λ (e.g. 1e-3 · the mean of C's diagonal)`,
      );
    }
    throw new StatsError(
      `${where} is not positive definite (Cholesky failed at column ${err.column} of ${dff}) although it ` +
        `sums ${count} token keys: compute it over more samples (--samples), or pass --damping λ ` +
        `(e.g. 1e-3 · the mean of C's diagonal)`,
    );
  }
}

// ---------------------------------------------------------------- files (bytes; the CLI does the I/O)

/** File name of cached statistics: one per (layer, corpus, sample count) under the model hash's folder. */
export function statsCacheName(layer: number, corpusHash: string, samples: number): string {
  return `layer${layer}_${corpusHash}_${samples}.safetensors`;
}

/**
 * Statistics a model folder ships, relative to the folder: `stats/layer<L>.safetensors`. The CLI reads it
 * from disk and the web page over HTTP, both before computing anything.
 */
export function shippedStatsFile(layer: number): string {
  return `stats/layer${layer}.safetensors`;
}

/**
 * Whether shipped statistics belong to this edit: taken at `layer`, and on the model `baseHash` names when
 * the file records one (files converted from the reference's .npz do not).
 */
export function statsFitModel(info: Partial<StatsInfo>, layer: number, baseHash: string): boolean {
  return info.layer === layer && (info.model_hash === undefined || info.model_hash === baseHash);
}

/** Identity of a statistics file, stored in its metadata. */
export interface StatsInfo {
  model_hash: string;
  layer: number;
  corpus_hash: string;
  samples: number;
  /** Documents consumed (equals samples when complete). */
  cursor: number;
  /** Where the statistics came from (a corpus path, or the .npz they were converted from). */
  source: string;
}

/**
 * Safetensors bytes of statistics: `mom2` F32 [d_ff, d_ff] (the sum Σ k kᵀ, as the reference's
 * `mom2.mom2`) and `count` F64 [1] (tokens), metadata = StatsInfo as strings, then `extra` (a shard's or a
 * merge's record, rome/stats_shards.ts). A checkpoint of an unfinished run is the same file with
 * cursor < samples.
 */
export function encodeSecondMoment(
  mom2: Float32Array,
  count: number,
  info: StatsInfo,
  extra: Record<string, string> = {},
): Uint8Array[] {
  const n = Math.round(Math.sqrt(mom2.length));
  if (n * n !== mom2.length) throw new StatsError(`mom2 has ${mom2.length} values, not a square matrix`);
  return serializeSafetensors([
    { name: "mom2", dtype: "F32", shape: [n, n], data: mom2 },
    { name: "count", dtype: "F64", shape: [1], data: Float64Array.of(count) },
  ], {
    format: "rome-webgpu-mom2",
    model_hash: info.model_hash,
    layer: String(info.layer),
    corpus_hash: info.corpus_hash,
    samples: String(info.samples),
    cursor: String(info.cursor),
    source: info.source,
    ...extra,
  });
}

/**
 * Reads statistics written by encodeSecondMoment (`metadata`: all of the header's, `extra` included);
 * throws StatsError naming the file when malformed.
 */
export function decodeSecondMoment(
  bytes: Uint8Array,
  name: string,
): { mom2: Float32Array; count: number; info: Partial<StatsInfo>; metadata: Record<string, string> } {
  let header;
  try {
    header = parseSafetensorsHeader(bytes, bytes.byteLength, name);
  } catch (e) {
    throw new StatsError(`${name}: not a statistics file (${(e as Error).message})`);
  }
  const data = bytes.subarray(header.dataOffset);
  const m = header.tensors.get("mom2"), c = header.tensors.get("count");
  if (!m || m.dtype !== "F32" || m.shape.length !== 2 || m.shape[0] !== m.shape[1]) {
    throw new StatsError(`${name}: expected an F32 square tensor 'mom2'`);
  }
  if (!c || c.dtype !== "F64" || c.shape.reduce((a, b) => a * b, 1) !== 1) {
    throw new StatsError(`${name}: expected an F64 scalar tensor 'count'`);
  }
  const mom2 = new Float32Array(readTensorRaw(m, data).slice().buffer);
  const count = new DataView(readTensorRaw(c, data).slice().buffer).getFloat64(0, true);
  const md = header.metadata;
  const info: Partial<StatsInfo> = {
    ...(md.model_hash ? { model_hash: md.model_hash } : {}),
    ...(md.layer ? { layer: Number(md.layer) } : {}),
    ...(md.corpus_hash ? { corpus_hash: md.corpus_hash } : {}),
    ...(md.samples ? { samples: Number(md.samples) } : {}),
    ...(md.cursor ? { cursor: Number(md.cursor) } : {}),
    ...(md.source ? { source: md.source } : {}),
  };
  return { mom2, count, info, metadata: md };
}

/** Documents of a corpus text: separated by lines holding only <|endoftext|>; empty ones dropped. */
export function splitCorpus(text: string): string[] {
  const docs: string[] = [];
  let cur: string[] = [];
  const end = () => {
    const d = cur.join("\n").trim();
    if (d.length > 0) docs.push(d);
    cur = [];
  };
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === "<|endoftext|>") end();
    else cur.push(line);
  }
  end();
  return docs;
}

/** Mean of C's diagonal, C = Σ k kᵀ / count (E[k_i²] averaged over i): the scale --damping is given in. */
export function meanDiagonal(mom2: Float32Array, count: number): number {
  const n = Math.round(Math.sqrt(mom2.length));
  let t = 0;
  for (let i = 0; i < n; i++) t += mom2[i * n + i];
  return t / count / n;
}
