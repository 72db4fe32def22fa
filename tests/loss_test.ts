import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { rowChunks } from "../engine/chunks.ts";
import { launchCrossEntropy, launchKlDivergenceRefModel } from "../engine/launch/loss.ts";
import { assertClose, AWKWARD, randInt, randn, rng, testEngine } from "./lib/util.ts";

const engine = await testEngine();

// ---------------------------------------------------------------- float64 references

function logSoftmax64(l: ArrayLike<number>, r: number, V: number): Float64Array {
  let m = -Infinity;
  for (let c = 0; c < V; c++) m = Math.max(m, l[r * V + c]);
  let s = 0;
  for (let c = 0; c < V; c++) s += Math.exp(l[r * V + c] - m);
  const lse = m + Math.log(s);
  return Float64Array.from({ length: V }, (_, c) => l[r * V + c] - lse);
}

/** Per-row w·(lse − l[t]) and its gradient g·w·(softmax − onehot). */
function refCrossEntropy(
  l: ArrayLike<number>,
  t: ArrayLike<number>,
  w: ArrayLike<number> | undefined,
  g: ArrayLike<number> | undefined,
  n: number,
  V: number,
) {
  const loss = new Float64Array(n), grad = new Float64Array(n * V);
  for (let r = 0; r < n; r++) {
    const wr = w ? w[r] : 1;
    if (wr === 0) continue;
    const lp = logSoftmax64(l, r, V);
    loss[r] = -wr * lp[t[r]];
    const gw = wr * (g ? g[r] : 1);
    for (let c = 0; c < V; c++) grad[r * V + c] = gw * (Math.exp(lp[c]) - (c === t[r] ? 1 : 0));
  }
  return { loss, grad };
}

/** Per-row Σ p0 (log p0 − log p) (terms with p0 = 0 count 0) and its gradient g·(p·Σp0 − p0). */
function refKl(
  l: ArrayLike<number>,
  lp0: ArrayLike<number>,
  g: ArrayLike<number> | undefined,
  n: number,
  V: number,
) {
  const loss = new Float64Array(n), grad = new Float64Array(n * V);
  for (let r = 0; r < n; r++) {
    const lp = logSoftmax64(l, r, V);
    let kl = 0, mass = 0;
    for (let c = 0; c < V; c++) {
      const p0 = Math.exp(lp0[r * V + c]);
      if (p0 > 0) kl += p0 * (lp0[r * V + c] - lp[c]);
      mass += p0;
    }
    loss[r] = kl;
    for (let c = 0; c < V; c++) {
      grad[r * V + c] = (g ? g[r] : 1) * (Math.exp(lp[c]) * mass - Math.exp(lp0[r * V + c]));
    }
  }
  return { loss, grad };
}

/** Logits with a different offset per row (up to ±1000), so the max subtraction matters. */
function offsetLogits(n: number, V: number, seed: number, scale = 3): Float32Array {
  const offsets = [0, 1000, -1000, 17.5];
  const x = randn(n * V, seed, scale);
  for (let i = 0; i < x.length; i++) x[i] += offsets[Math.floor(i / V) % offsets.length];
  return x;
}

/** float32 log-probabilities of random logits: a reference distribution p0. */
function refLogProbs(n: number, V: number, seed: number): Float32Array {
  const l = randn(n * V, seed, 2), out = new Float32Array(n * V);
  for (let r = 0; r < n; r++) out.set(logSoftmax64(l, r, V), r * V);
  return out;
}

/** Weights in [0.25, 2) with every third row masked (0). */
function maskedWeights(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, (_, i) => i % 3 === 1 ? 0 : 0.25 + 1.75 * r());
}

/** Central differences of f at x (float64), one logit at a time. */
function finiteDiff(x: Float32Array, f: (w: Float64Array) => number, h = 1e-5): Float64Array {
  return Float64Array.from(x, (_, i) => {
    const w = Float64Array.from(x);
    w[i] = x[i] + h;
    const up = f(w);
    w[i] = x[i] - h;
    return (up - f(w)) / (2 * h);
  });
}

const sum = (a: ArrayLike<number>, g?: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * (g ? g[i] : 1);
  return s;
};

// ---------------------------------------------------------------- cross-entropy

/**
 * A loss and its dlogits against float64: the loss within 1e-5 + 1e-5 relative, dlogits within 2e-6 + 1e-5
 * relative; `worst` keeps the largest absolute errors so far.
 */
