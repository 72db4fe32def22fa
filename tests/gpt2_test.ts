import { deepStrictEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes } from "../engine/gpt2/model.ts";
import { type Hook, type Pos } from "../engine/gpt2/hooks.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { logSoftmaxRow } from "../engine/gpt2/generate.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { GPT2_SMALL, TINY_CONFIG, writeTinyModel } from "./lib/fixtures.ts";
import { assertClose, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();
const PROMPTS = [[5, 104, 263, 32, 7, 99, 258], [40, 41], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]];

async function logprobsOf(logits: import("../engine/tensor.ts").Tensor, V: number): Promise<Float64Array[]> {
  const flat = await logits.read();
  logits.dispose();
  return Array.from({ length: flat.length / V }, (_, r) => logSoftmaxRow(flat.subarray(r * V, (r + 1) * V)));
}

for (
  const variant of [{ prefix: false, dtype: "F32" }, { prefix: true, dtype: "F32", extras: true }, {
    prefix: false,
    dtype: "F16",
  }] as const
) {
  Deno.test(`forward matches float64 reference: ${variant.prefix ? "transformer.* keys" : "bare keys"}, ${variant.dtype}${"extras" in variant ? ", lm_head + attn.bias" : ""}`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const W = await writeTinyModel(dir, { ...variant, seed: 7 });
      const { model } = await loadGpt2Folder(engine, dir);
      const { logits, positions } = model.forward(PROMPTS, { logits: "all" });
      const got = await logprobsOf(logits!, TINY_CONFIG.vocabSize);
      let i = 0;
      for (const [r, t] of positions) {
        const ref = referenceForward(TINY_CONFIG, W, PROMPTS[r].slice(0, t + 1))[0];
        assertClose(got[i++], ref, { atol: 2e-4 }, `row ${r} position ${t}`);
      }
      equal(i, PROMPTS.flat().length);
      for (const t of model.weights.values()) t.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/** A tiny model built straight from weights (no files). */
function tinyModel(c: Gpt2Config, seed: number) {
  const W = randomGpt2Weights(c, seed);
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  const model = buildGpt2(engine, c, { tensors: shapes, read: (n) => W.get(n)!, describe: () => "memory" });
  return { W, model };
}

Deno.test("hooks: restoring every clean state gives the clean logits; restoring none the corrupted ones", async () => {
  const c = TINY_CONFIG;
  const { W, model } = tinyModel(c, 3);
  const prompt = [5, 104, 263, 32, 7, 99];
  const subject = [1, 2, 3];
  const noise = randn(subject.length * c.nEmbd, 11, 0.5);
  const noiseT = engine.upload(noise, [subject.length, c.nEmbd]);
  const corrupt: Hook = {
    site: "embed",
    layer: 0,
    kind: "add",
    at: subject.map((t) => [1, t] as Pos),
    value: noiseT,
  };
  const V = c.vocabSize;

  // reference: clean and corrupted, in float64
  const clean = referenceForward(c, W, prompt)[0];
  const corrupted = referenceForward(c, W, prompt, {
    patch: (site, _l, t, v) => {
      const i = subject.indexOf(t);
      if (site === "embed" && i >= 0) return v.map((x, k) => x + noise[i * c.nEmbd + k]);
    },
  })[0];

  const none = model.forward([prompt, prompt], { hooks: [corrupt] });
  const [n0, n1] = await logprobsOf(none.logits!, V);
  assertClose(n0, clean, { atol: 2e-4 }, "clean row");
  assertClose(n1, corrupted, { atol: 2e-4 }, "corrupted row, nothing restored");

  for (const site of ["resid", "mlp", "attn"] as const) {
    // restore every (token, layer) state of this kind from row 0 into row 1: the residual stream is then
    // clean again from the first layer on (for mlp/attn also the embeddings must be restored: restore
    // resid of the last layer covers everything)
    const all: Hook[] = [];
    for (let l = 0; l < c.nLayer; l++) {
      const ts = prompt.map((_, t) => t);
      all.push({
        site,
        layer: l,
        kind: "copy",
        from: ts.map((t) => [0, t] as Pos),
        to: ts.map((t) => [1, t] as Pos),
      });
    }
    if (site !== "resid") {
      all.push({
        site: "resid",
        layer: c.nLayer - 1,
        kind: "copy",
        from: prompt.map((_, t) => [0, t] as Pos),
        to: prompt.map((_, t) => [1, t] as Pos),
      });
    }
    const res = model.forward([prompt, prompt], { hooks: [corrupt, ...all] });
    const [r0, r1] = await logprobsOf(res.logits!, V);
    assertClose(r1, r0, { atol: 1e-5 }, `${site}: restored row vs clean row`);
  }
  noiseT.dispose();
  for (const t of model.weights.values()) t.dispose();
});

Deno.test("hooks: read / set / add at every site match the float64 reference", async () => {
  const c = TINY_CONFIG;
  const { W, model } = tinyModel(c, 5);
  const prompt = [9, 8, 7, 6, 5];
  const vec = randn(c.nEmbd, 2, 0.7);
  const keyVec = randn(c.nInner, 3, 0.7);
  const vecT = engine.upload(vec, [c.nEmbd]);
  const setT = engine.upload(keyVec, [1, c.nInner]);
  const res = model.forward([prompt, [1, 2]], {
    hooks: [
      { site: "mlp", layer: 1, kind: "add", at: [[0, 2]], value: vecT },
      { site: "mlpKey", layer: 2, kind: "set", at: [[0, 4]], value: setT },
      { site: "mlpKey", layer: 0, kind: "read", name: "k0", at: [[0, 3], [1, 1]] },
      { site: "resid", layer: 2, kind: "read", name: "h2" },
    ],
  });
  const ref = referenceForward(c, W, prompt, {
    patch: (site, l, t, v) => {
      if (site === "mlp" && l === 1 && t === 2) return v.map((x, k) => x + vec[k]);
      if (site === "mlpKey" && l === 2 && t === 4) return Float64Array.from(keyVec);
    },
  })[0];
  const [lp0] = await logprobsOf(res.logits!, c.vocabSize);
  assertClose(lp0, ref, { atol: 2e-4 }, "patched logits");

  const refK: Float64Array[] = [];
  referenceForward(c, W, prompt, {
    patch: (s, l, t, v) => void (s === "mlpKey" && l === 0 && t === 3 && refK.push(v)),
  });
  referenceForward(c, W, [1, 2], {
    patch: (s, l, t, v) => void (s === "mlpKey" && l === 0 && t === 1 && refK.push(v)),
  });
  const k0 = res.captures.get("k0")!;
  deepStrictEqual(k0.shape, [2, c.nInner]);
  assertClose(await k0.read(), [...refK[0], ...refK[1]], { atol: 1e-4 }, "read mlpKey");
  deepStrictEqual(res.captures.get("h2")!.shape, [2 * 5, c.nEmbd]);
  for (const t of [...res.captures.values(), vecT, setT, ...model.weights.values()]) t.dispose();
});

Deno.test("forward rejects bad input with clear errors", () => {
  const { model } = tinyModel(TINY_CONFIG, 1);
  throws(() => model.forward([]), /empty batch/);
  throws(() => model.forward([[1, 99999]]), /outside the vocabulary/);
  throws(() => model.forward([Array(40).fill(1)]), /context of 32/);
  throws(
    () => model.forward([[1, 2]], { hooks: [{ site: "mlp", layer: 3, kind: "read", name: "x" }] }),
    /layer 3/,
  );
  throws(
    () =>
      model.forward([[1, 2]], {
        hooks: [{ site: "resid", layer: 0, kind: "read", name: "x", at: [[0, 2]] }],
      }),
    /token 2/,
  );
  for (const t of model.weights.values()) t.dispose();
});

Deno.test("loader: clear errors for missing tensors, wrong shapes, pickle-only folders", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinyModel(dir, { seed: 1 });
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...cfg, n_layer: 4 }));
    await rejects(loadGpt2Folder(engine, dir), /no tensor 'h\.3\.ln_1\.weight'/);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...cfg, n_inner: 32 }));
    await rejects(
      loadGpt2Folder(engine, dir),
      /c_fc\.weight' has shape \[16, 64\], the config needs \[16, 32\]/,
    );
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...cfg, model_type: "llama" }));
    await rejects(loadGpt2Folder(engine, dir), /only GPT-2/);
    await Deno.remove(`${dir}/model.safetensors`);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
    await Deno.writeFile(`${dir}/pytorch_model.bin`, new Uint8Array([0x80, 2]));
    await rejects(loadGpt2Folder(engine, dir), /arbitrary code/);
    await rejects(loadGpt2Folder(engine, `${dir}/nope`), /not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GPT-2 small shapes (124M, random weights): last-position log-probs match float64 to 1e-3", async () => {
  const c = GPT2_SMALL;
  const { W, model } = tinyModel(c, 124);
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 7919 + 13) % c.vocabSize);
  const t0 = performance.now();
  const { logits } = model.forward([prompt]);
  const [got] = await logprobsOf(logits!, c.vocabSize);
  const gpuMs = performance.now() - t0;
  const ref = referenceForward(c, W, prompt)[0];
  const rep = assertClose(got, ref, { atol: 1e-3 }, "124M last-position log-probs");
  console.log(
    `124M forward of 16 tokens: ${gpuMs.toFixed(0)} ms on the GPU path; max |Δ log p| = ${
      rep.maxAbs.toExponential(2)
    }`,
  );
  ok(rep.maxAbs <= 1e-3);
  for (const t of model.weights.values()) t.dispose();
  engine.pool.trim();
});

