// The matmul path of causal attention (engine/launch/attention.ts has the op, the fused and tiled paths
// and the pair chunking): head-major copies of q, k, v (zeros at padded positions), the products as
// batched matmuls over the chunk's pairs, masked row kernels on the full score rows, and a merge back.
import {
  flatAttnWorkgroups,
  mergeHeadsKernel,
  rowSoftmaxBackwardKernel,
  rowSoftmaxKernel,
  splitHeadsKernel,
} from "../../kernels/attention_heads.ts";
import { type GemmOperand, runGemm } from "./matmul.ts";
import type { Engine } from "../engine.ts";
import type { BoundRange, Tensor } from "../tensor.ts";
import { bindRows } from "../chunks.ts";
import type { Geometry } from "./attention.ts";

/** Puts the head-dim outputs of the backward (and of O) transposed, [hd, T] per pair: N = T, not hd. */
const TRANSPOSED_HEADS = true;

/** Batched [T, T]·[T, hd]-type product over `pairs` pairs; `t` flags and leading dims pick the layout. */
function pairGemm(
  e: Engine,
  dims: { M: number; N: number; K: number; pairs: number },
  a: GemmOperand & { ld: number; stride: number; trans?: boolean },
  b: GemmOperand & { ld: number; stride: number; trans?: boolean },
  c: GemmOperand & { ld: number; stride: number },
  alpha = 1,
): void {
  runGemm(
    e,
    {
      M: dims.M,
      N: dims.N,
      K: dims.K,
      batches: dims.pairs,
      transA: a.trans ?? false,
      transB: b.trans ?? false,
      lda: a.ld,
      ldb: b.ld,
      ldc: c.ld,
      strideA: a.stride,
      strideB: b.stride,
      strideC: c.stride,
      accumulate: false,
    },
    a,
    b,
    c,
    undefined,
    alpha,
  );
}

/**
 * The head copy kernels' bound ranges and uniforms for the chunk's pairs [p0, p1): `rows` bound over
 * the chunk's batch rows, `head` ([secs, n, T, hd] in either layout) whole.
 */
function headCopy(g: Geometry, rows: Tensor, head: Tensor, secs: number, p0: number, p1: number) {
  const { T, H, hd } = g, n = p1 - p0;
  const b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
  const stride = rows.shape[2];
  const total = secs * n * T;
  const rb = bindRows(rows, b0 * T, b1 * T, stride), hb = bindRows(head, 0, total * hd, 1);
  const uniforms = {
    T,
    H,
    hd,
    p0,
    b0,
    pairs: n,
    total,
    rowStride: stride,
    rowOff: rb.elemOffset,
    headOff: hb.elemOffset,
  };
  return { rb, hb, uniforms, workgroups: flatAttnWorkgroups(total) };
}

/** Head-major copy [secs, n, T, hd] of the chunk's pairs (zeros at padded positions) of a row tensor. */
function splitHeads(
  e: Engine,
  g: Geometry,
  lb: BoundRange,
  rows: Tensor,
  secs: number,
  p0: number,
  p1: number,
): Tensor {
  const head = e.empty([secs * (p1 - p0) * g.T * g.hd]);
  const h = headCopy(g, rows, head, secs, p0, p1);
  e.dispatch(splitHeadsKernel, h.uniforms, [lb, h.rb, h.hb], h.workgroups);
  return head;
}

/** Writes head-major [secs, n, T, hd] (or [secs, n, hd, T]) into the chunk's columns of a row tensor. */
function mergeHeads(
  e: Engine,
  g: Geometry,
  lb: BoundRange,
  head: Tensor,
  rows: Tensor,
  secs: number,
  p0: number,
  p1: number,
): void {
  const h = headCopy(g, rows, head, secs, p0, p1);
  e.dispatch(mergeHeadsKernel(TRANSPOSED_HEADS), h.uniforms, [lb, h.hb, h.rb], h.workgroups);
}

