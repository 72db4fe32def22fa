import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { launchLayerNorm, LAYERNORM_ROWTHREAD_MAX_C, layerNormBackward } from "../engine/launch/nn.ts";
import { rowChunks } from "../engine/chunks.ts";
import {
  assertClose,
  AWKWARD_ROWS,
  layerNormPathShapes,
  randn,
  rowMeanRstd,
  testEngine,
} from "./lib/util.ts";

const engine = await testEngine();
const EPS = 1e-5;

// ---------------------------------------------------------------- float64 references

/** y = (x - mean) * rstd * g + b per row of [rows, C], in float64. */
function refForward(
  x: ArrayLike<number>,
  g: ArrayLike<number>,
  b: ArrayLike<number>,
  rows: number,
  C: number,
) {
  const y = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    const [m, rs] = rowMeanRstd(x, r, C, EPS);
    for (let c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - m) * rs * g[c] + b[c];
  }
  return y;
}

/** The textbook analytic gradient, written out independently of the kernel's grouping. */
function refBackward(
  x: ArrayLike<number>,
  g: ArrayLike<number>,
  dy: ArrayLike<number>,
  rows: number,
  C: number,
) {
  const dx = new Float64Array(rows * C), dg = new Float64Array(C), db = new Float64Array(C);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const [m, rs] = rowMeanRstd(x, r, C, EPS);
    rstd[r] = rs;
    const xh = (c: number) => (x[r * C + c] - m) * rs;
    let sum = 0, dot = 0;
    for (let c = 0; c < C; c++) {
      const d = dy[r * C + c] * g[c];
      sum += d;
      dot += d * xh(c);
      dg[c] += dy[r * C + c] * xh(c);
      db[c] += dy[r * C + c];
    }
    for (let c = 0; c < C; c++) dx[r * C + c] = rs * (dy[r * C + c] * g[c] - sum / C - xh(c) * dot / C);
  }
  return { dx, dg, db, rstd };
}

/** x with a different offset per row, so rows are not centred at 0. */
function offsetRows(rows: number, C: number, seed: number, scale = 2): Float32Array {
  const offsets = [0, 3, -10, 0.5];
  const x = randn(rows * C, seed, scale);
  for (let i = 0; i < x.length; i++) x[i] += offsets[Math.floor(i / C) % offsets.length];
  return x;
}

async function gpuGrads(
  e: Engine,
  X: Float32Array,
  G: Float32Array,
  B: Float32Array,
  DY: Float32Array,
  rows: number,
  C: number,
) {
  return await e.scopeAsync(async () => {
    const x = e.upload(X, [rows, C]);
    const { mean, rstd } = launchLayerNorm(x, e.upload(G, [C]), e.upload(B, [C]));
    const { dx, dgamma, dbeta } = layerNormBackward(x, mean, rstd, e.upload(G, [C]), e.upload(DY, [rows, C]));
    assertEquals([dx.shape, dgamma.shape, dbeta.shape], [[rows, C], [C], [C]]);
    const [gdx, gdg, gdb] = await e.readMany([dx, dgamma, dbeta]);
    return { dx: gdx, dg: gdg, db: gdb };
  });
}

/**
 * dx / rstd (per row) against the reference: dx is rstd times a difference of O(|dy * gamma|) terms, so
 * a row with a small spread (large rstd: C = 3, or C = 1 where rstd = 1/sqrt(eps)) scales its rounding.
 */
function assertDx(got: ArrayLike<number>, ref: ReturnType<typeof refBackward>, C: number, what: string) {
  const unscale = (d: ArrayLike<number>) => Float64Array.from(d, (v, i) => v / ref.rstd[Math.floor(i / C)]);
  return assertClose(unscale(got), unscale(ref.dx), { atol: 1e-5, rtol: 1e-5 }, what);
}

// ---------------------------------------------------------------- tests

