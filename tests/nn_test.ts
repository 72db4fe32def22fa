import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import {
  geluBackward,
  launchGelu,
  launchLayerNorm,
  LAYERNORM_ROWTHREAD_MAX_C,
  logSoftmax,
  softmax,
} from "../engine/launch/nn.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  assertClose,
  AWKWARD,
  AWKWARD_ROWS,
  layerNormPathShapes,
  randn,
  rowMeanRstd,
  testEngine,
} from "./lib/util.ts";

const engine = await testEngine();

// ---------------------------------------------------------------- float64 references

function refLayerNorm(
  x: ArrayLike<number>,
  g: ArrayLike<number>,
  b: ArrayLike<number>,
  rows: number,
  C: number,
) {
  const y = new Float64Array(rows * C), mean = new Float64Array(rows), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const [m, rs] = rowMeanRstd(x, r, C, 1e-5);
    for (let c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - m) * rs * g[c] + b[c];
    mean[r] = m;
    rstd[r] = rs;
  }
  return { y, mean, rstd };
}

const K = Math.sqrt(2 / Math.PI);
const gelu64 = (x: number) => 0.5 * x * (1 + Math.tanh(K * (x + 0.044715 * x ** 3)));

function refSoftmax(x: ArrayLike<number>, rows: number, C: number) {
  const p = new Float64Array(rows * C), lp = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, x[r * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(x[r * C + c] - m);
    for (let c = 0; c < C; c++) {
      p[r * C + c] = Math.exp(x[r * C + c] - m) / s;
      lp[r * C + c] = x[r * C + c] - m - Math.log(s);
    }
  }
  return { p, lp };
}

/** x with a different offset per row, so rows are not all centred at 0. */
function offsetRows(rows: number, C: number, seed: number, offsets: number[], scale = 1): Float32Array {
  const x = randn(rows * C, seed, scale);
  for (let i = 0; i < x.length; i++) x[i] += offsets[Math.floor(i / C) % offsets.length];
  return x;
}

// ---------------------------------------------------------------- layerNorm

Deno.test("layerNorm vs float64 on AWKWARD rows x cols, C = 768 and 4099 (256 threads); mean, rstd per row", async () => {
  const worst = { y: 0, mean: 0, rstd: 0 };
  for (const [rows, C] of AWKWARD_ROWS) {
    const X = offsetRows(rows, C, rows * 1009 + C, [0, 3, -10, 0.5], 2);
    const G = randn(C, C + 1), B = randn(C, C + 2);
    await engine.scopeAsync(async () => {
      const { y, mean, rstd } = launchLayerNorm(
        engine.upload(X, [rows, C]),
        engine.upload(G, [C]),
        engine.upload(B, [C]),
      );
      assertEquals(y.shape, [rows, C]);
      assertEquals(mean.shape, [rows]);
      assertEquals(rstd.shape, [rows]);
      const [gy, gm, gr] = await engine.readMany([y, mean, rstd]);
      const ref = refLayerNorm(X, G, B, rows, C);
      const at = `[${rows}, ${C}]`;
      // y is O(|gamma| * 3 + |beta|) ~ 1..10: atol 1e-5 at unit scale
      worst.y = Math.max(worst.y, assertClose(gy, ref.y, { atol: 1e-5, rtol: 1e-5 }, `y ${at}`).maxAbs);
      worst.mean = Math.max(worst.mean, assertClose(gm, ref.mean, { atol: 1e-5 }, `mean ${at}`).maxAbs);
      // rstd of a constant row (C = 1) is 1/sqrt(eps) = 316: relative tolerance
      worst.rstd = Math.max(
        worst.rstd,
        assertClose(gr, ref.rstd, { atol: 0, rtol: 1e-5 }, `rstd ${at}`).maxRel,
      );
    });
  }
  console.log(
    `layerNorm max errors: y ${worst.y.toExponential(2)} abs, mean ${worst.mean.toExponential(2)} abs, ` +
      `rstd ${worst.rstd.toExponential(2)} rel`,
  );
});

