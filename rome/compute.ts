// The three computations of a ROME edit on the GPU (reference §2.4, §2.6, §2.7), each a client of the
// GPT-2 graph and the engine's ops:
//   computeKeyStar     k* = k̄, the subject's MLP key averaged over the context templates, plus the bare
//                      prompt's key and MLP output (the reference's k and W k + b of the update)
//   computeLeftVector  u = C⁻¹ k̄ / ‖C⁻¹ k̄‖ by the Cholesky solve
//   computeValueStar   v* = v₀ + δ, δ optimised by Adam through the layers above the edit layer only
//   rankOneUpdate      W += u Λᵀ with Λ = (v* − (W k + b)) / (kᵀ u), in GPT-2's Conv1D layout [d_ff, d]
// Runtime-neutral.
import { Adam, clipGradNorm } from "../engine/optim.ts";
import { Tape } from "../engine/autograd.ts";
import type { Hook, Pos } from "../engine/gpt2/hooks.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import {
  add,
  crossEntropy,
  klDivergenceModelRef,
  logSoftmax,
  matmul,
  matmulAccumulate,
  norm,
  scale,
  selectRows,
  sub,
  sumAll,
} from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { RomeHparams } from "./hparams.ts";
import {
  fillTemplate,
  type LookupPrompt,
  lookupPrompt,
  RomeInputError,
  type RomeRequest,
} from "./request.ts";
import { solveSecondMoment } from "./stats.ts";

/** The reference's early-stopping threshold on the v* loss (compute_v.py: `if loss < 5e-2: break`). */
export const V_LOSS_STOP = 5e-2;

/** Name of the matrix a ROME edit at `layer` changes. */
export function editedMatrix(layer: number): string {
  return `h.${layer}.mlp.c_proj.weight`;
}

export function checkLayer(model: Gpt2Model, layer: number): void {
  const n = model.config.nLayer;
  if (!Number.isInteger(layer) || layer < 0 || layer >= n) {
    throw new RomeInputError(`layer ${layer} is out of range: the model has layers 0..${n - 1}`);
  }
}

/** GPU tensors of computeKeyStar; the caller disposes them (`dispose()`). */
export interface KeyStar {
  /** k̄: mean of the subject's MLP key over the context templates, [d_ff]. */
  kStar: Tensor;
  /** The bare prompt's key (template "{}"), [d_ff]: the reference's k in Λ's denominator and residual. */
  kBare: Tensor;
  /** W k_bare + b, the MLP output there, [d]. */
  outBare: Tensor;
  /** Mean of W k + b over the contexts (= W k̄ + b), [d]: R-ROME's residual. */
  outMean: Tensor;
  /** The contexts, filled with the subject, and their lookup positions. */
  contexts: LookupPrompt[];
  dispose(): void;
}

/** One GPU row mean: [n, C] → [C] (a [1, n]·[n, C] product with alpha = 1/n). */
function meanRows(x: Tensor): Tensor {
  const n = x.shape[0];
  const ones = x.engine.upload(new Float32Array(n).fill(1), [1, n]);
  return matmul(ones, x, { alpha: 1 / n }).view([x.shape[1]]);
}

/**
 * k̄ = (1/N) Σ_j k(template_j(prompt)(subject)) at each context's subject-last token (reference
 * compute_u.py:58-120), with the bare prompt's key and MLP output from the same batched forward (the
 * reference's get_module_input_output_at_word runs the bare prompt, which is template "{}").
 */
