import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import {
  addAt,
  castF16ToF32,
  castF32ToF16,
  concatCols,
  copyRows,
  fill,
  hasShaderF16,
  launchSelectRows,
  sliceCols,
} from "../engine/launch/copy.ts";
import { rowChunks } from "../engine/chunks.ts";
import { assertClose, AWKWARD, randInt, randn, rng, testEngine } from "./lib/util.ts";

const engine = await testEngine();

/** Host model of copyRows: dst[dstRows[k]] = src[srcRows[k]] in order (last write wins). */
function refCopyRows(
  src: Float32Array,
  srcRows: readonly number[],
  dst: Float32Array,
  dstRows: readonly number[],
  C: number,
  R: number,
  R2: number,
): Float32Array {
  const out = dst.slice();
  srcRows.forEach((s, k) => {
    if (s < R && dstRows[k] < R2) out.set(src.subarray(s * C, (s + 1) * C), dstRows[k] * C);
  });
  return out;
}

Deno.test("copyRows in place: host lists (coalesced runs), u32 tensors, identity (null), mixed", async () => {
  for (const C of AWKWARD) {
    const R = 20, R2 = 13;
    const S = randn(R * C, C), D = randn(R2 * C, C + 1);
    const srcRows = [3, 4, 5, 0, 19, 7], dstRows = [0, 1, 2, 12, 5, 6]; // a run of 3, then singles
    const want = refCopyRows(S, srcRows, D, dstRows, C, R, R2);
    await engine.scopeAsync(async () => {
      const src = engine.upload(S, [R, C]);
      const u32 = (a: number[]) => engine.upload(Uint32Array.from(a), [a.length], "u32");
      const dsts = [0, 1, 2, 3].map(() => engine.upload(D, [R2, C]));
      copyRows(src, srcRows, dsts[0], dstRows);
      copyRows(src, u32(srcRows), dsts[1], u32(dstRows));
      copyRows(src, srcRows, dsts[2], u32(dstRows));
      copyRows(src, u32(srcRows), dsts[3], dstRows);
      const got = await engine.readMany(dsts);
      for (const [i, g] of got.entries()) assertEquals(Array.from(g), Array.from(want), `C${C} variant ${i}`);
      // null: rows 0..n-1 of that side
      const a = engine.upload(D, [R2, C]), b = engine.upload(D, [R2, C]), c = engine.upload(D, [R2, C]);
      copyRows(src, null, a, [4, 2]);
      copyRows(src, null, b, u32([4, 2]));
      copyRows(engine.upload(S.subarray(0, 5 * C), [5, C]), null, c, null);
      const [ga, gb, gc] = await engine.readMany([a, b, c]);
      const wantNull = refCopyRows(S, [0, 1], D, [4, 2], C, R, R2);
      assertEquals(Array.from(ga), Array.from(wantNull));
      assertEquals(Array.from(gb), Array.from(wantNull));
      assertEquals(Array.from(gc), Array.from(refCopyRows(S, [0, 1, 2, 3, 4], D, [0, 1, 2, 3, 4], C, R, R2)));
    });
  }
});

Deno.test("copyRows: host rows validated, tensor rows out of range skipped", async () => {
  await engine.scopeAsync(async () => {
    const C = 3, S = randn(4 * C, 1), D = randn(2 * C, 2);
    const src = engine.upload(S, [4, C]), dst = engine.upload(D, [2, C]);
    assertThrows(() => copyRows(src, [4], dst, [0]), /source row 4 outside 0..3/);
    assertThrows(() => copyRows(src, [0], dst, [2]), /destination row 2 outside 0..1/);
    assertThrows(() => copyRows(src, [0, 1], dst, [0]), /2 source rows but 1 destination rows/);
    assertThrows(() => copyRows(src, null, dst, null), /4 destination rows \(identity\)/);
    assertThrows(() => copyRows(src, [0], src, [1]), /different tensors/);
    assertThrows(() => copyRows(src, [0], engine.zeros([2, 4]), [0]), /row width/);
    assertThrows(() => copyRows(src, engine.zeros([1]), dst, [0]), /u32 tensor/);
    copyRows(
      src,
      engine.upload(Uint32Array.of(9, 1), [2], "u32"),
      dst,
      engine.upload(Uint32Array.of(0, 7), [2], "u32"),
    );
    assertEquals(Array.from(await dst.read()), Array.from(D)); // both pairs have an index out of range
  });
});