Deno.test("layerNorm thread-per-row path (C <= 1024) vs float64, and the workgroup path just past it", async () => {
  assertEquals(LAYERNORM_ROWTHREAD_MAX_C, 1024);
  // rows not multiples of the 64 rows per workgroup; 4097 rows x 128 is the small model's shape plus one
  for (const [rows, C] of layerNormPathShapes(130)) {
    const X = offsetRows(rows, C, rows * 31 + C, [0, 3, -10, 0.5], 2);
    const G = randn(C, C + 3), B = randn(C, C + 4);
    await engine.scopeAsync(async () => {
      const { y, mean, rstd } = launchLayerNorm(
        engine.upload(X, [rows, C]),
        engine.upload(G, [C]),
        engine.upload(B, [C]),
      );
      const [gy, gm, gr] = await engine.readMany([y, mean, rstd]);
      const ref = refLayerNorm(X, G, B, rows, C);
      const at = `[${rows}, ${C}]`;
      assertClose(gy, ref.y, { atol: 1e-5, rtol: 1e-5 }, `y ${at}`);
      assertClose(gm, ref.mean, { atol: 1e-5 }, `mean ${at}`);
      assertClose(gr, ref.rstd, { atol: 0, rtol: 1e-5 }, `rstd ${at}`);
    });
  }
});

Deno.test("layerNorm with |mean| = 300 std stays accurate (two-pass; E[x^2]-E[x]^2 would lose ~1e-2)", async () => {
  const rows = 17, C = 257;
  const X = offsetRows(rows, C, 5, [300, -300, 1000 / 3]);
  const G = randn(C, 6), B = randn(C, 7);
  const { y, rstd } = launchLayerNorm(
    engine.upload(X, [rows, C]),
    engine.upload(G, [C]),
    engine.upload(B, [C]),
  );
  const [gy, gr] = await engine.readMany([y, rstd]);
  const ref = refLayerNorm(X, G, B, rows, C);
  // the f32 inputs are exact in both; what is left is the f32 mean's rounding (~300 * 2^-24 per add)
  assertClose(gy, ref.y, { atol: 1e-4 }, "y");
  assertClose(gr, ref.rstd, { atol: 0, rtol: 1e-4 }, "rstd");
});

Deno.test("layerNorm of a constant row gives beta and rstd = 1/sqrt(eps); eps is honoured", async () => {
  const C = 65;
  const B = randn(C, 9);
  const x = engine.upload(new Float32Array(2 * C).fill(7.25), [2, C]);
  const g = engine.upload(randn(C, 8), [C]), b = engine.upload(B, [C]);
  const a = launchLayerNorm(x, g, b), e = launchLayerNorm(x, g, b, 1e-2);
  const [y, rstd, rstd2] = await engine.readMany([a.y, a.rstd, e.rstd]);
  assertClose(y, Float64Array.from({ length: 2 * C }, (_, i) => B[i % C]), { atol: 0 }, "y = beta");
  assertClose(rstd, [1 / Math.sqrt(1e-5), 1 / Math.sqrt(1e-5)], { atol: 0, rtol: 1e-6 }, "rstd");
  assertClose(rstd2, [10, 10], { atol: 0, rtol: 1e-6 }, "rstd eps=1e-2");
});

Deno.test("layerNorm rejects mismatched gamma/beta, non-f32 input, a scalar", () => {
  engine.scope(() => {
    const x = engine.upload(randn(12, 1), [3, 4]);
    const g4 = engine.upload(randn(4, 2), [4]);
    assertThrows(() => launchLayerNorm(x, engine.upload(randn(5, 2), [5]), g4), /gamma must be \[4\]/);
    assertThrows(() => launchLayerNorm(x, g4, engine.upload(randn(4, 2), [2, 2])), /beta must be \[4\]/);
    assertThrows(
      () => launchLayerNorm(engine.upload(new Uint32Array(12), [3, 4]), g4, g4),
      /expected f32, got u32/,
    );
    assertThrows(() => launchLayerNorm(engine.upload([1], []), g4, g4), /scalar/);
  });
});

