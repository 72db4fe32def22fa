// An independent float64 GPT-2 forward on the CPU (straight from the HF GPT2Model equations), and tiny
// random checkpoints for tests. Deliberately naive: clarity over speed.
import type { Gpt2Config } from "../../engine/gpt2/config.ts";
import { expectedWeightShapes } from "../../engine/gpt2/model.ts";
import { randn } from "./util.ts";

export type RefWeights = Map<string, Float64Array>;

/** Random GPT-2 weights in float32 (as a checkpoint would hold them), deterministic from `seed`. */
export function randomGpt2Weights(c: Gpt2Config, seed: number): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let s = seed;
  for (const [name, shape] of expectedWeightShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const isLnWeight = /ln_[12f]\.weight$/.test(name);
    const isBias = name.endsWith(".bias");
    const std = name.startsWith("wte") || name.startsWith("wpe")
      ? 0.1
      : isBias
      ? 0.05
      : 0.2 / Math.sqrt(shape[0]);
    const v = randn(n, ++s, std);
    if (isLnWeight) { for (let i = 0; i < n; i++) v[i] = 1 + v[i] * 0.5; }
    out.set(name, v);
  }
  return out;
}

const GELU_C = Math.sqrt(2 / Math.PI);
const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(GELU_C * (x + 0.044715 * x * x * x)));

function layerNorm(x: Float64Array, g: Float64Array, b: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let mean = 0;
  for (const v of x) mean += v;
  mean /= n;
  let vr = 0;
  for (const v of x) vr += (v - mean) ** 2;
  vr /= n;
  const r = 1 / Math.sqrt(vr + eps);
  return Float64Array.from(x, (v, i) => (v - mean) * r * g[i] + b[i]);
}

/** y = x·W + b with W [in, out] row-major (HF Conv1D). */
function linear(x: Float64Array, w: Float64Array, b: Float64Array | undefined, nOut: number): Float64Array {
  const nIn = x.length;
  const y = b ? Float64Array.from(b) : new Float64Array(nOut);
  for (let i = 0; i < nIn; i++) {
    const xi = x[i];
    if (xi === 0) continue;
    const row = i * nOut;
    for (let j = 0; j < nOut; j++) y[j] += xi * w[row + j];
  }
  return y;
}

type F64 = Float64Array<ArrayBuffer>;

export interface RefPatch {
  /** Called with (site, layer, token, state) and may return a replacement state. */
  (
    site: "embed" | "attn" | "mlp" | "mlpKey" | "resid",
    layer: number,
    t: number,
    v: Float64Array,
  ): Float64Array | void;
}

/**
 * Log-probabilities (or with `raw`, logits) of the next token at the given positions (default: the last)
 * of one prompt, in float64. `patch` mirrors the
 * engine's hook sites so hook semantics can be checked against the same equations.
 */
export function referenceForward(
  c: Gpt2Config,
  W: Map<string, Float32Array | Float64Array>,
  ids: readonly number[],
  opts: { positions?: number[]; patch?: RefPatch; raw?: boolean } = {},
): Float64Array[] {
  const d = c.nEmbd, H = c.nHead, hd = d / H, f = c.nInner, T = ids.length;
  const w = (n: string) => {
    const t = W.get(n);
    if (!t) throw new Error(`reference: missing ${n}`);
    return t instanceof Float64Array ? t : Float64Array.from(t);
  };
  const cache = new Map<string, Float64Array>();
  const get = (n: string) => cache.get(n) ?? cache.set(n, w(n)).get(n)!;
  const wte = get("wte.weight"), wpe = get("wpe.weight");
  let xs: Float64Array[] = ids.map((id, t) => {
    let e: F64 = wte.slice(id * d, id * d + d);
    e = (opts.patch?.("embed", 0, t, e) as F64 | undefined) ?? e;
    return Float64Array.from(e, (v, i) => v + wpe[t * d + i]);
  });
  for (let l = 0; l < c.nLayer; l++) {
    const p = `h.${l}.`;
    const qkv = xs.map((x) =>
      linear(
        layerNorm(x, get(p + "ln_1.weight"), get(p + "ln_1.bias"), c.layerNormEps),
        get(p + "attn.c_attn.weight"),
        get(p + "attn.c_attn.bias"),
        3 * d,
      )
    );
    const heads = xs.map(() => new Float64Array(d));
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const s = new Float64Array(i + 1);
        let mx = -Infinity;
        for (let j = 0; j <= i; j++) {
          let dot = 0;
          for (let k = 0; k < hd; k++) dot += qkv[i][h * hd + k] * qkv[j][d + h * hd + k];
          s[j] = dot / Math.sqrt(hd);
          mx = Math.max(mx, s[j]);
        }
        let z = 0;
        for (let j = 0; j <= i; j++) z += s[j] = Math.exp(s[j] - mx);
        for (let j = 0; j <= i; j++) {
          for (let k = 0; k < hd; k++) heads[i][h * hd + k] += (s[j] / z) * qkv[j][2 * d + h * hd + k];
        }
      }
    }
    xs = xs.map((x, t) => {
      let a = linear(heads[t], get(p + "attn.c_proj.weight"), get(p + "attn.c_proj.bias"), d);
      a = (opts.patch?.("attn", l, t, a) as F64 | undefined) ?? a;
      const x1 = Float64Array.from(x, (v, i) => v + a[i]);
      let k: F64 = linear(
        layerNorm(x1, get(p + "ln_2.weight"), get(p + "ln_2.bias"), c.layerNormEps),
        get(p + "mlp.c_fc.weight"),
        get(p + "mlp.c_fc.bias"),
        f,
      ).map(gelu);
      k = (opts.patch?.("mlpKey", l, t, k) as F64 | undefined) ?? k;
      let m = linear(k, get(p + "mlp.c_proj.weight"), get(p + "mlp.c_proj.bias"), d);
      m = (opts.patch?.("mlp", l, t, m) as F64 | undefined) ?? m;
      const x2 = Float64Array.from(x1, (v, i) => v + m[i]);
      return (opts.patch?.("resid", l, t, x2) as F64 | undefined) ?? x2;
    });
  }
  const positions = opts.positions ?? [T - 1];
  return positions.map((t) => {
    const h = layerNorm(xs[t], get("ln_f.weight"), get("ln_f.bias"), c.layerNormEps);
    const logits = new Float64Array(c.vocabSize);
    for (let v = 0; v < c.vocabSize; v++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += h[k] * wte[v * d + k];
      logits[v] = dot;
    }
    if (opts.raw) return logits;
    let mx = -Infinity;
    for (const v of logits) mx = Math.max(mx, v);
    let z = 0;
    for (const v of logits) z += Math.exp(v - mx);
    const lz = mx + Math.log(z);
    return logits.map((v) => v - lz);
  });
}