Deno.test("layerNormBackward vs float64 central differences of a float64 layerNorm", async () => {
  // L = sum(y * dy): its gradient w.r.t. (x, gamma, beta) is exactly what layerNormBackward returns.
  const worst = { dx: 0, dg: 0, db: 0 };
  for (const [rows, C] of [[3, 17], [2, 63], [1, 3], [4, 1]]) {
    const X = offsetRows(rows, C, 7 * rows + C), G = randn(C, C + 11), B = randn(C, C + 12);
    const DY = randn(rows * C, rows + 13 * C);
    const L = (x: ArrayLike<number>, g: ArrayLike<number>, b: ArrayLike<number>) =>
      refForward(x, g, b, rows, C).reduce((s, y, i) => s + y * DY[i], 0);
    const fd = (v: Float32Array, f: (w: Float64Array) => number) =>
      Float64Array.from(v, (_, i) => {
        const w = Float64Array.from(v), h = 1e-6 * Math.max(1, Math.abs(v[i]));
        w[i] = v[i] + h;
        const up = f(w);
        w[i] = v[i] - h;
        return (up - f(w)) / (2 * h);
      });
    const want = {
      dx: fd(X, (w) => L(w, G, B)),
      dg: fd(G, (w) => L(X, w, B)),
      db: fd(B, (w) => L(X, G, w)),
    };
    const got = await gpuGrads(engine, X, G, B, DY, rows, C);
    for (const k of ["dx", "dg", "db"] as const) {
      // relative to the gradient's scale: FD error (~1e-9) and f32 rounding are both far below 1e-3
      const scale = Math.max(...want[k].map(Math.abs), 1e-3);
      const r = assertClose(got[k], want[k], { atol: 1e-3 * scale, rtol: 1e-3 }, `${k} [${rows}, ${C}]`);
      worst[k] = Math.max(worst[k], r.maxAbs / scale);
    }
  }
  console.log(
    `max |analytic - FD| / max|FD|: dx ${worst.dx.toExponential(2)}, dgamma ${worst.dg.toExponential(2)}, ` +
      `dbeta ${worst.db.toExponential(2)}`,
  );
});

/**
 * One shape's GPU gradients against float64, with the seeds of X, gamma, beta and dy: dx by assertDx; dgamma
 * and dbeta are sums of `rows` unit terms (f32 error grows ~ sqrt(rows)). The largest errors.
 */
async function checkShape(rows: number, C: number, [sx, sg, sb, sdy]: number[]) {
  const X = offsetRows(rows, C, sx), G = randn(C, sg), B = randn(C, sb);
  const DY = randn(rows * C, sdy);
  const got = await gpuGrads(engine, X, G, B, DY, rows, C);
  const ref = refBackward(X, G, DY, rows, C);
  const at = `[${rows}, ${C}]`;
  const sumTol = 2e-6 * Math.sqrt(rows);
  return {
    // dx ~ rstd * |dy * gamma| ~ 1
    dx: assertDx(got.dx, ref, C, `dx ${at}`).maxAbs,
    dg: assertClose(got.dg, ref.dg, { atol: sumTol, rtol: 1e-5 }, `dgamma ${at}`).maxAbs,
    db: assertClose(got.db, ref.db, { atol: sumTol, rtol: 1e-5 }, `dbeta ${at}`).maxAbs,
  };
}

Deno.test("layerNormBackward vs float64 analytic gradient on AWKWARD rows x cols, C = 768 and 4099", async () => {
  const worst = { dx: 0, dg: 0, db: 0 };
  for (const [rows, C] of [...AWKWARD_ROWS, [600, 65]]) {
    const e = await checkShape(rows, C, [rows * 1009 + C, C + 1, C + 2, rows + 3 * C]);
    for (const k of ["dx", "dg", "db"] as const) worst[k] = Math.max(worst[k], e[k]);
  }
  console.log(
    `max abs error: dx / rstd ${worst.dx.toExponential(2)}, dgamma ${worst.dg.toExponential(2)}, dbeta ${
      worst.db.toExponential(2)
    }`,
  );
});

Deno.test("layerNormBackward thread-per-row path (C <= 1024) vs float64, and the workgroup path past it", async () => {
  assertEquals(LAYERNORM_ROWTHREAD_MAX_C, 1024);
  // rows not multiples of 64 (rows per dx workgroup) nor of the 256 blocks of the column sums
  for (const [rows, C] of layerNormPathShapes(300)) {
    await checkShape(rows, C, [rows * 37 + C, C + 5, C + 6, rows + 7 * C]);
  }
});

