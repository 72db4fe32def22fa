import {
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import {
  cholesky,
  choleskySolve,
  choleskySolveChecked,
  failedColumn,
  NotPositiveDefiniteError,
  triangularSolve,
} from "../engine/launch/linalg.ts";
import { AWKWARD, gaussian, keyModel, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();
const VERBOSE = Deno.env.get("CHOLESKY_VERBOSE") === "1";

// ---------------------------------------------------------------- float64 references

/** Float64 Cholesky (row-oriented, dot products over contiguous rows); throws if not SPD. */
function cholesky64(a: ArrayLike<number>, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * n + j];
      for (let p = 0; p < j; p++) s -= l[i * n + p] * l[j * n + p];
      if (i === j) {
        if (!(s > 0)) throw new Error(`reference: not SPD at ${i}`);
        l[i * n + i] = Math.sqrt(s);
      } else l[i * n + j] = s / l[j * n + j];
    }
  }
  return l;
}

/** ‖x - y‖_F / ‖y‖_F in float64. */
function relFrobenius(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < y.length; i++) {
    num += (x[i] - y[i]) ** 2;
    den += y[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** ‖A X - B‖_F / ‖B‖_F in float64 for A [n, n], X and B [n, r]. */
function relResidual(a: ArrayLike<number>, x: ArrayLike<number>, b: ArrayLike<number>, n: number): number {
  const r = b.length / n;
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < r; c++) {
      let s = -b[i * r + c];
      for (let j = 0; j < n; j++) s += a[i * n + j] * x[j * r + c];
      num += s * s;
      den += b[i * r + c] ** 2;
    }
  }
  return Math.sqrt(num / den);
}

/** Upper-triangle entries of a row-major square matrix that are not exactly zero. */
function upperNonZeros(l: ArrayLike<number>, n: number): number {
  let count = 0;
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) if (l[i * n + j] !== 0) count++;
  return count;
}

// ---------------------------------------------------------------- test matrices

/** Sample second moment (1/N) Σ k kᵀ of N keys from keyModel: ROME's C as it is actually estimated. */
function sampleSecondMoment(n: number, samples: number, seed: number): Float64Array {
  const model = keyModel(n, seed);
  const c = new Float64Array(n * n);
  for (let s = 0; s < samples; s++) {
    const k = model.sample();
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) c[i * n + j] += k[i] * k[j] / samples;
  }
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) c[j * n + i] = c[i * n + j];
  return c;
}

/** Q diag(logspace(0, -decades)) Qᵀ + ridge·I with Q a product of n random Householder reflections. */
function illConditioned(n: number, decades: number, ridge: number, seed: number): Float64Array {
  const g = gaussian(seed);
  // Columns of Q applied to the eigenvalues: start from diag and apply H_k on both sides.
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) c[i * n + i] = n === 1 ? 1 : 10 ** (-decades * i / (n - 1));
  const v = new Float64Array(n), w = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    let norm = 0;
    for (let i = 0; i < n; i++) norm += (v[i] = g()) ** 2;
    norm = Math.sqrt(norm);
    for (let i = 0; i < n; i++) v[i] /= norm;
    // C ← H C H with H = I - 2vvᵀ: C - 2 v wᵀ - 2 w vᵀ + 4 (vᵀCv) v vᵀ, w = C v.
    let vcv = 0;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += c[i * n + j] * v[j];
      w[i] = s;
      vcv += v[i] * s;
    }
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        c[i * n + j] += -2 * v[i] * w[j] - 2 * w[i] * v[j] + 4 * vcv * v[i] * v[j];
      }
    }
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) c[i * n + j] = c[j * n + i] = (c[i * n + j] + c[j * n + i]) / 2;
    c[i * n + i] += ridge;
  }
  return c;
}

interface Measured {
  lErr: number;
  residual: number;
  backward: number;
}

/** Normwise backward error ‖AX - B‖_F / (‖A‖_F ‖X‖_F + ‖B‖_F): ~ε for a stable solver whatever κ(A) is. */
function backwardError(a: ArrayLike<number>, x: ArrayLike<number>, b: ArrayLike<number>, n: number): number {
  const norm = (v: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < v.length; i++) s += v[i] ** 2;
    return Math.sqrt(s);
  };
  return relResidual(a, x, b, n) * norm(b) / (norm(a) * norm(x) + norm(b));
}

