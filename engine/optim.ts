// Optimisers that update parameter tensors in place on the GPU, with PyTorch's semantics: Adam (and AdamW
// through `decoupledWeightDecay`), SGD with momentum, and clip_grad_norm_. A step records one dispatch
// per parameter (per binding-sized chunk of a parameter) and never reads back: step counts and bias
// corrections live on the host, the clip coefficient stays on the GPU.
//
// Optimiser state (Adam's m and v, SGD's momentum buffers) is allocated at construction, kept out of
// engine scopes, and freed by `dispose()`.
import { flatWorkgroups } from "../kernels/descriptor.ts";
import {
  adamKernel,
  clipCoefKernel,
  optimWorkgroups,
  scaleByKernel,
  sgdKernel,
  SUMSQ_SEGMENT,
  sumSquaresKernel,
} from "../kernels/optim.ts";
import type { Engine } from "./engine.ts";

import { shapeStr, type Tensor } from "./tensor.ts";
import { assertF32, bindAll, rowChunks } from "./chunks.ts";

/** Element chunks [i0, i1) of an n-element f32 tensor that fit one storage binding. */
function elementChunks(e: Engine, n: number, what: string): [number, number][] {
  return rowChunks(e, n, [4], what);
}

function checkParams(what: string, params: readonly Tensor[]): Engine {
  if (params.length === 0) throw new RangeError(`${what}: empty parameter list`);
  assertF32(what, ...params);
  const seen = new Set<GPUBuffer>();
  for (const p of params) {
    if (seen.has(p.buffer)) throw new RangeError(`${what}: parameter ${p} appears more than once`);
    seen.add(p.buffer);
    if (p.engine !== params[0].engine) throw new Error(`${what}: parameters live on different engines`);
  }
  return params[0].engine;
}

function checkHyper(what: string, name: string, v: number, ok: (v: number) => boolean, range: string): void {
  if (!Number.isFinite(v) || !ok(v)) throw new RangeError(`${what}: ${name} must be ${range}, got ${v}`);
}

/** The gradients of one step: one per parameter, same shape, f32, not aliasing it; undefined skips it. */
function checkGrads(what: string, params: readonly Tensor[], grads: readonly (Tensor | undefined)[]): void {
  if (grads.length !== params.length) {
    throw new RangeError(`${what}: ${grads.length} gradients for ${params.length} parameters`);
  }
  grads.forEach((g, i) => {
    if (g === undefined) return;
    const p = params[i];
    assertF32(what, g);
    if (g.rank !== p.rank || g.shape.some((d, k) => d !== p.shape[k])) {
      throw new RangeError(
        `${what}: gradient ${i} ${shapeStr(g.shape)} does not match its parameter ${shapeStr(p.shape)}`,
      );
    }
    if (g.buffer === p.buffer) throw new RangeError(`${what}: gradient ${i} is its own parameter`);
  });
}

export interface AdamOptions {
  /** Learning rate (default 1e-3). */
  lr?: number;
  /** Decay rates of the first and second moment estimates (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to sqrt(v̂) (default 1e-8). */
  eps?: number;
  /** Adam: L2 penalty added to the gradient; AdamW: decoupled decay p -= lr·wd·p (default 0). */
  weightDecay?: number;
  /** AdamW (torch.optim.AdamW) instead of Adam's L2 (default false). */
  decoupledWeightDecay?: boolean;
}

/**
 * torch.optim.Adam (and AdamW with `decoupledWeightDecay`). Each parameter keeps its own step count t,
 * incremented only on steps that give it a gradient (as PyTorch's per-parameter state), so the bias
 * corrections 1 − β1^t and 1 − β2^t match PyTorch even when a parameter skips steps.
 */