Deno.test("layerNormBackward thread-per-row path is bitwise reproducible at [4096, 128]", async () => {
  const rows = 4096, C = 128;
  const X = offsetRows(rows, C, 21), G = randn(C, 22), B = randn(C, 23), DY = randn(rows * C, 24);
  const a = await gpuGrads(engine, X, G, B, DY, rows, C);
  const b = await gpuGrads(engine, X, G, B, DY, rows, C);
  for (const k of ["dx", "dg", "db"] as const) assertEquals(Array.from(a[k]), Array.from(b[k]), k);
});

Deno.test("layerNormBackward is bitwise reproducible and handles zero rows", async () => {
  const rows = 257, C = 127;
  const X = offsetRows(rows, C, 5), G = randn(C, 6), B = randn(C, 7), DY = randn(rows * C, 8);
  const a = await gpuGrads(engine, X, G, B, DY, rows, C);
  const b = await gpuGrads(engine, X, G, B, DY, rows, C);
  assertEquals([Array.from(a.dx), Array.from(a.dg), Array.from(a.db)], [
    Array.from(b.dx),
    Array.from(b.dg),
    Array.from(b.db),
  ]);
  const empty = await engine.scopeAsync(async () => {
    const x = engine.empty([0, 5]); // (upload of zero elements panics Deno 2.9.6's queue.writeBuffer)
    const g = layerNormBackward(
      x,
      engine.zeros([0]),
      engine.zeros([0]),
      engine.upload(G.slice(0, 5), [5]),
      x,
    );
    assertEquals(g.dx.shape, [0, 5]);
    return await engine.readMany([g.dgamma, g.dbeta]);
  });
  assertEquals(empty.map((t) => Array.from(t)), [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]);
});

Deno.test("layerNormBackward rejects mismatched shapes and dtypes with clear errors", () => {
  engine.scope(() => {
    const x = engine.zeros([4, 6]), g = engine.zeros([6]), s = engine.zeros([4]);
    assertThrows(
      () => layerNormBackward(x, s, s, g, engine.zeros([4, 5])),
      /dy \[4, 5\] must match x \[4, 6\]/,
    );
    assertThrows(() => layerNormBackward(x, s, s, engine.zeros([5]), x), /gamma must be \[6\]/);
    assertThrows(() => layerNormBackward(x, engine.zeros([3]), s, g, x), /mean must be \[4\]/);
    assertThrows(() => layerNormBackward(x, s, engine.zeros([4, 1]), g, x), /rstd must be \[4\]/);
    assertThrows(() => layerNormBackward(x, s, s, g, engine.zeros([4, 6], "u32")), /expected f32/);
  });
});

Deno.test("layerNormBackward with a 64 KiB binding limit: rows split into chunks, same gradients", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    // 300 KB per [600, 127] tensor: the block pass runs in several chunks, at offsets off the alignment;
    // 4099 columns: 3 rows per binding caps a block at 3 rows, so the partials need chunking too
    for (const [rows, C] of [[600, 127], [40, 4099]]) {
      assert(rowChunks(small, rows, [C * 4], "test").length >= 3);
      const X = offsetRows(rows, C, rows + C), G = randn(C, 2), B = randn(C, 3), DY = randn(rows * C, 4);
      const got = await gpuGrads(small, X, G, B, DY, rows, C);
      const ref = refBackward(X, G, DY, rows, C);
      const sumTol = 2e-6 * Math.sqrt(rows);
      assertDx(got.dx, ref, C, `dx [${rows}, ${C}] chunked`);
      assertClose(got.dg, ref.dg, { atol: sumTol, rtol: 1e-5 }, `dgamma [${rows}, ${C}] chunked`);
      assertClose(got.db, ref.db, { atol: sumTol, rtol: 1e-5 }, `dbeta [${rows}, ${C}] chunked`);
    }
  } finally {
    small.destroy();
  }
});
