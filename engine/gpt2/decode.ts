// Incremental decoding: the GPT-2 graph over new tokens only, against a KV cache of every earlier token's
// c_attn output. A step costs one token per sequence instead of the whole prefix (generation was ~40 s a
// CounterFact case on lavapipe re-running 10 prefixes for 100 steps). The blocks are Gpt2Model's own, with
// attention through the cache; no hooks.
import { add, gatherRows, selectRows } from "../ops.ts";
import {
  allocQkvCache,
  cachedAttention,
  type CachePos,
  planCacheStep,
  type QkvCache,
  writeQkv,
} from "../launch/kvcache.ts";
import type { Tensor } from "../tensor.ts";
import type { Gpt2Model } from "./model.ts";

export interface KvCache {
  /** One cache per layer. */
  readonly layers: QkvCache[];
  /** Tokens cached so far, per sequence. */
  readonly lengths: number[];
  readonly Tmax: number;
  dispose(): void;
}

/** An empty cache for `sequences` sequences of up to `Tmax` tokens (default: the model's context). */
export function newKvCache(model: Gpt2Model, sequences: number, Tmax = model.config.nPositions): KvCache {
  const c = model.config;
  if (Tmax > c.nPositions) {
    throw new RangeError(`KV cache: ${Tmax} tokens exceed the model's context of ${c.nPositions}`);
  }
  const layers = Array.from(
    { length: c.nLayer },
    () => allocQkvCache(model.engine, sequences, Tmax, 3 * c.nEmbd),
  );
  return {
    layers,
    lengths: new Array(sequences).fill(0),
    Tmax,
    dispose: () => layers.forEach((l) => l.parts.forEach((t) => t.dispose())),
  };
}

/**
 * Appends `tokens[s]` (possibly none) to each sequence s and returns the logits [k, vocab] after the last
 * new token of each of the k sequences that got tokens, in sequence order. The caller owns the tensor.
 */
export function decodeStep(model: Gpt2Model, cache: KvCache, tokens: readonly (readonly number[])[]): Tensor {
  const c = model.config, e = model.engine;
  if (tokens.length !== cache.lengths.length) {
    throw new RangeError(
      `decode: ${tokens.length} token lists for a cache of ${cache.lengths.length} sequences`,
    );
  }
  const at: CachePos[] = [], ids: number[] = [], last: number[] = [];
  tokens.forEach((row, seq) => {
    if (cache.lengths[seq] + row.length > cache.Tmax) {
      throw new RangeError(
        `decode: sequence ${seq} would reach ${
          cache.lengths[seq] + row.length
        } tokens, over the cache's ${cache.Tmax}`,
      );
    }
    row.forEach((id, k) => {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
        throw new RangeError(`decode: token id ${id} outside the vocabulary of ${c.vocabSize}`);
      }
      at.push({ seq, pos: cache.lengths[seq] + k });
      ids.push(id);
    });
    if (row.length > 0) last.push(at.length - 1);
  });
  if (at.length === 0) throw new RangeError("decode: no tokens to run");
  const logits = e.scope(() => {
    const step = planCacheStep(e, cache.layers[0], at);
    const positions = Uint32Array.from(at.map((p) => p.pos));
    let x = add(
      gatherRows(model.w("wte.weight"), e.upload(Uint32Array.from(ids), [ids.length], "u32")),
      gatherRows(model.w("wpe.weight"), e.upload(positions, [ids.length], "u32")),
    );
    for (let l = 0; l < c.nLayer; l++) {
      const prev = x, layer = cache.layers[l];
      const attend = (qkv: Tensor) => {
        writeQkv(layer, qkv, step);
        return cachedAttention(e, layer, step, c.nHead);
      };
      x = e.scope(() => model.block(l, prev, attend));
      prev.dispose();
    }
    return model.logitsOf(selectRows(x, e.upload(Uint32Array.from(last), [last.length], "u32")));
  });
  tokens.forEach((row, seq) => cache.lengths[seq] += row.length);
  return logits;
}
