// The ROME tests' shared setup (tests/rome_*_test.ts): the tiny model's config and tokenizer, the request
// every edit makes, random documents and their statistics C, weights read back and compared bit for bit,
// and one edit per variant on a fresh sensitive model, made once per process and shared by the edit and
// patch tests.
import { equal } from "node:assert/strict";
import type { Gpt2Config } from "../../engine/gpt2/config.ts";
import type { Gpt2Model } from "../../engine/gpt2/model.ts";
import { Gpt2Tokenizer } from "../../engine/gpt2/tokenizer.ts";
import { executeRome, type RomeEdit } from "../../rome/edit.ts";
import { firstTokenProbabilities } from "../../rome/evaluate.ts";
import { defaultHparams, type RomeHparams } from "../../rome/hparams.ts";
import { patchId, type RomePatch } from "../../rome/patch.ts";
import { fillTemplate, normalizeRequest, type RomeRequest } from "../../rome/request.ts";
import { type CorpusDocuments, secondMomentMatrix, secondMomentStats } from "../../rome/stats.ts";
import { generateContextTemplates } from "../../rome/templates.ts";
import { disposeModel, EDIT_CONFIG, memoryModel, sensitiveWeights, tinyVocab } from "./fixtures.ts";
import { randInt, testEngine } from "./util.ts";

const engine = await testEngine();

/** d = 32, d_ff = 128, 3 layers, 96 positions: room for the 21 context templates of the tiny vocabulary. */
export const CONFIG: Gpt2Config = EDIT_CONFIG;

const tiny = tinyVocab();
export const tokenizer: Gpt2Tokenizer = Gpt2Tokenizer.fromVocabMerges(tiny.vocab, tiny.merges);

export async function readWeights(m: Gpt2Model): Promise<Map<string, Float32Array>> {
  const names = [...m.weights.keys()];
  const data = await engine.readMany(names.map((n) => m.w(n)));
  return new Map(names.map((n, i) => [n, data[i] as Float32Array]));
}

export function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** Random documents of token ids (a few longer than the context, to check the cut at n_positions). */
export function randomDocs(n: number, seed: number, vocab: number, maxLen: number): number[][] {
  const lens = randInt(n, maxLen, seed);
  return Array.from({ length: n }, (_, i) => Array.from(randInt(1 + lens[i], vocab, seed * 131 + i)));
}

export const asSource = (docs: number[][]): CorpusDocuments => ({
  length: docs.length,
  tokens: (i) => docs[i],
});

/** Statistics C of a model at a layer over random documents (enough tokens for a positive definite C). */
export async function statsOf(m: Gpt2Model, layer: number, docs: number[][]) {
  const s = await secondMomentStats(m, layer, asSource(docs));
  const C = engine.scope(() => engine.keep(secondMomentMatrix(s.mom2, s.count)));
  s.mom2.dispose();
  return { C, count: s.count };
}

export const REQUEST: RomeRequest = normalizeRequest({
  prompt: "I saw {}",
  subject: "Eiffel Tower",
  target_new: "the",
  target_true: "a",
});

export function hparams(): RomeHparams {
  return defaultHparams(CONFIG).hparams;
}

// ------------------------------------------------------------------ the edit

export interface EditedCase {
  before: Map<string, Float32Array>;
  after: Map<string, Float32Array>;
  edit: RomeEdit;
  pre: number[];
  post: number[];
  top1: number;
  bias: Float32Array;
}

export const LAYER = 1;
const editCache = new Map<string, Promise<EditedCase>>();

/** One edit per variant on a fresh sensitive model (seed 31), shared by the tests that read it. */
export function editedCase(variant: "rome" | "r-rome"): Promise<EditedCase> {
  let p = editCache.get(variant);
  if (!p) editCache.set(variant, p = runEdit(variant));
  return p;
}

async function runEdit(variant: "rome" | "r-rome"): Promise<EditedCase> {
  const m = memoryModel(engine, CONFIG, sensitiveWeights(CONFIG, 31));
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

/** The patch file of an edited case (hashes of the models made up: the tests compare them as given). */
export async function patchOf(c: EditedCase): Promise<RomePatch> {
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
