// The fine-tuning baselines of the ROME paper (reference §2.8; baselines/ft/ft_main.py): FT changes one
// layer's MLP output matrix by Adam on the new target's NLL after the rewrite prompt, with early stopping;
// FT+L (Zhu et al. 2020) does the same with the change bounded elementwise, ‖W − W₀‖∞ ≤ ε, by projecting
// after every step. Runtime-neutral.
//
// Deliberate differences from ft_main.py:
//   - Only `h.L.mlp.c_proj.weight` is trained. The reference selects parameters whose name contains
//     "transformer.h.L.mlp.c_proj", so its bias (d values next to d_ff·d) moves too; keeping to the one
//     matrix ROME edits makes every method's edit a change of the same tensor, revertible bit for bit and
//     stackable in sequential runs.
//   - The loss is the teacher-forced mean NLL of the target's tokens after the prompt (the quantity the
//     probability tests score). The reference takes the log-probabilities of all target tokens at the
//     prompt's last position; the two agree for single-token targets (every object of the bundled world).
import { Tape } from "../engine/autograd.ts";
import type { Pos } from "../engine/gpt2/hooks.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { clampToBand, clone, crossEntropy, sumAll } from "../engine/ops.ts";
import { Adam } from "../engine/optim.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { checkLayer, editedMatrix } from "../rome/compute.ts";
import { fillTemplate, RomeInputError, type RomeRequest } from "../rome/request.ts";
import ftWorld from "./hparams/ft-world-gpt2.json" with { type: "json" };
import ftlWorld from "./hparams/ft-l-world-gpt2.json" with { type: "json" };
import ftXl from "./hparams/ft-gpt2-xl.json" with { type: "json" };
import ftlXl from "./hparams/ft-l-gpt2-xl.json" with { type: "json" };
import { InputError } from "../engine/errors.ts";

/** ft_main.py stops (and skips the step) once the loss is below 1e-2 (the paper's text says 0.03). */
export const FT_LOSS_STOP = 1e-2;

/** The reference's FT hyperparameter keys (hparams/FT/*.json); other keys are kept, unused. */
export interface FtHparams {
  /** The layer whose mlp.c_proj.weight is trained (one). */
  layers: number[];
  /** Optimiser steps at most (one forward each). */
  num_steps: number;
  lr: number;
  /** Adam's L2 penalty (torch.optim.Adam's weight_decay). */
  weight_decay: number;
  /** ε of FT+L's ‖W − W₀‖∞ ≤ ε; false for unconstrained FT. */
  norm_constraint: number | false;
  [extra: string]: unknown;
}

export class FtHparamsError extends InputError {
  override name = "FtHparamsError";
}

/** Checks a parsed FT hparams object; `constrained` says whether the method needs a norm_constraint. */
export function parseFtHparams(json: unknown, where: string, constrained: boolean): FtHparams {
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new FtHparamsError(`${where}: expected a JSON object of FT hyperparameters`);
  }
  const j = { ...(json as Record<string, unknown>) };
  const fail = (key: string, want: string): never => {
    throw new FtHparamsError(`${where}: '${key}' must be ${want} (got ${JSON.stringify(j[key])})`);
  };
  if (
    !Array.isArray(j.layers) || j.layers.length !== 1 || !Number.isInteger(j.layers[0]) || j.layers[0] < 0
  ) {
    fail("layers", "a list of exactly one layer index ≥ 0");
  }
  if (!Number.isInteger(j.num_steps) || (j.num_steps as number) < 1) fail("num_steps", "an integer ≥ 1");
  if (typeof j.lr !== "number" || !(j.lr > 0)) fail("lr", "a positive number");
  j.weight_decay ??= 0;
  if (typeof j.weight_decay !== "number" || !(j.weight_decay >= 0)) fail("weight_decay", "a number ≥ 0");
  j.norm_constraint ??= false;
  if (constrained && !(typeof j.norm_constraint === "number" && j.norm_constraint > 0)) {
    fail("norm_constraint", "a positive number ε for FT+L");
  }
  if (!constrained && j.norm_constraint !== false) {
    fail("norm_constraint", "false for unconstrained FT (use --method ft-l for a constraint)");
  }
  j.rewrite_module_tmp ??= "transformer.h.{}.mlp.c_proj";
  if (j.rewrite_module_tmp !== "transformer.h.{}.mlp.c_proj") {
    fail("rewrite_module_tmp", `"transformer.h.{}.mlp.c_proj"`);
  }
  return j as FtHparams;
}

/** Shipped FT / FT+L hparams with the model shape each is for: the bundled model's, and GPT-2 XL's (the reference's). */
export const SHIPPED_FT_HPARAMS: readonly {
  name: string;
  method: "ft" | "ft-l";
  shape: Pick<Gpt2Config, "nLayer" | "nEmbd">;
  json: unknown;
}[] = [
  { name: "ft-world-gpt2", method: "ft", shape: { nLayer: 6, nEmbd: 128 }, json: ftWorld },
  { name: "ft-l-world-gpt2", method: "ft-l", shape: { nLayer: 6, nEmbd: 128 }, json: ftlWorld },
  { name: "ft-gpt2-xl", method: "ft", shape: { nLayer: 48, nEmbd: 1600 }, json: ftXl },
  { name: "ft-l-gpt2-xl", method: "ft-l", shape: { nLayer: 48, nEmbd: 1600 }, json: ftlXl },
];