/** The forward of one chunk of pairs [p0, p1) on the matmul path; scores go to s (probs or scratch). */
export function matmulPathForwardChunk(
  e: Engine,
  g: Geometry,
  lb: BoundRange,
  qkv: Tensor,
  out: Tensor,
  s: GemmOperand,
  p0: number,
  p1: number,
): void {
  const { T, hd } = g, n = p1 - p0, TT = T * T, Th = T * hd, nTh = n * Th;
  const x = splitHeads(e, g, lb, qkv, 3, p0, p1); // q, k, v: [3, n, T, hd]
  const dims = { pairs: n };
  // S = scale · Q Kᵀ
  pairGemm(
    e,
    { ...dims, M: T, N: T, K: hd },
    { t: x, off: 0, ld: hd, stride: Th },
    { t: x, off: nTh, ld: hd, stride: Th, trans: true },
    { ...s, ld: T, stride: TT },
    1 / Math.sqrt(hd),
  );
  const sb = s.t.range(s.off, s.off + n * TT);
  e.dispatch(
    rowSoftmaxKernel,
    { T, H: g.H, p0, rows: n * T, sOff: sb.elemOffset },
    [lb, sb],
    flatAttnWorkgroups(n * T),
  );
  const o = e.empty([nTh]);
  if (TRANSPOSED_HEADS) {
    // Oᵀ = Vᵀ Pᵀ: [hd, T] per pair
    pairGemm(
      e,
      { ...dims, M: hd, N: T, K: T },
      { t: x, off: 2 * nTh, ld: hd, stride: Th, trans: true },
      { ...s, ld: T, stride: TT, trans: true },
      { t: o, off: 0, ld: T, stride: Th },
    );
  } else {
    pairGemm(
      e,
      { ...dims, M: T, N: hd, K: T },
      { ...s, ld: T, stride: TT },
      { t: x, off: 2 * nTh, ld: hd, stride: Th },
      { t: o, off: 0, ld: hd, stride: Th },
    );
  }
  mergeHeads(e, g, lb, o, out, 1, p0, p1);
  // Released to the pool in stream order: a later dispatch that reuses the buffer runs after these.
  x.dispose();
  o.dispose();
}

/** The backward of one chunk of pairs [p0, p1) on the matmul path. */
export function matmulPathBackwardChunk(
  e: Engine,
  g: Geometry,
  lb: BoundRange,
  qkv: Tensor,
  probs: Tensor,
  dOut: Tensor,
  dqkv: Tensor,
  p0: number,
  p1: number,
): void {
  const { T, hd } = g, n = p1 - p0, TT = T * T, Th = T * hd, nTh = n * Th;
  const x = splitHeads(e, g, lb, qkv, 3, p0, p1); // q, k, v
  const dO = splitHeads(e, g, lb, dOut, 1, p0, p1);
  const dS = e.empty([n * TT]);
  const dims = { pairs: n };
  const P = { t: probs, off: p0 * TT, ld: T, stride: TT };
  const S = { t: dS, off: 0, ld: T, stride: TT };
  const Q = { t: x, off: 0, ld: hd, stride: Th }, K = { ...Q, off: nTh }, V = { ...Q, off: 2 * nTh };
  const D = { t: dO, off: 0, ld: hd, stride: Th };
  // dP = dO Vᵀ
  pairGemm(e, { ...dims, M: T, N: T, K: hd }, D, { ...V, trans: true }, S);
  const pb = probs.range(p0 * TT, p1 * TT), gb = dS.range(0, n * TT);
  e.dispatch(
    rowSoftmaxBackwardKernel,
    { T, H: g.H, p0, rows: n * T, pOff: pb.elemOffset, gOff: gb.elemOffset, scale: 1 / Math.sqrt(hd) },
    [lb, pb, gb],
    flatAttnWorkgroups(n * T),
  );
  const gr = e.empty([3 * nTh]); // dq, dk, dv
  if (TRANSPOSED_HEADS) {
    const out = (k: number) => ({ t: gr, off: k * nTh, ld: T, stride: Th });
    const mt = { ...dims, M: hd, N: T, K: T };
    pairGemm(e, mt, { ...K, trans: true }, { ...S, trans: true }, out(0)); // dQᵀ = Kᵀ dSᵀ
    pairGemm(e, mt, { ...Q, trans: true }, S, out(1)); // dKᵀ = Qᵀ dS
    pairGemm(e, mt, { ...D, trans: true }, P, out(2)); // dVᵀ = dOᵀ P
  } else {
    const out = (k: number) => ({ t: gr, off: k * nTh, ld: hd, stride: Th });
    const mt = { ...dims, M: T, N: hd, K: T };
    pairGemm(e, mt, S, K, out(0)); // dQ = dS K
    pairGemm(e, mt, { ...S, trans: true }, Q, out(1)); // dK = dSᵀ Q
    pairGemm(e, mt, { ...P, trans: true }, D, out(2)); // dV = Pᵀ dO
  }
  mergeHeads(e, g, lb, gr, dqkv, 3, p0, p1);
  for (const t of [x, dO, dS, gr]) t.dispose();
}
