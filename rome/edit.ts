// One ROME edit end to end (reference §2.9): k̄ and u, v*, the rank-one update, and what a patch file
// needs (the XOR of the matrix before and after, and its hashes). Runtime-neutral: the CLI (cli/edit.ts) and
// a browser page call the same function.
//
// Variants (reference §2.7 / §2.10):
//   "rome"   the reference: u from the prefix-averaged k̄, but Λ's denominator and residual use the bare
//            prompt's key, Λ = (v* − (W k_bare + b)) / (k_bareᵀ u). The edited layer maps k_bare exactly
//            to v*, not k̄: Gupta et al. ("Rebuilding ROME", 2024) trace the "disabling edits" (model
//            collapse after some sequential edits) to this mismatch.
//   "r-rome" R-ROME: k̄ in both places, Λ = (v* − (W k̄ + b)) / (k̄ᵀ u), so W_new k̄ + b = v* (EasyEdit's
//            r_rome with enable_random_prefix_keys).
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import type { Tensor } from "../engine/tensor.ts";
import {
  checkLayer,
  computeKeyStar,
  computeLeftVector,
  computeValueStar,
  editedMatrix,
  rankOneUpdate,
  type ValueStarProgress,
} from "./compute.ts";
import type { RomeHparams } from "./hparams.ts";
import { matrixHash, readMatrix, xorWords } from "./patch.ts";
import { RomeInputError, type RomeRequest } from "./request.ts";

export type RomeVariant = "rome" | "r-rome";
export const ROME_VARIANTS: readonly RomeVariant[] = ["rome", "r-rome"];

export interface RomeEditOptions {
  hparams: RomeHparams;
  /** Edit layer (default hparams.layers[0]). */
  layer?: number;
  variant?: RomeVariant;
  /** Context templates, "{}" first (generateContextTemplates). */
  templates: readonly string[];
  /** C = E[k kᵀ] at the layer and the tokens behind it; null when hparams.mom2_adjustment is false. */
  secondMoment: { C: Tensor; count: number } | null;
  /** λ added to C's diagonal before the solve (0 = the reference's undamped inverse). */
  damping?: number;
  onValueStep?: ValueStarProgress;
  onStage?: (stage: "k" | "v" | "update") => void;
}

/** A finished edit: the model's matrix is changed; everything a patch file needs is on the host. */
export interface RomeEdit {
  layer: number;
  variant: RomeVariant;
  matrix: string;
  u: Float32Array;
  lambda: Float32Array;
  /** The key in Λ's denominator: k_bare (rome) or k̄ (r-rome). */
  key: Float32Array;
  /** k̄. */
  kStar: Float32Array;
  vStar: Float32Array;
  v0Norm: number;
  deltaNorm: number;
  losses: number[];
  forwards: number;
  /** kᵀ u. */
  denominator: number;
  /** The matrix's f32 words before ⊕ after. */
  xor: Uint32Array;
  matrixHashBefore: string;
  matrixHashAfter: string;
  seconds: { k: number; v: number; update: number };
}

/**
 * Applies one ROME edit to `model` in place (its c_proj weight at the layer) and returns its pieces.
 * The model's `hash` is not updated here (recomputing it reads every weight; see modelContentHash).
 */
export async function executeRome(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  opts: RomeEditOptions,
): Promise<RomeEdit> {
  const hp = opts.hparams;
  const layer = opts.layer ?? hp.layers[0];
  const variant = opts.variant ?? "rome";
  checkLayer(model, layer);
  if (hp.mom2_adjustment && !opts.secondMoment) {
    throw new RomeInputError("hparams ask for mom2_adjustment but no statistics C were given");
  }
  const e = model.engine;
  const matrix = editedMatrix(layer);
  const seconds = { k: 0, v: 0, update: 0 };
  const owned: Tensor[] = [];
  try {
    let t0 = performance.now();
    opts.onStage?.("k");
    const keys = computeKeyStar(model, tokenizer, request, opts.templates, layer, hp.fact_token);
    owned.push(keys.kStar, keys.kBare, keys.outBare, keys.outMean);
    const u = await computeLeftVector(keys.kStar, hp.mom2_adjustment ? opts.secondMoment!.C : null, {
      count: opts.secondMoment?.count,
      damping: opts.damping,
      layer,
    });
    owned.push(u);
    seconds.k = (performance.now() - t0) / 1000;

    t0 = performance.now();
    opts.onStage?.("v");
    const v = await computeValueStar(model, tokenizer, request, opts.templates, layer, hp, opts.onValueStep);
    owned.push(v.vStar);
    seconds.v = (performance.now() - t0) / 1000;

    t0 = performance.now();
    opts.onStage?.("update");
    const before = await readMatrix(model, matrix);
    const key = variant === "rome" ? keys.kBare : keys.kStar;
    const out = variant === "rome" ? keys.outBare : keys.outMean;
    const upd = await rankOneUpdate(model, layer, u, v.vStar, key, out);
    owned.push(upd.lambda);
    const [after, uH, lambdaH, keyH, kStarH, vStarH] = await e.readMany([
      model.w(matrix),
      u,
      upd.lambda,
      key,
      keys.kStar,
      v.vStar,
    ]) as Float32Array[];
    const shape = model.w(matrix).shape;
    const result: RomeEdit = {
      layer,
      variant,
      matrix,
      u: uH,
      lambda: lambdaH,
      key: keyH,
      kStar: kStarH,
      vStar: vStarH,
      v0Norm: v.v0Norm,
      deltaNorm: v.deltaNorm,
      losses: v.losses,
      forwards: v.forwards,
      denominator: upd.denominator,
      xor: xorWords(before, after),
      matrixHashBefore: matrixHash(matrix, shape, before),
      matrixHashAfter: matrixHash(matrix, shape, after),
      seconds,
    };
    seconds.update = (performance.now() - t0) / 1000;
    return result;
  } finally {
    for (const t of owned) t.dispose();
  }
}
