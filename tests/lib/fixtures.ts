// Small GPT-2 models for tests: random weights (plain or "sensitive"), in memory or as folders written with
// a byte-level BPE vocabulary of a few merges, in either key naming (with or without `transformer.`) and f32
// or f16 storage.
import type { Engine } from "../../engine/engine.ts";
import { type Gpt2Config, gpt2ConfigJson } from "../../engine/gpt2/config.ts";
import { writeSafetensorsFile } from "../../engine/files.ts";
import { buildGpt2 } from "../../engine/gpt2/load.ts";
import { f32ArrayToF16, type StTensorInput } from "../../engine/safetensors.ts";
import { expectedWeightShapes, type Gpt2Model } from "../../engine/gpt2/model.ts";
import type { CounterFactRecord } from "../../eval/datasets.ts";
import type { RunIdentity } from "../../eval/metrics.ts";
import { randomGpt2Weights } from "./gpt2_reference.ts";

/** GPT-2's byte → printable character table (the vocabulary's alphabet). */
function byteChars(): string[] {
  const out: string[] = [];
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out.push(String.fromCharCode(printable ? b : 256 + next++));
  }
  return out;
}

const MERGES: [string, string][] = [
  ["Ġ", "t"],
  ["h", "e"],
  ["Ġt", "he"],
  ["Ġ", "a"],
  ["i", "n"],
  ["o", "n"],
  ["e", "r"],
];

/** vocab.json / merges.txt of a tiny byte-level BPE: 256 byte tokens, 7 merges, <|endoftext|>. */
export function tinyVocab(): { vocab: Record<string, number>; merges: string } {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => vocab[c] = i);
  MERGES.forEach(([a, b], i) => vocab[a + b] = 256 + i);
  vocab["<|endoftext|>"] = 256 + MERGES.length;
  return { vocab, merges: "#version: 0.2\n" + MERGES.map(([a, b]) => `${a} ${b}`).join("\n") + "\n" };
}

export const TINY_CONFIG: Gpt2Config = {
  nLayer: 3,
  nHead: 2,
  nEmbd: 16,
  nInner: 64,
  nPositions: 32,
  vocabSize: 256 + MERGES.length + 1,
  layerNormEps: 1e-5,
};

/** GPT-2 small's shapes (124M parameters), for tests and benchmarks at full size with random weights. */
export const GPT2_SMALL: Gpt2Config = {
  nLayer: 12,
  nHead: 12,
  nEmbd: 768,
  nInner: 3072,
  nPositions: 1024,
  vocabSize: 50257,
  layerNormEps: 1e-5,
};

/** The ROME tests' model: d = 32, d_ff = 128, 3 layers, 96 positions (room for the 21 context templates). */
export const EDIT_CONFIG: Gpt2Config = { ...TINY_CONFIG, nEmbd: 32, nInner: 128, nPositions: 96 };

/**
 * Random weights with the token embeddings and the MLP matrices scaled by 3: the logits then depend
 * enough on the residual stream that a δ at one position (or a small weight change) moves them.
 */
export function sensitiveWeights(c: Gpt2Config, seed: number): Map<string, Float32Array> {
  const w = randomGpt2Weights(c, seed);
  for (const [n, v] of w) {
    if (n === "wte.weight" || /mlp\.c_(fc|proj)\.weight$/.test(n)) v.forEach((x, i) => v[i] = 3 * x);
  }
  return w;
}

/**
 * Random weights with sharper outputs than the default (embeddings ×6, weight matrices ×2), so that the
 * tracing tests' restored cells move p(answer) by far more than their tolerances.
 */
export function decisiveWeights(c: Gpt2Config, seed: number): Map<string, Float32Array> {
  const W = randomGpt2Weights(c, seed);
  for (const [n, v] of W) {
    const k = n === "wte.weight" ? 6 : /(c_attn|c_fc|c_proj)\.weight$/.test(n) ? 2 : 1;
    for (let i = 0; i < v.length; i++) v[i] *= k;
  }
  return W;
}

/** A model on `engine` built from weights in memory (uploaded from copies: `w` stays as it is). */
export function memoryModel(engine: Engine, c: Gpt2Config, w: Map<string, Float32Array>): Gpt2Model {
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  return buildGpt2(engine, c, { tensors: shapes, read: (n) => w.get(n)!.slice(), describe: () => "memory" });
}

export function disposeModel(m: Gpt2Model): void {
  for (const t of m.weights.values()) t.dispose();
}

/** `body` on a model built from `w` (see memoryModel); the model is freed afterwards, however `body` ends. */
export async function withModel<T>(
  engine: Engine,
  c: Gpt2Config,
  w: Map<string, Float32Array>,
  body: (m: Gpt2Model) => Promise<T>,
): Promise<T> {
  const m = memoryModel(engine, c, w);
  try {
    return await body(m);
  } finally {
    disposeModel(m);
  }
}

export interface TinyFolderOptions {
  config?: Gpt2Config;
  seed?: number;
  /** These weights instead of random ones drawn from `seed`. */
  weights?: Map<string, Float32Array>;
  prefix?: boolean;
  dtype?: "F32" | "F16";
  /** Also store lm_head.weight (= wte) and the attn.bias buffers, as full HF checkpoints do. */
  extras?: boolean;
}

