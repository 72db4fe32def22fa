// Every backward rule against float64 finite differences of an independent CPU implementation, and the
// whole GPT-2 graph: gradients w.r.t. an injected MLP-output vector (ROME's δ) and w.r.t. weights.
import { equal, ok, throws } from "node:assert/strict";
import { Tape } from "../engine/autograd.ts";
import * as op from "../engine/ops.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes } from "../engine/gpt2/model.ts";
import { gradCheck, type GradInput } from "./lib/gradcheck.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { TINY_CONFIG } from "./lib/fixtures.ts";
import { randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();
const TOL = 1e-3;

const input = (shape: number[], seed: number, scale = 1, grad = true): GradInput => ({
  shape,
  data: randn(shape.reduce((a, b) => a * b, 1), seed, scale),
  grad,
});

async function check(
  name: string,
  inputs: GradInput[],
  gpu: Parameters<typeof gradCheck>[2],
  cpu: Parameters<typeof gradCheck>[3],
) {
  const r = await gradCheck(engine, inputs, gpu, cpu);
  ok(r.maxRelErr <= TOL, `${name}: relative error ${r.maxRelErr.toExponential(2)} > ${TOL} (${r.worst})`);
  return r;
}

// ------------------------------------------------------------------ float64 references

function refMatmul(
  A: Float64Array,
  B: Float64Array,
  M: number,
  N: number,
  K: number,
  tA: boolean,
  tB: boolean,
) {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        s += (tA ? A[k * M + i] : A[i * K + k]) * (tB ? B[j * K + k] : B[k * N + j]);
      }
      C[i * N + j] = s;
    }
  }
  return C;
}

function refLayerNorm(x: Float64Array, g: Float64Array, b: Float64Array, C: number) {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / C; r++) {
    let m = 0, v = 0;
    for (let i = 0; i < C; i++) m += x[r * C + i] / C;
    for (let i = 0; i < C; i++) v += (x[r * C + i] - m) ** 2 / C;
    const rs = 1 / Math.sqrt(v + 1e-5);
    for (let i = 0; i < C; i++) y[r * C + i] = (x[r * C + i] - m) * rs * g[i] + b[i];
  }
  return y;
}

const GC = Math.sqrt(2 / Math.PI);

function refAttention(qkv: Float64Array, B: number, T: number, C: number, H: number, lengths: number[]) {
  const hd = C / H, out = new Float64Array(B * T * C);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < lengths[b]; i++) {
        const s: number[] = [];
        for (let j = 0; j <= i; j++) {
          let d = 0;
          for (let k = 0; k < hd; k++) {
            d += qkv[(b * T + i) * 3 * C + h * hd + k] * qkv[(b * T + j) * 3 * C + C + h * hd + k];
          }
          s.push(d / Math.sqrt(hd));
        }
        const mx = Math.max(...s);
        const e = s.map((v) => Math.exp(v - mx)), z = e.reduce((a, c) => a + c, 0);
        for (let j = 0; j <= i; j++) {
          for (let k = 0; k < hd; k++) {
            out[(b * T + i) * C + h * hd + k] += (e[j] / z) * qkv[(b * T + j) * 3 * C + 2 * C + h * hd + k];
          }
        }
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------ op rules

Deno.test("grad: add / sub / mul with row broadcast, scale, sumSquares, reshape", async () => {
  const [R, C] = [5, 7];
  const bc = (f: (x: number, y: number) => number) => (xs: Float64Array[]) =>
    xs[0].map((v, i) => f(v, xs[1][i % xs[1].length]));
  await check("add", [input([R, C], 1), input([C], 2)], ([a, b]) => op.add(a, b), bc((x, y) => x + y));
  await check("sub", [input([R, C], 3), input([R, C], 4)], ([a, b]) => op.sub(a, b), bc((x, y) => x - y));
  await check("mul", [input([R, C], 5), input([C], 6)], ([a, b]) => op.mul(a, b), bc((x, y) => x * y));
  await check(
    "scale",
    [input([R, C], 7)],
    ([a]) => op.scale(a, -1.5, 2),
    ([a]) => a.map((v) => -1.5 * v + 2),
  );
  await check(
    "sumSquares",
    [input([17], 8)],
    ([a]) => op.sumSquares(a),
    ([a]) => [a.reduce((s, v) => s + v * v, 0)],
  );
  await check("sumAll", [input([3, 4], 9)], ([a]) => op.sumAll(a), ([a]) => [a.reduce((s, v) => s + v, 0)]);
  await check(
    "reshape",
    [input([6, 4], 10)],
    ([a]) => op.scale(op.reshape(a, [4, 6]), 3),
    ([a]) => a.map((v) => 3 * v),
  );
});

Deno.test("grad: matmul in all four transpose combinations, with bias, alpha, and batched shared weights", async () => {
  const [M, N, K] = [5, 3, 17];
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      await check(
        `matmul tA=${tA} tB=${tB}`,
        [input(tA ? [K, M] : [M, K], 11), input(tB ? [N, K] : [K, N], 12), input([N], 13)],
        ([a, b, bias]) => op.matmul(a, b, { transA: tA, transB: tB, bias, alpha: 0.5 }),
        ([a, b, bias]) => refMatmul(a, b, M, N, K, tA, tB).map((v, i) => 0.5 * v + bias[i % N]),
      );
    }
  }
  await check(
    "matmul [2, M, K]·[K, N]",
    [input([2, M, K], 14), input([K, N], 15)],
    ([a, b]) => op.matmul(a, b),
    ([a, b]) => refMatmul(a, b, 2 * M, N, K, false, false),
  );
});