function checkLossGrad(
  worst: { loss: number; grad: number },
  [loss, grad]: ArrayLike<number>[],
  ref: { loss: ArrayLike<number>; grad: ArrayLike<number> },
  at: string,
): void {
  const l = assertClose(loss, ref.loss, { atol: 1e-5, rtol: 1e-5 }, `loss ${at}`);
  const g = assertClose(grad, ref.grad, { atol: 2e-6, rtol: 1e-5 }, `grad ${at}`);
  worst.loss = Math.max(worst.loss, l.maxAbs);
  worst.grad = Math.max(worst.grad, g.maxAbs);
}

Deno.test("crossEntropy vs float64 on AWKWARD n x V, rows offset by ±1000, weights and upstream g", async () => {
  const worst = { loss: 0, grad: 0 };
  for (const n of [1, 3, 17, 63]) {
    for (const V of [...AWKWARD, 768]) {
      const L = offsetLogits(n, V, n * 131 + V), T = randInt(n, V, n + 7 * V);
      const W = maskedWeights(n, n + V), G = randn(n, 3 * n + V);
      for (const [w, g] of [[undefined, undefined], [W, undefined], [undefined, G], [W, G]] as const) {
        await engine.scopeAsync(async () => {
          const ce = launchCrossEntropy(
            engine.upload(L, [n, V]),
            engine.upload(T, [n]),
            w ? engine.upload(w, [n]) : undefined,
          );
          const d = ce.dlogits(g ? engine.upload(g, [n]) : undefined);
          assertEquals([ce.loss.shape, ce.saved.shape, d.shape], [[n], [n, 2], [n, V]]);
          const [loss, grad] = await engine.readMany([ce.loss, d]);
          const ref = refCrossEntropy(L, T, w, g, n, V);
          const at = `[${n}, ${V}]${w ? " weighted" : ""}${g ? " upstream" : ""}`;
          // loss = w·(log s − (l[t] − m)): l[t] − m is exact, log s carries ~V·2^-24 relative
          checkLossGrad(worst, [loss, grad], ref, at);
        });
      }
    }
  }
  console.log(
    `crossEntropy max abs error: loss ${worst.loss.toExponential(2)}, dlogits ${worst.grad.toExponential(2)}`,
  );
});

Deno.test("crossEntropy gradient vs float64 central differences of the float64 loss", async () => {
  let worst = 0;
  for (const [n, V] of [[3, 17], [4, 5], [2, 63]]) {
    const L = randn(n * V, n * V, 2), T = randInt(n, V, n + V), W = maskedWeights(n, V), G = randn(n, V + 1);
    // the scalar sum_r g_r · loss_r, whose gradient is dlogits(g)
    const f = (l: Float64Array) => sum(refCrossEntropy(l, T, W, undefined, n, V).loss, G);
    const fd = finiteDiff(L, f);
    const got = await engine.scopeAsync(async () => {
      const ce = launchCrossEntropy(engine.upload(L, [n, V]), engine.upload(T, [n]), engine.upload(W, [n]));
      return await engine.read(ce.dlogits(engine.upload(G, [n])));
    });
    const scale = Math.max(...fd.map(Math.abs));
    worst = Math.max(
      worst,
      assertClose(got, fd, { atol: 1e-4 * scale }, `dlogits [${n}, ${V}] vs FD`).maxAbs / scale,
    );
  }
  console.log(`crossEntropy max |dlogits - FD| / max|FD|: ${worst.toExponential(2)}`);
});

Deno.test("crossEntropy over GPT-2's 50257-wide vocabulary rows", async () => {
  const n = 3, V = 50257;
  const L = offsetLogits(n, V, 99, 4), T = Uint32Array.of(0, 50256, 31337), W = Float32Array.of(1, 0.5, 2);
  const [loss, grad] = await engine.scopeAsync(async () => {
    const ce = launchCrossEntropy(engine.upload(L, [n, V]), engine.upload(T, [n]), engine.upload(W, [n]));
    return await engine.readMany([ce.loss, ce.dlogits()]);
  });
  const ref = refCrossEntropy(L, T, W, undefined, n, V);
  const l = assertClose(loss, ref.loss, { atol: 1e-4, rtol: 1e-5 }, "loss V = 50257");
  const g = assertClose(grad, ref.grad, { atol: 1e-6, rtol: 1e-4 }, "dlogits V = 50257");
  console.log(
    `V = 50257: loss max abs ${l.maxAbs.toExponential(2)}, dlogits max abs ${g.maxAbs.toExponential(2)}`,
  );
});

