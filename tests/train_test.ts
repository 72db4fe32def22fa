import { deepStrictEqual, ok } from "node:assert/strict";
import { train } from "../cli/train.ts";
import { readSafetensorsFile } from "../engine/files.ts";
import { initGpt2Weights, learningRate, packDocuments } from "../engine/gpt2/train.ts";
import { TINY_CONFIG, tinyVocab } from "./lib/fixtures.ts";
import { testEngine } from "./lib/util.ts";

await testEngine();

async function tinyCorpus(dir: string): Promise<void> {
  const { vocab, merges } = tinyVocab();
  await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(vocab));
  await Deno.writeTextFile(`${dir}/merges.txt`, merges);
  const docs = Array.from({ length: 24 }, (_, i) => `the heron ${i % 5} in the water on the ${i % 3}.`);
  await Deno.writeTextFile(`${dir}/corpus.txt`, docs.join("\n<|endoftext|>\n") + "\n");
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({
      model: { n_layer: 2, n_head: 2, n_embd: 16, n_positions: 32 },
      train: { batch_size: 4, lr: 3e-3, warmup_steps: 2, steps: 6, checkpoint_every: 3, seed: 5 },
    }),
  );
}

Deno.test("packing keeps documents whole and rows within T+1 tokens", () => {
  const docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12], [13]];
  const rows = packDocuments(docs, 4);
  deepStrictEqual(rows, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13]]);
  ok(rows.every((r) => r.length <= 5));
});

Deno.test("GPT-2 init: LN ones, zero biases, N(0, 0.02) weights with scaled residual projections", () => {
  const w = initGpt2Weights(TINY_CONFIG, 3);
  ok(w.get("ln_f.weight")!.every((v) => v === 1));
  ok(w.get("h.0.mlp.c_fc.bias")!.every((v) => v === 0));
  const std = (a: Float32Array) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
  ok(Math.abs(std(w.get("wte.weight")!) - 0.02) < 0.002);
  ok(Math.abs(std(w.get("h.1.mlp.c_proj.weight")!) - 0.02 / Math.sqrt(6)) < 0.002);
});

Deno.test("learning rate: linear warmup then cosine to the floor", () => {
  const h = {
    batchSize: 1,
    lr: 1,
    minLrRatio: 0.1,
    warmupSteps: 10,
    steps: 110,
    weightDecay: 0,
    gradClip: 1,
    seed: 1,
  };
  ok(Math.abs(learningRate(h, 0) - 0.1) < 1e-12);
  ok(Math.abs(learningRate(h, 9) - 1) < 1e-12);
  ok(Math.abs(learningRate(h, 60) - 0.55) < 1e-12);
  ok(Math.abs(learningRate(h, 110) - 0.1) < 1e-12);
});

Deno.test("training lowers the loss, and a resumed run ends bit-identical to an uninterrupted one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await tinyCorpus(dir);
    const base = { config: `${dir}/config.json`, corpus: `${dir}/corpus.txt`, json: true };
    const straight = await train({ ...base, out: `${dir}/a` });
    await train({ ...base, out: `${dir}/b`, steps: 3 }); // "interrupted" after the step-3 checkpoint
    const resumed = await train({ ...base, out: `${dir}/b` });
    deepStrictEqual(resumed.steps, 6);
    const state = JSON.parse(await Deno.readTextFile(`${dir}/a/trainer_state.json`));
    ok(state.losses[5][1] < state.losses[0][1], `loss ${state.losses[0][1]} → ${state.losses[5][1]}`);
    const [a, b] = await Promise.all([
      readSafetensorsFile(`${dir}/a/model.safetensors`),
      readSafetensorsFile(`${dir}/b/model.safetensors`),
    ]);
    for (const name of a.tensors.keys()) deepStrictEqual(b.read(name), a.read(name), name);
    ok(Number.isFinite(straight.loss));
    for (const f of ["config.json", "vocab.json", "merges.txt", "optimizer.safetensors"]) {
      await Deno.stat(`${dir}/a/${f}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