// ---------------------------------------------------------------- GELU

const EXTREMES = [1e4, -1e4, 3e38, -3e38, 1e38, -1e38, 1e13, -1e13, 10, -10, 7, -7, 6.5, -6.5, 0, -0, 1e-30];

Deno.test("gelu vs float64 tanh form on AWKWARD shapes and extreme inputs (never NaN)", async () => {
  let worst = 0;
  for (const rows of [1, 17, 63]) {
    for (const C of AWKWARD) {
      const X = randn(rows * C, rows * 7 + C, 4);
      const got = await engine.scopeAsync(() => launchGelu(engine.upload(X, [rows, C])).read());
      const r = assertClose(
        got,
        Float64Array.from(X, gelu64),
        { atol: 1e-6, rtol: 1e-6 },
        `gelu [${rows}, ${C}]`,
      );
      worst = Math.max(worst, r.maxAbs);
    }
  }
  const X = Float32Array.from(EXTREMES);
  const got = await engine.scopeAsync(() => launchGelu(engine.upload(X, [X.length])).read());
  for (let i = 0; i < X.length; i++) assert(Number.isFinite(got[i]), `gelu(${X[i]}) = ${got[i]}`);
  assertClose(got, Float64Array.from(X, gelu64), { atol: 1e-6, rtol: 1e-6 }, "gelu extremes");
  console.log(`gelu max abs error ${worst.toExponential(2)}`);
});

Deno.test("geluBackward vs float64 central differences of the float64 gelu, extremes included", async () => {
  let worst = 0;
  for (const [rows, C] of [[1, 1], [3, 63], [17, 257], [1, EXTREMES.length]]) {
    const X = rows * C === EXTREMES.length ? Float32Array.from(EXTREMES) : randn(rows * C, C, 4);
    const DY = randn(rows * C, C + 1);
    const got = await engine.scopeAsync(() =>
      geluBackward(engine.upload(X, [rows, C]), engine.upload(DY, [rows, C])).read()
    );
    const ref = Float64Array.from(X, (x, i) => {
      const h = 1e-5 * Math.max(1, Math.abs(x));
      return DY[i] * (gelu64(x + h) - gelu64(x - h)) / (2 * h);
    });
    for (let i = 0; i < X.length; i++) assert(Number.isFinite(got[i]), `gelu'(${X[i]}) gave ${got[i]}`);
    worst = Math.max(worst, assertClose(got, ref, { atol: 1e-5, rtol: 1e-5 }, `dx [${rows}, ${C}]`).maxAbs);
  }
  console.log(`geluBackward max abs error vs finite differences ${worst.toExponential(2)}`);
});

Deno.test("geluBackward rejects a dy of another shape", () => {
  engine.scope(() => {
    const x = engine.upload(randn(6, 1), [2, 3]);
    assertThrows(() => geluBackward(x, engine.upload(randn(6, 1), [3, 2])), /must match x/);
  });
});

// ---------------------------------------------------------------- softmax / logSoftmax

async function checkSoftmax(e: Engine, X: Float32Array, rows: number, C: number) {
  return await e.scopeAsync(async () => {
    const x = e.upload(X, [rows, C]);
    const [p, lp] = await e.readMany([softmax(x), logSoftmax(x)]);
    const ref = refSoftmax(X, rows, C);
    const at = `[${rows}, ${C}]`;
    const rp = assertClose(p, ref.p, { atol: 1e-6, rtol: 1e-5 }, `softmax ${at}`);
    const rl = assertClose(lp, ref.lp, { atol: 1e-5, rtol: 1e-6 }, `logSoftmax ${at}`);
    return { p: rp, lp: rl, gotP: p, gotLp: lp };
  });
}