Deno.test("crossEntropy: weight-0 rows give exactly 0 loss and gradient, even with garbage; bad targets give NaN", async () => {
  const n = 4, V = 9;
  const L = randn(n * V, 3);
  L[1 * V + 2] = Infinity; // masked row with non-finite logits and an out-of-range target
  L[1 * V + 3] = NaN;
  const T = Uint32Array.of(2, 4000000000, 5, V), W = Float32Array.of(1, 0, 0, 1.5);
  const [loss, grad] = await engine.scopeAsync(async () => {
    const ce = launchCrossEntropy(engine.upload(L, [n, V]), engine.upload(T, [n]), engine.upload(W, [n]));
    return await engine.readMany([ce.loss, ce.dlogits(engine.upload(Float32Array.of(1, 1, 1, 1), [n]))]);
  });
  assertEquals([loss[1], loss[2]], [0, 0]);
  assertEquals(Array.from(grad.subarray(V, 3 * V)), new Array(2 * V).fill(0));
  const ref = refCrossEntropy(L, T, W, undefined, 1, V);
  assertClose(loss.subarray(0, 1), ref.loss, { atol: 1e-5, rtol: 1e-5 }, "unmasked row 0");
  assert(Number.isNaN(loss[3]), `target >= V with weight 1.5: loss ${loss[3]}, expected NaN`);
  assert(grad.subarray(3 * V).every(Number.isNaN), "target >= V: gradient row should be NaN");
});

// ---------------------------------------------------------------- KL divergence

Deno.test("klDivergenceRefModel (KL(p0‖p)) vs float64 on AWKWARD n x V, with and without upstream g", async () => {
  const worst = { loss: 0, grad: 0 };
  for (const n of [1, 3, 17]) {
    for (const V of [...AWKWARD, 768]) {
      const L = offsetLogits(n, V, 5 * n + V, 2), LP0 = refLogProbs(n, V, n + 11 * V), G = randn(n, n + V);
      for (const g of [undefined, G]) {
        await engine.scopeAsync(async () => {
          const kl = launchKlDivergenceRefModel(engine.upload(L, [n, V]), engine.upload(LP0, [n, V]));
          const d = kl.dlogits(g ? engine.upload(g, [n]) : undefined);
          assertEquals([kl.loss.shape, kl.saved.shape, d.shape], [[n], [n, 3], [n, V]]);
          const [loss, grad] = await engine.readMany([kl.loss, d]);
          const ref = refKl(L, LP0, g, n, V);
          const at = `[${n}, ${V}]${g ? " upstream" : ""}`;
          checkLossGrad(worst, [loss, grad], ref, at);
        });
      }
    }
  }
  console.log(
    `klDivergenceRefModel max abs error: loss ${worst.loss.toExponential(2)}, dlogits ${
      worst.grad.toExponential(2)
    }`,
  );
});

Deno.test("klDivergenceRefModel (KL(p0‖p)) gradient vs float64 central differences; zero at p_new = p0; p0 = 0 terms count 0", async () => {
  let worst = 0;
  for (const [n, V] of [[3, 17], [2, 5], [2, 63]]) {
    const L = randn(n * V, 2 * n + V, 2), LP0 = refLogProbs(n, V, n * V + 1), G = randn(n, V + 2);
    LP0[1] = -Infinity; // p0 = 0 for one vocabulary entry: its term is 0 in loss and gradient
    const f = (l: Float64Array) => sum(refKl(l, LP0, undefined, n, V).loss, G);
    const fd = finiteDiff(L, f);
    const [loss, got] = await engine.scopeAsync(async () => {
      const kl = launchKlDivergenceRefModel(engine.upload(L, [n, V]), engine.upload(LP0, [n, V]));
      return await engine.readMany([kl.loss, kl.dlogits(engine.upload(G, [n]))]);
    });
    assert(loss.every(Number.isFinite), `loss with a p0 = 0 entry must stay finite, got ${loss}`);
    const scale = Math.max(...fd.map(Math.abs));
    worst = Math.max(
      worst,
      assertClose(got, fd, { atol: 1e-4 * scale }, `dlogits [${n}, ${V}] vs FD`).maxAbs / scale,
    );
  }
  console.log(`klDivergenceRefModel max |dlogits - FD| / max|FD|: ${worst.toExponential(2)}`);
  // p_new = p0 (the new logits are the reference log-probabilities shifted by a per-row constant)
  const n = 2, V = 257, LP0 = refLogProbs(n, V, 4);
  const shifted = Float32Array.from(LP0, (v, i) => v + (i < V ? 5 : -3));
  const [loss, grad] = await engine.scopeAsync(async () => {
    const kl = launchKlDivergenceRefModel(engine.upload(shifted, [n, V]), engine.upload(LP0, [n, V]));
    return await engine.readMany([kl.loss, kl.dlogits()]);
  });
  assertClose(loss, [0, 0], { atol: 2e-6 }, "KL(p0 || p0)");
  assertClose(grad, new Float64Array(n * V), { atol: 1e-7 }, "grad at p_new = p0");
});

