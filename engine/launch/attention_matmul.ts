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
import { type MatmulConfig, matmulKernel, matmulKey, matmulWorkgroups } from "../../kernels/matmul.ts";
import type { KernelSpec } from "../../kernels/descriptor.ts";
import { type GemmProblem, planGemm } from "./matmul.ts";
import type { Engine } from "../engine.ts";
import type { BoundRange, Tensor } from "../tensor.ts";
import { bindRows } from "../chunks.ts";
import type { Geometry } from "./attention.ts";

/** Puts the head-dim outputs of the backward (and of O) transposed, [hd, T] per pair: N = T, not hd. */
const TRANSPOSED_HEADS = true;

const gemmKernels = new Map<string, KernelSpec>();
function gemmKernel(c: MatmulConfig): KernelSpec {
  const key = matmulKey(c);
  let k = gemmKernels.get(key);
  if (!k) gemmKernels.set(key, k = matmulKernel(c));
  return k;
}

/** An operand of `gemm`: a tensor and the element where batch 0 of the matrix starts. */
interface Operand {
  t: Tensor;
  off: number;
}

/**
 * C[z] = alpha · op(A[z]) · op(B[z]) for z < batches, the matrices at element offsets of their tensors
 * (the matmul op's planner and kernels, with base offsets the op's API does not take). An operand read
 * as vec4 needs a 4-aligned base; otherwise every dispatch falls back to the scalar kernel.
 */
function gemm(
  e: Engine,
  p: Omit<GemmProblem, "accumulate">,
  a: Operand,
  b: Operand,
  c: Operand,
  alpha: number,
): void {
  const prob: GemmProblem = { ...p, accumulate: false };
  const maxElems = Math.floor((e.limits.maxBindingBytes - e.limits.storageOffsetAlignment) / 4);
  const chunks = planGemm(prob, maxElems, {
    maxWorkgroups: e.limits.maxWorkgroupsPerDim,
    workgroupBytes: e.limits.workgroupStorage,
  });
  const aligned = a.off % 4 === 0 && b.off % 4 === 0 && c.off % 4 === 0;
  const spanA = (bb: number, mb: number, kb: number) =>
    (bb - 1) * p.strideA + (p.transA ? (kb - 1) * p.lda + mb : (mb - 1) * p.lda + kb);
  const spanB = (bb: number, nb: number, kb: number) =>
    (bb - 1) * p.strideB + (p.transB ? (nb - 1) * p.ldb + kb : (kb - 1) * p.ldb + nb);
  const spanC = (bb: number, mb: number, nb: number) => (bb - 1) * p.strideC + (mb - 1) * p.ldc + nb;
  const bind = (o: Operand, first: number, span: number): BoundRange =>
    o.t.range(o.off + first, o.off + first + Math.max(span, 1));
  for (const ch of chunks) {
    const config: MatmulConfig = aligned ? ch.config : {
      ...ch.config,
      vecA: false,
      vecB: false,
      vecC: false,
      tm: 8,
      tn: 8,
      kstep: 1,
    };
    const firstA = ch.b0 * p.strideA + (p.transA ? ch.k0 * p.lda + ch.m0 : ch.m0 * p.lda + ch.k0);
    const firstB = ch.b0 * p.strideB + (p.transB ? ch.n0 * p.ldb + ch.k0 : ch.k0 * p.ldb + ch.n0);
    const firstC = ch.b0 * p.strideC + ch.m0 * p.ldc + ch.n0;
    const rA = bind(a, firstA, spanA(ch.bb, ch.mb, ch.kb));
    const rB = bind(b, firstB, spanB(ch.bb, ch.nb, ch.kb));
    const rC = bind(c, firstC, spanC(ch.bb, ch.mb, ch.nb));
    e.dispatch(
      gemmKernel(config),
      {
        M: ch.mb,
        N: ch.nb,
        K: ch.kb,
        lda: p.lda,
        ldb: p.ldb,
        ldc: p.ldc,
        offA: rA.elemOffset,
        offB: rB.elemOffset,
        offC: rC.elemOffset,
        offBias: 0,
        strideA: p.strideA,
        strideB: p.strideB,
        strideC: p.strideC,
        hasBias: 0,
        alpha,
      },
      [rA, rB, rA, rC],
      matmulWorkgroups(config, ch.mb, ch.nb, ch.bb),
    );
  }
}

/** Batched [T, T]·[T, hd]-type product over `pairs` pairs; `t` flags and leading dims pick the layout. */
function pairGemm(
  e: Engine,
  dims: { M: number; N: number; K: number; pairs: number },
  a: Operand & { ld: number; stride: number; trans?: boolean },
  b: Operand & { ld: number; stride: number; trans?: boolean },
  c: Operand & { ld: number; stride: number },
  alpha = 1,
): void {
  gemm(
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
    },
    a,
    b,
    c,
    alpha,
  );
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
  const { T, H, hd } = g, n = p1 - p0;
  const b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
  const stride = rows.shape[2];
  const head = e.empty([secs * n * T * hd]);
  const rb = bindRows(rows, b0 * T, b1 * T, stride), hb = bindRows(head, 0, secs * n * T * hd, 1);
  const total = secs * n * T;
  e.dispatch(
    splitHeadsKernel,
    {
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
    },
    [lb, rb, hb],
    flatAttnWorkgroups(total),
  );
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
  const { T, H, hd } = g, n = p1 - p0;
  const b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
  const stride = rows.shape[2];
  const total = secs * n * T;
  const rb = bindRows(rows, b0 * T, b1 * T, stride), hb = bindRows(head, 0, total * hd, 1);
  e.dispatch(
    mergeHeadsKernel(TRANSPOSED_HEADS),
    {
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
    },
    [lb, hb, rb],
    flatAttnWorkgroups(total),
  );
}

/** The forward of one chunk of pairs [p0, p1) on the matmul path; scores go to s (probs or scratch). */
export function matmulPathForwardChunk(
  e: Engine,
  g: Geometry,
  lb: BoundRange,
  qkv: Tensor,
  out: Tensor,
  s: Operand,
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