Deno.test("copyRows, selectRows, sliceCols, concatCols, fill with a 64 KiB binding limit (row chunks)", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const R = 700, C = 65; // 182 KB per tensor: 3+ chunks, offsets off the alignment
    if (rowChunks(small, R, [C * 4], "test").length < 3) throw new Error("expected several chunks");
    const S = randn(R * C, 1), D = randn(R * C, 2);
    const r = rng(3);
    const srcRows = Array.from({ length: 300 }, () => Math.floor(r() * R));
    const dstRows = Array.from({ length: 300 }, (_, k) => (k * 11 + 5) % R); // distinct (11 is prime to 700)
    await small.scopeAsync(async () => {
      const src = small.upload(S, [R, C]), dst = small.upload(D, [R, C]);
      copyRows(src, small.upload(Uint32Array.from(srcRows), [300], "u32"), dst, dstRows);
      const rowsT = small.upload(Uint32Array.from(srcRows), [300], "u32");
      const sel = launchSelectRows(src, rowsT);
      const sl = sliceCols(src, 7, 60);
      const cat = concatCols([src, sl, dst]);
      const f = small.empty([R, C]);
      fill(f, -2.5);
      const [gd, gs, gsl, gcat, gf] = await small.readMany([dst, sel, sl, cat, f]);
      const wantDst = refCopyRows(S, srcRows, D, dstRows, C, R, R);
      assertEquals(Array.from(gd), Array.from(wantDst));
      assertEquals(Array.from(gs), srcRows.flatMap((s) => Array.from(S.subarray(s * C, (s + 1) * C))));
      const rowsOf = (x: Float32Array, a: number, b: number) =>
        Array.from({ length: R }, (_, i) => Array.from(x.subarray(i * C + a, i * C + b)));
      const sRows = rowsOf(S, 0, C), slRows = rowsOf(S, 7, 60), dRows = rowsOf(wantDst, 0, C);
      assertEquals(Array.from(gsl), slRows.flat());
      assertEquals(Array.from(gcat), sRows.flatMap((row, i) => [...row, ...slRows[i], ...dRows[i]]));
      assertEquals(gf.every((v) => v === -2.5), true);
    });
  } finally {
    small.destroy();
  }
});

Deno.test("selectRows: last positions of each batch row; rows >= R give zero rows", async () => {
  for (const C of AWKWARD) {
    const R = 17, X = randn(R * C, C);
    const rows = Uint32Array.from([...randInt(9, R, C), R, R - 1, 0xffffffff]);
    const got = await engine.scopeAsync(() =>
      launchSelectRows(engine.upload(X, [R, C]), engine.upload(rows, [rows.length], "u32")).read()
    );
    const want = Array.from(rows).flatMap((r) =>
      r < R ? Array.from(X.subarray(r * C, (r + 1) * C)) : new Array(C).fill(0)
    );
    assertEquals(Array.from(got), want, `C${C}`);
  }
});

Deno.test("sliceCols / concatCols on [B, T, C] tensors; u32 data copied bit for bit", async () => {
  for (const C of AWKWARD) {
    const B = 2, T = 3, X = randInt(B * T * C, 0xffffffff, C);
    await engine.scopeAsync(async () => {
      const x = engine.upload(X, [B, T, C], "u32");
      const a = Math.floor(C / 3), b = C - Math.floor(C / 4);
      const parts = [sliceCols(x, 0, a), sliceCols(x, a, b), sliceCols(x, b, C)];
      assertEquals(parts[1].shape, [B, T, b - a]);
      const back = concatCols(parts);
      assertEquals(back.shape, [B, T, C]);
      assertEquals(Array.from(await back.read()), Array.from(X));
    });
  }
  engine.scope(() => {
    const x = engine.zeros([4, 5]);
    assertThrows(() => sliceCols(x, 3, 6), /columns \[3, 6\) outside the 5 columns/);
    assertThrows(() => sliceCols(x, 3, 2), /outside/);
    assertThrows(() => concatCols([x, engine.zeros([3, 5])]), /does not match/);
    assertThrows(() => concatCols([x, engine.zeros([4, 5], "u32")]), /mixed dtypes/);
    assertThrows(() => sliceCols(engine.zeros([4, 6], "f16"), 0, 2), /4-byte dtype/);
  });
});

Deno.test("addAt adds a vector to one row in place (ROME's edit), other rows untouched", async () => {
  for (const C of AWKWARD) {
    const B = 2, T = 5, X = randn(B * T * C, C), Vv = randn(C, C + 9);
    await engine.scopeAsync(async () => {
      const x = engine.upload(X, [B, T, C]), v = engine.upload(Vv, [C]);
      addAt(x, 7, v);
      addAt(x, 0, v, -0.5);
      const want = Float64Array.from(X);
      for (let c = 0; c < C; c++) {
        want[7 * C + c] += Vv[c];
        want[c] += -0.5 * Vv[c];
      }
      assertClose(await x.read(), want, { atol: 1e-6, rtol: 1e-6 }, `addAt C${C}`);
      assertThrows(() => addAt(x, 10, v), /row 10 outside 0..9/);
      assertThrows(() => addAt(x, 0, engine.zeros([C + 1])), /does not match/);
    });
  }
});

