import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { type GemmProblem, launchMatmul, type MatmulOptions, planGemm } from "../engine/launch/matmul.ts";
import { assertClose, AWKWARD, randn, rng, testEngine } from "./lib/util.ts";

const engine = await testEngine();

/**
 * float64 reference of matmul's contract, written from the shapes alone: out[b][i][j] =
 * alpha * sum_k opA[b][i][k] * opB[b][k][j] + bias[j] + (accumulate ? out0[b][i][j] : 0).
 */
function reference(
  A: Float32Array,
  aShape: number[],
  B: Float32Array,
  bShape: number[],
  o: { transA?: boolean; transB?: boolean; alpha?: number; bias?: Float32Array; out0?: Float32Array } = {},
): Float64Array {
  const [ra, ca] = aShape.slice(-2), [rb, cb] = bShape.slice(-2);
  const M = o.transA ? ca : ra, K = o.transA ? ra : ca, N = o.transB ? rb : cb;
  const batches = Math.max(aShape.length === 3 ? aShape[0] : 1, bShape.length === 3 ? bShape[0] : 1);
  const sa = aShape.length === 3 ? ra * ca : 0, sb = bShape.length === 3 ? rb * cb : 0;
  const out = new Float64Array(batches * M * N);
  for (let bt = 0; bt < batches; bt++) {
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = A[bt * sa + (o.transA ? k * M + i : i * K + k)];
          const bv = B[bt * sb + (o.transB ? j * K + k : k * N + j)];
          s += av * bv;
        }
        const at = (bt * M + i) * N + j;
        out[at] = (o.alpha ?? 1) * s + (o.bias ? o.bias[j] : 0) + (o.out0 ? o.out0[at] : 0);
      }
    }
  }
  return out;
}

/** f32 dot products of length K: rounding grows like sqrt(K) for random signs. */
const tolFor = (K: number) => ({ atol: 2e-5 * Math.sqrt(Math.max(K, 1)), rtol: 1e-5 });

interface Case {
  aShape: number[];
  bShape: number[];
  opts?: Omit<MatmulOptions, "bias" | "out"> & { bias?: boolean; out?: boolean };
}

/** Runs one case on `eng` and compares it with the float64 reference. */
async function check(eng: Engine, c: Case, seed: number, what: string): Promise<void> {
  const o = c.opts ?? {};
  const A = randn(c.aShape.reduce((x, y) => x * y, 1), seed);
  const B = randn(c.bShape.reduce((x, y) => x * y, 1), seed + 1);
  const [ra, ca] = c.aShape.slice(-2), [rb, cb] = c.bShape.slice(-2);
  const M = o.transA ? ca : ra, K = o.transA ? ra : ca, N = o.transB ? rb : cb;
  const batches = Math.max(c.aShape.length === 3 ? c.aShape[0] : 1, c.bShape.length === 3 ? c.bShape[0] : 1);
  const outShape = c.aShape.length === 3 || c.bShape.length === 3 ? [batches, M, N] : [M, N];
  const bias = o.bias ? randn(N, seed + 2) : undefined;
  const out0 = o.out ? randn(batches * M * N, seed + 3) : undefined;
  const expected = reference(A, c.aShape, B, c.bShape, {
    ...o,
    bias,
    out0: o.accumulate ? out0 : undefined,
  });
  await eng.scopeAsync(async () => {
    const a = eng.upload(A, c.aShape), b = eng.upload(B, c.bShape);
    const out = out0 ? eng.upload(out0, outShape) : undefined;
    const r = launchMatmul(a, b, {
      ...o,
      bias: bias ? eng.upload(bias, [N]) : undefined,
      out,
    });
    if (out && r !== out) throw new Error(`${what}: result is not the given out tensor`);
    assertEquals(r.shape, outShape);
    assertClose(await r.read(), expected, tolFor(K), what);
  });
}

const desc = (c: Case) =>
  `${JSON.stringify(c.aShape)}·${JSON.stringify(c.bShape)} ${JSON.stringify(c.opts ?? {})}`;
const TRANS = [[false, false], [false, true], [true, false], [true, true]] as const;
const shapes2d = (M: number, N: number, K: number, transA = false, transB = false) => ({
  aShape: transA ? [K, M] : [M, K],
  bShape: transB ? [N, K] : [K, N],
});

