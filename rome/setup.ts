// What every ROME caller does before an edit (deno task edit, deno task eval's rome method, the web page):
// the layer and the variant checked, and the statistics C loaded where the hparams use them. Where C comes
// from is the caller's business (files and a cache on Deno, the served model folder in a page), passed in.
// Runtime-neutral.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Tensor } from "../engine/tensor.ts";
import { checkLayer } from "./compute.ts";
import { ROME_VARIANTS, type RomeVariant } from "./edit.ts";
import type { RomeHparams } from "./hparams.ts";
import { RomeInputError } from "./request.ts";

/** The variant when none is given: the reference's. */
export const DEFAULT_VARIANT: RomeVariant = "rome";

/** C = E[k kᵀ] on the GPU and the number of tokens behind it. */
export interface SecondMoment {
  C: Tensor;
  count: number;
}

/** A variant by name (DEFAULT_VARIANT when absent); an unknown name is an input error. */
export function romeVariant(name: string | undefined): RomeVariant {
  const variant = name ?? DEFAULT_VARIANT;
  if (!(ROME_VARIANTS as readonly string[]).includes(variant)) {
    throw new RomeInputError(`--variant must be rome or r-rome (got '${variant}')`);
  }
  return variant as RomeVariant;
}

export interface RomeChoice {
  hparams: RomeHparams;
  /** Default: the hparams' first layer. */
  layer?: number;
  /** A variant's name, checked; default DEFAULT_VARIANT. */
  variant?: string;
}

/** Where the caller's statistics come from. */
export interface SecondMomentSource<S extends SecondMoment> {
  /** C at the edit layer; the caller owns (and disposes) what it returns. */
  load(layer: number): Promise<S>;
  /** Called instead of `load` when the hparams use no C (mom2_adjustment false): refuse what asked for C. */
  unused?(): void;
}

export interface RomeSetup<S extends SecondMoment> {
  hparams: RomeHparams;
  layer: number;
  variant: RomeVariant;
  /** null when the hparams use no C (the update then solves against the identity). */
  secondMoment: S | null;
}

/** Checks the layer against the model and the variant's name, then loads C if the hparams use it. */
export async function setUpRome<S extends SecondMoment>(
  model: Gpt2Model,
  choice: RomeChoice,
  statistics: SecondMomentSource<S>,
): Promise<RomeSetup<S>> {
  const hparams = choice.hparams;
  const layer = choice.layer ?? hparams.layers[0];
  checkLayer(model, layer);
  const variant = romeVariant(choice.variant);
  let secondMoment: S | null = null;
  if (hparams.mom2_adjustment) secondMoment = await statistics.load(layer);
  else statistics.unused?.();
  return { hparams, layer, variant, secondMoment };
}