Deno.test("grad: layerNorm (x, gamma, beta) and gelu", async () => {
  const C = 9;
  await check(
    "layerNorm",
    [input([4, C], 21, 2), input([C], 22), input([C], 23)],
    ([x, g, b]) => op.layerNorm(x, g, b),
    ([x, g, b]) => refLayerNorm(x, g, b, C),
  );
  await check(
    "gelu",
    [input([3, 11], 24, 2)],
    ([x]) => op.gelu(x),
    ([x]) => x.map((v) => 0.5 * v * (1 + Math.tanh(GC * (v + 0.044715 * v ** 3)))),
  );
});

Deno.test("grad: causal attention over right-padded rows of different lengths", async () => {
  const [B, T, C, H] = [2, 5, 8, 2];
  const lengths = [5, 3];
  await check(
    "attention",
    [input([B, T, 3 * C], 31), { shape: [B], data: Float32Array.from(lengths), grad: false, dtype: "u32" }],
    ([qkv, len]) => op.attention(qkv, len, H),
    ([qkv]) => refAttention(qkv, B, T, C, H, lengths),
  );
});

Deno.test("grad: gatherRows, addPositions, selectRows, withRows (the hook plumbing)", async () => {
  const [V, C] = [6, 4];
  const ids = [3, 0, 3, 5];
  const idsIn: GradInput = { shape: [4], data: Float32Array.from(ids), grad: false, dtype: "u32" };
  await check(
    "gatherRows",
    [input([V, C], 41), idsIn],
    ([t, i]) => op.gatherRows(t, i),
    ([t]) => Float64Array.from(ids.flatMap((id) => Array.from(t.subarray(id * C, id * C + C)))),
  );
  await check(
    "addPositions",
    [input([2, 3, C], 42), input([5, C], 43)],
    ([x, w]) => op.addPositions(x, w),
    ([x, w]) => x.map((v, i) => v + w[i % (3 * C)]),
  );
  const rows = [2, 0];
  const rowsIn: GradInput = { shape: [2], data: Float32Array.from(rows), grad: false, dtype: "u32" };
  await check(
    "selectRows",
    [input([4, C], 44), rowsIn],
    ([x, r]) => op.selectRows(x, r),
    ([x]) => Float64Array.from(rows.flatMap((r) => Array.from(x.subarray(r * C, r * C + C)))),
  );
  await check(
    "withRows",
    [input([4, C], 45), rowsIn, input([2, C], 46)],
    ([x, r, v]) => op.withRows(x, r, v),
    ([x, , v]) => {
      const y = Float64Array.from(x);
      rows.forEach((r, k) => y.set(v.subarray(k * C, k * C + C), r * C));
      return y;
    },
  );
});

// ------------------------------------------------------------------ the whole graph

