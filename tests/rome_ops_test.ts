// The ops ROME's v* loss adds to engine/ops.ts: norm (kernels/norm.ts, with PyTorch's zero gradient at the
// origin) and the KL divergence in the direction ROME's code uses, KL(p ‖ p0), against float64 references.
import { deepEqual, ok } from "node:assert/strict";
import { Tape } from "../engine/autograd.ts";
import { klDivergenceModelRef, norm, sumAll } from "../engine/ops.ts";
import { gradCheck } from "./lib/gradcheck.ts";
import { assertClose, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

function logSoftmax64(row: ArrayLike<number>): Float64Array {
  let mx = -Infinity;
  for (let i = 0; i < row.length; i++) mx = Math.max(mx, row[i]);
  let z = 0;
  for (let i = 0; i < row.length; i++) z += Math.exp(row[i] - mx);
  const lz = mx + Math.log(z);
  return Float64Array.from(row, (v) => v - lz);
}

Deno.test("norm: value and gradient against float64 finite differences", async () => {
  for (const n of [1, 7, 300]) {
    const x = randn(n, 10 + n, 0.7);
    const r = await gradCheck(
      engine,
      [{ shape: [n], data: x }],
      ([t]) => norm(t),
      ([h]) => [Math.sqrt(h.reduce((s, v) => s + v * v, 0))],
    );
    ok(r.maxRelErr < 1e-3, `n=${n}: ${r.maxRelErr} (${r.worst})`);
    const v = await engine.scopeAsync(async () => (await norm(engine.upload(x, [n])).read())[0]);
    const want = Math.sqrt(Array.from(x).reduce((s, u) => s + u * u, 0));
    ok(Math.abs(v - want) <= 1e-6 * want, `norm ${v} vs ${want}`);
  }
});

Deno.test("norm: value and gradient g·x/‖x‖ vs float64 on awkward shapes (partial and many workgroups)", async () => {
  const tape = new Tape();
  for (const shape of [[257], [3, 171], [70_001]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = randn(n, 20 + n, 1.3);
    const [v, dx] = await engine.scopeAsync(async () => {
      const t = engine.upload(x, shape);
      t.requiresGrad = true;
      const y = tape.run(() => norm(t));
      const g = tape.backward(y, engine.upload(Float32Array.of(-1.75), [1])).get(t)!;
      const out = [await y.read(), await g.read()];
      g.dispose();
      return out;
    });
    const want = Math.sqrt(Array.from(x).reduce((s, u) => s + u * u, 0));
    assertClose(v, [want], { atol: 0, rtol: 1e-5 }, `‖x‖ ${shape}`);
    assertClose(dx, Array.from(x, (u) => (-1.75 * u) / want), { atol: 1e-7, rtol: 1e-5 }, `dx ${shape}`);
  }
});

Deno.test("norm: zero vector has norm 0 and gradient 0 (not NaN)", async () => {
  const tape = new Tape();
  const got = await engine.scopeAsync(async () => {
    const x = engine.zeros([5]);
    x.requiresGrad = true;
    const y = tape.run(() => norm(x));
    const g = tape.backward(y).get(x)!;
    const out = [...(await y.read()), ...(await g.read())];
    g.dispose();
    return out;
  });
  deepEqual(got, [0, 0, 0, 0, 0, 0]);
});

Deno.test("klDivergenceModelRef: KL(p ‖ p0) per row, value and gradient", async () => {
  const n = 3, V = 37;
  const logits = randn(n * V, 3, 2);
  const ref = randn(n * V, 4, 2);
  const refLp = new Float32Array(n * V);
  for (let r = 0; r < n; r++) refLp.set(logSoftmax64(ref.subarray(r * V, (r + 1) * V)), r * V);
  const cpu = (z: Float64Array) => {
    const out = new Float64Array(n);
    for (let r = 0; r < n; r++) {
      const lp = logSoftmax64(z.subarray(r * V, (r + 1) * V));
      for (let v = 0; v < V; v++) out[r] += Math.exp(lp[v]) * (lp[v] - refLp[r * V + v]);
    }
    return out;
  };
  const rep = await gradCheck(
    engine,
    [{ shape: [n, V], data: logits }, { shape: [n, V], data: refLp, grad: false }],
    ([z, q]) => klDivergenceModelRef(z, q),
    ([z]) => cpu(z),
  );
  ok(rep.maxRelErr < 1e-3, `${rep.maxRelErr} (${rep.worst})`);
  const got = await engine.scopeAsync(async () =>
    await sumAll(klDivergenceModelRef(engine.upload(logits, [n, V]), engine.upload(refLp, [n, V]))).read()
  );
  const want = cpu(Float64Array.from(logits)).reduce((a, b) => a + b, 0);
  assertClose(got, [want], { atol: 1e-5, rtol: 1e-5 }, "Σ KL");
  // p = p0 gives 0
  const zero = await engine.scopeAsync(async () =>
    await klDivergenceModelRef(engine.upload(refLp, [n, V]), engine.upload(refLp, [n, V])).read()
  );
  assertClose(zero, [0, 0, 0], { atol: 1e-6 }, "KL(p0 ‖ p0)");
});
