// Shared test helpers: a seeded RNG, float64 comparison with stated tolerances, the shared engine.
import { Engine, getEngine, releaseEngine } from "../engine/engine.ts";
import { quietMesa } from "../engine/host.ts";
import { mulberry32 } from "../engine/random.ts";

// Mesa complains on stderr without XDG_RUNTIME_DIR (`deno test FILE` does not go through tests/run.ts).
quietMesa();

/** The engine every GPU test shares (one device per test process). Fails loudly without an adapter. */
export function testEngine(): Promise<Engine> {
  return getEngine();
}

// Let go of the shared device before the process exits. (This did not prevent the abort at exit that
// `deno test` showed one run in 7-15: that comes from a WebGPU-using thread being torn down, which is why
// `deno task test` runs the tests on the main thread; see tests/run.ts.)
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