/**
 * The shipped hparams for this method and model shape; any other shape gets the bundled model's values
 * with the layer at `fallbackLayer` (ROME's edit layer for that model). `source` says which.
 */
export function defaultFtHparams(
  method: "ft" | "ft-l",
  config: Gpt2Config,
  fallbackLayer: number,
): { hparams: FtHparams; source: string } {
  const hit = SHIPPED_FT_HPARAMS.find((h) =>
    h.method === method && h.shape.nLayer === config.nLayer && h.shape.nEmbd === config.nEmbd
  );
  if (hit) {
    return {
      hparams: parseFtHparams(hit.json, `eval/hparams/${hit.name}.json`, method === "ft-l"),
      source: hit.name,
    };
  }
  const base = SHIPPED_FT_HPARAMS.find((h) => h.method === method)!;
  const hp = parseFtHparams(base.json, `eval/hparams/${base.name}.json`, method === "ft-l");
  return {
    hparams: { ...hp, layers: [fallbackLayer] },
    source: `${base.name} values at layer ${fallbackLayer} (no shipped file for this shape)`,
  };
}

export interface FineTuneResult {
  layer: number;
  matrix: string;
  /** The loss before each step (the last one is the stopping loss, or the loss before the last step). */
  losses: number[];
  /** Optimiser steps taken. */
  steps: number;
}

/**
 * Fine-tunes `h.L.mlp.c_proj.weight` of `model` in place on the request (ft_main.py's loop): up to
 * num_steps times, a forward on the rewrite prompt followed by the new target, loss = mean NLL of the
 * target's tokens; when the loss is below FT_LOSS_STOP the loop ends, otherwise Adam steps (lr,
 * weight_decay) and, for FT+L, W is clamped to [W₀ − ε, W₀ + ε]. Layers below L do not depend on W: one
 * plain forward caches the residual stream entering layer L and every step starts there. One scalar (the
 * loss) is read back per step.
 */
export async function executeFineTune(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  hp: FtHparams,
  onStep?: (step: number, loss: number) => void,
): Promise<FineTuneResult> {
  const layer = hp.layers[0];
  checkLayer(model, layer);
  const e = model.engine, c = model.config;
  const matrix = editedMatrix(layer);
  const W = model.w(matrix);
  const prompt = tokenizer.encode(fillTemplate(request.prompt, request.subject));
  const target = tokenizer.encode(request.target_new);
  if (prompt.length === 0 || target.length === 0) {
    throw new RomeInputError("fine-tuning needs a prompt and a target that have tokens");
  }
  const ids = [...prompt, ...target.slice(0, -1)];
  if (ids.length > c.nPositions) {
    throw new RomeInputError(
      `the rewrite prompt with its target is past the model's context of ${c.nPositions}`,
    );
  }
  const positions: Pos[] = target.map((_, j) => [0, prompt.length + j - 1]);
  const keep: Tensor[] = [];
  let adam: Adam | undefined;
  try {
    const base = layer > 0
      ? model.forward([ids], {
        logits: "none",
        hooks: [{ site: "resid", layer: layer - 1, kind: "read", name: "resid" }],
      })
      : undefined;
    const resid = base?.captures.get("resid");
    if (resid) keep.push(resid);
    const targetsT = e.keep(e.upload(Uint32Array.from(target), [target.length], "u32"));
    const weightsT = e.keep(
      e.upload(new Float32Array(target.length).fill(1 / target.length), [target.length]),
    );
    keep.push(targetsT, weightsT);
    const eps = hp.norm_constraint;
    const W0 = eps !== false ? e.scope(() => e.keep(clone(W))) : undefined;
    if (W0) keep.push(W0);
    W.requiresGrad = true;
    adam = new Adam([W], { lr: hp.lr, weightDecay: hp.weight_decay });
    const start = resid ? { layer, resid } : undefined;
    const losses: number[] = [];
    let steps = 0;
    for (let step = 0; step < hp.num_steps; step++) {
      const tape = new Tape();
      const stop = await e.scopeAsync(async () => {
        const loss = tape.run(() => {
          const { logits } = model.forward([ids], { start, logits: positions });
          return sumAll(crossEntropy(logits!, targetsT, weightsT));
        });
        const [value] = await loss.read();
        losses.push(value);
        onStep?.(step, value);
        if (!Number.isFinite(value)) {
          tape.clear();
          throw new Error(`the fine-tuning loss became ${value} at step ${step}`);
        }
        if (value < FT_LOSS_STOP) {
          tape.clear();
          return true;
        }
        const grads = tape.backward(loss);
        const g = grads.get(W)!;
        adam!.step([g]);
        g.dispose();
        if (W0) clampToBand(W, W0, eps as number);
        steps++;
        return false;
      });
      if (stop) break;
    }
    await e.sync();
    return { layer, matrix, losses, steps };
  } finally {
    W.requiresGrad = false;
    adam?.dispose();
    for (const t of keep) t.dispose();
  }
}