/** Factors and solves on the GPU, measures against the float64 reference of the same f32 matrix. */
async function factorAndSolve(c64: Float64Array, n: number, r: number, seed: number): Promise<Measured> {
  const c = Float32Array.from(c64);
  const b = randn(n * r, seed);
  return await engine.scopeAsync(async () => {
    const a = engine.upload(c, [n, n]);
    const bt = engine.upload(b, r === 1 ? [n] : [n, r]);
    const { l, status } = cholesky(a);
    const { x, status: solveStatus } = choleskySolve(a, bt);
    const [lg, st, xg, st2] = await engine.readMany([l, status, x, solveStatus]);
    assertEquals([st[0], st2[0]], [0, 0]);
    assertEquals(upperNonZeros(lg, n), 0);
    return {
      lErr: relFrobenius(lg, cholesky64(c, n)),
      residual: relResidual(c, xg, b, n),
      backward: backwardError(c, xg, b, n),
    };
  });
}

// ---------------------------------------------------------------- tests

// Tolerances. f32 has unit roundoff u = 6e-8. A backward-stable Cholesky solve has backward error of a few
// u whatever the conditioning (n = 1 alone: x = (b / √c) / √c, up to 2u), relative residual ≲ u·κ(C);
// the factor's forward error grows with κ too. Measured on lavapipe (worst over the sizes and block
// sizes): keys: ‖ΔL‖/‖L‖ 3.1e-6, residual 3.2e-5, backward 2.0e-8; κ≈1e5: ‖ΔL‖/‖L‖ 6.7e-6, residual
// 6.8e-4, backward 6.0e-8 (n = 1). Bounds leave ≥4x headroom; a wrong kernel gives errors of order 1.
const TOL = {
  keys: { lErr: 2e-5, residual: 2e-4, backward: 2.5e-7 },
  ill: { lErr: 5e-5, residual: 5e-3, backward: 2.5e-7 },
};

function check(what: string, m: Measured, tol: { lErr: number; residual: number; backward: number }): void {
  const line = `${what}: ‖L-L64‖/‖L64‖ ${m.lErr.toExponential(2)} residual ${m.residual.toExponential(2)} ` +
    `backward ${m.backward.toExponential(2)}`;
  if (VERBOSE) console.log(line);
  if (!(m.lErr <= tol.lErr && m.residual <= tol.residual && m.backward <= tol.backward)) {
    throw new Error(`${line} exceeds the tolerance ${JSON.stringify(tol)}`);
  }
}

Deno.test("cholesky + solve vs float64 on sample second moments of correlated keys (ROME's C)", async () => {
  for (const n of AWKWARD) {
    // 2n + 8 samples: full rank, and as anisotropic as an estimated key covariance.
    const m = await factorAndSolve(sampleSecondMoment(n, 2 * n + 8, n), n, n % 2 ? 3 : 1, 100 + n);
    check(`keys n=${n}`, m, TOL.keys);
  }
});

Deno.test("cholesky + solve vs float64 on ill-conditioned Q diag(logspace(0,-5)) Qᵀ + 1e-7 I", async () => {
  for (const n of AWKWARD) {
    check(`κ≈1e5 n=${n}`, await factorAndSolve(illConditioned(n, 5, 1e-7, 7 * n), n, 2, 200 + n), TOL.ill);
  }
});

Deno.test("blocked paths: block sizes 8 and 24 (partial last blocks) agree with float64", async () => {
  for (const blockSize of [8, 24]) {
    for (const n of [17, 65, 127]) {
      const c = Float32Array.from(sampleSecondMoment(n, 2 * n + 8, 3 * n));
      const b = randn(n * 2, n);
      const got = await engine.scopeAsync(async () => {
        const a = engine.upload(c, [n, n]);
        const { l } = cholesky(a, { blockSize });
        const { x } = choleskySolve(a, engine.upload(b, [n, 2]), { blockSize });
        return await engine.readMany([l, x]);
      });
      const m = {
        lErr: relFrobenius(got[0], cholesky64(c, n)),
        residual: relResidual(c, got[1], b, n),
        backward: backwardError(c, got[1], b, n),
      };
      check(`nb=${blockSize} n=${n}`, m, TOL.keys);
    }
  }
});

