import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { rowChunks } from "../engine/chunks.ts";
import { Adam, type AdamOptions, clipGradNorm, Sgd, type SgdOptions } from "../engine/optim.ts";
import type { Tensor } from "../engine/tensor.ts";
import { assertClose, AWKWARD, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

// ---------------------------------------------------------------- float64 PyTorch re-implementations

/** torch.optim.Adam / AdamW, _single_tensor_adam, line by line in float64 (per-parameter step counts). */
class RefAdam {
  /** Per element, the largest |p| + |change of p| seen: the scale f32 rounding of p − update works at. */
  mag: Float64Array[];
  m: Float64Array[];
  v: Float64Array[];
  steps: number[];
  constructor(public params: Float64Array[], public o: Required<AdamOptions>) {
    this.mag = params.map((p) => p.map(Math.abs));
    this.m = params.map((p) => new Float64Array(p.length));
    this.v = params.map((p) => new Float64Array(p.length));
    this.steps = params.map(() => 0);
  }
  step(grads: (ArrayLike<number> | undefined)[]): void {
    const { lr, betas: [b1, b2], eps, weightDecay: wd, decoupledWeightDecay } = this.o;
    this.params.forEach((p, i) => {
      const g0 = grads[i];
      if (!g0) return;
      const t = ++this.steps[i];
      const m = this.m[i], v = this.v[i];
      for (let k = 0; k < p.length; k++) {
        const before = p[k];
        let g = g0[k];
        if (wd !== 0) {
          if (decoupledWeightDecay) p[k] *= 1 - lr * wd; // param.mul_(1 - lr * weight_decay)
          else g += wd * p[k]; // grad = grad.add(param, alpha=weight_decay)
        }
        m[k] += (g - m[k]) * (1 - b1); // exp_avg.lerp_(grad, 1 - beta1)
        v[k] = v[k] * b2 + (1 - b2) * g * g; // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        const stepSize = lr / (1 - b1 ** t);
        const denom = Math.sqrt(v[k]) / Math.sqrt(1 - b2 ** t) + eps;
        p[k] -= stepSize * m[k] / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
        this.mag[i][k] = Math.max(this.mag[i][k], Math.abs(before) + Math.abs(p[k] - before));
      }
    });
  }
}

/** torch.optim.SGD, _single_tensor_sgd with dampening 0, nesterov False, in float64. */
class RefSgd {
  mag: Float64Array[];
  buf: (Float64Array | undefined)[];
  constructor(public params: Float64Array[], public o: Required<SgdOptions>) {
    this.mag = params.map((p) => p.map(Math.abs));
    this.buf = params.map(() => undefined);
  }
  step(grads: (ArrayLike<number> | undefined)[]): void {
    const { lr, momentum, weightDecay: wd } = this.o;
    this.params.forEach((p, i) => {
      const g = grads[i];
      if (!g) return;
      const d = Float64Array.from(g, (x, k) => wd !== 0 ? x + wd * p[k] : x);
      if (momentum !== 0) {
        const b = this.buf[i];
        if (b === undefined) this.buf[i] = Float64Array.from(d); // buf = torch.clone(d_p).detach()
        else for (let k = 0; k < d.length; k++) b[k] = b[k] * momentum + d[k];
        d.set(this.buf[i]!);
      }
      for (let k = 0; k < p.length; k++) {
        this.mag[i][k] = Math.max(this.mag[i][k], Math.abs(p[k]) + Math.abs(lr * d[k]));
        p[k] -= lr * d[k];
      }
    });
  }
}

// ---------------------------------------------------------------- helpers

const SIZES = [...AWKWARD, 4099];
const RTOL = 1e-6;

/**
 * |actual − expected| <= rtol · mag elementwise, mag = |p| + |update| from the reference: float32 rounds
 * p − update at the scale of its operands, so a parameter that an update drives near zero is judged by
 * the relative error of the update, not of the (cancelled) result. Returns the largest |diff| / mag.
 */
function assertRel(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  mag: ArrayLike<number>,
  what: string,
  rtol = RTOL,
): number {
  assertEquals(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  for (let k = 0; k < actual.length; k++) {
    const rel = Math.abs(actual[k] - expected[k]) / Math.max(mag[k], 1e-30);
    if (!(rel <= rtol)) {
      throw new Error(
        `${what}: element ${k} is ${actual[k]}, expected ${expected[k]} (|diff| / (|p| + |update|) = ` +
          `${rel.toExponential(3)} > ${rtol})`,
      );
    }
    worst = Math.max(worst, rel);
  }
  return worst;
}

/** Random grads for step s of parameter i; parameter 1 gets none on step 2 (it skips that step). */
function gradsFor(sizes: readonly number[], s: number, scale = 1): (Float32Array | undefined)[] {
  return sizes.map((n, i) => i === 1 && s === 2 ? undefined : randn(n, 1000 * s + i, scale));
}

async function readAll(e: Engine, ts: readonly Tensor[]): Promise<Float32Array[]> {
  return (await e.readMany(ts)) as Float32Array[];
}

/** Runs 5 steps of a GPU optimiser and its reference side by side, comparing the parameters each step. */
async function sideBySide(
  e: Engine,
  sizes: readonly number[],
  make: (ps: Tensor[]) => { step(g: (Tensor | undefined)[]): void; lr: number; dispose(): void },
  makeRef: (ps: Float64Array[]) => {
    step(g: (ArrayLike<number> | undefined)[]): void;
    o: { lr: number };
    params: Float64Array[];
    mag: Float64Array[];
  },
  what: string,
): Promise<number> {
  let worst = 0;
  await e.scopeAsync(async () => {
    const P0 = sizes.map((n, i) => randn(n, 77 + i));
    const params = P0.map((p, i) => e.upload(p, [sizes[i]]));
    const opt = make(params), ref = makeRef(P0.map((p) => Float64Array.from(p)));
    try {
      for (let s = 0; s < 5; s++) {
        if (s === 3) opt.lr = ref.o.lr = ref.o.lr * 0.5; // a scheduler halving the rate mid-run
        const G = gradsFor(sizes, s, s === 4 ? 1e-3 : 1); // small grads on the last step: eps matters
        e.scope(() => {
          const grads = G.map((g, i) => g && e.upload(g, [sizes[i]]));
          const before = e.stats;
          opt.step(grads);
          const after = e.stats;
          assertEquals(after.readbacks, before.readbacks, `${what}: step must not read back`);
          assertEquals(
            after.dispatches - before.dispatches,
            G.filter((g) => g).length,
            `${what}: one dispatch per param`,
          );
        });
        ref.step(G);
        const got = await readAll(e, params);
        got.forEach((p, i) => {
          const r = assertRel(p, ref.params[i], ref.mag[i], `${what} step ${s + 1} param ${i} [${sizes[i]}]`);
          worst = Math.max(worst, r);
        });
      }
    } finally {
      opt.dispose();
    }
  });
  return worst;
}

// ---------------------------------------------------------------- Adam / AdamW / SGD

Deno.test("Adam and AdamW match a float64 PyTorch re-implementation for 5 steps on AWKWARD sizes", async () => {
  const variants: [string, Required<AdamOptions>][] = [
    ["Adam defaults", {
      lr: 1e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0,
      decoupledWeightDecay: false,
    }],
    ["Adam wd", { lr: 3e-2, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1, decoupledWeightDecay: false }],
    // eps comparable to sqrt(v̂) (unit gradients): a misplaced eps would show at 10%
    ["Adam eps 0.1", {
      lr: 1e-2,
      betas: [0.9, 0.999],
      eps: 0.1,
      weightDecay: 0,
      decoupledWeightDecay: false,
    }],
    ["AdamW", { lr: 3e-2, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01, decoupledWeightDecay: true }],
    ["AdamW strong decay", {
      lr: 0.1,
      betas: [0.5, 0.9],
      eps: 1e-8,
      weightDecay: 0.5,
      decoupledWeightDecay: true,
    }],
  ];
  for (const [name, o] of variants) {
    const worst = await sideBySide(
      engine,
      SIZES,
      (ps) => new Adam(ps, { ...o, betas: [...o.betas] }),
      (ps) => new RefAdam(ps, { ...o, betas: [...o.betas] }),
      name,
    );
    console.log(`${name}: max relative error of params after 5 steps ${worst.toExponential(2)}`);
  }
});

Deno.test("Adam keeps per-parameter step counts; zeroState restarts like a fresh optimiser", async () => {
  await engine.scopeAsync(async () => {
    const n = 65, P0 = randn(n, 1);
    const a = engine.upload(P0, [n]), b = engine.upload(P0, [n]);
    const opt = new Adam([a, b], { lr: 0.05 });
    const ref = new RefAdam([Float64Array.from(P0), Float64Array.from(P0)], {
      lr: 0.05,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0,
      decoupledWeightDecay: false,
    });
    try {
      const g = randn(n, 2), gt = engine.upload(g, [n]);
      opt.step([gt, undefined]);
      ref.step([g, undefined]);
      opt.step([gt, gt]);
      ref.step([g, g]);
      assertEquals([opt.t, opt.state(0).step, opt.state(1).step], [2, 2, 1]);
      const [pa, pb] = await readAll(engine, [a, b]);
      assertRel(pa, ref.params[0], ref.mag[0], "param stepped twice");
      assertRel(pb, ref.params[1], ref.mag[1], "param stepped once (bias correction of t = 1)");
      // after zeroState, a step from the current parameters equals a fresh Adam's first step
      opt.zeroState();
      const [m, v] = await readAll(engine, [opt.state(0).m, opt.state(0).v]);
      assert(m.every((x) => x === 0) && v.every((x) => x === 0), "zeroState clears m and v");
      const fresh = new RefAdam([Float64Array.from(pa)], { ...ref.o });
      opt.step([gt, undefined]);
      fresh.step([g]);
      assertEquals(opt.t, 1);
      assertRel((await readAll(engine, [a]))[0], fresh.params[0], fresh.mag[0], "first step after zeroState");
    } finally {
      opt.dispose();
    }
  });
});

Deno.test("Sgd with and without momentum and weight decay matches float64 PyTorch SGD for 5 steps", async () => {
  const variants: [string, Required<SgdOptions>][] = [
    ["SGD plain", { lr: 0.1, momentum: 0, weightDecay: 0 }],
    ["SGD momentum", { lr: 0.05, momentum: 0.9, weightDecay: 0 }],
    ["SGD momentum wd", { lr: 0.05, momentum: 0.9, weightDecay: 0.01 }],
  ];
  for (const [name, o] of variants) {
    const worst = await sideBySide(
      engine,
      SIZES,
      (ps) => new Sgd(ps, o),
      (ps) => new RefSgd(ps, { ...o }),
      name,
    );
    console.log(`${name}: max relative error of params after 5 steps ${worst.toExponential(2)}`);
  }
});

Deno.test("optimisers reject bad parameters, gradients and hyperparameters with clear errors", () => {
  engine.scope(() => {
    const p = engine.zeros([3, 4]), q = engine.zeros([5]);
    assertThrows(() => new Adam([]), /empty parameter list/);
    assertThrows(() => new Adam([p, p]), /appears more than once/);
    assertThrows(() => new Adam([engine.zeros([2], "u32")]), /expected f32/);
    assertThrows(() => new Adam([p], { betas: [1, 0.999] }), /betas\[0\] must be in \[0, 1\)/);
    assertThrows(() => new Adam([p], { lr: -1 }), /lr must be >= 0/);
    assertThrows(() => new Sgd([p], { momentum: -0.1 }), /momentum must be >= 0/);
    const adam = new Adam([p, q]), sgd = new Sgd([p, q], { momentum: 0.9 });
    try {
      assertThrows(() => adam.step([engine.zeros([3, 4])]), /1 gradients for 2 parameters/);
      assertThrows(
        () => adam.step([engine.zeros([4, 3]), undefined]),
        /gradient 0 \[4, 3\] does not match its parameter \[3, 4\]/,
      );
      assertThrows(() => sgd.step([undefined, q]), /gradient 1 is its own parameter/);
      assertEquals([adam.t, sgd.t], [0, 0]);
    } finally {
      adam.dispose();
      sgd.dispose();
    }
  });
});

// ---------------------------------------------------------------- clipGradNorm

function refNorm(gs: ArrayLike<number>[]): number {
  let s = 0;
  for (const g of gs) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
}

Deno.test("clipGradNorm vs float64: norm of all grads, in-place scale by min(1, max/(norm+1e-6)), no readback", async () => {
  const G = SIZES.map((n, i) => randn(n, 500 + i));
  const norm64 = refNorm(G);
  for (const maxNorm of [norm64 / 7, norm64 * 2, 0]) {
    await engine.scopeAsync(async () => {
      const grads = G.map((g) => engine.upload(g, [g.length]));
      const before = engine.stats.readbacks;
      const norm = clipGradNorm(grads, maxNorm);
      assertEquals(engine.stats.readbacks, before, "clipGradNorm must not read back");
      assertEquals(norm.shape, [1]);
      const [n, ...scaled] = await readAll(engine, [norm, ...grads]);
      const r = assertClose(n, [norm64], { atol: 0, rtol: 1e-6 }, `norm (max ${maxNorm})`);
      const coef = Math.min(1, maxNorm / (norm64 + 1e-6));
      scaled.forEach((g, i) =>
        assertClose(
          g,
          Float64Array.from(G[i], (x) => x * coef),
          { atol: 1e-9, rtol: 1e-6 },
          `grad ${i} (max ${maxNorm})`,
        )
      );
      if (maxNorm === norm64 * 2) scaled.forEach((g, i) => assertEquals(Array.from(g), Array.from(G[i])));
      console.log(
        `maxNorm ${maxNorm.toFixed(3)}: norm ${n[0]} vs ${norm64.toFixed(7)} (rel ${
          r.maxRel.toExponential(2)
        })`,
      );
    });
  }
  // all-zero grads: norm 0, coefficient min(1, maxNorm / 1e-6) = 1, grads stay 0
  const zeros = await engine.scopeAsync(async () => {
    const g = engine.zeros([17]);
    return await readAll(engine, [clipGradNorm([g], 1), g]);
  });
  assertEquals([zeros[0][0], zeros[1].every((x) => x === 0)], [0, true]);
  assertThrows(() => clipGradNorm([], 1), /no gradients/);
  assertThrows(() => engine.scope(() => clipGradNorm([engine.zeros([2])], NaN)), /maxNorm must be >= 0/);
});

Deno.test("Adam, Sgd and clipGradNorm with a 64 KiB binding limit: tensors split into chunks, same results", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const sizes = [50001, 17, 40000]; // 200 KB and 160 KB: several chunks each, off the alignment
    assert(rowChunks(small, sizes[0], [4], "test").length >= 4);
    const o: Required<AdamOptions> = {
      lr: 0.01,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0.1,
      decoupledWeightDecay: true,
    };
    await small.scopeAsync(async () => {
      const P0 = sizes.map((n, i) => randn(n, 9 + i));
      const adamP = P0.map((p, i) => small.upload(p, [sizes[i]])),
        sgdP = P0.map((p, i) => small.upload(p, [sizes[i]]));
      const adam = new Adam(adamP, o), sgd = new Sgd(sgdP, { lr: 0.05, momentum: 0.9, weightDecay: 0.01 });
      const refA = new RefAdam(P0.map((p) => Float64Array.from(p)), o);
      const refS = new RefSgd(P0.map((p) => Float64Array.from(p)), {
        lr: 0.05,
        momentum: 0.9,
        weightDecay: 0.01,
      });
      try {
        for (let s = 0; s < 3; s++) {
          const G = sizes.map((n, i) => randn(n, 100 * s + i));
          small.scope(() => {
            const grads = G.map((g, i) => small.upload(g, [sizes[i]]));
            // clip first (as a training loop does), then both optimisers take the clipped grads
            clipGradNorm(grads, 50);
            adam.step(grads);
            sgd.step(grads);
          });
          const coef = Math.min(1, 50 / (refNorm(G) + 1e-6));
          const clipped = G.map((g) => Float64Array.from(g, (x) => x * coef));
          refA.step(clipped);
          refS.step(clipped);
        }
        const got = await readAll(small, [...adamP, ...sgdP]);
        sizes.forEach((n, i) => {
          assertRel(got[i], refA.params[i], refA.mag[i], `chunked AdamW param ${i} [${n}]`);
          assertRel(got[sizes.length + i], refS.params[i], refS.mag[i], `chunked SGD param ${i} [${n}]`);
        });
      } finally {
        adam.dispose();
        sgd.dispose();
      }
    });
  } finally {
    small.destroy();
  }
});
