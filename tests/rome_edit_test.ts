// ROME's edit on tiny random GPT-2 models: k̄ against a float64 forward (subject-last and last tokens), the
// rank-one update (its rank, which tensors change, the closed linear system for both variants), and v*
// (raising the target, one readback per forward, clear errors).
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { computeKeyStar, computeValueStar, editedMatrix } from "../rome/compute.ts";
import { fillTemplate, normalizeRequest, RomeInputError, subjectTokenIndex } from "../rome/request.ts";
import { disposeModel, memoryModel, sensitiveWeights } from "./lib/fixtures.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { bitsEqual, CONFIG, editedCase, hparams, LAYER, REQUEST, tokenizer } from "./lib/rome_setup.ts";
import { assertClose, testEngine } from "./lib/util.ts";

const engine = await testEngine();

// ------------------------------------------------------------------ k̄

Deno.test("k*: k̄ is the float64 mean of the subject-last keys over the contexts; bare key and W k + b", async () => {
  const W = randomGpt2Weights(CONFIG, 11);
  const m = memoryModel(engine, CONFIG, W);
  const templates = ["{}", "Then the cat sat. {}", "On a mat. {}"];
  const layer = 1;
  try {
    const live = engine.pool.stats.bytesLive;
    const keys = computeKeyStar(m, tokenizer, REQUEST, templates, layer);
    const [kStar, kBare, outBare, outMean] = await engine.readMany([
      keys.kStar,
      keys.kBare,
      keys.outBare,
      keys.outMean,
    ]);
    const want = new Float64Array(CONFIG.nInner), wantOut = new Float64Array(CONFIG.nEmbd);
    let bare: Float64Array | undefined, bareOut: Float64Array | undefined;
    for (const [j, t] of templates.entries()) {
      const ctx = fillTemplate(t, REQUEST.prompt);
      const ids = tokenizer.encode(fillTemplate(ctx, REQUEST.subject));
      const idx = subjectTokenIndex(tokenizer, ctx, REQUEST.subject, "last");
      equal(keys.contexts[j].index, idx);
      referenceForward(CONFIG, W, ids, {
        patch: (site, l, tok, v) => {
          if (l !== layer || tok !== idx) return;
          if (site === "mlpKey") {
            (v.forEach((x, i) => want[i] += x / templates.length), j === 0 && (bare = v.slice()));
          }
          if (site === "mlp") {
            (v.forEach((x, i) => wantOut[i] += x / templates.length), j === 0 && (bareOut = v.slice()));
          }
        },
      });
    }
    assertClose(kStar, want, { atol: 1e-5, rtol: 1e-4 }, "k̄");
    assertClose(kBare, bare!, { atol: 1e-5, rtol: 1e-4 }, "k_bare");
    assertClose(outBare, bareOut!, { atol: 1e-5, rtol: 1e-4 }, "W k_bare + b");
    assertClose(outMean, wantOut, { atol: 1e-5, rtol: 1e-4 }, "mean W k + b");
    keys.dispose();
    // the forward's captures are released too (they once leaked 60 KiB an edit; bench/soak.ts found it)
    equal(engine.pool.stats.bytesLive, live, "k*: tensors left behind after dispose");
  } finally {
    disposeModel(m);
  }
});

Deno.test("k* with fact_token last (the bundled model's setting): keys at each context's last token", async () => {
  const W = randomGpt2Weights(CONFIG, 12);
  const m = memoryModel(engine, CONFIG, W);
  const templates = ["{}", "Then the cat sat. {}"];
  const layer = 1;
  // a prompt that goes on after the subject, so the last token is not the subject's
  const request = normalizeRequest({
    prompt: "I saw {} from the boat",
    subject: "Eiffel Tower",
    target_new: "the",
  });
  try {
    const keys = computeKeyStar(m, tokenizer, request, templates, layer, "last");
    const [kStar, kBare] = await engine.readMany([keys.kStar, keys.kBare]);
    const want = new Float64Array(CONFIG.nInner);
    let bare: Float64Array | undefined;
    for (const [j, t] of templates.entries()) {
      const ids = tokenizer.encode(fillTemplate(fillTemplate(t, request.prompt), request.subject));
      const idx = ids.length - 1;
      equal(keys.contexts[j].index, idx);
      ok(idx !== subjectTokenIndex(tokenizer, fillTemplate(t, request.prompt), request.subject, "last"));
      referenceForward(CONFIG, W, ids, {
        patch: (site, l, tok, v) => {
          if (site !== "mlpKey" || l !== layer || tok !== idx) return;
          (v.forEach((x, i) => want[i] += x / templates.length), j === 0 && (bare = v.slice()));
        },
      });
    }
    assertClose(kStar, want, { atol: 1e-5, rtol: 1e-4 }, "k̄ at the last tokens");
    assertClose(kBare, bare!, { atol: 1e-5, rtol: 1e-4 }, "k_bare at the last token");
    keys.dispose();
  } finally {
    disposeModel(m);
  }
});

