// GPT-2 configuration, read from a Hugging Face `config.json` (GPT2Config field names).
import { InputError } from "../errors.ts";

export interface Gpt2Config {
  /** Layers (`n_layer`). */
  nLayer: number;
  /** Attention heads (`n_head`). */
  nHead: number;
  /** Model width d (`n_embd`). */
  nEmbd: number;
  /** MLP width (`n_inner`, default 4·d). */
  nInner: number;
  /** Context length (`n_positions`). */
  nPositions: number;
  vocabSize: number;
  layerNormEps: number;
}

export class ConfigError extends InputError {
  override name = "ConfigError";
}

/** Validates a parsed config.json; `where` names the file in error messages. */
export function parseGpt2Config(json: unknown, where = "config.json"): Gpt2Config {
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigError(`${where}: not a JSON object`);
  }
  const j = json as Record<string, unknown>;
  if (j.model_type !== undefined && j.model_type !== "gpt2") {
    throw new ConfigError(
      `${where}: model_type is '${j.model_type}', only GPT-2 architecture models are supported`,
    );
  }
  const int = (key: string, fallback?: number): number => {
    const v = j[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new ConfigError(`${where}: '${key}' must be a positive integer (got ${JSON.stringify(j[key])})`);
    }
    return v;
  };
  const nEmbd = int("n_embd");
  const nHead = int("n_head");
  if (nEmbd % nHead !== 0) {
    throw new ConfigError(`${where}: n_embd ${nEmbd} is not divisible by n_head ${nHead}`);
  }
  const act = j.activation_function ?? "gelu_new";
  if (act !== "gelu_new") {
    throw new ConfigError(`${where}: activation_function '${act}' is not supported (GPT-2 uses gelu_new)`);
  }
  const eps = j.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) throw new ConfigError(`${where}: bad layer_norm_epsilon ${eps}`);
  const inner = j.n_inner === null || j.n_inner === undefined ? 4 * nEmbd : int("n_inner");
  return {
    nLayer: int("n_layer"),
    nHead,
    nEmbd,
    nInner: inner,
    nPositions: int("n_positions", j.n_ctx as number | undefined),
    vocabSize: int("vocab_size"),
    layerNormEps: eps,
  };
}

/** The config.json a Hugging Face GPT-2 folder carries, for models we write. */
export function gpt2ConfigJson(c: Gpt2Config): Record<string, unknown> {
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    activation_function: "gelu_new",
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_embd: c.nEmbd,
    n_inner: c.nInner === 4 * c.nEmbd ? null : c.nInner,
    n_positions: c.nPositions,
    n_ctx: c.nPositions,
    vocab_size: c.vocabSize,
    layer_norm_epsilon: c.layerNormEps,
    bos_token_id: c.vocabSize - 1,
    eos_token_id: c.vocabSize - 1,
    tie_word_embeddings: true,
  };
}

/** Parameter count of the model (tied unembedding counted once). */
export function parameterCount(c: Gpt2Config): number {
  const d = c.nEmbd, f = c.nInner;
  const block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
  return c.vocabSize * d + c.nPositions * d + c.nLayer * block + 2 * d;
}
