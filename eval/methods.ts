// The editing methods the harness compares, behind one interface: each changes one matrix of the model in
// place and returns the bitwise XOR of that matrix before and after, which reverts it exactly (rome/patch:
// W ⊕ X ⊕ X = W, no floating-point arithmetic). ROME is rome/'s edit; FT and FT+L are eval/finetune.ts.
// Runtime-neutral.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import type { Tensor } from "../engine/tensor.ts";
import { editedMatrix } from "../rome/compute.ts";
import { executeRome, type RomeVariant } from "../rome/edit.ts";
import type { RomeHparams } from "../rome/hparams.ts";
import { matrixHash, readMatrix, xorMatrix, xorWords } from "../rome/patch.ts";
import type { RomeRequest } from "../rome/request.ts";
import { executeFineTune, type FtHparams } from "./finetune.ts";

export type MethodName = "none" | "rome" | "ft" | "ft-l";
export const METHODS: readonly MethodName[] = ["none", "rome", "ft", "ft-l"];

/** An edit in place, with what reverting it needs. */
export interface AppliedEdit {
  matrix: string;
  /** The matrix's f32 words before ⊕ after. */
  xor: Uint32Array;
  matrixHashBefore: string;
  matrixHashAfter: string;
  /** Wall time of the edit. */
  seconds: number;
  /** Method-specific facts stored in the case file (losses, steps, norms). */
  info: Record<string, unknown>;
}

export interface EditMethod {
  readonly name: Exclude<MethodName, "none">;
  /** The matrix every edit of this method changes. */
  readonly matrix: string;
  /** The settings that identify the method's results (hashed into the run identity). */
  readonly settings: Record<string, unknown>;
  apply(model: Gpt2Model, tokenizer: Gpt2Tokenizer, request: RomeRequest): Promise<AppliedEdit>;
}

export interface RomeMethodOptions {
  hparams: RomeHparams;
  layer?: number;
  variant?: RomeVariant;
  templates: readonly string[];
  /** C at the layer (null when hparams.mom2_adjustment is false); the caller owns and disposes it. */
  secondMoment: { C: Tensor; count: number } | null;
  /** Identity of C (recorded in the settings): e.g. the statistics cache name. */
  statsId: string;
  damping?: number;
  /** Seed the context templates were drawn with (recorded in the settings). */
  templateSeed: number;
}

/** ROME (rome/edit.ts) as an evaluation method. */
export function romeMethod(o: RomeMethodOptions): EditMethod {
  const layer = o.layer ?? o.hparams.layers[0];
  const variant = o.variant ?? "rome";
  return {
    name: "rome",
    matrix: editedMatrix(layer),
    settings: {
      hparams: o.hparams,
      layer,
      variant,
      templates: o.templates,
      template_seed: o.templateSeed,
      stats: o.statsId,
      damping: o.damping ?? 0,
    },
    async apply(model, tokenizer, request) {
      const t0 = performance.now();
      const edit = await executeRome(model, tokenizer, request, {
        hparams: o.hparams,
        layer,
        variant,
        templates: o.templates,
        secondMoment: o.secondMoment,
        damping: o.damping,
      });
      return {
        matrix: edit.matrix,
        xor: edit.xor,
        matrixHashBefore: edit.matrixHashBefore,
        matrixHashAfter: edit.matrixHashAfter,
        seconds: (performance.now() - t0) / 1000,
        info: {
          layer,
          variant,
          losses: edit.losses,
          forwards: edit.forwards,
          delta_norm: edit.deltaNorm,
          v0_norm: edit.v0Norm,
          denominator: edit.denominator,
          seconds: edit.seconds,
        },
      };
    },
  };
}

/** FT or FT+L (eval/finetune.ts) as an evaluation method. */
export function fineTuneMethod(name: "ft" | "ft-l", hparams: FtHparams): EditMethod {
  const matrix = editedMatrix(hparams.layers[0]);
  return {
    name,
    matrix,
    settings: { hparams },
    async apply(model, tokenizer, request) {
      const t0 = performance.now();
      const W = model.w(matrix);
      const before = await readMatrix(model, matrix);
      const r = await executeFineTune(model, tokenizer, request, hparams);
      const seconds = (performance.now() - t0) / 1000;
      const after = await readMatrix(model, matrix);
      let maxChange = 0;
      for (let i = 0; i < after.length; i++) maxChange = Math.max(maxChange, Math.abs(after[i] - before[i]));
      return {
        matrix,
        xor: xorWords(before, after),
        matrixHashBefore: matrixHash(matrix, W.shape, before),
        matrixHashAfter: matrixHash(matrix, W.shape, after),
        seconds,
        info: { layer: r.layer, losses: r.losses, steps: r.steps, max_abs_change: maxChange },
      };
    },
  };
}

/** Undoes an edit bit for bit; throws when the matrix is not the one the edit left (edits reverted out of order). */
export async function revertEdit(model: Gpt2Model, edit: AppliedEdit): Promise<void> {
  const h = await xorMatrix(model, edit.matrix, edit.xor);
  if (h.before !== edit.matrixHashAfter || h.after !== edit.matrixHashBefore) {
    throw new Error(
      `reverting an edit of ${edit.matrix} did not restore it (hash ${h.before} → ${h.after}, expected ` +
        `${edit.matrixHashAfter} → ${edit.matrixHashBefore})`,
    );
  }
}
