// Losses with their gradients w.r.t. the logits: per-row cross-entropy (optionally weighted, weight 0
// masks a row) and KL(p0 || p) = Σ_v p0 (log p0 − log p) per row, p = softmax(logits), p0 a fixed reference
// (the reference weights the sum; ROME's own drift term is the other direction, KL(p || p0):
// klDivergenceModelRef in engine/ops.ts).
//
// Each op runs a fused forward (one workgroup per row, max-subtracted) and returns the per-row loss, the
// per-row values its backward needs (`saved`), and `dlogits(g)`, which records the gradient for an
// upstream gradient g of the per-row losses (default: ones). `dlogits` reads the logits (and targets,
// weights or reference log-probabilities) again, so those and `saved` must still be alive when it is
// called; `saved` is a plain tensor in the result so that engine scopes keep it with the loss.
// Logits larger than one storage binding are processed in row chunks.
import { flatWorkgroups } from "../../kernels/descriptor.ts";
import {
  CE_SAVED,
  crossEntropyBackwardKernel,
  crossEntropyKernel,
  KL_SAVED,
  klDivergenceRefModelBackwardKernel,
  klDivergenceRefModelKernel,
  lossGradWorkgroups,
} from "../../kernels/loss.ts";
import { rowWorkgroupSize } from "../../kernels/reduce.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
import { assertF32, bindRows, rowChunks, rowsCols } from "../chunks.ts";

export interface CrossEntropyResult {
  /** Per-row weighted negative log-likelihood w · (logsumexp(l) − l[target]), [n]. */
  loss: Tensor;
  /** Saved for the backward: per row the max m and log Σ exp(l − m), [n, 2]. */
  saved: Tensor;
  /** g · w · (softmax(l) − onehot(target)), [n, V]; g [n] is the upstream gradient (default ones). */
  dlogits(g?: Tensor): Tensor;
}

export interface KlDivergenceRefModelResult {
  /** Per-row Σ_v p0 (log p0 − log p_new), [n]. */
  loss: Tensor;
  /** Saved for the backward: per row the max m, log Σ exp(l − m) and Σ p0, [n, 3]. */
  saved: Tensor;
  /** g · (softmax(l_new) · Σ p0 − p0), [n, V]; g [n] is the upstream gradient (default ones). */
  dlogits(g?: Tensor): Tensor;
}

function logitRows(what: string, logits: Tensor): { n: number; V: number } {
  assertF32(what, logits);
  if (logits.rank !== 2) throw new RangeError(`${what}: logits must be [n, V], got ${logits}`);
  const { rows, cols } = rowsCols(what, logits);
  return { n: rows, V: cols };
}

function assertRowVector(what: string, name: string, t: Tensor, n: number): void {
  if (t.rank !== 1 || t.size !== n) throw new RangeError(`${what}: ${name} must be [${n}], got ${t}`);
}

function checkUpstream(what: string, g: Tensor | undefined, n: number): void {
  if (g === undefined) return;
  assertF32(`${what} dlogits`, g);
  assertRowVector(`${what} dlogits`, "g", g, n);
}

/**
 * Row chunks of [n, V] logits whose bindings (the [n, V] tensors, [n] vectors and [n, k] saved rows)
 * each fit one storage binding; the dispatch dimension is folded into x/y by flatWorkgroups.
 */
function chunks(logits: Tensor, n: number, V: number, savedK: number, what: string): [number, number][] {
  return rowChunks(logits.engine, n, [V * 4, 4, savedK * 4], what);
}

/**
 * Cross-entropy of softmax(logits) [n, V] against u32 targets [n], per row, optionally weighted by f32
 * weights [n]. Weight 0 gives exactly 0 loss and gradient; a target >= V in a row of non-zero weight
 * gives NaN (it cannot be checked without a readback).
 */
export function launchCrossEntropy(logits: Tensor, targets: Tensor, weights?: Tensor): CrossEntropyResult {
  const what = "crossEntropy";
  const { n, V } = logitRows(what, logits);
  if (targets.dtype !== "u32") throw new TypeError(`${what}: targets must be u32, got ${targets}`);
  assertRowVector(what, "targets", targets, n);
  if (weights) {
    assertF32(what, weights);
    assertRowVector(what, "weights", weights, n);
  }
  const e = logits.engine;
  const loss = e.empty([n]), saved = e.empty([n, CE_SAVED]);
  const weighted = weights !== undefined;
  const kernel = crossEntropyKernel(rowWorkgroupSize(V), weighted);
  for (const [r0, r1] of chunks(logits, n, V, CE_SAVED, what)) {
    const lr = bindRows(logits, r0, r1, V),
      vr = bindRows(loss, r0, r1, 1),
      sr = bindRows(saved, r0, r1, CE_SAVED);
    e.dispatch(
      kernel,
      { rows: r1 - r0, V, off: lr.elemOffset, vOff: vr.elemOffset, sOff: sr.elemOffset, nan: NaN },
      [
        lr,
        bindRows(targets, r0, r1, 1),
        ...(weights ? [bindRows(weights, r0, r1, 1)] : []),
        vr,
        sr,
      ],
      flatWorkgroups(r1 - r0, e.limits.maxWorkgroupsPerDim),
    );
  }
  const dlogits = (g?: Tensor): Tensor => crossEntropyBackward(logits, targets, weights, saved, g);
  return { loss, saved, dlogits };
}