export function computeKeyStar(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  templates: readonly string[],
  layer: number,
  factToken: RomeHparams["fact_token"] = "subject_last",
): KeyStar {
  checkLayer(model, layer);
  if (templates[0] !== "{}") {
    throw new RomeInputError(`the first context template must be "{}" (the bare prompt)`);
  }
  const e = model.engine;
  const contexts = templates.map((t, j) =>
    lookupPrompt(
      tokenizer,
      fillTemplate(t, request.prompt),
      request.subject,
      factToken,
      model.config.nPositions,
      j === 0 ? "prompt" : `context ${j}`,
    )
  );
  const at: Pos[] = contexts.map((c, r) => [r, c.index]);
  const t = e.scope(() => {
    const { captures } = model.forward(contexts.map((c) => c.ids), {
      logits: "none",
      hooks: [
        { site: "mlpKey", layer, kind: "read", name: "k", at },
        { site: "mlp", layer, kind: "read", name: "out", at },
      ],
    });
    const K = captures.get("k")!, M = captures.get("out")!;
    const first = e.upload(Uint32Array.of(0), [1], "u32");
    const keys = {
      kStar: meanRows(K),
      kBare: selectRows(K, first).view([K.shape[1]]),
      outBare: selectRows(M, first).view([M.shape[1]]),
      outMean: meanRows(M),
    };
    // forward's captures are the caller's (kept out of every scope, this one too): released here
    K.dispose();
    M.dispose();
    return keys;
  });
  const all = [t.kStar, t.kBare, t.outBare, t.outMean];
  return { ...t, contexts, dispose: () => all.forEach((x) => x.dispose()) };
}

/**
 * u = C⁻¹ k̄, normalised to unit length (compute_u.py:114-120); with mom2_adjustment false (C = I) just
 * k̄ / ‖k̄‖. `C` is E[k kᵀ] (mom2 / count); `count` is the number of tokens behind it, for the error that
 * explains a singular C. Reads back one scalar (‖C⁻¹ k̄‖).
 */
export async function computeLeftVector(
  kStar: Tensor,
  C: Tensor | null,
  opts: { count?: number; damping?: number; layer?: number } = {},
): Promise<Tensor> {
  const e = kStar.engine;
  const x = C ? await solveSecondMoment(C, kStar, opts.count ?? Infinity, opts) : kStar.view();
  const n2 = e.scope(() => e.keep(dotSelf(x)));
  const [s] = await n2.read();
  n2.dispose();
  if (!(s > 0) || !Number.isFinite(s)) {
    x.dispose();
    throw new RomeInputError(
      `C⁻¹k̄ has norm ${Math.sqrt(s)}: the subject's key is zero or C is ill-conditioned (try --damping)`,
    );
  }
  const u = scale(x, 1 / Math.sqrt(s));
  x.dispose();
  return u;
}

/** xᵀx as a [1] tensor (a 1×n·n×1 product). */
function dotSelf(x: Tensor): Tensor {
  return matmul(x.view([1, x.size]), x.view([x.size, 1])).view([1]);
}

/** Progress of the v* optimisation: forward `step` (0-based) and its loss. */
export type ValueStarProgress = (step: number, loss: number) => void;

export interface ValueStar {
  /** v* = v₀ + δ, [d] (GPU; the caller disposes it). */
  vStar: Tensor;
  /** ‖v₀‖: the MLP output at the bare rewrite prompt's subject-last token, before any δ. */
  v0Norm: number;
  /** ‖δ‖ after the last step (host, from the final δ). */
  deltaNorm: number;
  /** Loss after each forward (the last one is the stopping loss). */
  losses: number[];
  /** Forwards run (≤ v_num_grad_steps); optimizer steps = forwards − 1. */
  forwards: number;
}

/**
 * v* (reference compute_v.py:14-189). Rewrite prompts: each context template + prompt + the target's
 * tokens but the last; one KL prompt "{} is a". δ (zeros, [d]) is added to the MLP output at every row's
 * subject-last token; the loss is the mean over rewrite rows of the mean NLL of every target token
 * (teacher forcing), + kl_factor · KL(p_δ ‖ p₀) at the KL prompt's subject-last token, +
 * v_weight_decay · ‖δ‖ / ‖v₀‖². Adam (lr v_lr); the loop stops when the loss (checked after the forward,
 * before the backward) is below 0.05 or after v_num_grad_steps forwards; after each step ‖δ‖ is clamped to
 * clamp_norm_factor · ‖v₀‖ on the GPU.
 *
 * Layers below the edit layer do not see δ: one plain forward caches the residual stream entering the
 * edit layer, and every step starts there, so the tape records only the layers above. One scalar (the
 * loss) is read back per step; one more (‖v₀‖) before the loop.
 *
 * Deliberate difference: the clamp is clip_grad_norm_'s min(1, c‖v₀‖ / (‖δ‖ + 1e-6)) scale (no
 * readback), which also shrinks δ by a relative 1e-6/‖δ‖ when ‖δ‖ is within 1e-6 below the bound.
 */