Deno.test("klDivergenceRefModel (KL(p0‖p)) over GPT-2's 50257-wide vocabulary rows", async () => {
  const n = 2, V = 50257;
  const L = offsetLogits(n, V, 21, 3), LP0 = refLogProbs(n, V, 22);
  const [loss, grad] = await engine.scopeAsync(async () => {
    const kl = launchKlDivergenceRefModel(engine.upload(L, [n, V]), engine.upload(LP0, [n, V]));
    return await engine.readMany([kl.loss, kl.dlogits()]);
  });
  const ref = refKl(L, LP0, undefined, n, V);
  const l = assertClose(loss, ref.loss, { atol: 1e-4, rtol: 1e-5 }, "KL loss V = 50257");
  const g = assertClose(grad, ref.grad, { atol: 1e-6, rtol: 1e-4 }, "KL dlogits V = 50257");
  console.log(
    `KL V = 50257: loss max abs ${l.maxAbs.toExponential(2)}, dlogits max abs ${g.maxAbs.toExponential(2)}`,
  );
});

// ---------------------------------------------------------------- chunks and errors

Deno.test("losses with a 64 KiB binding limit: logits split into row chunks, same results", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const n = 70, V = 1001; // 4 KB per row: 16 rows per binding, chunks off the alignment
    assert(rowChunks(small, n, [V * 4], "test").length >= 4);
    const L = offsetLogits(n, V, 1), T = randInt(n, V, 2), W = maskedWeights(n, 3), G = randn(n, 4);
    const LP0 = refLogProbs(n, V, 5);
    const got = await small.scopeAsync(async () => {
      const l = small.upload(L, [n, V]), g = small.upload(G, [n]);
      const ce = launchCrossEntropy(l, small.upload(T, [n]), small.upload(W, [n]));
      const kl = launchKlDivergenceRefModel(l, small.upload(LP0, [n, V]));
      return await small.readMany([ce.loss, ce.dlogits(g), kl.loss, kl.dlogits(g)]);
    });
    const ce = refCrossEntropy(L, T, W, G, n, V), kl = refKl(L, LP0, G, n, V);
    assertClose(got[0], ce.loss, { atol: 1e-5, rtol: 1e-5 }, "CE loss chunked");
    assertClose(got[1], ce.grad, { atol: 2e-6, rtol: 1e-5 }, "CE grad chunked");
    assertClose(got[2], kl.loss, { atol: 1e-5, rtol: 1e-5 }, "KL loss chunked");
    assertClose(got[3], kl.grad, { atol: 2e-6, rtol: 1e-5 }, "KL grad chunked");
  } finally {
    small.destroy();
  }
});

Deno.test("losses reject bad shapes and dtypes with clear errors", () => {
  engine.scope(() => {
    const l = engine.zeros([4, 7]), t = engine.zeros([4], "u32");
    assertThrows(() => launchCrossEntropy(engine.zeros([2, 2, 7]), t), /logits must be \[n, V\]/);
    assertThrows(() => launchCrossEntropy(l, engine.zeros([4])), /targets must be u32/);
    assertThrows(() => launchCrossEntropy(l, engine.zeros([3], "u32")), /targets must be \[4\]/);
    assertThrows(() => launchCrossEntropy(l, t, engine.zeros([5])), /weights must be \[4\]/);
    assertThrows(() => launchCrossEntropy(l, t).dlogits(engine.zeros([4, 1])), /g must be \[4\]/);
    assertThrows(
      () => launchKlDivergenceRefModel(l, engine.zeros([4, 6])),
      /logProbsRef \[4, 6\] must match logitsNew \[4, 7\]/,
    );
    assertThrows(() => launchKlDivergenceRefModel(l, l).dlogits(engine.zeros([4], "u32")), /expected f32/);
  });
});
