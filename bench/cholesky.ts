// Cholesky factor + solve of ROME's C x = k at GPT-2's key sizes (n = 768, 3072 = 4·768 for small,
// 6400 = 4·1600 for XL), against a plain single-threaded float64 TypeScript Cholesky on the same matrix.
// The matrix is the exact second moment E[kkᵀ] of a key model (positive mean + AR(1)-correlated part +
// 32 shared random directions), k a fresh key from it, so the residual is the one ROME would see.
// GFLOPS count the factor's n³/3 over the factor + solve time (the solves add 2n²·r, negligible).
import { type Engine, getEngine } from "../engine/engine.ts";
import { cholesky, choleskySolve, choleskySolveChecked } from "../engine/ops.ts";
import { keyModel } from "../tests/lib/util.ts";
import { runAlone } from "./util.ts";

/** Second moment of keys (tests' keyModel with 32 directions) in f32, and one fresh key. */
function keyProblem(n: number, seed: number): { c: Float32Array; k: Float32Array } {
  const model = keyModel(n, seed, 32);
  const c = model.exact(new Float32Array(n * n));
  return { c, k: Float32Array.from(model.sample()) };
}

/** ‖C x − b‖ / ‖b‖ in float64 from the f32 values. */
function relResidual(c: Float32Array, x: ArrayLike<number>, b: Float32Array, n: number): number {
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    let s = -b[i];
    for (let j = 0; j < n; j++) s += c[i * n + j] * x[j];
    num += s * s;
    den += b[i] * b[i];
  }
  return Math.sqrt(num / den);
}

/** The CPU baseline: Cholesky–Banachiewicz in float64 (dot products over contiguous rows) + 2 solves. */
function cpuCholeskySolve(c: Float32Array, b: Float32Array, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j <= i; j++) {
      const rj = j * n;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, p = 0;
      for (; p + 3 < j; p += 4) {
        s0 += l[ri + p] * l[rj + p];
        s1 += l[ri + p + 1] * l[rj + p + 1];
        s2 += l[ri + p + 2] * l[rj + p + 2];
        s3 += l[ri + p + 3] * l[rj + p + 3];
      }
      for (; p < j; p++) s0 += l[ri + p] * l[rj + p];
      const s = c[ri + j] - (s0 + s1 + s2 + s3);
      if (i === j) {
        if (!(s > 0)) throw new Error(`cpu cholesky: not positive definite at column ${i}`);
        l[ri + i] = Math.sqrt(s);
      } else l[ri + j] = s / l[rj + j];
    }
  }
  const x = Float64Array.from(b);
  for (let i = 0; i < n; i++) {
    let s = x[i];
    for (let p = 0; p < i; p++) s -= l[i * n + p] * x[p];
    x[i] = s / l[i * n + i];
  }
  for (let i = n - 1; i >= 0; i--) {
    let s = x[i];
    for (let p = i + 1; p < n; p++) s -= l[p * n + i] * x[p];
    x[i] = s / l[i * n + i];
  }
  return x;
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const sizes = opts.quick ? [768, 3072] : [768, 3072, 6400];
  if (!opts.json) {
    console.log(
      "cholesky+solve     n   factor s   factor+solve s   GFLOPS   ‖Cx−k‖/‖k‖   cpu f64 s   cpu GFLOPS   speedup",
    );
  }
  for (const n of sizes) {
    const iters = n <= 1024 ? 5 : n <= 3072 ? 3 : 1;
    const { c, k } = keyProblem(n, n);
    const a = engine.keep(engine.upload(c, [n, n]));
    const b = engine.keep(engine.upload(k, [n]));
    // Warm-up (compiles every pipeline) and the accuracy run; the checked solve throws if C is not SPD.
    const x = await engine.scopeAsync(async () => await (await choleskySolveChecked(a, b)).read());
    const residual = relResidual(c, x, k, n);

    const timeIt = async (fn: () => void): Promise<number> => {
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) engine.scope(fn);
      await engine.sync();
      return (performance.now() - t0) / 1000 / iters;
    };
    const factorSeconds = await timeIt(() => void cholesky(a));
    // The checked solve adds one status readback; time the unchecked path it is built on.
    const seconds = await timeIt(() => void choleskySolve(a, b));
    a.dispose();
    b.dispose();

    const t0 = performance.now();
    cpuCholeskySolve(c, k, n);
    const cpuSeconds = (performance.now() - t0) / 1000;

    const flops = n ** 3 / 3;
    const row = {
      name: "cholesky_solve_f32",
      n,
      seconds,
      gflops: flops / seconds / 1e9,
      factor_seconds: factorSeconds,
      residual,
      cpu_seconds: cpuSeconds,
      cpu_gflops: flops / cpuSeconds / 1e9,
      iters,
    };
    rows.push(row);
    if (!opts.json) {
      console.log(
        `${"".padEnd(14)} ${String(n).padStart(5)} ${factorSeconds.toFixed(3).padStart(10)} ${
          seconds.toFixed(3).padStart(16)
        } ${row.gflops.toFixed(2).padStart(8)} ${residual.toExponential(2).padStart(12)} ${
          cpuSeconds.toFixed(2).padStart(11)
        } ${row.cpu_gflops.toFixed(2).padStart(12)} ${(cpuSeconds / seconds).toFixed(1).padStart(8)}x`,
      );
    }
  }
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine(), 2);
