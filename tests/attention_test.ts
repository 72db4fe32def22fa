import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { attentionBackward, launchAttention } from "../engine/launch/attention.ts";
import { ATTN_TILES } from "../kernels/attention.ts";
import { assertClose, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

interface Case {
  B: number;
  T: number;
  C: number;
  H: number;
  lengths: number[];
}

/** float64 causal attention of HF GPT2Attention on a right-padded batch; padded rows and probs are 0. */
function refAttention(qkv: ArrayLike<number>, c: Case): { out: Float64Array; probs: Float64Array } {
  const { B, T, C, H, lengths } = c;
  const hd = C / H, scale = 1 / Math.sqrt(hd);
  const out = new Float64Array(B * T * C), probs = new Float64Array(B * H * T * T);
  const at = (b: number, t: number, part: number, h: number, d: number) =>
    qkv[(b * T + t) * 3 * C + part * C + h * hd + d];
  for (let b = 0; b < B; b++) {
    const len = Math.min(lengths[b], T);
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < len; i++) {
        const s = new Float64Array(i + 1);
        for (let j = 0; j <= i; j++) {
          let dot = 0;
          for (let d = 0; d < hd; d++) dot += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          s[j] = dot * scale;
        }
        const m = Math.max(...s);
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += s[j] = Math.exp(s[j] - m);
        for (let j = 0; j <= i; j++) {
          const p = s[j] / sum;
          probs[((b * H + h) * T + i) * T + j] = p;
          for (let d = 0; d < hd; d++) out[(b * T + i) * C + h * hd + d] += p * at(b, j, 2, h, d);
        }
      }
    }
  }
  return { out, probs };
}

/** float64 analytic gradient of sum(out ⊙ dOut) with respect to qkv (checked against finite differences). */
function refBackward(qkv: ArrayLike<number>, dOut: ArrayLike<number>, c: Case): Float64Array {
  const { B, T, C, H, lengths } = c;
  const hd = C / H, scale = 1 / Math.sqrt(hd);
  const { probs } = refAttention(qkv, c);
  const g = new Float64Array(B * T * 3 * C);
  const qi = (b: number, t: number, part: number, h: number, d: number) =>
    (b * T + t) * 3 * C + part * C + h * hd + d;
  for (let b = 0; b < B; b++) {
    const len = Math.min(lengths[b], T);
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < len; i++) {
        const p = (j: number) => probs[((b * H + h) * T + i) * T + j];
        const dP = new Float64Array(i + 1);
        let D = 0;
        for (let j = 0; j <= i; j++) {
          for (let d = 0; d < hd; d++) {
            dP[j] += dOut[(b * T + i) * C + h * hd + d] * qkv[qi(b, j, 2, h, d)];
            g[qi(b, j, 2, h, d)] += p(j) * dOut[(b * T + i) * C + h * hd + d];
          }
          D += p(j) * dP[j];
        }
        for (let j = 0; j <= i; j++) {
          const dS = scale * p(j) * (dP[j] - D);
          for (let d = 0; d < hd; d++) {
            g[qi(b, i, 0, h, d)] += dS * qkv[qi(b, j, 1, h, d)];
            g[qi(b, j, 1, h, d)] += dS * qkv[qi(b, i, 0, h, d)];
          }
        }
      }
    }
  }
  return g;
}

function maxAbs(xs: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < xs.length; i++) m = Math.max(m, Math.abs(xs[i]));
  return m;
}

/** Writes `v` into every element of qkv that belongs to a padded position. */
function poisonPadding(qkv: Float32Array, c: Case, v: (i: number) => number): Float32Array {
  const out = qkv.slice();
  for (let b = 0; b < c.B; b++) {
    for (let t = Math.min(c.lengths[b], c.T); t < c.T; t++) {
      for (let k = 0; k < 3 * c.C; k++) out[(b * c.T + t) * 3 * c.C + k] = v(k);
    }
  }
  return out;
}

const CASES: Case[] = [
  { B: 1, T: 1, C: 3, H: 1, lengths: [1] },
  { B: 3, T: 17, C: 12, H: 3, lengths: [17, 1, 9] },
  { B: 2, T: 65, C: 34, H: 2, lengths: [65, 63] },
  { B: 4, T: 130, C: 130, H: 2, lengths: [1, 130, 64, 127] }, // hd 65: crosses the 64-wide tile in d too
  { B: 2, T: 63, C: 8, H: 2, lengths: [0, 40] },
];