/** Forward / back substitution in float64 with the f32 factor. */
function substitute64(
  l: ArrayLike<number>,
  b: ArrayLike<number>,
  n: number,
  transpose: boolean,
): Float64Array {
  const r = b.length / n;
  const y = Float64Array.from(b);
  for (let c = 0; c < r; c++) {
    for (let s = 0; s < n; s++) {
      const i = transpose ? n - 1 - s : s;
      let v = y[i * r + c];
      if (transpose) { for (let p = i + 1; p < n; p++) v -= l[p * n + i] * y[p * r + c]; }
      else for (let p = 0; p < i; p++) v -= l[i * n + p] * y[p * r + c];
      y[i * r + c] = v / l[i * n + i];
    }
  }
  return y;
}

Deno.test("triangularSolve L y = b and Lᵀ y = b vs float64, reading only the lower triangle", async () => {
  for (const n of AWKWARD) {
    const l = Float32Array.from(cholesky64(sampleSecondMoment(n, 2 * n + 8, 5 * n), n));
    const poisoned = l.slice();
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) poisoned[i * n + j] = NaN;
    for (const r of [1, 5]) {
      const b = randn(n * r, n + r);
      const [y, yt] = await engine.scopeAsync(async () => {
        const lt = engine.upload(poisoned, [n, n]);
        const bt = engine.upload(b, r === 1 ? [n] : [n, r]);
        const outs = [
          triangularSolve(lt, bt, { transpose: false }),
          triangularSolve(lt, bt, { transpose: true }),
        ];
        assertEquals(outs.map((t) => t.shape), [bt.shape, bt.shape]);
        return await engine.readMany(outs);
      });
      // Triangular solves are backward stable; forward error ≲ ε·κ(L), κ(L) ≤ ~1e2 here.
      for (const [got, transpose] of [[y, false], [yt, true]] as const) {
        const err = relFrobenius(got, substitute64(l, b, n, transpose));
        if (VERBOSE) console.log(`trsv n=${n} r=${r} transpose=${transpose}: ${err.toExponential(2)}`);
        if (!(err <= 1e-5)) {
          throw new Error(`n=${n} r=${r} transpose=${transpose}: relative error ${err} > 1e-5`);
        }
      }
    }
  }
});

Deno.test("non-positive pivots: status names the first failing column, checked solve throws clearly", async () => {
  const n = 127;
  const base = Float32Array.from(sampleSecondMoment(n, 2 * n + 8, 11));
  const cases: [string, (c: Float32Array) => void, number][] = [
    ["negative diagonal at 70 (second block)", (c) => c[70 * n + 70] = -1, 70],
    ["negative first pivot", (c) => c[0] = -1e-3, 0],
    ["NaN on the diagonal at 5", (c) => c[5 * n + 5] = NaN, 5],
  ];
  for (const [what, spoil, column] of cases) {
    const c = base.slice();
    spoil(c);
    await engine.scopeAsync(async () => {
      const a = engine.upload(c, [n, n]);
      const { status } = cholesky(a);
      assertEquals([status.dtype, status.shape], ["u32", [1]]);
      const st = await status.read();
      assertEquals([what, failedColumn(st[0])], [what, column]);
      await assertRejects(
        () => choleskySolveChecked(a, engine.upload(randn(n, 1), [n])),
        (e: unknown) =>
          e instanceof NotPositiveDefiniteError && e.column === column &&
          e.message === `matrix is not positive definite at column ${column}; add damping / more samples`,
      );
    });
  }
});

Deno.test("damping: a singular (rank-deficient) C fails undamped and solves (C + λI) x = b damped", async () => {
  // Exactly singular in f32 arithmetic too: rows/cols 100 and 101 form [[4, 4], [4, 4]], the rest is a
  // diagonal, so the pivot of column 101 is exactly 4 - 2·2 = 0 (in the second block of 64).
  const n = 127, lambda = 0.5;
  const c = new Float32Array(n * n);
  for (let i = 0; i < n; i++) c[i * n + i] = 1 + i / n;
  c[100 * n + 100] =
    c[101 * n + 101] =
    c[100 * n + 101] =
    c[101 * n + 100] =
      4;
  const b = randn(n, 99);
  await engine.scopeAsync(async () => {
    const a = engine.upload(c, [n, n]);
    const bt = engine.upload(b, [n]);
    await assertRejects(
      () => choleskySolveChecked(a, bt),
      /not positive definite at column 101; add damping/,
    );
    const x = await choleskySolveChecked(a, bt, { damping: lambda });
    const damped = Float64Array.from(c);
    for (let i = 0; i < n; i++) damped[i * n + i] += lambda;
    const res = relResidual(damped, await x.read(), b, n);
    if (!(res <= 1e-6)) throw new Error(`damped residual ${res} > 1e-6`);
  });
});