Deno.test("matmul 2-D, all transpose combinations, awkward shapes (scalar kernel) vs float64", async () => {
  const mnk = [[1, 1, 1], [3, 17, 63], [17, 65, 3], [63, 127, 257], [257, 3, 17], [127, 257, 65]];
  let seed = 1;
  for (const [M, N, K] of mnk) {
    for (const [transA, transB] of TRANS) {
      const c: Case = { ...shapes2d(M, N, K, transA, transB), opts: { transA, transB } };
      await check(engine, c, seed++, desc(c));
    }
  }
});

Deno.test("matmul 2-D, vec4 kernels: every transpose combination, tiles 8x128/16x128/32x128, K % 4 tails", async () => {
  // pickTile chooses the tile from M and N (here 8 -> 8x128, 13 or 16 -> 16x128, 64 -> 32x128; the 32x256
  // tile is covered by the GPT-2 test); N % 4 == 0 binds C as vec4; K % 4 != 0 adds a scalar tail
  // dispatch; M = 13 with transA keeps A scalar while B is vec4 (mixed kernel). The big tiles are
  // compiled for one layout each (their LLVM compile takes 3-8 s): the code differs only in loop counts
  // from the 8x128 and 16x128 tiles, which cover every layout here.
  const cases: Case[] = [];
  for (const [transA, transB] of TRANS) {
    for (const [M, N, K] of [[8, 132, 68], [5, 257, 36], [13, 128, 130]]) {
      cases.push({ ...shapes2d(M, N, K, transA, transB), opts: { transA, transB } });
    }
  }
  cases.push({ ...shapes2d(16, 260, 72, false, false) });
  cases.push({ ...shapes2d(64, 128, 44, false, false) });
  cases.push({ ...shapes2d(16, 257, 768, false, true), opts: { transB: true } }); // logits-like
  let seed = 100;
  for (const c of cases) await check(engine, c, seed++, desc(c));
});

Deno.test("matmul bias, alpha and accumulate into out, scalar and vec4 kernels", async () => {
  const cases: Case[] = [];
  for (const [transA, transB] of TRANS) {
    cases.push({
      ...shapes2d(17, 63, 65, transA, transB),
      opts: { transA, transB, bias: true, alpha: -0.5 },
    });
    cases.push({
      ...shapes2d(8, 68, 36, transA, transB),
      opts: { transA, transB, bias: true, out: true, accumulate: true, alpha: 1.5 },
    });
  }
  cases.push({ ...shapes2d(3, 17, 127), opts: { out: true, accumulate: true } });
  cases.push({ ...shapes2d(16, 260, 72), opts: { out: true, bias: true } }); // write into out, no accumulate
  cases.push({ ...shapes2d(13, 128, 130), opts: { out: true, accumulate: true, alpha: 2 } }); // tail accumulates
  let seed = 200;
  for (const c of cases) await check(engine, c, seed++, desc(c));
});

Deno.test("matmul batched, broadcast weights and broadcast A, with transposes and bias", async () => {
  const cases: Case[] = [
    { aShape: [3, 17, 65], bShape: [3, 65, 63] },
    { aShape: [3, 65, 17], bShape: [3, 63, 65], opts: { transA: true, transB: true, bias: true } },
    { aShape: [5, 3, 257], bShape: [257, 17], opts: { bias: true } }, // one weight for all batches
    { aShape: [4, 16, 64], bShape: [64, 128], opts: { bias: true } }, // same, vec4: flattened to [64, 64]
    { aShape: [4, 64, 16], bShape: [128, 64], opts: { transA: true, transB: true } }, // vec4, not flattened
    { aShape: [2, 63, 17], bShape: [127, 63], opts: { transA: true, transB: true, bias: true } },
    { aShape: [17, 65], bShape: [3, 65, 63], opts: { out: true, accumulate: true } }, // A broadcast
    { aShape: [1, 1, 1], bShape: [1, 1, 3] },
  ];
  let seed = 300;
  for (const c of cases) await check(engine, c, seed++, desc(c));
});

Deno.test("matmul GPT-2 shapes: T=16 x 768 · 768x2304 with bias (16x128 tile), T=128 x 768 · 768x256 (32x256)", async () => {
  await check(engine, { ...shapes2d(16, 2304, 768, false, false), opts: { bias: true } }, 400, "c_attn T=16");
  await check(engine, { ...shapes2d(128, 256, 768, false, false), opts: { bias: true } }, 401, "T=128");
});