Deno.test("attention forward and probs vs float64, lengths 0/1/T in one batch, awkward T and head dims", async () => {
  for (const c of CASES) {
    const Q = randn(c.B * c.T * 3 * c.C, c.T * 7 + c.C, 1.5);
    await engine.scopeAsync(async () => {
      const qkv = engine.upload(Q, [c.B, c.T, 3 * c.C]);
      const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
      const r = launchAttention(qkv, lengths, c.H, { saveProbs: true });
      assertEquals(r.out.shape, [c.B, c.T, c.C]);
      assertEquals(r.probs!.shape, [c.B, c.H, c.T, c.T]);
      const [out, probs] = await engine.readMany([r.out, r.probs!]);
      const ref = refAttention(Q, c);
      const tag = `B${c.B} T${c.T} C${c.C} H${c.H}`;
      assertClose(out, ref.out, { atol: 2e-6, rtol: 1e-5 }, `out ${tag}`);
      assertClose(probs, ref.probs, { atol: 1e-6, rtol: 1e-5 }, `probs ${tag}`);
      // masked probabilities and padded outputs are exact zeros, not merely small
      probs.forEach((v, i) => {
        if (ref.probs[i] === 0 && v !== 0) throw new Error(`${tag}: masked prob ${i} is ${v}`);
      });
      out.forEach((v, i) => {
        if (Math.floor(i / c.C) % c.T >= c.lengths[Math.floor(i / (c.T * c.C))] && v !== 0) {
          throw new Error(`${tag}: padded output ${i} is ${v}`);
        }
      });
      // without saveProbs: the same output, scores in scratch
      const plain = launchAttention(qkv, lengths, c.H);
      assertEquals(plain.probs, undefined);
      assertEquals(Array.from(await plain.out.read()), Array.from(out));
    });
  }
});

Deno.test("attention: padded tokens (NaN, huge) change nothing in valid outputs or gradients", async () => {
  const cases: Case[] = [
    { B: 3, T: 70, C: 16, H: 4, lengths: [70, 1, 33] }, // matmul path
    { B: 2, T: 37, C: 15, H: 3, lengths: [37, 20] }, // matmul path, hd 5 and odd T: scalar matmul kernels
    { B: 3, T: 29, C: 16, H: 2, lengths: [29, 1, 12] }, // fused short-sequence path
  ];
  for (const c of cases) {
    const Q = randn(c.B * c.T * 3 * c.C, 11);
    const dO = randn(c.B * c.T * c.C, 12);
    const variants = [
      Q,
      poisonPadding(Q, c, () => NaN),
      poisonPadding(Q, c, (k) => (k % 2 ? 1e30 : -Infinity)),
    ];
    const results: Float32Array[][] = [];
    for (const V of variants) {
      await engine.scopeAsync(async () => {
        const qkv = engine.upload(V, [c.B, c.T, 3 * c.C]);
        const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
        // dOut at padded rows is poisoned too: those outputs are constant, their gradient must be ignored
        const dOut = engine.upload(
          dO.map((v, i) => (Math.floor(i / c.C) % c.T >= c.lengths[Math.floor(i / (c.T * c.C))] ? NaN : v)),
          [c.B, c.T, c.C],
        );
        const r = launchAttention(qkv, lengths, c.H, { saveProbs: true });
        const plain = launchAttention(qkv, lengths, c.H);
        const dqkv = attentionBackward(qkv, r.probs!, dOut, lengths, c.H);
        results.push((await engine.readMany([r.out, r.probs!, dqkv, plain.out])) as Float32Array[]);
      });
    }
    for (const [i, res] of results.entries()) {
      for (const [k, name] of ["out", "probs", "dqkv", "out without probs"].entries()) {
        if (!res[k].every(Number.isFinite)) throw new Error(`T${c.T} variant ${i}: ${name} is not finite`);
        assertEquals(Array.from(res[k]), Array.from(results[0][k]), `T${c.T} variant ${i}: ${name} differs`);
      }
    }
    assertClose(results[0][0], refAttention(Q, c).out, { atol: 2e-6, rtol: 1e-5 }, `out T${c.T}`);
  }
});