Deno.test("grad: whole GPT-2 (tiny) w.r.t. an injected MLP-output vector and w.r.t. weights", async () => {
  const c = TINY_CONFIG;
  const W = randomGpt2Weights(c, 17);
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  const model = buildGpt2(engine, c, { tensors: shapes, read: (n) => W.get(n)!, describe: () => "memory" });
  const prompt = [5, 104, 263, 32, 7];
  const L = 1, tok = 2;
  const delta = randn(c.nEmbd, 5, 0.3);
  const R = randn(c.vocabSize, 6);
  const checked = [
    "h.1.mlp.c_proj.weight",
    "h.2.attn.c_attn.weight",
    "h.0.ln_2.bias",
    "wte.weight",
    "ln_f.weight",
  ];

  const tape = new Tape();
  const deltaT = engine.upload(delta, [c.nEmbd]);
  deltaT.requiresGrad = true;
  for (const n of checked) model.w(n).requiresGrad = true;
  const grads = await engine.scopeAsync(async () => {
    const r = engine.upload(R, [c.vocabSize]);
    const loss = tape.run(() => {
      const { logits } = model.forward([prompt], {
        hooks: [{ site: "mlp", layer: L, kind: "add", at: [[0, tok]], value: deltaT }],
      });
      return op.sumAll(op.mul(op.reshape(logits!, [c.vocabSize]), r));
    });
    const g = tape.backward(loss);
    const out = new Map<string, Float32Array>();
    out.set("delta", (await g.get(deltaT)!.read()) as Float32Array);
    for (const n of checked) out.set(n, (await g.get(model.w(n))!.read()) as Float32Array);
    for (const t of g.values()) t.dispose();
    return out;
  });
  equal(tape.size, 0);
  for (const n of checked) model.w(n).requiresGrad = false;

  const objective = (Wx: Map<string, Float32Array | Float64Array>, d: ArrayLike<number>) => {
    const logits = referenceForward(c, Wx, prompt, {
      raw: true,
      patch: (site, l, t, v) => {
        if (site === "mlp" && l === L && t === tok) return v.map((x, k) => x + d[k]);
      },
    })[0];
    return logits.reduce((s, v, i) => s + v * R[i], 0);
  };
  const h = 1e-5;
  const compare = (name: string, analytic: Float32Array, fdAt: (i: number) => number, idx: number[]) => {
    const fd = idx.map(fdAt);
    const scale = Math.max(...fd.map(Math.abs));
    let worst = 0;
    idx.forEach((i, k) => {
      const err = Math.abs(analytic[i] - fd[k]) /
        Math.max(Math.abs(analytic[i]), Math.abs(fd[k]), 1e-2 * scale);
      worst = Math.max(worst, err);
    });
    ok(worst <= TOL, `${name}: relative error ${worst.toExponential(2)} > ${TOL}`);
  };
  const W64 = new Map([...W].map(([n, v]) => [n, Float64Array.from(v)]));
  const d64 = Float64Array.from(delta);
  /** The objective's central difference in element i of `x` (one of its inputs, restored after). */
  const centralDiff = (x: Float64Array, i: number) => {
    const x0 = x[i];
    x[i] = x0 + h;
    const fp = objective(W64, d64);
    x[i] = x0 - h;
    const fm = objective(W64, d64);
    x[i] = x0;
    return (fp - fm) / (2 * h);
  };
  compare("δ at mlp.1 token 2", grads.get("delta")!, (i) => centralDiff(d64, i), [...Array(c.nEmbd).keys()]);
  for (const n of checked) {
    const w = W64.get(n)!;
    const idx = Array.from({ length: Math.min(40, w.length) }, (_, k) => Math.floor((k * 7919) % w.length));
    compare(n, grads.get(n)!, (i) => centralDiff(w, i), idx);
  }
  deltaT.dispose();
  for (const t of model.weights.values()) t.dispose();
});

Deno.test("tape: nothing is recorded without a tape or without inputs that require a gradient", () => {
  const tape = new Tape();
  engine.scope(() => {
    const a = engine.upload(randn(6, 1), [2, 3]), b = engine.upload(randn(6, 2), [2, 3]);
    tape.run(() => op.add(a, b));
    equal(tape.size, 0);
    a.requiresGrad = true;
    op.add(a, b);
    equal(tape.size, 0);
    const y = tape.run(() => op.mul(op.add(a, b), b));
    equal(tape.size, 2);
    throws(() => tape.backward(b), /does not depend/);
    tape.backward(y).forEach((g) => g.dispose());
    equal(tape.size, 0);
  });
});

Deno.test("grad: cross-entropy (weighted) and KL divergence w.r.t. logits", async () => {
  const [n, V] = [4, 13];
  const targets = [3, 0, 12, 7], w = [1, 0.5, 0, 2];
  const lse = (x: Float64Array, r: number) => {
    const row = x.subarray(r * V, r * V + V), m = Math.max(...row);
    return m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
  };
  await check(
    "crossEntropy",
    [input([n, V], 51, 2), { shape: [n], data: Float32Array.from(targets), grad: false, dtype: "u32" }, {
      shape: [n],
      data: Float32Array.from(w),
      grad: false,
    }],
    ([l, t, wt]) => op.crossEntropy(l, t, wt),
    ([l]) => targets.map((t, r) => w[r] * (lse(l, r) - l[r * V + t])),
  );
  const ref = input([n, V], 52, 1.5, false);
  const refLogp = Float64Array.from(ref.data);
  for (let r = 0; r < n; r++) {
    const z = lse(refLogp, r);
    for (let v = 0; v < V; v++) refLogp[r * V + v] -= z;
  }
  await check(
    "klDivergenceRefModel",
    [input([n, V], 53, 2), { ...ref, data: Float32Array.from(refLogp) }],
    ([l, p0]) => op.klDivergenceRefModel(l, p0),
    ([l]) =>
      Array.from({ length: n }, (_, r) => {
        const z = lse(l, r);
        let s = 0;
        for (let v = 0; v < V; v++) {
          s += Math.exp(refLogp[r * V + v]) * (refLogp[r * V + v] - (l[r * V + v] - z));
        }
        return s;
      }),
  );
});
