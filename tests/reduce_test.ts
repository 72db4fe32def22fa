import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { argmax, max, mean, sum } from "../engine/launch/reduce.ts";
import { SEGMENT } from "../kernels/reduce.ts";
import { assertClose, AWKWARD, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

/** float64 per-row sum, max, first-index argmax of x seen as [rows, C]. */
function refRows(x: ArrayLike<number>, rows: number, C: number) {
  const s = new Float64Array(rows), abs = new Float64Array(rows), m = new Float64Array(rows);
  const am = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = -Infinity, bi = 0;
    for (let c = 0; c < C; c++) {
      const v = x[r * C + c];
      s[r] += v;
      abs[r] += Math.abs(v);
      if (v > best) [best, bi] = [v, c];
    }
    m[r] = best;
    am[r] = bi;
  }
  return { s, abs, m, am };
}

/** f32 sum tolerance: rtol 1e-5 on the result, plus 1e-6 of sum |x| for rows that cancel to ~0. */
function sumTol(absSum: number) {
  return { atol: 1e-6 * absSum, rtol: 1e-5 };
}

/**
 * Runs sum/mean/max/argmax over the last dim of X [rows, C] and checks all four against float64;
 * returns the worst sum error relative to sum |x|.
 */
async function checkRows(X: Float32Array, rows: number, C: number): Promise<number> {
  return await engine.scopeAsync(async () => {
    const x = engine.upload(X, [rows, C]);
    const outs = [sum(x), mean(x), max(x), argmax(x)];
    for (const o of outs) assertEquals(o.shape, [rows]);
    assertEquals(outs[3].dtype, "u32");
    const [gs, gm, gx, ga] = await engine.readMany(outs);
    const ref = refRows(X, rows, C);
    const at = `[${rows}, ${C}]`;
    const maxAbs = Math.max(...ref.abs);
    assertClose(gs, ref.s, sumTol(maxAbs), `sum ${at}`);
    assertClose(gm, ref.s.map((v) => v / C), sumTol(maxAbs / C), `mean ${at}`);
    // max and argmax are exact: they pick an input value
    assertEquals(Array.from(gx), Array.from(ref.m), `max ${at}`);
    assertEquals(Array.from(ga), Array.from(ref.am), `argmax ${at}`);
    // error relative to sum |x|, the scale that bounds f32 summation error
    return Math.max(...Array.from(gs, (v, i) => Math.abs(v - ref.s[i]) / ref.abs[i]));
  });
}

Deno.test("sum/mean/max/argmax over the last dim vs float64 on AWKWARD rows x cols", async () => {
  let worst = 0;
  for (const rows of AWKWARD) {
    for (const C of AWKWARD) {
      const X = randn(rows * C, rows * 101 + C, 3);
      for (let i = 0; i < X.length; i++) X[i] += (i % 3) - 0.5; // sums that do not cancel to 0
      worst = Math.max(worst, await checkRows(X, rows, C));
    }
  }
  console.log(`row sum max error / sum|x|: ${worst.toExponential(2)}`);
});

Deno.test("rows longer than one segment reduce in stages: [3, 50257], [2, SEGMENT + 1], [1, 2 * SEGMENT]", async () => {
  for (const [rows, C] of [[3, 50257], [2, SEGMENT + 1], [1, 2 * SEGMENT], [5, 3 * SEGMENT - 7]]) {
    const X = randn(rows * C, C, 2);
    for (let i = 0; i < X.length; i++) X[i] += 0.25;
    const rel = await checkRows(X, rows, C);
    if (C === 50257) console.log(`sum over 50257 columns: max error / sum|x| ${rel.toExponential(2)}`);
  }
});