export async function computeValueStar(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  templates: readonly string[],
  layer: number,
  hp: RomeHparams,
  onStep?: ValueStarProgress,
): Promise<ValueStar> {
  checkLayer(model, layer);
  const e = model.engine, c = model.config;
  const targetIds = tokenizer.encode(request.target_new);
  if (targetIds.length === 0) {
    throw new RomeInputError(`the target ${JSON.stringify(request.target_new)} has no tokens`);
  }
  const n = targetIds.length;
  const head = tokenizer.decode(targetIds.slice(0, -1));
  const rewriting = templates.map((t, j) =>
    lookupPrompt(
      tokenizer,
      fillTemplate(t, request.prompt) + head,
      request.subject,
      hp.fact_token,
      c.nPositions,
      j === 0 ? "rewrite prompt with the target" : `rewrite prompt ${j} with the target`,
    )
  );
  const kl = lookupPrompt(tokenizer, "{} is a", request.subject, hp.fact_token, c.nPositions, "KL prompt");
  const rows = [...rewriting, kl];
  const ids = rows.map((r) => r.ids);
  const lookup: Pos[] = rows.map((r, i) => [i, r.index]);

  // Teacher forcing: in row i (length L), the logits at L − n + j predict target token j (compute_v.py:49-54).
  const positions: Pos[] = [];
  const targets: number[] = [], weights: number[] = [];
  rewriting.forEach((r, i) => {
    const L = r.ids.length;
    if (L - n < 0) throw new RomeInputError(`rewrite prompt ${i} is shorter than the target`);
    for (let j = 0; j < n; j++) {
      positions.push([i, L - n + j]);
      targets.push(targetIds[j]);
      weights.push(1 / (n * rewriting.length)); // mean over rows of the mean over target tokens
    }
  });
  positions.push([rows.length - 1, kl.index]);
  targets.push(0);
  weights.push(0); // the KL row only feeds the KL term

  const keep: Tensor[] = [];
  try {
    // The unedited pass: residual entering the edit layer, v₀, and the KL prompt's log-probabilities.
    const base = model.forward(ids, {
      logits: [[rows.length - 1, kl.index]],
      hooks: [
        ...(layer > 0 ? [{ site: "resid", layer: layer - 1, kind: "read", name: "resid" } as const] : []),
        { site: "mlp", layer, kind: "read", name: "v0", at: [lookup[0]] },
      ],
    });
    const resid = base.captures.get("resid");
    const v0 = base.captures.get("v0")!.view([c.nEmbd]);
    const logpInit = e.scope(() => e.keep(logSoftmax(base.logits!)));
    base.logits!.dispose();
    keep.push(...base.captures.values(), v0, logpInit);
    const v0Sq = e.scope(() => e.keep(dotSelf(v0)));
    const [v0NormSq] = await v0Sq.read();
    v0Sq.dispose();
    const v0Norm = Math.sqrt(v0NormSq);
    if (!(v0Norm > 0)) throw new RomeInputError("the MLP output at the subject is zero: cannot scale δ");

    const targetsT = e.keep(e.upload(Uint32Array.from(targets), [targets.length], "u32"));
    const weightsT = e.keep(e.upload(Float32Array.from(weights), [weights.length]));
    const klRow = e.keep(e.upload(Uint32Array.of(positions.length - 1), [1], "u32"));
    keep.push(targetsT, weightsT, klRow);
    const delta = e.keep(e.zeros([c.nEmbd]));
    keep.push(delta);
    delta.requiresGrad = true;
    const adam = new Adam([delta], { lr: hp.v_lr });
    const maxNorm = hp.clamp_norm_factor * v0Norm;
    const hooks: Hook[] = [{ site: "mlp", layer, kind: "add", at: lookup, value: delta }];
    const start = resid ? { layer, resid } : undefined;
    const losses: number[] = [];
    try {
      for (let step = 0; step < hp.v_num_grad_steps; step++) {
        const tape = new Tape();
        const stop = await e.scopeAsync(async () => {
          const loss = tape.run(() => {
            const { logits } = model.forward(ids, { start, hooks, logits: positions });
            const nll = sumAll(crossEntropy(logits!, targetsT, weightsT));
            const klTerm = sumAll(klDivergenceModelRef(selectRows(logits!, klRow), logpInit));
            const decay = norm(delta);
            return add(add(nll, scale(klTerm, hp.kl_factor)), scale(decay, hp.v_weight_decay / v0NormSq));
          });
          const [value] = await loss.read();
          losses.push(value);
          onStep?.(step, value);
          if (!Number.isFinite(value)) {
            tape.clear();
            throw new Error(`the v* loss became ${value} at step ${step}`);
          }
          if (value < V_LOSS_STOP || step === hp.v_num_grad_steps - 1) {
            tape.clear();
            return true;
          }
          const grads = tape.backward(loss);
          const g = grads.get(delta)!;
          adam.step([g]);
          g.dispose();
          clipGradNorm([delta], maxNorm).dispose();
          return false;
        });
        if (stop) break;
      }
    } finally {
      adam.dispose();
    }
    delta.requiresGrad = false;
    const vStar = e.scope(() => e.keep(add(v0, delta)));
    const dn = e.scope(() => e.keep(dotSelf(delta)));
    const [deltaSq] = await dn.read();
    dn.dispose();
    return { vStar, v0Norm, deltaNorm: Math.sqrt(deltaSq), losses, forwards: losses.length };
  } finally {
    for (const t of keep) t.dispose();
  }
}

