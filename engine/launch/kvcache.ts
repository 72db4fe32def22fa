// The KV cache of incremental decoding and its attention op (kernels/attention_cached.ts).
// A layer's cache keeps the c_attn output rows [Tmax, 3C] of every sequence; sequences are grouped into
// tensors that each fit one storage binding (GPT-2 XL with 1024 positions: 19.7 MB a sequence, six to a
// group on lavapipe's 128 MiB). Forward only: generation needs no gradients.
import { CACHED_MAX_T, cachedAttentionKernel } from "../../kernels/attention_cached.ts";
import type { Engine } from "../engine.ts";
import type { Tensor } from "../tensor.ts";
import { bindAll } from "../chunks.ts";
import { copyRows } from "./copy.ts";

/** One layer's cache: sequence s lives in parts[⌊s / perPart⌋] at rows (s mod perPart)·Tmax + t. */
export interface QkvCache {
  readonly parts: Tensor[];
  readonly perPart: number;
  readonly Tmax: number;
  /** 3C: the c_attn output width. */
  readonly width: number;
}

/** A zeroed cache for `sequences` sequences of up to `Tmax` tokens with c_attn rows of `width` floats. */
export function allocQkvCache(e: Engine, sequences: number, Tmax: number, width: number): QkvCache {
  if (!Number.isInteger(Tmax) || Tmax < 1 || Tmax > CACHED_MAX_T) {
    throw new RangeError(`KV cache: context of ${Tmax} tokens outside 1..${CACHED_MAX_T}`);
  }
  if (width % 3 !== 0) throw new RangeError(`KV cache: row width ${width} is not 3·C`);
  if (!Number.isInteger(sequences) || sequences < 1) {
    throw new RangeError(`KV cache: ${sequences} sequences (need at least one)`);
  }
  // each part is a tensor of its own (offset 0), so whole sequences fill it up to the binding limit
  const seqBytes = Tmax * width * 4, max = e.limits.maxBindingBytes;
  const perPart = Math.min(sequences, Math.floor(max / seqBytes));
  if (perPart < 1) {
    throw new RangeError(
      `KV cache: one sequence of ${Tmax} tokens needs ${seqBytes} bytes, over the device's ${max}-byte storage binding`,
    );
  }
  const parts: Tensor[] = [];
  for (let s0 = 0; s0 < sequences; s0 += perPart) {
    parts.push(e.keep(e.zeros([(Math.min(sequences, s0 + perPart) - s0) * Tmax, width])));
  }
  return { parts, perPart, Tmax, width };
}

/** A query (or cached) token: its sequence and its position in that sequence. */
export interface CachePos {
  readonly seq: number;
  readonly pos: number;
}

/**
 * Where one decoding step's tokens go, computed once and shared by every layer (all layers' caches have
 * the same geometry): per cache part, the step's rows and their cache rows; and the attention's queries.
 */
export interface CacheStep {
  readonly n: number;
  readonly writes: readonly { part: number; src: Tensor; dst: Tensor }[];
  /** [2n] u32: (sequence within its part, position) per query. */
  readonly queries: Tensor;
  /** Dispatches of the attention: query rows [i0, i1) all in cache part `part`. */
  readonly spans: readonly { part: number; i0: number; i1: number }[];
}

/**
 * Plans a step over the tokens `at` (one per row of the step's activations). Tokens must come in
 * increasing cache-part order (sequence order does that); positions must lie inside the cache.
 */
export function planCacheStep(e: Engine, cache: QkvCache, at: readonly CachePos[]): CacheStep {
  const sequences = cache.parts.reduce((n, t) => n + t.shape[0] / cache.Tmax, 0);
  const meta = new Uint32Array(2 * at.length);
  const src: number[][] = cache.parts.map(() => []), dst: number[][] = cache.parts.map(() => []);
  const spans: { part: number; i0: number; i1: number }[] = [];
  const maxY = e.limits.maxWorkgroupsPerDim;
  at.forEach(({ seq, pos }, i) => {
    if (!Number.isInteger(seq) || seq < 0 || seq >= sequences) {
      throw new RangeError(`KV cache: sequence ${seq} outside 0..${sequences - 1}`);
    }
    if (!Number.isInteger(pos) || pos < 0 || pos >= cache.Tmax) {
      throw new RangeError(`KV cache: position ${pos} outside the cache's ${cache.Tmax} tokens`);
    }
    const part = Math.floor(seq / cache.perPart), local = seq % cache.perPart;
    meta[2 * i] = local;
    meta[2 * i + 1] = pos;
    src[part].push(i);
    dst[part].push(local * cache.Tmax + pos);
    const span = spans.at(-1);
    if (span && span.part > part) throw new RangeError("KV cache: tokens must come in sequence order");
    if (span && span.part === part && span.i1 - span.i0 < maxY) span.i1 = i + 1;
    else spans.push({ part, i0: i, i1: i + 1 });
  });
  const rows = (r: number[]) => e.upload(Uint32Array.from(r), [r.length], "u32");
  const writes = src.flatMap((s, part) => s.length > 0 ? [{ part, src: rows(s), dst: rows(dst[part]) }] : []);
  return { n: at.length, writes, queries: e.upload(meta, [meta.length], "u32"), spans };
}

/** Writes the step's qkv rows [n, 3C] into the cache. */
export function writeQkv(cache: QkvCache, qkv: Tensor, step: CacheStep): void {
  if (qkv.rank !== 2 || qkv.shape[0] !== step.n || qkv.shape[1] !== cache.width) {
    throw new RangeError(`KV cache write: qkv ${qkv}, expected [${step.n}, ${cache.width}]`);
  }
  for (const w of step.writes) copyRows(qkv, w.src, cache.parts[w.part], w.dst);
}

/**
 * Causal multi-head attention of the step's tokens (already written to the cache) over their own
 * sequence's cached tokens 0..pos: [n, C], rows in the step's order.
 */
export function cachedAttention(e: Engine, cache: QkvCache, step: CacheStep, nHead: number): Tensor {
  const C = cache.width / 3;
  if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
    throw new RangeError(`cached attention: ${nHead} heads do not split C = ${C}`);
  }
  const hd = C / nHead;
  const out = e.empty([step.n, C]);
  const queries = bindAll(step.queries, "cached attention");
  for (const { part, i0, i1 } of step.spans) {
    const c = bindAll(cache.parts[part], "cached attention");
    const o = out.range(i0 * C, i1 * C);
    e.dispatch(
      cachedAttentionKernel,
      {
        Tmax: cache.Tmax,
        H: nHead,
        hd,
        C,
        oRow0: i0,
        cOff: c.elemOffset,
        oOff: o.elemOffset,
        scale: 1 / Math.sqrt(hd),
      },
      [queries, c, o],
      [nHead, i1 - i0, 1],
    );
  }
  return out;
}