Deno.test("forward can start at a layer from a given residual stream and matches the full run", async () => {
  const c = TINY_CONFIG;
  const { model } = tinyModel(c, 8);
  const ids = [[5, 6, 7, 8], [9, 10]];
  for (const layer of [1, 2, c.nLayer]) {
    const full = model.forward(ids, {
      hooks: [{ site: "resid", layer: layer - 1, kind: "read", name: "h" }],
      logits: "all",
    });
    const resid = full.captures.get("h")!;
    const part = model.forward(ids, { start: { layer, resid }, logits: "all" });
    const [a, b] = await engine.readMany([full.logits!, part.logits!]);
    deepStrictEqual(Array.from(b), Array.from(a));
    for (const t of [full.logits!, part.logits!, resid]) t.dispose();
  }
  throws(
    () =>
      model.forward(ids, {
        start: { layer: 2, resid: engine.zeros([8, c.nEmbd]) },
        hooks: [{ site: "mlp", layer: 1, kind: "read", name: "x" }],
      }),
    /below the start layer/,
  );
  throws(() => model.forward(ids, { start: { layer: 1, resid: engine.zeros([3, c.nEmbd]) } }), /start state/);
  for (const t of model.weights.values()) t.dispose();
});

Deno.test("steady state: repeating a forward creates no GPU buffer (all pool hits)", async () => {
  const { model } = tinyModel(TINY_CONFIG, 9);
  const run = async () => {
    const { logits } = model.forward(PROMPTS, { logits: "all" });
    await logits!.read();
    logits!.dispose();
  };
  await run();
  const before = engine.stats;
  await run();
  const after = engine.stats;
  equal(after.buffersCreated, before.buffersCreated, "buffers created by the second forward");
  ok(after.poolHits > before.poolHits);
  for (const t of model.weights.values()) t.dispose();
});