Deno.test("attentionBackward vs float64 central differences (B=2, T=5, lengths [5,3], C=8, nHead=2)", async () => {
  const c: Case = { B: 2, T: 5, C: 8, H: 2, lengths: [5, 3] };
  const Q = randn(c.B * c.T * 3 * c.C, 21);
  const dO = randn(c.B * c.T * c.C, 22);
  const loss = (x: Float64Array) => refAttention(x, c).out.reduce((s, v, i) => s + v * dO[i], 0);
  const x = Float64Array.from(Q), fd = new Float64Array(x.length), step = 1e-5;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = v + step;
    const up = loss(x);
    x[i] = v - step;
    const down = loss(x);
    x[i] = v;
    fd[i] = (up - down) / (2 * step);
  }
  // the float64 analytic reference (used on larger shapes below) agrees with the differences
  const analytic = refBackward(Q, dO, c);
  const fdMax = maxAbs(fd);
  assertClose(analytic, fd, { atol: 1e-8 * fdMax }, "float64 analytic vs FD");
  const got = await engine.scopeAsync(async () => {
    const qkv = engine.upload(Q, [c.B, c.T, 3 * c.C]);
    const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
    const r = launchAttention(qkv, lengths, c.H, { saveProbs: true });
    return await attentionBackward(qkv, r.probs!, engine.upload(dO, [c.B, c.T, c.C]), lengths, c.H).read();
  });
  const rel = maxAbs(got.map((v, i) => v - fd[i])) / fdMax;
  if (!(rel <= 1e-3)) throw new Error(`relative error ${rel} > 1e-3`);
  assertClose(got, fd, { atol: 1e-3 * fdMax }, "GPU dqkv vs FD");
  // padded positions get exactly zero gradient (they do not influence anything)
  for (let t = 3; t < 5; t++) {
    for (let k = 0; k < 3 * c.C; k++) assertEquals(got[(5 + t) * 3 * c.C + k], 0);
  }
});

Deno.test("attentionBackward vs float64 analytic on tile-crossing shapes", async () => {
  for (const c of CASES.slice(1)) {
    const Q = randn(c.B * c.T * 3 * c.C, c.T + 3 * c.C, 1.5);
    const dO = randn(c.B * c.T * c.C, c.T + 5);
    const got = await engine.scopeAsync(async () => {
      const qkv = engine.upload(Q, [c.B, c.T, 3 * c.C]);
      const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
      const r = launchAttention(qkv, lengths, c.H, { saveProbs: true });
      return await attentionBackward(qkv, r.probs!, engine.upload(dO, [c.B, c.T, c.C]), lengths, c.H).read();
    });
    const ref = refBackward(Q, dO, c);
    const scale = maxAbs(ref);
    assertClose(got, ref, { atol: 2e-5 * scale, rtol: 1e-4 }, `dqkv B${c.B} T${c.T} C${c.C} H${c.H}`);
  }
});

Deno.test("attention: the fused path and every tile size (16, 32, 64) agree with float64", async () => {
  const cases: Case[] = [
    { B: 2, T: 70, C: 130, H: 2, lengths: [70, 37] }, // hd 65, several tiles in every dimension
    { B: 3, T: 32, C: 128, H: 2, lengths: [32, 31, 16] }, // hd 64: the fused kernel's limits
  ];
  for (const c of cases) {
    const Q = randn(c.B * c.T * 3 * c.C, 41), dO = randn(c.B * c.T * c.C, 42);
    const ref = refAttention(Q, c), refG = refBackward(Q, dO, c);
    for (const tile of [undefined, ...ATTN_TILES]) {
      const [out, probs, dq] = await engine.scopeAsync(async () => {
        const qkv = engine.upload(Q, [c.B, c.T, 3 * c.C]);
        const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
        const r = launchAttention(qkv, lengths, c.H, { saveProbs: true, tile });
        const d = attentionBackward(qkv, r.probs!, engine.upload(dO, [c.B, c.T, c.C]), lengths, c.H, {
          tile,
        });
        return await engine.readMany([r.out, r.probs!, d]);
      });
      const tag = `T${c.T} tile ${tile ?? "auto"}`;
      assertClose(out, ref.out, { atol: 2e-6, rtol: 1e-5 }, `out ${tag}`);
      assertClose(probs, ref.probs, { atol: 1e-6, rtol: 1e-5 }, `probs ${tag}`);
      assertClose(dq, refG, { atol: 2e-5 * maxAbs(refG), rtol: 1e-4 }, `dqkv ${tag}`);
    }
  }
});