Deno.test("matmul splits operands larger than one storage binding (64 KiB limit) into exact chunks", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    assertEquals(small.limits.maxBindingBytes, 64 * 1024);
    // 16384 floats per binding: every case below has at least one operand (or C) larger than that, and
    // the chunk sizes that result (rows of A/C, columns of B/C, k-ranges, batches) are not multiples of
    // anything in particular
    const cases: Case[] = [];
    for (const [transA, transB] of TRANS) {
      cases.push({ ...shapes2d(257, 65, 127, transA, transB), opts: { transA, transB } }); // A, C too big
      cases.push({ ...shapes2d(17, 1001, 63, transA, transB), opts: { transA, transB, bias: true } }); // B, C
    }
    cases.push({ ...shapes2d(3, 129, 300) }); // one column of B spans 38k floats: K is split, later chunks accumulate
    cases.push({ ...shapes2d(65, 301, 257, false, true), opts: { transB: true, bias: true, alpha: 0.25 } });
    cases.push({ ...shapes2d(8, 1000, 64, false, true), opts: { transB: true, bias: true } }); // vec4, logits-like
    cases.push({ ...shapes2d(8, 200, 96), opts: { out: true, accumulate: true } }); // vec4 A/B/C, K split 80+16
    cases.push({ aShape: [7, 17, 127], bShape: [7, 127, 63], opts: { bias: true } }); // batches split
    cases.push({ aShape: [3, 65, 127], bShape: [127, 257], opts: { out: true, accumulate: true } });
    cases.push({ aShape: [5, 63, 33], bShape: [5, 129, 63], opts: { transA: true, transB: true } });
    let seed = 500;
    for (const c of cases) {
      const before = small.stats.dispatches;
      await check(small, c, seed++, `chunked ${desc(c)}`);
      const used = small.stats.dispatches - before;
      if (used < 2) throw new Error(`chunked ${desc(c)}: expected several dispatches, got ${used}`);
    }
  } finally {
    small.destroy();
  }
});

Deno.test("matmul steady state: repeated calls create no new GPU buffers", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    for (const eng of [engine, small]) {
      const a = eng.upload(randn(65 * 257, 1), [65, 257]);
      const w = eng.upload(randn(301 * 257, 2), [301, 257]);
      const bias = eng.upload(randn(301, 3), [301]);
      const out = eng.zeros([65, 301]);
      const step = () =>
        eng.scope(() => {
          const y = launchMatmul(a, w, { transB: true, bias });
          launchMatmul(y, w, { out: eng.zeros([65, 257]) });
          launchMatmul(a, w, { transB: true, out, accumulate: true });
        });
      step();
      await eng.sync();
      const created = eng.stats.buffersCreated;
      for (let i = 0; i < 5; i++) step();
      await eng.sync();
      assertEquals(eng.stats.buffersCreated, created);
      [a, w, bias, out].forEach((t) => t.dispose());
    }
  } finally {
    small.destroy();
  }
});

Deno.test("matmul rejects bad shapes and options with messages naming both shapes", () => {
  engine.scope(() => {
    const a = engine.empty([3, 4]), b = engine.empty([5, 6]);
    assertThrows(() => launchMatmul(a, b), /inner dimensions differ \(4 vs 5\).*\[3, 4\].*\[5, 6\]/);
    assertThrows(() => launchMatmul(a, engine.empty([6, 5]), { transB: true }), /\(4 vs 5\)/);
    assertThrows(
      () => launchMatmul(engine.empty([2, 3, 4]), engine.empty([3, 4, 2])),
      /batch sizes differ \(2 vs 3\).*\[2, 3, 4\].*\[3, 4, 2\]/,
    );
    assertThrows(() => launchMatmul(engine.empty([4]), b), /2-D or 3-D/);
    const b2 = engine.empty([4, 6]);
    assertThrows(() => launchMatmul(a, b2, { bias: engine.empty([5]) }), /bias \[5\] must be \[6\]/);
    assertThrows(() => launchMatmul(a, b2, { out: engine.empty([6, 3]) }), /out \[6, 3\] must be \[3, 6\]/);
    assertThrows(() => launchMatmul(a, b2, { accumulate: true }), /accumulate needs an 'out'/);
    assertThrows(() => launchMatmul(a, engine.empty([4, 6], "i32")), /b must be f32/);
    const sq = engine.empty([4, 4]);
    assertThrows(() => launchMatmul(sq, sq, { out: sq }), /must not alias a/);
  });
});

