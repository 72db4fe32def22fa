// Shared test helpers: a seeded RNG, float64 comparison with stated tolerances, the shared engine.
import { Engine, getEngine, releaseEngine } from "../../engine/engine.ts";
import { quietMesa } from "../../engine/host.ts";
import { mulberry32 } from "../../engine/random.ts";

// Mesa complains on stderr without XDG_RUNTIME_DIR (`deno test FILE` does not go through tests/lib/run.ts).
quietMesa();

/** The engine every GPU test shares (one device per test process). Fails loudly without an adapter. */
export function testEngine(): Promise<Engine> {
  return getEngine();
}

// Let go of the shared device before the process exits. (This did not prevent the abort at exit that
// `deno test` showed one run in 7-15: that comes from a WebGPU-using thread being torn down, which is why
// `deno task test` runs the tests on the main thread; see tests/lib/run.ts.)
globalThis.addEventListener("unload", releaseEngine);

/** The tests' seeded generator (mulberry32): tests must be reproducible. */
export const rng: (seed: number) => () => number = mulberry32;

/** Standard normal samples (Box-Muller) as float32 values. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12), v = r();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** Standard normal draws (Box-Muller, one output of each pair) from the tests' generator. */
export function gaussian(seed: number): () => number {
  const r = rng(seed);
  return () => Math.sqrt(-2 * Math.log(Math.max(r(), 1e-300))) * Math.cos(2 * Math.PI * r());
}

/**
 * Keys like ROME's MLP keys: a positive mean, an AR(1)-correlated part (ρ = 0.9) and a few shared random
 * directions. `exact` is their true second moment E[kkᵀ] (into `c` if given: a Float32Array rounds each
 * entry once); `sample()` draws one key. The Cholesky tests and bench solve with them.
 */
export function keyModel(n: number, seed: number, dirs = 8, rho = 0.9) {
  const g = gaussian(seed);
  const mu = Float64Array.from({ length: n }, () => 0.3 * Math.abs(g()));
  const u = Float64Array.from({ length: n * dirs }, () => g() / Math.sqrt(dirs));
  const sample = (): Float64Array => {
    const k = new Float64Array(n);
    const w = Float64Array.from({ length: dirs }, g);
    let z = g();
    for (let i = 0; i < n; i++) {
      if (i > 0) z = rho * z + Math.sqrt(1 - rho * rho) * g();
      let v = mu[i] + z;
      for (let t = 0; t < dirs; t++) v += u[i * dirs + t] * w[t];
      k[i] = v;
    }
    return k;
  };
  const exact = <A extends Float64Array | Float32Array = Float64Array>(
    c: A = new Float64Array(n * n) as A,
  ): A => {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j <= i; j++) {
        let v = mu[i] * mu[j] + rho ** (i - j);
        for (let t = 0; t < dirs; t++) v += u[i * dirs + t] * u[j * dirs + t];
        c[i * n + j] = c[j * n + i] = v;
      }
    }
    return c;
  };
  return { sample, exact };
}

export function randInt(n: number, max: number, seed: number): Uint32Array {
  const r = rng(seed);
  return Uint32Array.from({ length: n }, () => Math.floor(r() * max));
}

export interface CloseReport {
  maxAbs: number;
  maxRel: number;
  worst: number;
}

/**
 * Asserts |a - e| <= atol + rtol * |e| elementwise; the message names the worst element and both errors.
 * NaN anywhere in `actual` fails.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol: number; rtol?: number },
  what = "values",
): CloseReport {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  const rtol = tol.rtol ?? 0;
  let maxAbs = 0, maxRel = 0, worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    const d = Math.abs(a - e);
    if (Number.isNaN(a) || Number.isNaN(d)) {
      if (Number.isNaN(e) && Number.isNaN(a)) continue;
      throw new Error(`${what}: NaN at ${i} (expected ${e})`);
    }
    maxAbs = Math.max(maxAbs, d);
    maxRel = Math.max(maxRel, d / Math.max(Math.abs(e), 1e-30));
    const excess = d - (tol.atol + rtol * Math.abs(e));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(|diff| ${
          Math.abs(actual[worst] - expected[worst]).toExponential(3)
        } > atol ${tol.atol} + rtol ${rtol}·|e|; ` +
        `max abs err ${maxAbs.toExponential(3)})`,
    );
  }
  return { maxAbs, maxRel, worst };
}

/** Awkward sizes that are not multiples of any tile: every kernel test draws its shapes from these. */
export const AWKWARD = [1, 3, 17, 63, 65, 127, 257] as const;

/** [rows, C] of the row-wise kernels' tests: AWKWARD × (AWKWARD and 768), and C = 4099 (256 threads a row). */
export const AWKWARD_ROWS: readonly (readonly [number, number])[] = AWKWARD.flatMap((rows) =>
  [...AWKWARD, 768].map((C) => [rows, C] as const)
).concat([[3, 4099]]);

/**
 * [rows, C] around the layer norms' two paths, one thread a row up to C = 1024 and a workgroup a row past
 * it: rows not multiples of the 64 rows a workgroup, 4097 × 128 (the small model's shape plus one row), and
 * `rows17` rows at C = 17.
 */
export function layerNormPathShapes(rows17: number): [number, number][] {
  return [[1, 1], [70, 1], [65, 3], [rows17, 17], [4097, 128], [3, 128], [129, 768], [5, 1024], [66, 1025]];
}

/** The byte arrays one after another in one array. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), at += p.byteLength);
  return out;
}

/** Row r of an [rows, C] float array: its mean and 1/sqrt(variance + eps), in float64 (layer norm references). */
export function rowMeanRstd(x: ArrayLike<number>, r: number, C: number, eps: number): [number, number] {
  let m = 0;
  for (let c = 0; c < C; c++) m += x[r * C + c];
  m /= C;
  let v = 0;
  for (let c = 0; c < C; c++) v += (x[r * C + c] - m) ** 2;
  return [m, 1 / Math.sqrt(v / C + eps)];
}
