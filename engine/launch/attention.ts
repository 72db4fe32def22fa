// Causal multi-head self-attention over the fused c_attn output of GPT-2 (HF GPT2Attention layout), for
// right-padded batches, and its backward. See kernels/attention.ts for the kernels and the masking rules.
// Default path (forward for T > 32, backward always): per chunk of (batch, head) pairs, q/k/v (and dO)
// are copied head-major with zeros at padded positions, the products run as batched matmuls (the matmul
// op's planner and kernels, with element offsets) over full T×T scores, a barrier-free row kernel applies
// the causal/length mask by index, and a merge kernel writes the heads back. Measured on lavapipe
// (2 shared cores), B=32 T=128 C=128 H=4: forward with probs ~250 → ~70-100 ms, backward ~290-550 →
// ~90-110 ms; B=1 T=128 C=768 H=12: 30-45 → 9-20 ms, 50-87 → 20-32 ms (bench/attention.ts --compare).
import {
  type AttnTile,
  avKernel,
  FUSED_MAX_HD,
  FUSED_MAX_T,
  fusedKernel,
  fusedStorageBytes,
  qkKernel,
  rowWorkgroups,
  softmaxBackwardKernel,
  softmaxKernel,
  tileWorkgroups,
} from "../../kernels/attention.ts";
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
import { type BoundRange, shapeStr, type Tensor } from "../tensor.ts";
import { bindAll, bindRows } from "../chunks.ts";

/** Scratch score chunks (probs not kept, dS of the backward) are capped here to bound peak memory. */
const SCRATCH_BYTES = 256 * 1024 * 1024;

export interface AttentionOptions {
  /** Also return the probabilities (the backward needs them). */
  saveProbs?: boolean;
  /**
   * Forces the tiled path with this output tile (a tuning/test knob; the path before the matmul one).
   * Default: sequences up to 32 tokens (hd ≤ 64) take the fused one-workgroup-per-pair kernel, longer
   * ones the matmul path (head-major copies, batched matmuls, barrier-free row softmax).
   */
  tile?: AttnTile;
}

export interface AttentionResult {
  /** [B, T, C], heads merged back; zero rows at padded positions. */
  out: Tensor;
  /** [B, nHead, T, T] softmax probabilities, zero where masked (and for padded queries); when saveProbs. */
  probs?: Tensor;
}

interface Geometry {
  B: number;
  T: number;
  C: number;
  H: number;
  hd: number;
}

function geometry(what: string, qkv: Tensor, lengths: Tensor, nHead: number): Geometry {
  if (qkv.dtype !== "f32" || qkv.rank !== 3 || qkv.shape[2] % 3 !== 0) {
    throw new TypeError(`${what}: qkv must be f32 [B, T, 3C], got ${qkv}`);
  }
  const [B, T, C3] = qkv.shape;
  const C = C3 / 3;
  if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
    throw new RangeError(`${what}: ${nHead} heads do not split C = ${C}`);
  }
  if (lengths.dtype !== "u32" || lengths.rank !== 1 || lengths.size !== B) {
    throw new TypeError(`${what}: lengths must be u32 [${B}], got ${lengths}`);
  }
  return { B, T, C, H: nHead, hd: C / nHead };
}

/**
 * Splits the (batch, head) pairs into chunks [p0, p1) whose bound ranges all fit one storage binding:
 * `rowBytes` are the row widths of [B·T, *] tensors (bound over the batch rows the chunk touches) and
 * `pairBytes` the per-pair bytes of [B·H, T, T] tensors; `maxPairs` caps the chunk (dispatch z, scratch).
 */
function pairChunks(
  e: Engine,
  g: Geometry,
  rowBytes: readonly number[],
  pairBytes: number,
  maxPairs: number,
  what: string,
): [number, number][] {
  const max = e.limits.maxBindingBytes, align = e.limits.storageOffsetAlignment;
  const span = (first: number, end: number) => end - Math.floor(first / align) * align;
  const fits = (p0: number, p1: number) => {
    const b0 = Math.floor(p0 / g.H), b1 = Math.floor((p1 - 1) / g.H) + 1;
    return span(p0 * pairBytes, p1 * pairBytes) <= max &&
      rowBytes.every((rb) => span(b0 * g.T * rb, b1 * g.T * rb) <= max);
  };
  const total = g.B * g.H, chunks: [number, number][] = [];
  for (let p0 = 0; p0 < total;) {
    if (!fits(p0, p0 + 1)) {
      throw new RangeError(
        `${what}: one (batch, head) pair needs more than the device's ${max}-byte storage binding ` +
          `(T = ${g.T}, row widths ${rowBytes} bytes)`,
      );
    }
    let p1 = p0 + 1;
    while (p1 < total && p1 - p0 < maxPairs && fits(p0, p1 + 1)) p1++;
    chunks.push([p0, p1]);
    p0 = p1;
  }
  return chunks;
}