Deno.test("fill in place for f32, f16, u32, i32 (odd sizes)", async () => {
  await engine.scopeAsync(async () => {
    const ts = [
      engine.empty([3, 17]),
      engine.empty([63], "f16"),
      engine.empty([5], "u32"),
      engine.empty([7], "i32"),
    ];
    fill(ts[0], 1.25);
    fill(ts[1], 0.1); // rounds like Float16Array
    fill(ts[2], 4000000000);
    fill(ts[3], -7);
    const [a, b, c, d] = await engine.readMany(ts);
    assertEquals(a.every((v) => v === 1.25), true);
    assertEquals(Array.from(b), new Array(63).fill(Float16Array.of(0.1)[0]));
    assertEquals(Array.from(c), new Array(5).fill(4000000000));
    assertEquals(Array.from(d), new Array(7).fill(-7));
    assertThrows(() => fill(ts[2], -1), /not a u32/);
  });
});

/** Values that exercise every branch of f32 -> f16 rounding, plus random ones over many magnitudes. */
function castProbe(n: number, seed: number): Float32Array {
  const special = [
    0,
    -0,
    1,
    -1,
    0.1,
    65504,
    -65504,
    65519.99,
    65520,
    -65520,
    1e6,
    Infinity,
    -Infinity,
    NaN,
    6.103515625e-5, // smallest normal half
    6.0975551605224609375e-5, // largest subnormal half
    5.9604644775390625e-8, // smallest subnormal half
    2.98023223876953125e-8, // half of it: ties to even -> 0
    4.4703483581542969e-8, // 0.75 of it: rounds up to the smallest subnormal
    1e-10,
    1 + 2 ** -11, // exact tie between 1 and 1 + 2^-10: to even (1)
    1 + 3 * 2 ** -11, // tie: to even (1 + 2^-9)
    1 + 2 ** -11 + 2 ** -20, // just above the tie: up
    2047.5, // tie between 2047 and 2048 (spacing 1 there): to even, 2048
    3.1415926,
  ];
  const r = rng(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = i < special.length ? special[i] : (r() - 0.5) * 2 ** Math.floor(r() * 44 - 30);
  }
  return out;
}

Deno.test("castF32ToF16 / castF16ToF32 vs Float16Array, native and bit-manipulation paths", async () => {
  const paths = hasShaderF16(engine) ? [false, true] : [false];
  for (const native of paths) {
    for (const n of [1, 2, 3, 64, 1001]) {
      const X = castProbe(n, n);
      const want = Array.from(Float16Array.from(X));
      await engine.scopeAsync(async () => {
        const h = castF32ToF16(engine.upload(X, [n]), { native });
        assertEquals(h.dtype, "f16");
        const back = castF16ToF32(h, { native });
        const [gh, gb] = await engine.readMany([h, back]);
        if (native) {
          // WGSL lets a hardware conversion pick either neighbour; allow one f16 ulp on finite values
          gh.forEach((v, i) => {
            const w = want[i];
            if (
              Number.isNaN(w)
                ? !Number.isNaN(v)
                : !Number.isFinite(w)
                ? v !== w
                : Math.abs(v - w) > halfUlp(w)
            ) {
              throw new Error(`native cast of ${X[i]}: got ${v}, want ${w}`);
            }
          });
        } else {
          assertEquals(Array.from(gh), want, `bits cast n=${n}`);
        }
        // f16 -> f32 is exact on both paths
        assertEquals(Array.from(gb), Array.from(gh), `round trip n=${n} native=${native}`);
      });
    }
  }
  // every one of the 65536 half patterns decodes exactly (bits path; native too when available)
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const want = Array.from(Float32Array.from(new Float16Array(all.buffer)));
  for (const native of paths) {
    const got = await engine.scopeAsync(() =>
      castF16ToF32(engine.upload(all, [65536], "f16"), { native }).read()
    );
    assertEquals(Array.from(got), want, `all halves native=${native}`);
  }
});

function halfUlp(w: number): number {
  const a = Math.abs(w);
  return a < 6.103515625e-5 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(a)) - 10);
}

Deno.test("casts with a 64 KiB binding limit: element chunks on both sides", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const n = 50001, X = castProbe(n, 77); // 200 KB of f32, 100 KB of f16
    const want = Array.from(Float16Array.from(X));
    for (const native of hasShaderF16(small) ? [false, true] : [false]) {
      const [h, back] = await small.scopeAsync(async () => {
        const h = castF32ToF16(small.upload(X, [n]), { native });
        return await small.readMany([h, castF16ToF32(h, { native })]);
      });
      if (!native) assertEquals(Array.from(h), want);
      assertEquals(Array.from(back), Array.from(h));
    }
    const f = small.empty([n], "f16");
    fill(f, 3);
    assertEquals((await f.read()).every((v) => v === 3), true);
    f.dispose();
  } finally {
    small.destroy();
  }
});