Deno.test('sum/mean/max over "all" vs float64: AWKWARD shapes and 1,000,003 elements (two stages)', async () => {
  const shapes = [...AWKWARD.map((c) => [AWKWARD[(c * 3) % 7], c]), [1000003]];
  for (const shape of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const X = randn(n, n, 2);
    for (let i = 0; i < n; i++) X[i] += 1;
    const ref = refRows(X, 1, n);
    const [gs, gm, gx] = await engine.scopeAsync(() => {
      const x = engine.upload(X, shape);
      const outs = [sum(x, "all"), mean(x, "all"), max(x, "all")];
      for (const o of outs) assertEquals(o.shape, [1]);
      return engine.readMany(outs);
    });
    const r = assertClose(gs, ref.s, sumTol(ref.abs[0]), `sum all [${shape}]`);
    assertClose(gm, [ref.s[0] / n], sumTol(ref.abs[0] / n), `mean all [${shape}]`);
    assertEquals(gx[0], ref.m[0], `max all [${shape}]`);
    if (n === 1000003) console.log(`sum of 1e6 values ~1: rel error ${r.maxRel.toExponential(2)}`);
  }
});

Deno.test("argmax ties go to the lowest index, within one thread and across threads of the strided loop", async () => {
  const C = 50257;
  const X = new Float32Array(4 * C);
  // row 0: all equal -> 0. row 1: max at 3 and 2 (different threads) -> 2.
  // row 2: max at 40000 and 300 -> 300. row 3: max at 1 and 257 (the same thread of 256) -> 1.
  X.fill(-1, 0, C).fill(0.5, C, 4 * C);
  for (const [r, c] of [[1, 3], [1, 2], [2, 40000], [2, 300], [3, 257], [3, 1]]) X[r * C + c] = 9;
  const got = await engine.scopeAsync(() => argmax(engine.upload(X, [4, C])).read());
  assertEquals(Array.from(got), [0, 2, 300, 1]);
});

Deno.test("NaN and -inf: max propagates NaN, argmax picks the first NaN, an all -inf row has max -inf", async () => {
  const C = 300;
  const X = randn(4 * C, 5);
  X[0 * C + 200] = NaN; // row 0: one NaN
  X[1 * C + 17] = NaN; // row 1: two NaNs, the first wins
  X[1 * C + 5 + 256] = NaN;
  X.fill(-Infinity, 2 * C, 3 * C); // row 2: all -inf
  X[3 * C + 299] = Infinity; // row 3: +inf is the max
  const [m, a, mAll] = await engine.scopeAsync(() => {
    const x = engine.upload(X, [4, C]);
    return engine.readMany([max(x), argmax(x), max(x, "all")]);
  });
  assertEquals(Number.isNaN(m[0]) && Number.isNaN(m[1]), true, `max rows with NaN: ${m[0]}, ${m[1]}`);
  assertEquals([m[2], m[3]], [-Infinity, Infinity]);
  assertEquals(Array.from(a), [200, 17, 0, 299]);
  assertEquals(Number.isNaN(mAll[0]), true, "max all with NaN");
});

Deno.test("reductions reject bad axes, non-f32 input, an empty last dim or an empty 'all'", () => {
  engine.scope(() => {
    const x = engine.upload(randn(6, 1), [2, 3]);
    // @ts-expect-error: axis 0 is not supported, and a JS caller gets a clear error
    assertThrows(() => sum(x, 0), /axis must be -1 or "all"/);
    assertThrows(() => max(engine.upload(new Uint32Array(6), [2, 3])), /expected f32, got u32/);
    assertThrows(() => argmax(engine.empty([4, 0])), /last dimension is empty/);
    assertThrows(() => mean(engine.empty([0]), "all"), /empty tensor/);
  });
});

Deno.test("reductions on an engine with a 64 KiB binding limit: chunked results equal the unchunked ones", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    // 3 segments per chunk for "all"; 63 rows of 257 per chunk for the row reductions and argmax
    const X = randn(301 * 257, 21);
    const run = (e: Engine) =>
      e.scopeAsync(() => {
        const x = e.upload(X, [301, 257]);
        return e.readMany([sum(x), mean(x), max(x), argmax(x), sum(x, "all"), max(x, "all")]);
      });
    const [chunked, whole] = [await run(small), await run(engine)];
    for (let i = 0; i < whole.length; i++) {
      assertEquals(Array.from(chunked[i]), Array.from(whole[i]), `output ${i}`);
    }
    const ref = refRows(X, 301, 257);
    assertEquals(Array.from(chunked[3]), Array.from(ref.am));
    const all = refRows(X, 1, X.length);
    assertClose(chunked[4], all.s, sumTol(all.abs[0]), "chunked sum all");
  } finally {
    small.destroy();
  }
});