function maxPairs(e: Engine, g: Geometry, scratch: boolean): number {
  const z = e.limits.maxWorkgroupsPerDim;
  return scratch ? Math.max(1, Math.min(z, Math.floor(SCRATCH_BYTES / (g.T * g.T * 4)))) : z;
}

// ---- The matmul path: head-major copies of q, k, v (zeros at padded positions), the products as
// batched matmuls over the chunk's pairs, masked row kernels on the full score rows, and a merge back.

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
function forwardChunk(
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
function backwardChunk(
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

/**
 * Causal multi-head attention. qkv [B, T, 3C] holds q, k, v at columns [0, C), [C, 2C), [2C, 3C) of each
 * row, head h at columns h·hd..(h+1)·hd of each (hd = C / nHead). lengths: u32 [B] valid tokens per row
 * (right padding; values above T count as T). Query i attends keys j ≤ i, j < len with scale 1/sqrt(hd),
 * softmax in f32 with the row max subtracted. Padded positions produce zero rows and never influence
 * valid ones, whatever they hold.
 */
export function launchAttention(
  qkv: Tensor,
  lengths: Tensor,
  nHead: number,
  opts: AttentionOptions = {},
): AttentionResult {
  const what = "attention";
  const g = geometry(what, qkv, lengths, nHead);
  const { B, T, C, H, hd } = g;
  const e = qkv.engine;
  const out = e.empty([B, T, C]);
  const probs = opts.saveProbs ? e.empty([B, H, T, T]) : undefined;
  if (B * T * C === 0) return probs ? { out, probs } : { out };
  const lb = bindAll(lengths, what);
  const scale = 1 / Math.sqrt(hd);
  const fusedT = T <= 16 ? 16 : T <= FUSED_MAX_T ? 32 : undefined;
  if (
    opts.tile === undefined && fusedT && hd <= FUSED_MAX_HD &&
    fusedStorageBytes(fusedT) <= e.limits.workgroupStorage
  ) {
    // short sequences: one workgroup per pair does it all
    const kernel = fusedKernel(fusedT, probs !== undefined);
    const chunks = pairChunks(e, g, [3 * C * 4, C * 4], probs ? T * T * 4 : 0, maxPairs(e, g, false), what);
    for (const [p0, p1] of chunks) {
      const n = p1 - p0, b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
      const qb = bindRows(qkv, b0 * T, b1 * T, 3 * C), ob = bindRows(out, b0 * T, b1 * T, C);
      const pb = probs ? [bindRows(probs, p0 * T, p1 * T, T)] : [];
      e.dispatch(
        kernel,
        {
          T,
          H,
          hd,
          p0,
          b0,
          pairs: n,
          qOff: qb.elemOffset,
          oOff: ob.elemOffset,
          pOff: pb[0]?.elemOffset ?? 0,
          scale,
        },
        [lb, qb, ob, ...pb],
        rowWorkgroups(n),
      );
    }
    return probs ? { out, probs } : { out };
  }
  const chunks = pairChunks(e, g, [3 * C * 4, C * 4], T * T * 4, maxPairs(e, g, !probs), what);
  if (opts.tile === undefined) {
    // the matmul path
    for (const [p0, p1] of chunks) {
      const scratch = probs ? undefined : e.empty([(p1 - p0) * T * T]);
      forwardChunk(
        e,
        g,
        lb,
        qkv,
        out,
        probs ? { t: probs, off: p0 * T * T } : { t: scratch!, off: 0 },
        p0,
        p1,
      );
      scratch?.dispose();
    }
    return probs ? { out, probs } : { out };
  }
  const tile = opts.tile;
  for (const [p0, p1] of chunks) {
    const n = p1 - p0, b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
    const scratch = probs ? undefined : e.empty([n * T, T]);
    const sb = probs ? bindRows(probs, p0 * T, p1 * T, T) : bindRows(scratch!, 0, n * T, T);
    const qb = bindRows(qkv, b0 * T, b1 * T, 3 * C), ob = bindRows(out, b0 * T, b1 * T, C);
    const geo = { T, H, hd, p0, b0 };
    e.dispatch(
      qkKernel(tile),
      {
        ...geo,
        xStride: 3 * C,
        xCol: 0,
        xOff: qb.elemOffset,
        yStride: 3 * C,
        yCol: C,
        yOff: qb.elemOffset,
        sOff: sb.elemOffset,
        scale,
      },
      [lb, qb, qb, sb],
      tileWorkgroups(tile, T, T, n),
    );
    e.dispatch(softmaxKernel, { T, H, p0, rows: n * T, sOff: sb.elemOffset }, [lb, sb], rowWorkgroups(n * T));
    e.dispatch(
      avKernel(tile, false),
      {
        ...geo,
        aOff: sb.elemOffset,
        yStride: 3 * C,
        yCol: 2 * C,
        yOff: qb.elemOffset,
        oStride: C,
        oCol: 0,
        oOff: ob.elemOffset,
      },
      [lb, sb, qb, ob],
      tileWorkgroups(tile, hd, T, n),
    );
    // Released to the pool in stream order: a later dispatch that reuses the buffer runs after these.
    scratch?.dispose();
  }
  return probs ? { out, probs } : { out };
}

/**
 * Gradient of `attention` with respect to qkv: dqkv [B, T, 3C] (dq, dk, dv in the qkv column layout),
 * from the forward's probs [B, nHead, T, T] and dOut [B, T, C]. Rows of dOut at padded positions are
 * ignored (those outputs are constant zero); padded rows of dqkv are zero.
 */
export function attentionBackward(
  qkv: Tensor,
  probs: Tensor,
  dOut: Tensor,
  lengths: Tensor,
  nHead: number,
  /** Forces the tiled kernels with this tile (the matmul path is the default for every T). */
  opts: { tile?: AttnTile } = {},
): Tensor {
  const what = "attentionBackward";
  const g = geometry(what, qkv, lengths, nHead);
  const { B, T, C, H, hd } = g;
  if (probs.dtype !== "f32" || shapeStr(probs.shape) !== shapeStr([B, H, T, T])) {
    throw new RangeError(`${what}: probs must be f32 [${B}, ${H}, ${T}, ${T}], got ${probs}`);
  }
  if (dOut.dtype !== "f32" || shapeStr(dOut.shape) !== shapeStr([B, T, C])) {
    throw new RangeError(`${what}: dOut must be f32 [${B}, ${T}, ${C}], got ${dOut}`);
  }
  const e = qkv.engine;
  const dqkv = e.empty([B, T, 3 * C]);
  if (B * T * C === 0) return dqkv;
  const lb = bindAll(lengths, what);
  const scale = 1 / Math.sqrt(hd);
  const chunks = pairChunks(e, g, [3 * C * 4, 3 * C * 4, C * 4], T * T * 4, maxPairs(e, g, true), what);
  if (opts.tile === undefined) {
    for (const [p0, p1] of chunks) backwardChunk(e, g, lb, qkv, probs, dOut, dqkv, p0, p1);
    return dqkv;
  }
  const tile = opts.tile;
  for (const [p0, p1] of chunks) {
    const n = p1 - p0, b0 = Math.floor(p0 / H), b1 = Math.floor((p1 - 1) / H) + 1;
    const dS = e.empty([n * T, T]);
    const gb = bindRows(dS, 0, n * T, T), pb = bindRows(probs, p0 * T, p1 * T, T);
    const qb = bindRows(qkv, b0 * T, b1 * T, 3 * C), db = bindRows(dqkv, b0 * T, b1 * T, 3 * C);
    const ob = bindRows(dOut, b0 * T, b1 * T, C);
    const geo = { T, H, hd, p0, b0 };
    // dP = dO Vᵀ on the visible entries
    e.dispatch(
      qkKernel(tile),
      {
        ...geo,
        xStride: C,
        xCol: 0,
        xOff: ob.elemOffset,
        yStride: 3 * C,
        yCol: 2 * C,
        yOff: qb.elemOffset,
        sOff: gb.elemOffset,
        scale: 1,
      },
      [lb, ob, qb, gb],
      tileWorkgroups(tile, T, T, n),
    );
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP))
    e.dispatch(
      softmaxBackwardKernel,
      { T, H, p0, rows: n * T, pOff: pb.elemOffset, gOff: gb.elemOffset, scale },
      [lb, pb, gb],
      rowWorkgroups(n * T),
    );
    const av = (transA: boolean, a: typeof gb, y: typeof qb, yStride: number, yCol: number, oCol: number) =>
      e.dispatch(
        avKernel(tile, transA),
        {
          ...geo,
          aOff: a.elemOffset,
          yStride,
          yCol,
          yOff: y.elemOffset,
          oStride: 3 * C,
          oCol,
          oOff: db.elemOffset,
        },
        [lb, a, y, db],
        tileWorkgroups(tile, hd, T, n),
      );
    av(false, gb, qb, 3 * C, C, 0); // dQ = dS K
    av(true, gb, qb, 3 * C, 0, C); // dK = dSᵀ Q
    av(true, pb, ob, C, 0, 2 * C); // dV = Pᵀ dO
    dS.dispose();
  }
  return dqkv;
}
