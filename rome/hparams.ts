// ROME hyperparameters (reference §2.8): the reference's JSON files for GPT-2 medium / large / XL shipped
// verbatim in rome/hparams/, plus our defaults for GPT-2 small and the bundled world model, chosen by the
// model's shape when no file is given. Runtime-neutral: the files are JSON modules.
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import gpt2Small from "./hparams/gpt2.json" with { type: "json" };
import gpt2Medium from "./hparams/gpt2-medium.json" with { type: "json" };
import gpt2Large from "./hparams/gpt2-large.json" with { type: "json" };
import gpt2Xl from "./hparams/gpt2-xl.json" with { type: "json" };
import worldGpt2 from "./hparams/world-gpt2.json" with { type: "json" };
import { InputError } from "../engine/errors.ts";

/** The hyperparameters ROME's math reads (the reference's key names; other keys are kept but unused). */
export interface RomeHparams {
  /** Edit layer(s); ROME edits exactly one. */
  layers: number[];
  /** Which token's key is edited: the reference always uses "subject_last"; "last" is the prompt's end. */
  fact_token: "subject_last" | "last";
  /** Forwards of the v* optimisation (the loop stops after this many, or when the loss < 0.05). */
  v_num_grad_steps: number;
  /** Adam learning rate for δ. */
  v_lr: number;
  /** Only a trace hook in the reference; kept for the record. */
  v_loss_layer: number;
  /** Weight of ‖δ‖ / ‖v₀‖² in the v* loss. */
  v_weight_decay: number;
  /** ‖δ‖ is clamped to clamp_norm_factor · ‖v₀‖ after each step. */
  clamp_norm_factor: number;
  /** Weight of the KL (essence drift) term. */
  kl_factor: number;
  /** u = C⁻¹ k̄ (true) or u = k̄ (false, EasyEdit's GPT-2 XL yaml). */
  mom2_adjustment: boolean;
  /** [[length, count], ...] of the sampled context prefixes; counts include the <|endoftext|> token. */
  context_template_length_params: [number, number][];
  rewrite_module_tmp: string;
  mom2_dataset: string;
  /** Documents (articles) the statistics C are taken over. */
  mom2_n_samples: number;
  mom2_dtype: string;
  /** Unused keys of the file, kept verbatim (module templates, notes). */
  [extra: string]: unknown;
}

/** The reference's values where a file leaves a key out (gpt2-xl.json before `context_template_length_params` existed). */
const DEFAULT_CONTEXT_PARAMS: [number, number][] = [[5, 10], [10, 10]];

export class HparamsError extends InputError {
  override name = "HparamsError";
}

/** Validates a parsed hparams JSON object; `where` names its source in error messages. */
export function parseHparams(json: unknown, where: string): RomeHparams {
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new HparamsError(`${where}: expected a JSON object of ROME hyperparameters`);
  }
  const j = { ...(json as Record<string, unknown>) };
  const fail = (key: string, want: string): never => {
    throw new HparamsError(`${where}: '${key}' must be ${want} (got ${JSON.stringify(j[key])})`);
  };
  const num = (key: string, ok: (v: number) => boolean, want: string) => {
    if (typeof j[key] !== "number" || !ok(j[key] as number)) fail(key, want);
  };
  if (
    !Array.isArray(j.layers) || j.layers.length !== 1 || !Number.isInteger(j.layers[0]) || j.layers[0] < 0
  ) {
    fail("layers", "a list of exactly one layer index ≥ 0 (ROME edits one layer)");
  }
  j.fact_token ??= "subject_last";
  if (j.fact_token !== "subject_last" && j.fact_token !== "last") {
    fail("fact_token", `"subject_last" or "last"`);
  }
  num("v_num_grad_steps", (v) => Number.isInteger(v) && v >= 1, "an integer ≥ 1");
  num("v_lr", (v) => v > 0, "a positive number");
  j.v_loss_layer ??= -1;
  num("v_weight_decay", (v) => v >= 0, "a number ≥ 0");
  num("clamp_norm_factor", (v) => v > 0, "a positive number");
  num("kl_factor", (v) => v >= 0, "a number ≥ 0");
  if (typeof j.mom2_adjustment !== "boolean") fail("mom2_adjustment", "true or false");
  j.context_template_length_params ??= DEFAULT_CONTEXT_PARAMS;
  const ctx = j.context_template_length_params;
  if (
    !Array.isArray(ctx) ||
    !ctx.every((p) =>
      Array.isArray(p) && p.length === 2 && p.every((v) => Number.isInteger(v)) && p[0] >= 2 && p[1] >= 0
    )
  ) {
    fail("context_template_length_params", "a list of [length ≥ 2, count ≥ 0] pairs");
  }
  j.rewrite_module_tmp ??= "transformer.h.{}.mlp.c_proj";
  if (j.rewrite_module_tmp !== "transformer.h.{}.mlp.c_proj") {
    fail("rewrite_module_tmp", `"transformer.h.{}.mlp.c_proj" (GPT-2's MLP output projection)`);
  }
  j.mom2_dataset ??= "wikipedia";
  j.mom2_n_samples ??= 100000;
  num("mom2_n_samples", (v) => Number.isInteger(v) && v >= 1, "an integer ≥ 1");
  j.mom2_dtype ??= "float32";
  return j as RomeHparams;
}

/** Shipped hparams: the reference's files (verbatim) and our defaults, with the model shape each is for. */
export const SHIPPED_HPARAMS: readonly {
  name: string;
  shape: Pick<Gpt2Config, "nLayer" | "nEmbd">;
  json: unknown;
}[] = [
  { name: "gpt2", shape: { nLayer: 12, nEmbd: 768 }, json: gpt2Small },
  { name: "gpt2-medium", shape: { nLayer: 24, nEmbd: 1024 }, json: gpt2Medium },
  { name: "gpt2-large", shape: { nLayer: 36, nEmbd: 1280 }, json: gpt2Large },
  { name: "gpt2-xl", shape: { nLayer: 48, nEmbd: 1600 }, json: gpt2Xl },
  { name: "world-gpt2", shape: { nLayer: 6, nEmbd: 128 }, json: worldGpt2 },
];

/**
 * The shipped hparams for a model of this shape (layers and width), or — for any other shape — the
 * GPT-2 XL values with the edit layer at the same relative depth as the reference's files (about 0.35
 * of the stack: 8/24, 12/36, 17/48). `source` says which.
 */
export function defaultHparams(config: Gpt2Config): { hparams: RomeHparams; source: string } {
  const hit = SHIPPED_HPARAMS.find((h) => h.shape.nLayer === config.nLayer && h.shape.nEmbd === config.nEmbd);
  if (hit) return { hparams: parseHparams(hit.json, `rome/hparams/${hit.name}.json`), source: hit.name };
  const base = parseHparams(gpt2Xl, "rome/hparams/gpt2-xl.json");
  const layer = Math.min(config.nLayer - 1, Math.round(0.35 * config.nLayer));
  return {
    hparams: { ...base, layers: [layer], v_loss_layer: config.nLayer - 1 },
    source: `gpt2-xl values, layer ${layer} of ${config.nLayer} (no shipped file for this shape)`,
  };
}