Deno.test("softmax and logSoftmax vs float64 on AWKWARD shapes, rows offset by +-1000", async () => {
  const worst = { p: 0, pRel: 0, lp: 0 };
  for (const rows of AWKWARD) {
    for (const C of AWKWARD) {
      const X = offsetRows(rows, C, rows * 13 + C, [0, 1000, -1000, 40], 3);
      const r = await checkSoftmax(engine, X, rows, C);
      worst.p = Math.max(worst.p, r.p.maxAbs);
      worst.lp = Math.max(worst.lp, r.lp.maxAbs);
    }
  }
  console.log(`softmax max abs error ${worst.p.toExponential(2)}; logSoftmax ${worst.lp.toExponential(2)}`);
});

Deno.test("softmax and logSoftmax over GPT-2's 50257-wide vocabulary rows", async () => {
  const rows = 3, C = 50257;
  const X = offsetRows(rows, C, 77, [0, 1000, -20], 5);
  const r = await checkSoftmax(engine, X, rows, C);
  for (let row = 0; row < rows; row++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += r.gotP[row * C + c];
    assertClose([s], [1], { atol: 1e-4 }, `row ${row} sums to 1`);
  }
  console.log(
    `softmax [3, 50257]: max abs ${r.p.maxAbs.toExponential(2)}, ` +
      `logSoftmax max abs ${r.lp.maxAbs.toExponential(2)}`,
  );
});

Deno.test("softmax gives 0 (logSoftmax -inf) to -inf logits and stays finite elsewhere", async () => {
  const C = 300;
  const X = randn(C, 3);
  for (const i of [0, 1, 150, 299]) X[i] = -Infinity;
  const x = engine.upload(X, [1, C]);
  const [p, lp] = await engine.readMany([softmax(x), logSoftmax(x)]);
  const finite = Float32Array.from(X.filter((v) => v > -Infinity));
  const ref = refSoftmax(finite, 1, finite.length);
  const pick = (a: ArrayLike<number>) => Array.from(a).filter((_, i) => X[i] > -Infinity);
  assertClose(pick(p), ref.p, { atol: 1e-6, rtol: 1e-5 }, "softmax");
  assertClose(pick(lp), ref.lp, { atol: 1e-5 }, "logSoftmax");
  for (const i of [0, 1, 150, 299]) {
    assertEquals(p[i], 0);
    assertEquals(lp[i], -Infinity);
  }
});

// ---------------------------------------------------------------- chunking past the binding limit

Deno.test("row ops on an engine with a 64 KiB binding limit: chunked results equal the unchunked ones", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const rows = 301, C = 257; // 63 rows per chunk -> 5 chunks, most starting off the 256-byte alignment
    const X = offsetRows(rows, C, 11, [0, 5, -30], 2),
      G = randn(C, 12),
      B = randn(C, 13),
      DY = randn(rows * C, 14);
    const run = async (e: Engine) =>
      await e.scopeAsync(async () => {
        const x = e.upload(X, [rows, C]);
        const ln = launchLayerNorm(x, e.upload(G, [C]), e.upload(B, [C]));
        const outs: Tensor[] = [ln.y, ln.mean, ln.rstd, softmax(x), logSoftmax(x), launchGelu(x)];
        outs.push(geluBackward(x, e.upload(DY, [rows, C])));
        return await e.readMany(outs);
      });
    const [chunked, whole] = [await run(small), await run(engine)];
    for (let i = 0; i < whole.length; i++) {
      assertEquals(Array.from(chunked[i]), Array.from(whole[i]), `output ${i}`);
    }
    const ref = refLayerNorm(X, G, B, rows, C);
    assertClose(chunked[0], ref.y, { atol: 1e-5, rtol: 1e-5 }, "chunked layerNorm");
    assertClose(chunked[3], refSoftmax(X, rows, C).p, { atol: 1e-6, rtol: 1e-5 }, "chunked softmax");
    // a single row larger than one binding cannot be chunked by rows
    small.scope(() => {
      const wide = small.upload(new Float32Array(20000), [1, 20000]);
      assertThrows(() => softmax(wide), /does not fit the device's 65536-byte storage binding/);
    });
  } finally {
    small.destroy();
  }
});