export interface RankOneUpdate {
  /** Λ = (v* − (W k + b)) / (kᵀ u), [d] (GPU; the caller disposes it). */
  lambda: Tensor;
  /** kᵀ u. */
  denominator: number;
}

/**
 * W += u Λᵀ on the edit layer's mlp.c_proj.weight (Conv1D layout [d_ff, d]: W[i, j] += u[i]·Λ[j]), with
 * Λ = (v* − out) / (kᵀ u) (compute_v.py:168-189, rome_main.py:114-151): one K = 1 matmul accumulating into
 * W. `key` and `out` are the reference's k_bare and W k_bare + b (ROME) or k̄ and W k̄ + b (R-ROME); either
 * way W_new k + b = v* afterwards. Reads back one scalar (kᵀ u).
 */
export async function rankOneUpdate(
  model: Gpt2Model,
  layer: number,
  u: Tensor,
  vStar: Tensor,
  key: Tensor,
  out: Tensor,
): Promise<RankOneUpdate> {
  checkLayer(model, layer);
  const e = model.engine, W = model.w(editedMatrix(layer));
  const [dff, d] = W.shape;
  const dotT = e.scope(() => e.keep(matmul(key.view([1, dff]), u.view([dff, 1]))));
  const [denominator] = await dotT.read();
  dotT.dispose();
  if (!(Math.abs(denominator) > 0) || !Number.isFinite(denominator)) {
    throw new RomeInputError(`kᵀu = ${denominator}: the key is orthogonal to u, the edit is undefined`);
  }
  const lambda = e.scope(() => e.keep(scale(sub(vStar, out), 1 / denominator)));
  e.scope(() => matmulAccumulate(u.view([dff, 1]), lambda.view([1, d]), W));
  return { lambda, denominator };
}
