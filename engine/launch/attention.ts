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
import { matmulPathBackwardChunk, matmulPathForwardChunk } from "./attention_matmul.ts";
import type { Engine } from "../engine.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
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

export interface Geometry {
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
      matmulPathForwardChunk(
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
    for (const [p0, p1] of chunks) matmulPathBackwardChunk(e, g, lb, qkv, probs, dOut, dqkv, p0, p1);
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