/** Writes a GPT-2 folder; returns the weights as the model will see them (f16-rounded when F16). */
export async function writeTinyModel(
  dir: string,
  o: TinyFolderOptions = {},
): Promise<Map<string, Float32Array>> {
  const c = o.config ?? TINY_CONFIG;
  const weights = o.weights ?? randomGpt2Weights(c, o.seed ?? 1);
  const tensors: StTensorInput[] = [];
  const seen = new Map<string, Float32Array>();
  for (const [name, data] of weights) {
    const full = (o.prefix ? "transformer." : "") + name;
    if (o.dtype === "F16") {
      const half = f32ArrayToF16(data);
      tensors.push({ name: full, dtype: "F16", shape: shapeOf(c, name), data: half });
      seen.set(name, Float32Array.from(new Float16Array(half.buffer)));
    } else {
      tensors.push({ name: full, dtype: "F32", shape: shapeOf(c, name), data });
      seen.set(name, data);
    }
  }
  if (o.extras) {
    const wte = tensors.find((t) => t.name.endsWith("wte.weight"))!;
    tensors.push({ ...wte, name: "lm_head.weight" });
    for (let l = 0; l < c.nLayer; l++) {
      const mask = new Uint8Array(c.nPositions * c.nPositions);
      tensors.push({
        name: `${o.prefix ? "transformer." : ""}h.${l}.attn.bias`,
        dtype: "U8",
        shape: [1, 1, c.nPositions, c.nPositions],
        data: mask,
      });
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensorsFile(`${dir}/model.safetensors`, tensors, { format: "pt" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(gpt2ConfigJson(c), null, 2));
  const { vocab, merges } = tinyVocab();
  await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(vocab));
  await Deno.writeTextFile(`${dir}/merges.txt`, merges);
  return seen;
}

function shapeOf(c: Gpt2Config, name: string): number[] {
  return expectedWeightShapes(c).get(name)!;
}

/**
 * `docs` short documents in the tiny vocabulary's bytes, each on its own lines and followed by an
 * <|endoftext|> line (the corpus format of stats and train); `salt` starts every document.
 */
export function tinyCorpusText(docs: number, salt = ""): string {
  const words = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "in",
    "there",
    "with",
    "river",
    "Eiffel",
    "Tower",
    "is",
  ];
  return Array.from(
    { length: docs },
    (_, d) =>
      salt +
      Array.from({ length: 4 + (d * 7) % 9 }, (_, i) => words[(d * 5 + i * 3) % words.length]).join(" "),
  ).join("\n<|endoftext|>\n") + "\n<|endoftext|>\n";
}

/** `edit` of a request on the tiny fixtures' prompt "I saw {}" (SUBJECT → TARGET), then `rest`. */
export function sawEditArgs(subject: string, target: string, ...rest: string[]): string[] {
  return ["edit", "--prompt", "I saw {}", "--subject", subject, "--target", target, ...rest];
}

/**
 * `edit` of the quick CLI tests' request ("I saw {}": Eiffel Tower → the, true: a), with statistics over
 * CORPUS and HPARAMS (QUICK_ROME_HPARAMS written out), and 2 tokens of generation.
 */
export function quickEditArgs(corpus: string, hparams: string): string[] {
  return sawEditArgs(
    "Eiffel Tower",
    "the",
    "--target-true",
    "a",
    "--corpus",
    corpus,
    "--hparams",
    hparams,
    "--max-tokens",
    "2",
  );
}

/** `stats` of layer 1 of MODEL over CORPUS, then `rest`. */
export function layerOneStatsArgs(model: string, corpus: string, ...rest: string[]): string[] {
  return ["stats", "--model", model, "--layer", "1", "--corpus", corpus, ...rest];
}

/** Fewer templates and steps than the reference: the CLI plumbing is under test here, not v*. */
export const QUICK_ROME_HPARAMS = {
  layers: [1],
  fact_token: "subject_last",
  v_num_grad_steps: 6,
  v_lr: 0.5,
  v_loss_layer: 2,
  v_weight_decay: 0.5,
  clamp_norm_factor: 4,
  kl_factor: 0.0625,
  mom2_adjustment: true,
  context_template_length_params: [[5, 2], [10, 2]],
  mom2_n_samples: 100000,
};

/** A CounterFact rewrite "I saw {} in" → TNEW (true: TTRUE) of relation P1, as the eval tests' records use. */
export function tinyRewrite(
  subject: string,
  tnew: string,
  ttrue: string,
): CounterFactRecord["requested_rewrite"] {
  return {
    prompt: "I saw {} in",
    relation_id: "P1",
    target_new: { str: tnew, id: "N" + tnew },
    target_true: { str: ttrue, id: "N" + ttrue },
    subject,
  };
}

/** A zsRE record (the raw `zsre_mend_eval.json` form) whose answer the tiny fixtures' vocabulary spells. */
export const ZSRE_RIVER = {
  subject: "the river",
  src: "Where is the river?",
  rephrase: "In what place is the river?",
  answers: ["on the mat"],
  loc: "nq question: who sat on the mat",
  loc_ans: "the cat",
};

/** A run identity for synthetic case results (the merge and summary tests): ROME on CounterFact, no generation. */
export const SYNTHETIC_RUN: RunIdentity = {
  dataset_kind: "counterfact",
  dataset_hash: "d",
  method: "rome",
  hparams_hash: "h",
  model_hash: "m",
  sequential: 1,
  generation: { max_out_len: 0, top_k: 5, seed: 1, tfidf: "" },
  engine_version: "test",
};
