// ROME on tiny random GPT-2 models: the token-index rules, k̄ against a float64 forward, the statistics C
// against a float64 sum (and exact resumption), the rank-one update (rank, which tensors change, the
// closed linear system for both variants), v* raising the target, patches (exact apply/revert, refusals,
// malformed files), the .npz reader and hparams.
import { deepEqual, equal, match, ok, rejects, throws } from "node:assert/strict";
import type { Engine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes, type Gpt2Model } from "../engine/gpt2/model.ts";
import { findSubjectRange, Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { computeKeyStar, computeValueStar, editedMatrix } from "../rome/compute.ts";
import { executeRome, type RomeEdit } from "../rome/edit.ts";
import { firstTokenProbabilities } from "../rome/evaluate.ts";
import {
  defaultHparams,
  HparamsError,
  parseHparams,
  type RomeHparams,
  SHIPPED_HPARAMS,
} from "../rome/hparams.ts";
import { NpzError, parseNpy, readNpz, readReferenceMom2 } from "../rome/npz.ts";
import {
  checkApply,
  checkRevert,
  decodePatch,
  emptyEditsLog,
  encodePatch,
  logEntry,
  matrixHash,
  PatchError,
  patchId,
  type RomePatch,
  xorMatrix,
} from "../rome/patch.ts";
import {
  fillTemplate,
  normalizeRequest,
  RomeInputError,
  type RomeRequest,
  subjectTokenIndex,
} from "../rome/request.ts";
import {
  type CorpusDocuments,
  decodeSecondMoment,
  encodeSecondMoment,
  type SecondMomentCheckpoint,
  secondMomentMatrix,
  secondMomentStats,
  solveSecondMoment,
  splitCorpus,
  StatsError,
  StatsInterrupted,
} from "../rome/stats.ts";
import { generateContextTemplates } from "../rome/templates.ts";
import { TINY_CONFIG, tinyVocab } from "./lib/fixtures.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { assertClose, randInt, testEngine } from "./lib/util.ts";

const engine = await testEngine();

// ------------------------------------------------------------------ fixtures

/** d = 32, d_ff = 128, 3 layers, 96 positions: room for the 21 context templates of the tiny vocabulary. */
const CONFIG: Gpt2Config = { ...TINY_CONFIG, nEmbd: 32, nInner: 128, nPositions: 96 };

const tiny = tinyVocab();
const tokenizer = Gpt2Tokenizer.fromVocabMerges(tiny.vocab, tiny.merges);

/**
 * Random weights with the token embeddings and the MLP matrices scaled by 3: the logits then depend
 * enough on the residual stream that a δ at one position can make a token the most likely one.
 */
function sensitiveWeights(seed: number): Map<string, Float32Array> {
  const w = randomGpt2Weights(CONFIG, seed);
  for (const [n, v] of w) {
    if (n === "wte.weight" || /mlp\.c_(fc|proj)\.weight$/.test(n)) v.forEach((x, i) => v[i] = 3 * x);
  }
  return w;
}

function modelFrom(e: Engine, c: Gpt2Config, w: Map<string, Float32Array>): Gpt2Model {
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  return buildGpt2(e, c, { tensors: shapes, read: (n) => w.get(n)!.slice(), describe: () => "memory" });
}

function disposeModel(m: Gpt2Model): void {
  for (const t of m.weights.values()) t.dispose();
}

async function readWeights(m: Gpt2Model): Promise<Map<string, Float32Array>> {
  const names = [...m.weights.keys()];
  const data = await engine.readMany(names.map((n) => m.w(n)));
  return new Map(names.map((n, i) => [n, data[i] as Float32Array]));
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** Random documents of token ids (a few longer than the context, to check the cut at n_positions). */
function randomDocs(n: number, seed: number, vocab: number, maxLen: number): number[][] {
  const lens = randInt(n, maxLen, seed);
  return Array.from({ length: n }, (_, i) => Array.from(randInt(1 + lens[i], vocab, seed * 131 + i)));
}

const asSource = (docs: number[][]): CorpusDocuments => ({ length: docs.length, tokens: (i) => docs[i] });

/** Statistics C of a model at a layer over random documents (enough tokens for a positive definite C). */
async function statsOf(m: Gpt2Model, layer: number, docs: number[][]) {
  const s = await secondMomentStats(m, layer, asSource(docs));
  const C = engine.scope(() => engine.keep(secondMomentMatrix(s.mom2, s.count)));
  s.mom2.dispose();
  return { C, count: s.count };
}

const REQUEST: RomeRequest = normalizeRequest({
  prompt: "I saw {}",
  subject: "Eiffel Tower",
  target_new: "the",
  target_true: "a",
});

function hparams(): RomeHparams {
  return defaultHparams(CONFIG).hparams;
}

// ------------------------------------------------------------------ token-index rules (§2.3)

const world = Gpt2Tokenizer.fromVocabMerges(
  JSON.parse(Deno.readTextFileSync(new URL("../data/world/vocab.json", import.meta.url))),
  Deno.readTextFileSync(new URL("../data/world/merges.txt", import.meta.url)),
);

Deno.test("index rules (§2.3): prefix/subject/suffix tokenized apart; last, first, first_after_last", () => {
  const cases: [string, string][] = [
    ["{} is located in", "Kuala Lumpur"],
    ["The capital of {} is", "Burkina Faso"],
    ["Some words sampled here. {} is a city in", "Addis Ababa"],
    ["People talk about {}", "New Zealand"],
    ["{}'s capital is", "Sri Lanka"],
  ];
  for (const [template, subject] of cases) {
    const at = template.indexOf("{}");
    const prefix = template.slice(0, at), suffix = template.slice(at + 2);
    const full = fillTemplate(template, subject);
    const ids = world.encode(full);
    // the reference's assumption: separate tokenizations concatenate to the whole one at these boundaries
    const word = prefix ? " " + subject : subject;
    deepEqual([...world.encode(prefix.trimEnd()), ...world.encode(word), ...world.encode(suffix)], ids, full);
    const last = subjectTokenIndex(world, template, subject, "last");
    const first = subjectTokenIndex(world, template, subject, "first");
    const after = subjectTokenIndex(world, template, subject, "first_after_last");
    equal(
      world.decode(ids.slice(0, last + 1)),
      prefix + subject,
      `${full}: text through the last subject token`,
    );
    equal(
      world.decode(ids.slice(0, first)),
      prefix.trimEnd(),
      `${full}: text before the first subject token`,
    );
    equal(after, suffix === "" ? last : last + 1, `${full}: first_after_last`);
    equal(last, findSubjectRange(world, full, subject)[1] - 1, `${full}: agrees with the tracing's range`);
  }
  throws(() => subjectTokenIndex(world, "The city:{} is", "Oslo"), RomeInputError, "prefix without a space");
  throws(() => subjectTokenIndex(world, "{} and {}", "Oslo"), RomeInputError);
});

Deno.test("requests: leading spaces, the subject written out, and one-line errors for bad input", () => {
  const r = normalizeRequest({ prompt: "Paris is the capital of", subject: " Paris ", target_new: "Italy" });
  deepEqual(r, { prompt: "{} is the capital of", subject: "Paris", target_new: " Italy" });
  equal(
    normalizeRequest({ prompt: "{} is in", subject: "X", target_new: " Y", target_true: "Z" }).target_true,
    " Z",
  );
  const bad: [Parameters<typeof normalizeRequest>[0], RegExp][] = [
    [{ prompt: "The city is in", subject: "Oslo", target_new: "Y" }, /not in the prompt/],
    [{ prompt: "{} and {} are", subject: "Oslo", target_new: "Y" }, /exactly one/],
    [{ prompt: "{} is in", subject: "Oslo", target_new: "  " }, /target is empty/],
    [{ prompt: "{} is in", subject: "", target_new: "Y" }, /subject is empty/],
    [{ prompt: "{}", subject: "Oslo", target_new: "Y" }, /only the subject/],
  ];
  for (const [input, msg] of bad) {
    throws(() => normalizeRequest(input), (e: Error) => e instanceof RomeInputError && msg.test(e.message));
  }
});

// ------------------------------------------------------------------ k̄

Deno.test("k*: k̄ is the float64 mean of the subject-last keys over the contexts; bare key and W k + b", async () => {
  const W = randomGpt2Weights(CONFIG, 11);
  const m = modelFrom(engine, CONFIG, W);
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
  const m = modelFrom(engine, CONFIG, W);
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

// ------------------------------------------------------------------ statistics C

Deno.test("stats: GPU Σ k kᵀ equals a float64 host sum over the same tokens (cut at n_positions)", async () => {
  const c: Gpt2Config = { ...CONFIG, nPositions: 24 };
  const W = randomGpt2Weights(c, 21);
  const m = modelFrom(engine, c, W);
  const layer = 1;
  const docs = randomDocs(9, 5, c.vocabSize, 40); // some longer than 24 tokens
  try {
    const s = await secondMomentStats(m, layer, asSource(docs), { groupSize: 4, maxBatchTokens: 48 });
    const got = await s.mom2.read();
    s.mom2.dispose();
    const f = c.nInner, want = new Float64Array(f * f);
    let tokens = 0;
    for (const d of docs) {
      const ids = d.slice(0, c.nPositions);
      tokens += ids.length;
      referenceForward(c, W, ids, {
        patch: (site, l, _t, k) => {
          if (site !== "mlpKey" || l !== layer) return;
          for (let i = 0; i < f; i++) for (let j = 0; j < f; j++) want[i * f + j] += k[i] * k[j];
        },
      });
    }
    equal(s.count, tokens);
    equal(s.documents, docs.length);
    const scale = want.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
    assertClose(got, want, { atol: 2e-5 * scale, rtol: 1e-4 }, "Σ k kᵀ");
  } finally {
    disposeModel(m);
  }
});

Deno.test("stats: a run stopped after a group and resumed from its checkpoint gives the same sums, bit for bit", async () => {
  const m = modelFrom(engine, CONFIG, randomGpt2Weights(CONFIG, 22));
  const docs = randomDocs(14, 6, CONFIG.vocabSize, 30);
  const opts = { groupSize: 3, maxBatchTokens: 64 };
  try {
    const full = await secondMomentStats(m, 2, asSource(docs), opts);
    const fullSum = await full.mom2.read();
    full.mom2.dispose();

    let saved: SecondMomentCheckpoint | undefined;
    const ac = new AbortController();
    await rejects(
      secondMomentStats(m, 2, asSource(docs), {
        ...opts,
        signal: ac.signal,
        onProgress: (d) => d >= 6 && ac.abort(),
        checkpoint: { due: () => false, save: (s) => Promise.resolve(void (saved = s)) },
      }),
      (e: Error) => e instanceof StatsInterrupted && e.cursor === 6,
    );
    ok(saved && saved.cursor === 6 && saved.count > 0);
    // the checkpoint survives its file format
    const bytes = concat(encodeSecondMoment(saved.mom2, saved.count, {
      model_hash: m.hash,
      layer: 2,
      corpus_hash: "test",
      samples: docs.length,
      cursor: saved.cursor,
      source: "memory",
    }));
    const back = decodeSecondMoment(bytes, "checkpoint");
    equal(back.info.cursor, 6);
    const resumed = await secondMomentStats(m, 2, asSource(docs), {
      ...opts,
      resume: { mom2: back.mom2, count: back.count, cursor: back.info.cursor! },
    });
    const resumedSum = await resumed.mom2.read() as Float32Array;
    resumed.mom2.dispose();
    equal(resumed.count, full.count);
    ok(bitsEqual(resumedSum, fullSum as Float32Array), "resumed Σ k kᵀ differs from the uninterrupted run");
  } finally {
    disposeModel(m);
  }
});

Deno.test("stats: fewer tokens than d_ff give a singular C and an error saying how many more are needed", async () => {
  const m = modelFrom(engine, CONFIG, randomGpt2Weights(CONFIG, 23));
  const docs = randomDocs(3, 7, CONFIG.vocabSize, 10);
  try {
    const { C, count } = await statsOf(m, 0, docs);
    ok(count < CONFIG.nInner);
    const k = engine.upload(new Float32Array(CONFIG.nInner).fill(1), [CONFIG.nInner]);
    await rejects(
      solveSecondMoment(C, k, count, { layer: 0 }),
      (e: Error) =>
        e instanceof StatsError && e.message.includes(`at least ${CONFIG.nInner - count} more tokens`),
    );
    // damping makes it solvable
    const x = await solveSecondMoment(C, k, count, { damping: 1e-2 });
    ok((await x.read()).every(Number.isFinite));
    for (const t of [C, k, x]) t.dispose();
  } finally {
    disposeModel(m);
  }
});

Deno.test("corpus: documents are separated by lines holding only <|endoftext|>", () => {
  deepEqual(splitCorpus("a b\nc\n<|endoftext|>\n\n<|endoftext|>\nd <|endoftext|> e\n<|endoftext|>\r\nf"), [
    "a b\nc",
    "d <|endoftext|> e",
    "f",
  ]);
});

// ------------------------------------------------------------------ the edit

interface EditedCase {
  before: Map<string, Float32Array>;
  after: Map<string, Float32Array>;
  edit: RomeEdit;
  pre: number[];
  post: number[];
  top1: number;
  bias: Float32Array;
}

const LAYER = 1;
const editCache = new Map<string, Promise<EditedCase>>();

/** One edit per variant on a fresh sensitive model (seed 31), shared by the tests below. */
function editedCase(variant: "rome" | "r-rome"): Promise<EditedCase> {
  let p = editCache.get(variant);
  if (!p) editCache.set(variant, p = runEdit(variant));
  return p;
}

async function runEdit(variant: "rome" | "r-rome"): Promise<EditedCase> {
  const m = modelFrom(engine, CONFIG, sensitiveWeights(31));
  try {
    const { C, count } = await statsOf(m, LAYER, randomDocs(40, 9, CONFIG.vocabSize, 30));
    const hp = hparams();
    const templates = await generateContextTemplates(m, tokenizer, hp.context_template_length_params, 3);
    equal(templates.length, 21);
    const before = await readWeights(m);
    const prompt = fillTemplate(REQUEST.prompt, REQUEST.subject);
    const [pre] = await firstTokenProbabilities(m, tokenizer, [prompt], [
      REQUEST.target_new,
      REQUEST.target_true!,
    ]);
    const edit = await executeRome(m, tokenizer, REQUEST, {
      hparams: hp,
      layer: LAYER,
      variant,
      templates,
      secondMoment: { C, count },
    });
    C.dispose();
    const after = await readWeights(m);
    const [post] = await firstTokenProbabilities(m, tokenizer, [prompt], [
      REQUEST.target_new,
      REQUEST.target_true!,
    ]);
    const { logits } = m.forward([tokenizer.encode(prompt)]);
    const row = await logits!.read();
    logits!.dispose();
    const top1 = row.indexOf(Math.max(...row));
    return { before, after, edit, pre, post, top1, bias: after.get(`h.${LAYER}.mlp.c_proj.bias`)! };
  } finally {
    disposeModel(m);
  }
}

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
  const m = modelFrom(engine, CONFIG, sensitiveWeights(32));
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
  const m = modelFrom(
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

// ------------------------------------------------------------------ patches

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) (out.set(p, at), at += p.byteLength);
  return out;
}

async function patchOf(c: EditedCase): Promise<RomePatch> {
  const e = c.edit;
  return {
    meta: {
      id: await patchId(e.matrix, e.matrixHashBefore, "model-before", e.xor),
      layer: e.layer,
      matrix: e.matrix,
      variant: e.variant,
      request: REQUEST,
      hparams: hparams(),
      seed: 3,
      model_hash_before: "model-before",
      model_hash_after: "model-after",
      matrix_hash_before: e.matrixHashBefore,
      matrix_hash_after: e.matrixHashAfter,
      c_hash: "test",
      pre: { target_new: c.pre[0] },
      post: { target_new: c.post[0] },
      delta_norm: e.deltaNorm,
      created: "2024-01-01T00:00:00.000Z",
    },
    u: e.u,
    lambda: e.lambda,
    key: e.key,
    vStar: e.vStar,
    xor: e.xor,
  };
}

Deno.test("patch: round trip; applying it to the unedited model reproduces the edit, reverting restores every bit", async () => {
  const c = await editedCase("rome");
  const patch = await patchOf(c);
  const back = decodePatch(concat(encodePatch(patch)), "p.safetensors");
  deepEqual(back.meta, patch.meta);
  for (const k of ["u", "lambda", "key", "vStar", "xor"] as const) deepEqual(back[k], patch[k], k);
  const name = patch.meta.matrix;
  equal(matrixHash(name, [CONFIG.nInner, CONFIG.nEmbd], c.before.get(name)!), patch.meta.matrix_hash_before);

  const m = modelFrom(engine, CONFIG, sensitiveWeights(31));
  try {
    const original = await readWeights(m);
    checkApply(back, patch.meta.matrix_hash_before, undefined, m.hash);
    const a = await xorMatrix(m, name, back.xor);
    deepEqual(a, { before: patch.meta.matrix_hash_before, after: patch.meta.matrix_hash_after });
    const applied = await readWeights(m);
    for (const [n, w] of c.after) ok(bitsEqual(applied.get(n)!, w), `${n} after apply`);
    checkRevert(back, a.after, undefined, m.hash);
    await xorMatrix(m, name, back.xor);
    const reverted = await readWeights(m);
    for (const [n, w] of original) ok(bitsEqual(reverted.get(n)!, w), `${n} after revert`);
  } finally {
    disposeModel(m);
  }
});

Deno.test("patch: another model, a double apply and an out-of-order revert are refused; other matrices commute", async () => {
  const c = await editedCase("rome");
  const p1 = await patchOf(c);
  const other = modelFrom(engine, CONFIG, sensitiveWeights(99));
  try {
    const cur = matrixHash(
      p1.meta.matrix,
      [CONFIG.nInner, CONFIG.nEmbd],
      await other.w(p1.meta.matrix).read() as Float32Array,
    );
    throws(
      () => checkApply(p1, cur, undefined, other.hash),
      (e: Error) => e instanceof PatchError && /another model/.test(e.message),
    );
  } finally {
    disposeModel(other);
  }
  const log = emptyEditsLog("base");
  log.edits.push(logEntry(p1, "edits/1.safetensors"));
  throws(() => checkApply(p1, p1.meta.matrix_hash_before, log, "m"), /already applied/);
  // a second patch on the same matrix, applied after p1
  const p2: RomePatch = {
    ...p1,
    meta: {
      ...p1.meta,
      id: "second",
      matrix_hash_before: p1.meta.matrix_hash_after,
      matrix_hash_after: "h2",
    },
  };
  log.edits.push(logEntry(p2, "edits/2.safetensors"));
  throws(
    () => checkRevert(p1, "h2", log, "m"),
    (e: Error) => /revert the last one first/.test(e.message) && /second/.test(e.message),
  );
  checkRevert(p2, "h2", log, "m");
  // on another matrix, p2 does not block reverting p1
  log.edits[1] = { ...log.edits[1], matrix: "h.2.mlp.c_proj.weight" };
  checkRevert(p1, p1.meta.matrix_hash_after, log, "m");
  throws(() => checkRevert(p1, "something else", undefined, "m"), /is not applied to this model/);
});

Deno.test("patch: malformed files are refused with the file named", async () => {
  const c = await editedCase("rome");
  const good = concat(encodePatch(await patchOf(c)));
  const malformed = (bytes: Uint8Array, why: RegExp) =>
    throws(
      () => decodePatch(bytes, "x.safetensors"),
      (e: Error) =>
        e instanceof PatchError && /malformed patch x\.safetensors/.test(e.message) && why.test(e.message),
    );
  malformed(good.subarray(0, 100), /not a safetensors file/);
  malformed(new TextEncoder().encode("hello world, not a patch"), /not a safetensors file/);
  malformed(
    concat(
      encodeSecondMoment(new Float32Array(4), 1, {
        model_hash: "m",
        layer: 0,
        corpus_hash: "c",
        samples: 1,
        cursor: 1,
        source: "s",
      }),
    ),
    /format/,
  );
});

// ------------------------------------------------------------------ .npz

function npy(descr: string, shape: number[], bytes: Uint8Array, fortran = false): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': ${fortran ? "True" : "False"}, 'shape': (${
    shape.join(", ")
  }${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(head.buffer).setUint16(8, header.length, true);
  head.set(new TextEncoder().encode(header), 10);
  return concat([head, bytes]);
}

function crc32(b: Uint8Array): number {
  let c = ~0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

async function deflateRaw(b: Uint8Array): Promise<Uint8Array> {
  const s = new Blob([b.slice()]).stream().pipeThrough(new CompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/** A zip written by hand: stored or deflated entries; `zip64Local` mimics numpy's force_zip64 local headers. */
async function zip(entries: { name: string; data: Uint8Array; deflate: boolean; zip64Local?: boolean }[]) {
  const parts: Uint8Array[] = [], central: Uint8Array[] = [];
  let off = 0;
  for (const e of entries) {
    const body = e.deflate ? await deflateRaw(e.data) : e.data;
    const name = new TextEncoder().encode(e.name);
    const extra = e.zip64Local ? new Uint8Array(20) : new Uint8Array(0);
    if (e.zip64Local) {
      const x = new DataView(extra.buffer);
      x.setUint16(0, 1, true);
      x.setUint16(2, 16, true);
      x.setBigUint64(4, BigInt(e.data.byteLength), true);
      x.setBigUint64(12, BigInt(body.byteLength), true);
    }
    const local = new Uint8Array(30 + name.length + extra.length), lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, e.zip64Local ? 45 : 20, true);
    lv.setUint16(8, e.deflate ? 8 : 0, true);
    lv.setUint32(14, crc32(e.data), true);
    lv.setUint32(18, e.zip64Local ? 0xffffffff : body.byteLength, true);
    lv.setUint32(22, e.zip64Local ? 0xffffffff : e.data.byteLength, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, extra.length, true);
    local.set(name, 30);
    local.set(extra, 30 + name.length);
    const cd = new Uint8Array(46 + name.length), cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(10, e.deflate ? 8 : 0, true);
    cv.setUint32(16, crc32(e.data), true);
    cv.setUint32(20, body.byteLength, true);
    cv.setUint32(24, e.data.byteLength, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, off, true);
    cd.set(name, 46);
    parts.push(local, body);
    central.push(cd);
    off += local.byteLength + body.byteLength;
  }
  const cdBytes = concat(central);
  const end = new Uint8Array(22), ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdBytes.byteLength, true);
  ev.setUint32(16, off, true);
  return concat([...parts, cdBytes, end]);
}

Deno.test("npz: the reference's mom2.mom2 / mom2.count from stored and deflated zips, <f4/<f8/<i8, Fortran order", async () => {
  const n = 5;
  const C = new Float32Array(n * n).map((_, i) => Math.sin(i) * 3);
  const asBytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  for (const deflate of [false, true]) {
    for (const f8 of [false, true]) {
      const mom2 = f8 ? npy("<f8", [n, n], asBytes(Float64Array.from(C))) : npy("<f4", [n, n], asBytes(C));
      const count = npy("<i8", [], asBytes(BigInt64Array.of(123456789n)));
      const ctor = npy("<f4", [1], asBytes(Float32Array.of(0))); // another key, ignored
      const file = await zip([
        { name: "mom2.constructor.npy", data: ctor, deflate },
        { name: "mom2.mom2.npy", data: mom2, deflate, zip64Local: true },
        { name: "mom2.count.npy", data: count, deflate },
      ]);
      const r = await readReferenceMom2(file, "stats.npz");
      equal(r.dff, n);
      equal(r.count, 123456789);
      deepEqual(Array.from(r.mom2), Array.from(f8 ? Float32Array.from(Float64Array.from(C)) : C));
    }
  }
  // Fortran order: the file holds the column-major bytes; the reader returns row-major values
  const colMajor = Float64Array.of(1, 4, 2, 5, 3, 6); // the 2×3 matrix [[1,2,3],[4,5,6]]
  const arr = parseNpy(npy("<f8", [2, 3], asBytes(colMajor), true), "f.npy");
  deepEqual(Array.from(arr.data), [1, 2, 3, 4, 5, 6]);
  const bad = await zip([{
    name: "mom2.mom2.npy",
    data: npy("<f4", [2, 3], asBytes(new Float32Array(6))),
    deflate: false,
  }]);
  await rejects(
    readNpz(bad, "x.npz", ["mom2.count"]),
    (e: Error) => e instanceof NpzError && /no array 'mom2.count'/.test(e.message),
  );
  await rejects(
    readNpz(new Uint8Array(40), "y.npz"),
    (e: Error) => e instanceof NpzError && /not a zip/.test(e.message),
  );
  throws(() => parseNpy(npy(">f4", [1], new Uint8Array(4)), "b.npy"), /not supported/);
});

// ------------------------------------------------------------------ hparams

Deno.test("hparams: the reference's files load, are chosen by model shape, and bad files are refused", () => {
  for (const h of SHIPPED_HPARAMS) {
    const p = parseHparams(h.json, h.name);
    ok(p.layers[0] < h.shape.nLayer, h.name);
    const chosen = defaultHparams({ ...CONFIG, nLayer: h.shape.nLayer, nEmbd: h.shape.nEmbd });
    equal(chosen.source, h.name);
  }
  const xl = defaultHparams({ ...CONFIG, nLayer: 48, nEmbd: 1600 }).hparams;
  deepEqual([xl.layers, xl.v_lr, xl.kl_factor, xl.v_weight_decay, xl.clamp_norm_factor], [
    [17],
    0.5,
    0.0625,
    0.5,
    4,
  ]);
  const other = defaultHparams(CONFIG);
  ok(other.hparams.layers[0] < CONFIG.nLayer);
  match(other.source, /no shipped file/);
  throws(
    () => parseHparams({ ...xl, layers: [1, 2] }, "f.json"),
    (e: Error) => e instanceof HparamsError && /exactly one layer/.test(e.message),
  );
  throws(() => parseHparams({ ...xl, v_lr: -1 }, "f.json"), /'v_lr' must be a positive number/);
  throws(
    () => parseHparams({ ...xl, rewrite_module_tmp: "transformer.h.{}.mlp.fc_out" }, "f.json"),
    /c_proj/,
  );
});