/** The two largest singular values of a rows×cols matrix (float64 power iteration with deflation). */
function topTwoSingularValues(M: Float64Array, rows: number, cols: number): [number, number] {
  const mv = (v: Float64Array) => {
    const out = new Float64Array(rows);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[i] += M[i * cols + j] * v[j];
    return out;
  };
  const mtv = (u: Float64Array) => {
    const out = new Float64Array(cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j] += M[i * cols + j] * u[i];
    return out;
  };
  const nrm = (v: Float64Array) => Math.sqrt(v.reduce((a, b) => a + b * b, 0));
  const top = () => {
    let v = Float64Array.from({ length: cols }, (_, j) => Math.sin(j + 1));
    let s = 0;
    for (let it = 0; it < 300; it++) {
      const w = mtv(mv(v));
      const n = nrm(w);
      if (n === 0) return { s: 0, u: new Float64Array(rows), v };
      v = w.map((x) => x / n);
      s = nrm(mv(v));
    }
    const u = mv(v).map((x) => x / (s || 1));
    return { s, u, v };
  };
  const a = top();
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) M[i * cols + j] -= a.s * a.u[i] * a.v[j];
  return [a.s, top().s];
}

Deno.test("edit (ROME): ΔW is rank one, only that matrix changes, W_new k_bare + b = v*, the target becomes top-1", async () => {
  const { before, after, edit, pre, post, top1, bias } = await editedCase("rome");
  const name = editedMatrix(LAYER);
  equal(edit.matrix, name);
  for (const [n, w] of before) {
    if (n !== name) ok(bitsEqual(w, after.get(n)!), `${n} changed`);
  }
  ok(!bitsEqual(before.get(name)!, after.get(name)!), "the edited matrix did not change");
  const [f, d] = [CONFIG.nInner, CONFIG.nEmbd];
  const dW = Float64Array.from(after.get(name)!, (x, i) => x - before.get(name)![i]);
  const [s1, s2] = topTwoSingularValues(dW, f, d);
  ok(s2 / s1 <= 1e-4, `σ₂/σ₁ = ${s2 / s1} (σ₁ ${s1})`);
  // the closed system: (k_bare W_new + b) = v*
  const Wn = after.get(name)!, out = Float64Array.from(bias);
  for (let i = 0; i < f; i++) for (let j = 0; j < d; j++) out[j] += edit.key[i] * Wn[i * d + j];
  const vNorm = Math.sqrt(edit.vStar.reduce((a, b) => a + b * b, 0));
  assertClose(out, edit.vStar, { atol: 1e-4 * vNorm }, "W_new k_bare + b vs v*");
  // u is a unit vector and Λ its partner
  assertClose([edit.u.reduce((a, b) => a + b * b, 0)], [1], { atol: 1e-5 }, "‖u‖²");
  // v* did its job on this model
  ok(edit.losses.at(-1)! < edit.losses[0], `loss ${edit.losses[0]} → ${edit.losses.at(-1)}`);
  ok(post[0] > 100 * pre[0], `P(new) ${pre[0]} → ${post[0]}`);
  equal(top1, tokenizer.encode(REQUEST.target_new)[0], "the new target is the top-1 next token");
  ok(edit.deltaNorm <= hparams().clamp_norm_factor * edit.v0Norm * (1 + 1e-5), "‖δ‖ within the clamp");
});

Deno.test("edit (R-ROME): the update uses k̄ in both places, so W_new k̄ + b = v*", async () => {
  const { edit, after, bias } = await editedCase("r-rome");
  deepEqual(edit.key, edit.kStar);
  const [f, d] = [CONFIG.nInner, CONFIG.nEmbd];
  const Wn = after.get(editedMatrix(LAYER))!, out = Float64Array.from(bias);
  for (let i = 0; i < f; i++) for (let j = 0; j < d; j++) out[j] += edit.kStar[i] * Wn[i * d + j];
  const vNorm = Math.sqrt(edit.vStar.reduce((a, b) => a + b * b, 0));
  assertClose(out, edit.vStar, { atol: 1e-4 * vNorm }, "W_new k̄ + b vs v*");
  const rome = (await editedCase("rome")).edit;
  ok(!bitsEqual(rome.key, rome.kStar), "ROME's key is the bare prompt's, not k̄");
});

Deno.test("v*: one scalar read back per forward (plus ‖v₀‖ and the final ‖δ‖)", async () => {
  const m = memoryModel(engine, CONFIG, sensitiveWeights(CONFIG, 32));
  try {
    const hp = { ...hparams(), v_num_grad_steps: 4 };
    const r0 = engine.stats.readbacks;
    const v = await computeValueStar(m, tokenizer, REQUEST, ["{}", "Then a cat. {}"], LAYER, hp);
    equal(engine.stats.readbacks - r0, v.forwards + 2);
    ok(v.forwards <= 4);
    v.vStar.dispose();
  } finally {
    disposeModel(m);
  }
});

Deno.test("v*: a target that does not fit the context and an out-of-range layer are clear errors", async () => {
  const m = memoryModel(
    engine,
    { ...CONFIG, nPositions: 20 },
    randomGpt2Weights({ ...CONFIG, nPositions: 20 }, 3),
  );
  try {
    const long = normalizeRequest({
      prompt: "I saw {}",
      subject: "Eiffel Tower",
      target_new: "the cat sat on a mat",
    });
    await rejects(
      computeValueStar(m, tokenizer, long, ["{}"], 1, hparams()),
      (e: Error) => e instanceof RomeInputError && /past the model's context of 20/.test(e.message),
    );
    throws(
      () => computeKeyStar(m, tokenizer, REQUEST, ["{}"], 3),
      /layer 3 is out of range: the model has layers 0\.\.2/,
    );
  } finally {
    disposeModel(m);
  }
});