Deno.test("matrices larger than one storage binding are bound in row chunks, bit-identical results", async () => {
  // 128 KiB bindings: a 257×257 f32 matrix (258 KB) needs 2-3 chunks per pass.
  const small = await Engine.create({ maxBindingBytes: 128 * 1024 });
  try {
    const n = 257;
    const c = Float32Array.from(sampleSecondMoment(n, 2 * n + 8, 21));
    const b = randn(n * 2, 22);
    const run = (e: Engine) =>
      e.scopeAsync(async () => {
        const a = e.upload(c, [n, n]);
        const before = e.stats.dispatches;
        const { l, status } = cholesky(a);
        const { x } = choleskySolve(a, e.upload(b, [n, 2]));
        const dispatches = e.stats.dispatches - before;
        const [lg, st, xg] = await e.readMany([l, status, x]);
        return { lg, st: st[0], xg, dispatches };
      });
    const whole = await run(engine), chunked = await run(small);
    if (!(chunked.dispatches > whole.dispatches)) {
      throw new Error(`expected extra chunk dispatches: ${chunked.dispatches} vs ${whole.dispatches}`);
    }
    assertEquals(chunked.st, 0);
    assertEquals(chunked.lg, whole.lg);
    assertEquals(chunked.xg, whole.xg);
    // A 64-row strip of a 600-column matrix (154 KB) cannot be bound: refused before recording anything.
    const big = small.upload(new Float32Array(600 * 600), [600, 600]);
    assertThrows(() => cholesky(big), /does not fit the device's 131072-byte storage binding/);
    big.dispose();
  } finally {
    small.destroy();
  }
});

Deno.test("shape, dtype and option errors are clear", () => {
  engine.scope(() => {
    const sq = engine.zeros([5, 5]);
    assertThrows(() => cholesky(engine.zeros([5, 4])), /square matrix \[n, n\], got \[5, 4\]/);
    assertThrows(() => cholesky(engine.zeros([25], "f32")), /square matrix/);
    assertThrows(() => cholesky(engine.zeros([5, 5], "u32")), /expected an f32 matrix/);
    assertThrows(() => cholesky(sq, { damping: -1 }), /damping must be a finite number ≥ 0/);
    assertThrows(() => cholesky(sq, { blockSize: 12 }), /blockSize must be a multiple of 8/);
    assertThrows(
      () => choleskySolve(sq, engine.zeros([4])),
      /right-hand side must be \[5\] or \[5, r\], got \[4\]/,
    );
    assertThrows(() => triangularSolve(sq, engine.zeros([5, 2, 1]), { transpose: true }), /must be \[5\]/);
  });
});

Deno.test("steady state: a repeated solve takes every buffer from the pool", async () => {
  const n = 65;
  const c = Float32Array.from(sampleSecondMoment(n, 2 * n + 8, 31));
  const step = () =>
    engine.scopeAsync(async () => {
      const { x, status } = choleskySolve(engine.upload(c, [n, n]), engine.upload(randn(n, 1), [n]));
      await engine.readMany([x, status]);
    });
  await step();
  const created = engine.stats.buffersCreated;
  await step();
  await step();
  assertEquals(engine.stats.buffersCreated, created);
});

Deno.test("acceptance: 3072×3072 key second moment (GPT-2 small), ‖Cx − k‖/‖k‖ ≤ 1e-4", async () => {
  const n = 3072;
  const model = keyModel(n, 3072, 32);
  const c = Float32Array.from(model.exact());
  const k = Float32Array.from(model.sample());
  const t0 = performance.now();
  const x = await engine.scopeAsync(async () => {
    const xt = await choleskySolveChecked(engine.upload(c, [n, n]), engine.upload(k, [n]));
    return await xt.read();
  });
  const seconds = (performance.now() - t0) / 1000;
  const residual = relResidual(c, x, k, n);
  if (VERBOSE) console.log(`n=3072: residual ${residual.toExponential(2)}, ${seconds.toFixed(2)} s`);
  if (!(residual <= 1e-4)) throw new Error(`3072: relative residual ${residual} > 1e-4`);
});