/**
 * KL(p0 || p_new) per row, p_new = softmax(logitsNew) [n, V] and p0 given as log-probabilities [n, V]
 * (a fixed target: no gradient flows to it). As PyTorch's
 * `F.kl_div(log_softmax(logitsNew), logProbsRef, log_target=True, reduction="none").sum(-1)`, except that
 * terms with p0 = 0 count 0 instead of NaN.
 */
export function launchKlDivergenceRefModel(
  logitsNew: Tensor,
  logProbsRef: Tensor,
): KlDivergenceRefModelResult {
  const what = "klDivergenceRefModel";
  const { n, V } = logitRows(what, logitsNew);
  assertF32(what, logProbsRef);
  if (logProbsRef.rank !== 2 || logProbsRef.shape[0] !== n || logProbsRef.shape[1] !== V) {
    throw new RangeError(
      `${what}: logProbsRef ${shapeStr(logProbsRef.shape)} must match logitsNew ${shapeStr(logitsNew.shape)}`,
    );
  }
  const e = logitsNew.engine;
  const loss = e.empty([n]), saved = e.empty([n, KL_SAVED]);
  const kernel = klDivergenceRefModelKernel(rowWorkgroupSize(V));
  for (const [r0, r1] of chunks(logitsNew, n, V, KL_SAVED, what)) {
    const lr = bindRows(logitsNew, r0, r1, V), vr = bindRows(loss, r0, r1, 1);
    const sr = bindRows(saved, r0, r1, KL_SAVED);
    e.dispatch(
      kernel,
      { rows: r1 - r0, V, off: lr.elemOffset, vOff: vr.elemOffset, sOff: sr.elemOffset },
      [lr, bindRows(logProbsRef, r0, r1, V), vr, sr],
      flatWorkgroups(r1 - r0, e.limits.maxWorkgroupsPerDim),
    );
  }
  const dlogits = (g?: Tensor): Tensor => klDivergenceRefModelBackward(logitsNew, logProbsRef, saved, g);
  return { loss, saved, dlogits };
}

/** The gradient of `crossEntropy` w.r.t. its logits, from the forward's inputs and `saved` rows. */
export function crossEntropyBackward(
  logits: Tensor,
  targets: Tensor,
  weights: Tensor | undefined,
  saved: Tensor,
  g?: Tensor,
): Tensor {
  const what = "crossEntropy";
  const { n, V } = logitRows(what, logits);
  const e = logits.engine;
  const weighted = weights !== undefined;
  checkUpstream(what, g, n);
  const out = e.empty([n, V]);
  const back = crossEntropyBackwardKernel(weighted, g !== undefined);
  for (const [r0, r1] of chunks(logits, n, V, CE_SAVED, what)) {
    const lr = bindRows(logits, r0, r1, V), tr = bindRows(targets, r0, r1, 1);
    const sr = bindRows(saved, r0, r1, CE_SAVED);
    e.dispatch(
      back,
      { n: (r1 - r0) * V, V, off: lr.elemOffset, vOff: tr.elemOffset, sOff: sr.elemOffset, nan: NaN },
      [
        lr,
        tr,
        ...(weights ? [bindRows(weights, r0, r1, 1)] : []),
        ...(g ? [bindRows(g, r0, r1, 1)] : []),
        sr,
        bindRows(out, r0, r1, V),
      ],
      lossGradWorkgroups((r1 - r0) * V, e.limits.maxWorkgroupsPerDim),
    );
  }
  return out;
}

/** The gradient of `launchKlDivergenceRefModel` w.r.t. the new logits, from the forward's inputs and `saved` rows. */
export function klDivergenceRefModelBackward(
  logitsNew: Tensor,
  logProbsRef: Tensor,
  saved: Tensor,
  g?: Tensor,
): Tensor {
  const what = "klDivergenceRefModel";
  const { n, V } = logitRows(what, logitsNew);
  const e = logitsNew.engine;
  checkUpstream(what, g, n);
  const out = e.empty([n, V]);
  const back = klDivergenceRefModelBackwardKernel(g !== undefined);
  for (const [r0, r1] of chunks(logitsNew, n, V, KL_SAVED, what)) {
    const lr = bindRows(logitsNew, r0, r1, V), sr = bindRows(saved, r0, r1, KL_SAVED);
    const gr = g ? bindRows(g, r0, r1, 1) : undefined;
    e.dispatch(
      back,
      { n: (r1 - r0) * V, V, off: lr.elemOffset, vOff: gr?.elemOffset ?? 0, sOff: sr.elemOffset },
      [lr, bindRows(logProbsRef, r0, r1, V), ...(gr ? [gr] : []), sr, bindRows(out, r0, r1, V)],
      lossGradWorkgroups((r1 - r0) * V, e.limits.maxWorkgroupsPerDim),
    );
  }
  return out;
}
