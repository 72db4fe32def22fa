// Incremental decoding: the cached attention kernel against float64 causal attention, over caches split
// into parts, and the GPT-2 decode path against the float64 reference forward and the full-prefix forward.
import { deepStrictEqual, throws } from "node:assert/strict";
import {
  allocQkvCache,
  cachedAttention,
  type CachePos,
  planCacheStep,
  type QkvCache,
} from "../engine/launch/kvcache.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes } from "../engine/gpt2/model.ts";
import { decodeStep, newKvCache } from "../engine/gpt2/decode.ts";
import { generate, nextTokenLogprobs, topK } from "../engine/gpt2/generate.ts";
import { mulberry32 } from "../engine/random.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { TINY_CONFIG } from "./lib/fixtures.ts";
import { assertClose, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

/** float64 attention of the query at (seq, pos) over keys 0..pos of its sequence; cache rows [S·Tmax, 3C]. */
function refCached(
  cache: Float32Array,
  Tmax: number,
  C: number,
  H: number,
  at: readonly CachePos[],
): Float64Array {
  const hd = C / H, W = 3 * C, out = new Float64Array(at.length * C);
  at.forEach(({ seq, pos }, i) => {
    const row = (t: number) => (seq * Tmax + t) * W;
    for (let h = 0; h < H; h++) {
      const s = Array.from({ length: pos + 1 }, (_, j) => {
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += cache[row(pos) + h * hd + d] * cache[row(j) + C + h * hd + d];
        return dot / Math.sqrt(hd);
      });
      const m = Math.max(...s), p = s.map((x) => Math.exp(x - m)), sum = p.reduce((a, b) => a + b, 0);
      for (let d = 0; d < hd; d++) {
        let acc = 0;
        for (let j = 0; j <= pos; j++) acc += p[j] * cache[row(j) + 2 * C + h * hd + d];
        out[i * C + h * hd + d] = acc / sum;
      }
    }
  });
  return out;
}

/** A cache split into parts of `perPart` sequences (as a device with a small binding limit would split it). */
function splitCache(
  data: Float32Array,
  sequences: number,
  perPart: number,
  Tmax: number,
  W: number,
): QkvCache {
  const parts = [];
  for (let s0 = 0; s0 < sequences; s0 += perPart) {
    const s1 = Math.min(sequences, s0 + perPart);
    parts.push(engine.upload(data.slice(s0 * Tmax * W, s1 * Tmax * W), [(s1 - s0) * Tmax, W]));
  }
  return { parts, perPart, Tmax, width: W };
}

// Shapes off every tile: head dims below, at and above the 64 threads (the column loop), positions past 64
// (the key loop), one sequence or several split over parts.
for (
  const [S, Tmax, C, H, perPart] of [
    [1, 3, 6, 2, 1],
    [5, 17, 34, 2, 2],
    [3, 130, 160, 2, 3],
    [4, 65, 63, 1, 3],
  ] as const
) {
  Deno.test(`cached attention: ${S} sequences, Tmax ${Tmax}, C ${C}, ${H} heads, ${perPart} per part vs float64`, async () => {
    const W = 3 * C, data = randn(S * Tmax * W, S * 1000 + Tmax, 1.5);
    const cache = splitCache(data, S, perPart, Tmax, W);
    // every sequence: its last position, the first, and one in between (a prompt step and a decode step)
    const at: CachePos[] = [];
    for (let seq = 0; seq < S; seq++) {
      for (const pos of new Set([0, Math.floor((Tmax - 1) / 2), Tmax - 1])) at.push({ seq, pos });
    }
    const out = cachedAttention(engine, cache, planCacheStep(engine, cache, at), H);
    deepStrictEqual(out.shape, [at.length, C]);
    assertClose(
      await out.read(),
      refCached(data, Tmax, C, H, at),
      { atol: 2e-5, rtol: 1e-4 },
      "cached attention",
    );
    out.dispose();
    cache.parts.forEach((t) => t.dispose());
  });
}

Deno.test("cached attention: bad positions, sequences and order are refused", () => {
  const cache = allocQkvCache(engine, 3, 8, 12);
  throws(() => planCacheStep(engine, cache, [{ seq: 0, pos: 8 }]), /position 8 outside the cache's 8 tokens/);
  throws(() => planCacheStep(engine, cache, [{ seq: 3, pos: 0 }]), /sequence 3 outside 0..2/);
  const split: QkvCache = { ...cache, perPart: 1, parts: [cache.parts[0], cache.parts[0], cache.parts[0]] };
  throws(() => planCacheStep(engine, split, [{ seq: 2, pos: 0 }, { seq: 0, pos: 0 }]), /sequence order/);
  throws(() => allocQkvCache(engine, 1, 0, 12), /context of 0 tokens/);
  throws(() => allocQkvCache(engine, 0, 8, 12), /0 sequences/);
  cache.parts.forEach((t) => t.dispose());
});

function tinyModel(c: Gpt2Config, seed: number) {
  const W = randomGpt2Weights(c, seed);
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  const model = buildGpt2(engine, c, { tensors: shapes, read: (n) => W.get(n)!, describe: () => "memory" });
  return { W, model };
}

Deno.test("decode: prompts of different lengths, then one token each, match the float64 forward", async () => {
  const c = TINY_CONFIG, V = c.vocabSize;
  const { W, model } = tinyModel(c, 11);
  const prompts = [[5, 104, 263, 32, 7, 99], [17], [3, 9, 250, 11]];
  const cache = newKvCache(model, prompts.length, 12);
  const logitsOf = async (t: import("../engine/tensor.ts").Tensor) => {
    const flat = await t.read();
    t.dispose();
    return flat;
  };
  const refLast = (ids: number[]) => referenceForward(c, W, ids, { raw: true })[0];
  let got = await logitsOf(decodeStep(model, cache, prompts));
  prompts.forEach((p, i) => {
    assertClose(got.subarray(i * V, (i + 1) * V), refLast(p), { atol: 1e-4, rtol: 1e-4 }, `prompt ${i}`);
  });
  // a step that skips sequence 1: logits come back for sequences 0 and 2 only, in that order
  const next = [[42], [], [7, 8]];
  got = await logitsOf(decodeStep(model, cache, next));
  deepStrictEqual(cache.lengths, [7, 1, 6]);
  [0, 2].forEach((s, k) => {
    assertClose(got.subarray(k * V, (k + 1) * V), refLast([...prompts[s], ...next[s]]), {
      atol: 1e-4,
      rtol: 1e-4,
    }, `sequence ${s} after a step`);
  });
  throws(
    () => decodeStep(model, cache, [[1, 2, 3, 4, 5, 6], [], []]),
    /would reach 13 tokens, over the cache's 12/,
  );
  throws(() => decodeStep(model, cache, [[V], [], []]), new RegExp(`token id ${V} outside the vocabulary`));
  cache.dispose();
});

Deno.test("generate: the cached path gives the tokens of re-running the whole prefix, and stops at the context", async () => {
  const c: Gpt2Config = { ...TINY_CONFIG, nPositions: 20 };
  const { model } = tinyModel(c, 5);
  const prompts = [[5, 104, 263], [17, 1, 2, 3, 4, 5, 6], [9]];
  // the reference: every step runs the full prefix through the graph (no cache) and samples the same way
  async function fullPrefix(topk: number, seed: number, maxTokens: number): Promise<number[][]> {
    const rand = mulberry32(seed);
    const rows = prompts.map((p) => [...p]), out: number[][] = prompts.map(() => []);
    for (let step = 0; step < maxTokens; step++) {
      const live = rows.map((_, i) => i).filter((i) => rows[i].length < c.nPositions);
      if (live.length === 0) break;
      const lps = await nextTokenLogprobs(model, live.map((i) => rows[i]));
      live.forEach((i, j) => {
        const top = topK(lps[j], topk);
        let id = top[0].id;
        if (top.length > 1) {
          const ps = top.map((e) => Math.exp(e.logprob - top[0].logprob));
          let u = rand() * ps.reduce((a, b) => a + b, 0);
          for (let e = 0; e < top.length; e++) {
            u -= ps[e];
            if (u <= 0 || e === top.length - 1) {
              id = top[e].id;
              break;
            }
          }
        }
        rows[i].push(id);
        out[i].push(id);
      });
    }
    return out;
  }
  for (const k of [1, 4]) {
    const got = await generate(model, prompts, { maxTokens: 30, topK: k, seed: 7 });
    deepStrictEqual(got, await fullPrefix(k, 7, 30), `top-k ${k}`);
    // every row ends at the 20-token context
    deepStrictEqual(got.map((r, i) => prompts[i].length + r.length), [20, 20, 20]);
  }
  deepStrictEqual(await generate(model, [Array(20).fill(3)], { maxTokens: 5, topK: 1, seed: 0 }), [[]]);
  // a row that emits stopId ends there (the id included); the others go on as without it
  const free = await generate(model, prompts, { maxTokens: 10, topK: 1, seed: 0 });
  const stopId = free[1][3];
  const first = free.map((r) => r.indexOf(stopId));
  const stopped = await generate(model, prompts, { maxTokens: 10, topK: 1, seed: 0, stopId });
  deepStrictEqual(stopped, free.map((r, i) => first[i] >= 0 ? r.slice(0, first[i] + 1) : r));
});