Deno.test("matmul of empty dimensions: K = 0 gives bias (or zeros), M = 0 gives an empty result", async () => {
  await engine.scopeAsync(async () => {
    const bias = engine.upload([1, 2, 3], [3]);
    const r = launchMatmul(engine.empty([2, 0]), engine.empty([0, 3]), { bias });
    assertEquals(Array.from(await r.read()), [1, 2, 3, 1, 2, 3]);
    assertEquals(launchMatmul(engine.empty([0, 5]), engine.empty([5, 3])).shape, [0, 3]);
  });
});

Deno.test("planGemm: chunks tile every problem exactly once, bindings fit, vec4 offsets stay aligned", () => {
  const r = rng(7);
  const pick = (xs: readonly number[]) => xs[Math.floor(r() * xs.length)];
  for (let t = 0; t < 300; t++) {
    const transA = r() < 0.5, transB = r() < 0.5;
    const M = pick([...AWKWARD, 4, 64, 128]), N = pick([...AWKWARD, 4, 128, 1000]);
    const K = pick([0, ...AWKWARD, 4, 64, 768]);
    const batches = pick([1, 1, 3, 7]);
    if (batches * M * N * Math.max(K, 1) > 4e6) continue; // the coverage count below is per cell
    const bcastB = r() < 0.3;
    const p: GemmProblem = {
      M,
      N,
      K,
      batches,
      transA,
      transB,
      lda: transA ? M : K,
      ldb: transB ? K : N,
      ldc: N,
      strideA: M * K,
      strideB: bcastB ? 0 : K * N,
      strideC: M * N,
      accumulate: r() < 0.3,
    };
    const maxElems = pick([1 << 30, 16320, 5000, 1200]);
    let chunks;
    try {
      chunks = planGemm(p, maxElems, { workgroupBytes: 32768 });
    } catch (e) {
      // only when a single element of every operand cannot fit together with a batch stride
      if (!(e instanceof RangeError)) throw e;
      continue;
    }
    const cover = new Uint8Array(batches * M * N * Math.max(K, 1));
    for (const ch of chunks) {
      const { config: c } = ch;
      const spanA = (ch.bb - 1) * p.strideA +
        (transA ? (ch.kb - 1) * p.lda + ch.mb : (ch.mb - 1) * p.lda + ch.kb);
      const spanB = (ch.bb - 1) * p.strideB +
        (transB ? (ch.nb - 1) * p.ldb + ch.kb : (ch.kb - 1) * p.ldb + ch.nb);
      const spanC = (ch.bb - 1) * p.strideC + (ch.mb - 1) * p.ldc + ch.nb;
      if (Math.max(spanA, spanB, spanC) > maxElems) {
        throw new Error(`chunk over the limit: ${JSON.stringify(ch)}`);
      }
      if (c.kstep === 4 && ch.kb % 4 !== 0) throw new Error(`k4 chunk with K=${ch.kb}`);
      const firstA = ch.b0 * p.strideA + (transA ? ch.k0 * p.lda + ch.m0 : ch.m0 * p.lda + ch.k0);
      const firstB = ch.b0 * p.strideB + (transB ? ch.n0 * p.ldb + ch.k0 : ch.k0 * p.ldb + ch.n0);
      if (c.vecA && firstA % 4 !== 0) throw new Error(`vec4 A at ${firstA}`);
      if (c.vecB && firstB % 4 !== 0) throw new Error(`vec4 B at ${firstB}`);
      if (c.vecC && (ch.m0 * p.ldc + ch.n0) % 4 !== 0) throw new Error(`vec4 C at column ${ch.n0}`);
      // accumulate exactly when the caller asked or an earlier k-chunk wrote this block
      assertEquals(c.acc, ch.k0 > 0 || p.accumulate);
      assertEquals(ch.first, ch.k0 === 0);
      for (let b = ch.b0; b < ch.b0 + ch.bb; b++) {
        for (let i = ch.m0; i < ch.m0 + ch.mb; i++) {
          for (let j = ch.n0; j < ch.n0 + ch.nb; j++) {
            for (let k = ch.k0; k < ch.k0 + Math.max(ch.kb, K === 0 ? 1 : 0); k++) {
              cover[((b * M + i) * N + j) * Math.max(K, 1) + k]++;
            }
          }
        }
      }
    }
    const bad = cover.findIndex((x) => x !== 1);
    if (bad >= 0) {
      throw new Error(`problem ${JSON.stringify(p)} limit ${maxElems}: cell ${bad} covered ${cover[bad]}x`);
    }
  }
});