Deno.test("attention: the matmul path matches the tiled kernels; padded positions are exact zeros", async () => {
  const cases: Case[] = [
    { B: 3, T: 48, C: 32, H: 2, lengths: [48, 7, 0] }, // hd 16: vec4 matmul kernels
    { B: 2, T: 33, C: 18, H: 3, lengths: [20, 33] }, // hd 6: scalar matmul kernels
  ];
  for (const c of cases) {
    const Q = poisonPadding(randn(c.B * c.T * 3 * c.C, 21), c, () => NaN);
    const dO = randn(c.B * c.T * c.C, 22);
    const [mm, tiled] = await engine.scopeAsync(async () => {
      const qkv = engine.upload(Q, [c.B, c.T, 3 * c.C]);
      const lengths = engine.upload(Uint32Array.from(c.lengths), [c.B], "u32");
      const dOut = engine.upload(dO, [c.B, c.T, c.C]);
      const run = async (tile?: 64) => {
        const r = launchAttention(qkv, lengths, c.H, { saveProbs: true, tile });
        const d = attentionBackward(qkv, r.probs!, dOut, lengths, c.H, { tile });
        return (await engine.readMany([r.out, r.probs!, d])) as Float32Array[];
      };
      return [await run(), await run(64)];
    });
    for (const [k, name] of ["out", "probs", "dqkv"].entries()) {
      assertClose(mm[k], tiled[k], { atol: 1e-6, rtol: 1e-5 }, `T${c.T} ${name}`);
      const per = mm[k].length / (c.B * (k === 1 ? c.H * c.T : c.T)); // elements per (b, [h,] t) row
      mm[k].forEach((v, i) => {
        const row = Math.floor(i / per), t = row % c.T;
        const b = Math.floor(row / (k === 1 ? c.H * c.T : c.T));
        if (t >= c.lengths[b] && !Object.is(v, 0)) {
          throw new Error(`T${c.T} ${name}[${i}] = ${v} at a padded position`);
        }
      });
    }
  }
});

Deno.test("attention with a tiny binding limit: pairs split into chunks, same results", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    // tiled: T·T·4 = 16.9 KB per (b, h) pair and 18.7 KB of qkv per batch row, a few pairs per dispatch;
    // fused: 23 KB of qkv per batch row, two rows per dispatch
    const cases: Case[] = [
      { B: 3, T: 65, C: 24, H: 3, lengths: [65, 2, 50] },
      { B: 6, T: 30, C: 64, H: 1, lengths: [30, 2, 17, 1, 29, 30] },
    ];
    for (const c of cases) {
      const Q = randn(c.B * c.T * 3 * c.C, 5);
      const dO = randn(c.B * c.T * c.C, 6);
      const run = async (e: Engine) =>
        await e.scopeAsync(async () => {
          const qkv = e.upload(Q, [c.B, c.T, 3 * c.C]);
          const lengths = e.upload(Uint32Array.from(c.lengths), [c.B], "u32");
          const r = launchAttention(qkv, lengths, c.H, { saveProbs: true });
          const d = attentionBackward(qkv, r.probs!, e.upload(dO, [c.B, c.T, c.C]), lengths, c.H);
          return await e.readMany([r.out, r.probs!, d, launchAttention(qkv, lengths, c.H).out]);
        });
      const before = engine.stats.dispatches;
      const want = await run(engine);
      const oneChunk = engine.stats.dispatches - before;
      const beforeSmall = small.stats.dispatches;
      const got = await run(small);
      if (small.stats.dispatches - beforeSmall <= oneChunk) {
        throw new Error(`T${c.T}: expected several chunks`);
      }
      for (let k = 0; k < 4; k++) {
        assertEquals(Array.from(got[k]), Array.from(want[k]), `T${c.T} result ${k}`);
      }
      assertClose(got[0], refAttention(Q, c).out, { atol: 2e-6, rtol: 1e-5 }, `chunked out T${c.T}`);
    }
  } finally {
    small.destroy();
  }
});

Deno.test("attention validates shapes and dtypes", () => {
  engine.scope(() => {
    const qkv = engine.zeros([2, 4, 24]);
    const lengths = engine.upload(Uint32Array.of(4, 4), [2], "u32");
    assertThrows(() => launchAttention(qkv, lengths, 5), /heads do not split/);
    assertThrows(() => launchAttention(engine.zeros([2, 4, 25]), lengths, 1), /qkv must be f32 \[B, T, 3C\]/);
    assertThrows(() => launchAttention(qkv, engine.zeros([2]), 2), /lengths must be u32/);
    assertThrows(
      () => launchAttention(qkv, engine.upload(Uint32Array.of(4), [1], "u32"), 2),
      /lengths must be u32/,
    );
    const probs = engine.zeros([2, 2, 4, 4]);
    assertThrows(() => attentionBackward(qkv, probs, engine.zeros([2, 4, 7]), lengths, 2), /dOut must be/);
    assertThrows(
      () => attentionBackward(qkv, engine.zeros([2, 2, 4, 3]), engine.zeros([2, 4, 8]), lengths, 2),
      /probs/,
    );
  });
});