export class Adam {
  /** Learning rate of the next step (may be changed between steps, as a scheduler does). */
  lr: number;
  readonly betas: readonly [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly decoupledWeightDecay: boolean;
  readonly params: readonly Tensor[];
  readonly #m: Tensor[];
  readonly #v: Tensor[];
  #steps: number[];
  #t = 0;

  constructor(params: Tensor[], opts: AdamOptions = {}) {
    const what = opts.decoupledWeightDecay ? "AdamW" : "Adam";
    const e = checkParams(what, params);
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    this.decoupledWeightDecay = opts.decoupledWeightDecay ?? false;
    checkHyper(what, "lr", this.lr, (v) => v >= 0, ">= 0");
    checkHyper(what, "betas[0]", this.betas[0], (v) => v >= 0 && v < 1, "in [0, 1)");
    checkHyper(what, "betas[1]", this.betas[1], (v) => v >= 0 && v < 1, "in [0, 1)");
    checkHyper(what, "eps", this.eps, (v) => v >= 0, ">= 0");
    checkHyper(what, "weightDecay", this.weightDecay, (v) => v >= 0, ">= 0");
    this.params = [...params];
    this.#m = e.keep(params.map((p) => e.zeros(p.shape)));
    this.#v = e.keep(params.map((p) => e.zeros(p.shape)));
    this.#steps = params.map(() => 0);
  }

  /** Number of `step` calls since construction or `zeroState`. */
  get t(): number {
    return this.#t;
  }

  /** Parameter i's first and second moment estimates and its own step count. */
  state(i: number): { m: Tensor; v: Tensor; step: number } {
    if (!(i >= 0 && i < this.params.length)) throw new RangeError(`Adam.state: no parameter ${i}`);
    return { m: this.#m[i], v: this.#v[i], step: this.#steps[i] };
  }

  /** One update of every parameter whose gradient is given, in place; records, never reads back. */
  step(grads: readonly (Tensor | undefined)[]): void {
    const what = this.decoupledWeightDecay ? "AdamW.step" : "Adam.step";
    checkHyper(what, "lr", this.lr, (v) => v >= 0, ">= 0");
    checkGrads(what, this.params, grads);
    this.#t++;
    const [b1, b2] = this.betas;
    const wd = this.weightDecay;
    this.params.forEach((p, i) => {
      const g = grads[i];
      if (g === undefined) return;
      const t = ++this.#steps[i];
      // float64 on the host, rounded once to f32 uniforms
      const uniforms = {
        beta1: b1,
        beta2: b2,
        c1: 1 - b1,
        c2: 1 - b2,
        stepSize: this.lr / (1 - b1 ** t),
        bc2Sqrt: Math.sqrt(1 - b2 ** t),
        eps: this.eps,
        l2: this.decoupledWeightDecay ? 0 : wd,
        decay: this.decoupledWeightDecay ? 1 - this.lr * wd : 1,
      };
      const e = p.engine;
      for (const [i0, i1] of elementChunks(e, p.size, what)) {
        const pr = p.range(i0, i1);
        e.dispatch(
          adamKernel,
          { n: i1 - i0, off: pr.elemOffset, ...uniforms },
          [pr, g.range(i0, i1), this.#m[i].range(i0, i1), this.#v[i].range(i0, i1)],
          optimWorkgroups(i1 - i0, e.limits.maxWorkgroupsPerDim),
        );
      }
    });
  }

  /** Zeroes m and v and every step count, as a freshly constructed optimiser. */
  zeroState(): void {
    for (const s of [...this.#m, ...this.#v]) s.engine.clear(s);
    this.#steps = this.params.map(() => 0);
    this.#t = 0;
  }

  /** Restores parameter i's moments and step count (resuming from a checkpoint of `state(i)`). */
  loadState(i: number, m: Float32Array, v: Float32Array, step: number, t = this.#t): void {
    const p = this.params[i];
    if (!p || m.length !== p.size || v.length !== p.size || !(step >= 0)) {
      throw new RangeError(`Adam.loadState: state for parameter ${i} does not match ${p}`);
    }
    const e = p.engine;
    e.scope(() => {
      for (const [src, dst] of [[m, this.#m[i]], [v, this.#v[i]]] as const) {
        const up = e.upload(src, p.shape);
        e.copy(up.buffer, 0, dst.buffer, 0, Math.ceil(dst.byteLength / 4) * 4);
      }
    });
    this.#steps[i] = step;
    this.#t = t;
  }

  /** Frees m and v; the optimiser is unusable afterwards. */
  dispose(): void {
    for (const s of [...this.#m, ...this.#v]) s.dispose();
  }
}

export interface SgdOptions {
  /** Learning rate (default 1e-3, as torch.optim.SGD). */
  lr?: number;
  /** Momentum factor (default 0: no buffer). */
  momentum?: number;
  /** L2 penalty added to the gradient (default 0). */
  weightDecay?: number;
}

/**
 * torch.optim.SGD with dampening 0 and no Nesterov: d = g + wd·p; with momentum, buf = d on a
 * parameter's first step and buf = momentum·buf + d after, d = buf; then p -= lr·d.
 */
export class Sgd {
  lr: number;
  readonly momentum: number;
  readonly weightDecay: number;
  readonly params: readonly Tensor[];
  readonly #buf: Tensor[];
  #started: boolean[];
  #t = 0;

  constructor(params: Tensor[], opts: SgdOptions = {}) {
    const what = "Sgd";
    const e = checkParams(what, params);
    this.lr = opts.lr ?? 1e-3;
    this.momentum = opts.momentum ?? 0;
    this.weightDecay = opts.weightDecay ?? 0;
    checkHyper(what, "lr", this.lr, (v) => v >= 0, ">= 0");
    checkHyper(what, "momentum", this.momentum, (v) => v >= 0, ">= 0");
    checkHyper(what, "weightDecay", this.weightDecay, (v) => v >= 0, ">= 0");
    this.params = [...params];
    // Written in full on each parameter's first step, so no clearing is needed.
    this.#buf = this.momentum !== 0 ? e.keep(params.map((p) => e.empty(p.shape))) : [];
    this.#started = params.map(() => false);
  }

  /** Number of `step` calls since construction or `zeroState`. */
  get t(): number {
    return this.#t;
  }

  /** Parameter i's momentum buffer (undefined without momentum or before its first step). */
  momentumBuffer(i: number): Tensor | undefined {
    return this.#started[i] ? this.#buf[i] : undefined;
  }

  step(grads: readonly (Tensor | undefined)[]): void {
    const what = "Sgd.step";
    checkHyper(what, "lr", this.lr, (v) => v >= 0, ">= 0");
    checkGrads(what, this.params, grads);
    this.#t++;
    const withMomentum = this.momentum !== 0;
    const kernel = sgdKernel(withMomentum);
    this.params.forEach((p, i) => {
      const g = grads[i];
      if (g === undefined) return;
      const first = this.#started[i] ? 0 : 1;
      this.#started[i] = true;
      const e = p.engine;
      for (const [i0, i1] of elementChunks(e, p.size, what)) {
        const pr = p.range(i0, i1);
        e.dispatch(
          kernel,
          {
            n: i1 - i0,
            off: pr.elemOffset,
            lr: this.lr,
            wd: this.weightDecay,
            momentum: this.momentum,
            first,
          },
          [pr, g.range(i0, i1), ...(withMomentum ? [this.#buf[i].range(i0, i1)] : [])],
          optimWorkgroups(i1 - i0, e.limits.maxWorkgroupsPerDim),
        );
      }
    });
  }

  /** Forgets the momentum buffers and the step count (the next step starts them afresh). */
  zeroState(): void {
    this.#started = this.params.map(() => false);
    this.#t = 0;
  }

  dispose(): void {
    for (const b of this.#buf) b.dispose();
  }
}

/**
 * torch.nn.utils.clip_grad_norm_ (2-norm): scales every gradient IN PLACE by
 * min(1, maxNorm / (‖g‖ + 1e-6)), ‖g‖ the 2-norm of all gradients together, and returns ‖g‖ as a [1]
 * tensor. Everything stays on the GPU: segment sums of squares, one workgroup for the norm and the
 * coefficient, and a scale kernel that reads the coefficient from its buffer.
 */
export function clipGradNorm(grads: readonly Tensor[], maxNorm: number): Tensor {
  const what = "clipGradNorm";
  if (!(maxNorm >= 0)) throw new RangeError(`${what}: maxNorm must be >= 0, got ${maxNorm}`);
  if (grads.length === 0) throw new RangeError(`${what}: no gradients (their engine is unknown)`);
  assertF32(what, ...grads);
  const seen = new Set<GPUBuffer>();
  for (const g of grads) {
    if (seen.has(g.buffer)) throw new RangeError(`${what}: gradient ${g} appears more than once`);
    seen.add(g.buffer);
  }
  const e = grads[0].engine;
  const norm = e.empty([1]);
  // every chunk of every gradient, and where its partial sums start
  const pieces: { g: Tensor; i0: number; i1: number; pOff: number }[] = [];
  let count = 0;
  for (const g of grads) {
    for (const [i0, i1] of elementChunks(e, g.size, what)) {
      pieces.push({ g, i0, i1, pOff: count });
      count += Math.ceil((i1 - i0) / SUMSQ_SEGMENT);
    }
  }
  e.scope(() => {
    // an empty list of elements still needs a (zero) partial for a norm of 0
    const partial = count === 0 ? e.zeros([1]) : e.empty([count]), coef = e.empty([1]);
    const pb = bindAll(partial, what);
    for (const { g, i0, i1, pOff } of pieces) {
      const r = g.range(i0, i1);
      e.dispatch(
        sumSquaresKernel,
        { n: i1 - i0, off: r.elemOffset, pOff },
        [r, pb],
        flatWorkgroups(Math.ceil((i1 - i0) / SUMSQ_SEGMENT), e.limits.maxWorkgroupsPerDim),
      );
    }
    e.dispatch(clipCoefKernel, { count, maxNorm }, [pb, norm, coef], [1, 1, 1]);
    for (const { g, i0, i1 } of pieces) {
      const r = g.range(i0, i1);
      e.dispatch(
        scaleByKernel,
        { n: i1 - i0, off: r.elemOffset },
        [coef, r],
        optimWorkgroups(i1 - i0, e.limits.maxWorkgroupsPerDim),
      );
    }
  });
  return norm;
}
