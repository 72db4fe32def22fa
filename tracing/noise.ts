// The corruption of causal tracing (reference §1.2–1.3): Gaussian noise of scale ν = factor · σ_t added to
// the subject tokens' embeddings, where σ_t is the standard deviation of the token embeddings of a list
// of subjects. Runtime-neutral: no Deno APIs.
import type { Tensor } from "../engine/tensor.ts";
import { gatherRows } from "../engine/ops.ts";
import { mulberry32 } from "../engine/random.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";

/** `3x` (a multiple of σ_t, the reference's `s3`) or a plain absolute scale such as `0.1`. */
export type NoiseSpec = { factor: number } | { absolute: number };

/** The reference's noise: 3 × σ_t (the paper's ν). */
export const DEFAULT_NOISE = "3x";

/** Parses `--noise`: `<k>x` means k·σ_t, a bare number is ν itself. Throws a one-line error otherwise. */
export function parseNoiseSpec(text: string): NoiseSpec {
  const s = text.trim();
  const m = /^([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)x$/i.exec(s);
  if (m) {
    const factor = Number(m[1]);
    if (Number.isFinite(factor) && factor > 0) return { factor };
  } else if (/^[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?$/i.test(s)) {
    const absolute = Number(s);
    if (Number.isFinite(absolute) && absolute > 0) return { absolute };
  }
  throw new RangeError(
    `--noise must be a positive multiple of the embedding std like '3x', or a number (got '${text}')`,
  );
}

/** Unbiased standard deviation of all values (torch's `std()` default), in float64 (two passes). */
export function unbiasedStd(values: ArrayLike<number>): number {
  const n = values.length;
  if (n < 2) throw new RangeError(`std of ${n} value(s): need at least 2`);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += values[i];
  mean /= n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (values[i] - mean) ** 2;
  return Math.sqrt(ss / (n - 1));
}

export interface SubjectEmbeddingStd {
  /** σ_t: one scalar over every element of every subject token's embedding. */
  std: number;
  /** How many embedding rows (subject tokens) it was computed over. */
  rows: number;
  subjects: number;
}

/**
 * σ_t as `collect_embedding_std` computes it: each subject is tokenized alone (no prompt, no leading
 * space), its token embeddings are taken at the `embed` site (rows of wte, before position embeddings),
 * all rows of all subjects are pooled and one unbiased std is taken over all their elements. The rows
 * are gathered from the model's own token-embedding table (exactly what the embed hook sees) without
 * running the blocks the reference runs only to reach its hook; the statistics are done in float64.
 */
export async function subjectEmbeddingStd(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  subjects: readonly string[],
): Promise<SubjectEmbeddingStd> {
  const nonEmpty = subjects.filter((s) => s.length > 0); // repeats count, as in the reference
  const ids = nonEmpty.flatMap((s) => tokenizer.encode(s));
  if (ids.length < 2) throw new RangeError("noise: the subjects list has fewer than 2 tokens");
  const e = model.engine;
  const V = model.config.vocabSize;
  for (const id of ids) {
    if (id >= V) throw new RangeError(`noise: token id ${id} outside the model's vocabulary`);
  }
  const rows = await e.scopeAsync(async () => {
    const t = gatherRows(model.w("wte.weight"), e.upload(Uint32Array.from(ids), [ids.length], "u32"));
    return await e.read(t);
  });
  return { std: unbiasedStd(rows), rows: ids.length, subjects: nonEmpty.length };
}

/** ν from a spec: factor · σ_t (σ_t computed by the caller's `std()` only when a factor is asked for). */
export async function noiseScale(spec: NoiseSpec, std: () => Promise<number>): Promise<number> {
  return "absolute" in spec ? spec.absolute : spec.factor * await std();
}

/**
 * `n` standard normal values from a seeded generator (mulberry32 + Box–Muller, both outputs of each pair).
 * The reference draws numpy's RandomState(1) normals; we do not port MT19937, only the distribution and
 * the property that matters: the same seed gives the same samples, reused for every restored cell.
 */
export function standardNormal(n: number, seed: number): Float64Array {
  const rand = mulberry32(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rand(), 2 ** -32), v = rand();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/**
 * The corruption for one prompt: [samples · subjectTokens, d] rows of ν·N(0, 1), sample-major (row
 * s·n + j is sample s, subject token j). Drawn once per prompt and reused for every cell, as the
 * reference's re-seeded RandomState(1) effectively does.
 */
export function subjectNoise(
  model: Gpt2Model,
  samples: number,
  subjectTokens: number,
  scale: number,
  seed: number,
): Tensor {
  const d = model.config.nEmbd;
  const z = standardNormal(samples * subjectTokens * d, seed);
  const host = Float32Array.from(z, (v) => v * scale);
  return model.engine.upload(host, [samples * subjectTokens, d]);
}
