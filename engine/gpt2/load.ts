// Builds a Gpt2Model from a config and a tensor source in Hugging Face naming. Runtime-neutral: the
// Deno folder loader (folder.ts) and the browser's fetch loader both hand it a `TensorSource`.
import type { Engine } from "../engine.ts";
import { shapeStr } from "../tensor.ts";
import type { Gpt2Config } from "./config.ts";
import { expectedWeightShapes, Gpt2Model, type Gpt2Weights } from "./model.ts";
import { InputError } from "../errors.ts";

export interface TensorSource {
  /** Tensor names and shapes as stored. */
  tensors: Map<string, { shape: number[]; dtype: string }>;
  /** Reads one float tensor (any float dtype) as f32. */
  read(name: string): Float32Array;
  /** Where the tensors come from, for error messages. */
  describe(name: string): string;
}

export class CheckpointError extends InputError {
  override name = "CheckpointError";
}

/** HF buffers that are not parameters (causal mask tables); safe to ignore. */
const IGNORED = /(^|\.)attn\.(bias|masked_bias)$/;

/** Canonical name: without the `transformer.` prefix that GPT2LMHeadModel checkpoints carry. */
export function canonicalName(name: string): string {
  return name.startsWith("transformer.") ? name.slice("transformer.".length) : name;
}

/** Checks every needed tensor exists with the right shape; returns canonical name → stored name. */
export function mapCheckpoint(config: Gpt2Config, src: TensorSource): Map<string, string> {
  const stored = new Map<string, string>();
  for (const name of src.tensors.keys()) {
    if (IGNORED.test(name)) continue;
    const canon = canonicalName(name);
    if (stored.has(canon)) {
      throw new CheckpointError(
        `${src.describe(name)}: tensor '${canon}' appears twice (with and without 'transformer.')`,
      );
    }
    stored.set(canon, name);
  }
  for (const [canon, shape] of expectedWeightShapes(config)) {
    const name = stored.get(canon);
    if (!name) {
      throw new CheckpointError(
        `checkpoint has no tensor '${canon}' (nor 'transformer.${canon}') needed by its config ` +
          `(${config.nLayer} layers, d=${config.nEmbd}); is it a GPT-2 checkpoint?`,
      );
    }
    const got = src.tensors.get(name)!.shape;
    if (got.join(",") !== shape.join(",")) {
      throw new CheckpointError(
        `${src.describe(name)}: tensor '${name}' has shape ${shapeStr(got)}, the config needs ${
          shapeStr(shape)
        }`,
      );
    }
  }
  const lm = stored.get("lm_head.weight");
  if (lm) {
    const got = src.tensors.get(lm)!.shape;
    if (got.join(",") !== [config.vocabSize, config.nEmbd].join(",")) {
      throw new CheckpointError(`${src.describe(lm)}: lm_head.weight has shape ${shapeStr(got)}`);
    }
  }
  return stored;
}

/** GPT-2 ties the unembedding to `wte` unless config.json says `"tie_word_embeddings": false`. */
export function tiedEmbeddings(configJson: unknown): boolean {
  return (configJson as Record<string, unknown>).tie_word_embeddings !== false;
}

/** A tokenizer with more tokens than the embedding has rows would index past it. */
export function checkTokenizerFits(tokenizerVocab: number, config: Gpt2Config, where: string): void {
  if (tokenizerVocab > config.vocabSize) {
    throw new CheckpointError(
      `${where}: the tokenizer has ${tokenizerVocab} tokens but config.json says vocab_size ${config.vocabSize}`,
    );
  }
}

/**
 * Uploads the weights. `lm_head.weight` is used only when the config unties it; GPT-2 ties the
 * unembedding to `wte` and HF checkpoints store either both (equal) or just `wte`.
 */
export function buildGpt2(
  engine: Engine,
  config: Gpt2Config,
  src: TensorSource,
  opts: { tied?: boolean; onTensor?: (done: number, total: number) => void } = {},
): Gpt2Model {
  const names = mapCheckpoint(config, src);
  const wanted = [...expectedWeightShapes(config).keys()];
  if (opts.tied === false && names.has("lm_head.weight")) wanted.push("lm_head.weight");
  const weights: Gpt2Weights = new Map();
  const hash = new ContentHash();
  try {
    wanted.forEach((canon, i) => {
      const name = names.get(canon)!;
      const shape = src.tensors.get(name)!.shape;
      const data = src.read(name);
      hash.update(`${canon}:${shape.join("x")}`, data);
      const t = engine.upload(data, shape);
      engine.keep(t);
      weights.set(canon, t);
      opts.onTensor?.(i + 1, wanted.length);
    });
  } catch (e) {
    for (const t of weights.values()) t.dispose();
    throw e;
  }
  return new Gpt2Model(engine, config, weights, hash.hex());
}

/**
 * A fast 64-bit content hash (two FNV-1a lanes over the f32 words) identifying a model's weights in
 * caches and output files. Not cryptographic: it names results, it does not protect anything.
 */
export class ContentHash {
  #a = 0x811c9dc5;
  #b = 0x01000193 ^ 0x5bd1e995;

  update(label: string, data: Float32Array): void {
    for (let i = 0; i < label.length; i++) this.#word(label.charCodeAt(i));
    const w = new Uint32Array(data.buffer, data.byteOffset, data.length);
    let a = this.#a, b = this.#b;
    for (let i = 0; i < w.length; i++) {
      a = Math.imul(a ^ w[i], 0x01000193);
      b = Math.imul(b ^ w[i] ^ (a >>> 15), 0x5bd1e995);
    }
    this.#a = a;
    this.#b = b;
  }

  #word(v: number): void {
    this.#a = Math.imul(this.#a ^ v, 0x01000193);
    this.#b = Math.imul(this.#b ^ v ^ (this.#a >>> 15), 0x5bd1e995);
  }

  hex(): string {
    return (this.#a >>> 0).toString(16).padStart(8, "0") + (this.#b >>> 0).toString(16).padStart(8, "0");
  }
}
