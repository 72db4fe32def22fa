// Matmul op: shape checks, kernel choice (tile, vec4 operands), and the split of one product into
// several dispatches when an operand is larger than one storage binding (GPT-2's token embedding is
// 147 MiB, lavapipe binds at most 128 MiB): every chunk binds an aligned sub-range of each tensor
// (Tensor.range) and addresses its elements through the element offsets and leading strides.
import {
  MATMUL_LANES,
  type MatmulConfig,
  matmulKernel,
  matmulKey,
  type MatmulUniforms,
  matmulWorkgroups,
} from "../../kernels/matmul.ts";
import type { KernelSpec } from "../../kernels/descriptor.ts";
import type { Engine } from "../engine.ts";
import { type BoundRange, shapeStr, type Tensor } from "../tensor.ts";

export interface MatmulOptions {
  /** Use A transposed: a is [K, M] (or [Bt, K, M]). */
  transA?: boolean;
  /** Use B transposed: b is [N, K] (or [Bt, N, K]), e.g. a weight stored as [out, in]. */
  transB?: boolean;
  /** Row vector of length N added to every row of the product. */
  bias?: Tensor;
  /** Write the result into this tensor (of the result's shape) instead of a new one. */
  out?: Tensor;
  /** out += result (needs `out`). */
  accumulate?: boolean;
  /** Scale of the product (not of the bias or the accumulated value): alpha * op(A)·op(B). */
  alpha?: number;
}

/** One dense (batched) product C (+)= alpha * op(A)·op(B) + bias, sizes and strides in elements. */
export interface GemmProblem {
  M: number;
  N: number;
  K: number;
  batches: number;
  transA: boolean;
  transB: boolean;
  lda: number;
  ldb: number;
  ldc: number;
  strideA: number;
  strideB: number;
  strideC: number;
  /** C += product (otherwise C is overwritten). */
  accumulate: boolean;
}

/** One dispatch of a plan: a block of batches x rows x columns x k-range of the problem. */
export interface GemmChunk {
  config: MatmulConfig;
  b0: number;
  bb: number;
  m0: number;
  mb: number;
  n0: number;
  nb: number;
  k0: number;
  kb: number;
  /** First k-chunk: adds the bias; later k-chunks accumulate onto it. */
  first: boolean;
}

const GENERIC_TILE = { tm: 8, tn: 8 }; // the scalar k1 kernel (unaligned operands, K % 4 tail)
/** Register tiles of the blocked kernel: rows x columns per lane (a workgroup covers 8·tn columns). */
const BLOCKED_TILES = [[8, 16], [16, 16], [32, 16], [32, 32]] as const;

const kernels = new Map<string, KernelSpec>(); // generated WGSL by pipeline key
function kernel(c: MatmulConfig): KernelSpec {
  const key = matmulKey(c);
  let k = kernels.get(key);
  if (!k) kernels.set(key, k = matmulKernel(c));
  return k;
}

/**
 * Register tile of the blocked kernel for an M x N output. Per 4 k-steps a workgroup costs about
 * (tm + tn) vec4 loads per lane (~320 instructions each across the 8 lanes) plus 4·tm·tn FMAs (~2.5
 * instructions each); the tile with the least total over the padded grid wins, so taller and wider
 * tiles win until the rows and columns they pad past M and N cost more than the loads they save.
 * Measured (GFLOP/s from CPU time, 1024³ and GPT-2's T = 128 shapes): 32x16 24-25, 32x32 27-28; at
 * T = 16, 16x16 26 against 8x16 20, 16x24 23, 16x32 22, 32x16 13. Without vec4 stores C goes through
 * a workgroup-memory stage of tm·tn·8 vec4s, which must fit `workgroupBytes`.
 */
export function pickTile(
  M: number,
  N: number,
  vecC: boolean,
  workgroupBytes = 16384,
): { tm: number; tn: number } {
  let best = { tm: 8, tn: 16 }, bestCost = Infinity;
  for (const [tm, tn] of BLOCKED_TILES) {
    if (!vecC && tm * tn * MATMUL_LANES * 4 > workgroupBytes) continue; // the stage, in bytes
    const cost = Math.ceil(M / tm) * Math.ceil(N / (MATMUL_LANES * tn)) * ((tm + tn) * 320 + 10 * tm * tn);
    if (cost < bestCost) [best, bestCost] = [{ tm, tn }, cost];
  }
  return best;
}

/** Elements spanned by a block of an operand (first to last element + 1). */
function spanA(p: GemmProblem, bb: number, mb: number, kb: number): number {
  return (bb - 1) * p.strideA + (p.transA ? (kb - 1) * p.lda + mb : (mb - 1) * p.lda + kb);
}
function spanB(p: GemmProblem, bb: number, nb: number, kb: number): number {
  return (bb - 1) * p.strideB + (p.transB ? (nb - 1) * p.ldb + kb : (kb - 1) * p.ldb + nb);
}
function spanC(p: GemmProblem, bb: number, mb: number, nb: number): number {
  return (bb - 1) * p.strideC + (mb - 1) * p.ldc + nb;
}

/** Largest x in [1, max] with f(x) <= cap (f increasing), or 0 if even f(1) > cap. */
function largest(max: number, cap: number, f: (x: number) => number): number {
  if (f(1) > cap) return 0;
  let lo = 1, hi = max;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (f(mid) <= cap) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Rounds a chunk length down to a multiple of 4 when it must keep the next chunk 4-aligned. */
function down4(x: number, full: number, keep: boolean): number {
  return keep && x < full && x >= 4 ? x - (x % 4) : x;
}

/**
 * Splits a problem into dispatches whose bindings each fit `maxElems` elements, and picks the kernels.
 * A chunk keeps the vec4 path only if its offsets stay 4-aligned; K % 4 leftovers go to the scalar kernel.
 */
export function planGemm(
  p: GemmProblem,
  maxElems: number,
  limits: { maxWorkgroups?: number; workgroupBytes?: number } = {},
): GemmChunk[] {
  const maxWorkgroups = limits.maxWorkgroups ?? 65535;
  const { M, N, K, batches } = p;
  if (M === 0 || N === 0 || batches === 0) return [];
  // vec4 eligibility of the whole problem (offsets of whole tensors are 0)
  let vecA = p.lda % 4 === 0 && p.strideA % 4 === 0 && (!p.transA || M % 4 === 0);
  let vecB = p.ldb % 4 === 0 && p.strideB % 4 === 0 && (p.transB || N % 4 === 0);
  let vecC = p.ldc % 4 === 0 && p.strideC % 4 === 0 && N % 4 === 0;
  const kMax = Math.max(K, 1);

  const fits = (bb: number, mb: number, nb: number, kb: number) =>
    spanA(p, bb, mb, kb) <= maxElems && spanB(p, bb, nb, kb) <= maxElems && spanC(p, bb, mb, nb) <= maxElems;

  // batches per dispatch; below one batch, split k, then rows, then columns
  let bb = Math.min(batches, maxWorkgroups);
  let kb = kMax, mb = M, nb = N;
  if (!fits(bb, mb, nb, kb)) {
    bb = largest(bb, maxElems, (x) =>
      Math.max(spanA(p, x, M, kMax), spanB(p, x, N, kMax), spanC(p, x, M, N))) || 1;
  }
  if (!fits(bb, mb, nb, kb)) {
    kb = largest(kMax, maxElems, (x) => Math.max(spanA(p, bb, 1, x), spanB(p, bb, 1, x)));
    if (kb === 0 || spanC(p, bb, 1, 1) > maxElems) {
      throw new RangeError(
        `matmul: cannot split [${batches}x${M}x${K}]·[${K}x${N}] so that every binding fits ` +
          `${maxElems * 4} bytes (the batch strides alone are too large)`,
      );
    }
    // keep later k-chunks 4-aligned where an operand is read as vec4 along k
    const alongK = (vecA && !p.transA) || (vecB && p.transB);
    kb = down4(kb, kMax, alongK);
    if (kb < kMax && kb < 4) {
      if (!p.transA) vecA = false;
      if (p.transB) vecB = false;
    }
    mb = largest(M, maxElems, (x) => Math.max(spanA(p, bb, x, kb), spanC(p, bb, x, 1)));
    mb = down4(mb, M, vecA && p.transA);
    if (mb < M && mb < 4 && vecA && p.transA) vecA = false;
    nb = largest(N, maxElems, (x) => Math.max(spanB(p, bb, x, kb), spanC(p, bb, mb, x)));
    nb = down4(nb, N, (vecB && !p.transB) || vecC);
    if (nb < N && nb < 4) {
      vecC = false;
      if (!p.transB) vecB = false;
    }
  }
  // the grid's x and y dimensions are limited too (GENERIC_TILE is the smaller tile)
  mb = Math.min(mb, maxWorkgroups * GENERIC_TILE.tm);
  nb = Math.min(nb, maxWorkgroups * MATMUL_LANES * GENERIC_TILE.tn);
  const { tm, tn } = pickTile(mb, nb, vecC, limits.workgroupBytes);

  const { transA, transB } = p;
  // a k-chunk after the first accumulates onto the partial sum the earlier ones wrote
  const blocked = (acc: boolean): MatmulConfig => ({
    transA,
    transB,
    vecA,
    vecB,
    vecC,
    acc,
    tm,
    tn,
    kstep: 4,
  });
  const generic = (acc: boolean): MatmulConfig => ({
    transA,
    transB,
    vecA: false,
    vecB: false,
    vecC,
    acc,
    ...GENERIC_TILE,
    kstep: 1,
  });
  const useBlocked = vecA || vecB;
  const chunks: GemmChunk[] = [];
  for (let b0 = 0; b0 < batches; b0 += bb) {
    for (let m0 = 0; m0 < M; m0 += mb) {
      for (let n0 = 0; n0 < N; n0 += nb) {
        const base = {
          b0,
          bb: Math.min(bb, batches - b0),
          m0,
          mb: Math.min(mb, M - m0),
          n0,
          nb: Math.min(nb, N - n0),
        };
        if (K === 0) {
          chunks.push({ ...base, config: generic(p.accumulate), k0: 0, kb: 0, first: true });
          continue;
        }
        for (let k0 = 0; k0 < K; k0 += kb) {
          const kc = Math.min(kb, K - k0);
          const main = useBlocked ? kc - (kc % 4) : 0;
          if (main > 0) {
            chunks.push({ ...base, config: blocked(k0 > 0 || p.accumulate), k0, kb: main, first: k0 === 0 });
          }
          if (main < kc) {
            const k1 = k0 + main;
            chunks.push({
              ...base,
              config: generic(k1 > 0 || p.accumulate),
              k0: k1,
              kb: kc - main,
              first: k1 === 0,
            });
          }
        }
      }
    }
  }
  return chunks;
}

function assertF32(what: string, t: Tensor): void {
  if (t.dtype !== "f32") {
    throw new TypeError(`matmul: ${what} must be f32, got ${t.dtype} ${shapeStr(t.shape)}`);
  }
}

/**
 * alpha · op(a) · op(b) (+ bias) (+ out when accumulating), op = identity or transpose.
 * 2-D: [M, K]·[K, N] -> [M, N]. Batched: [Bt, M, K]·[Bt, K, N] -> [Bt, M, N]; a 2-D operand is shared by
 * every batch ([Bt, M, K]·[K, N] applies one weight matrix to all batches). Transposed operands are read in
 * place (a is [K, M] with transA, b is [N, K] with transB); nothing is materialised.
 */
export function launchMatmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false, transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  assertF32("a", a);
  assertF32("b", b);
  const desc = () =>
    `a ${shapeStr(a.shape)}${transA ? " (transA)" : ""} · b ${shapeStr(b.shape)}${transB ? " (transB)" : ""}`;
  if (a.rank < 2 || a.rank > 3 || b.rank < 2 || b.rank > 3) {
    throw new RangeError(`matmul: operands must be 2-D or 3-D, got ${desc()}`);
  }
  const [ra, ca] = a.shape.slice(-2), [rb, cb] = b.shape.slice(-2);
  const M = transA ? ca : ra, Ka = transA ? ra : ca;
  const Kb = transB ? cb : rb, N = transB ? rb : cb;
  if (Ka !== Kb) throw new RangeError(`matmul: inner dimensions differ (${Ka} vs ${Kb}): ${desc()}`);
  const K = Ka;
  const Ba = a.rank === 3 ? a.shape[0] : 0, Bb = b.rank === 3 ? b.shape[0] : 0;
  if (Ba && Bb && Ba !== Bb) throw new RangeError(`matmul: batch sizes differ (${Ba} vs ${Bb}): ${desc()}`);
  const batched = Ba > 0 || Bb > 0;
  const batches = Math.max(Ba, Bb, 1);
  const outShape = batched ? [batches, M, N] : [M, N];

  if (!Number.isFinite(alpha)) throw new RangeError(`matmul: alpha must be finite, got ${alpha}`);
  if (opts.bias) {
    assertF32("bias", opts.bias);
    if (opts.bias.size !== N || opts.bias.rank !== 1) {
      throw new RangeError(`matmul: bias ${shapeStr(opts.bias.shape)} must be [${N}] for ${desc()}`);
    }
  }
  const out = opts.out;
  if (opts.accumulate && !out) throw new Error(`matmul: accumulate needs an 'out' tensor (${desc()})`);
  if (out) {
    assertF32("out", out);
    if (out.shape.length !== outShape.length || out.shape.some((d, i) => d !== outShape[i])) {
      throw new RangeError(`matmul: out ${shapeStr(out.shape)} must be ${shapeStr(outShape)} for ${desc()}`);
    }
    for (const [name, t] of [["a", a], ["b", b], ["bias", opts.bias]] as const) {
      if (t && t.buffer === out.buffer) throw new Error(`matmul: out must not alias ${name} (${desc()})`);
    }
  }
  const engine = a.engine;
  const c = out ?? engine.empty(outShape);

  // [Bt, M, K]·[K, N] with a not transposed is one [Bt·M, K]·[K, N] product: taller tiles, one dispatch
  const flatten = Ba > 0 && Bb === 0 && !transA;
  const p: GemmProblem = {
    M: flatten ? Ba * M : M,
    N,
    K,
    batches: flatten ? 1 : batches,
    transA,
    transB,
    lda: ca,
    ldb: cb,
    ldc: N,
    strideA: Ba && !flatten ? M * K : 0,
    strideB: Bb ? K * N : 0,
    strideC: flatten ? 0 : M * N,
    accumulate: opts.accumulate ?? false,
  };
  runGemm(engine, p, { t: a, off: 0 }, { t: b, off: 0 }, { t: c, off: 0 }, opts.bias, alpha);
  return c;
}

/** An operand of `runGemm`: a tensor and the element where batch 0 of its matrix starts. */
export interface GemmOperand {
  t: Tensor;
  off: number;
}

/**
 * Records the dispatches of a planned problem: C[z] = alpha · op(A[z]) · op(B[z]) (+ bias) for z <
 * batches, the matrices at element offsets of their tensors (0 for the matmul op; the attention matmul
 * path passes bases the op's API does not take). An operand read as vec4 needs a 4-aligned base;
 * otherwise every dispatch falls back to the scalar kernel.
 */
export function runGemm(
  engine: Engine,
  p: GemmProblem,
  a: GemmOperand,
  b: GemmOperand,
  c: GemmOperand,
  bias: Tensor | undefined,
  alpha: number,
): void {
  // range() may start up to one alignment unit before the first element and round the end up to 4 bytes
  const maxElems = Math.floor((engine.limits.maxBindingBytes - engine.limits.storageOffsetAlignment) / 4);
  const chunks = planGemm(p, maxElems, {
    maxWorkgroups: engine.limits.maxWorkgroupsPerDim,
    workgroupBytes: engine.limits.workgroupStorage,
  });
  const aligned = a.off % 4 === 0 && b.off % 4 === 0 && c.off % 4 === 0;
  const bind = (o: GemmOperand, first: number, span: number): BoundRange =>
    o.t.range(o.off + first, o.off + first + Math.max(span, 1));
  for (const ch of chunks) {
    const config: MatmulConfig = aligned
      ? ch.config
      : { ...ch.config, vecA: false, vecB: false, vecC: false, ...GENERIC_TILE, kstep: 1 };
    const firstA = ch.b0 * p.strideA + (p.transA ? ch.k0 * p.lda + ch.m0 : ch.m0 * p.lda + ch.k0);
    const firstB = ch.b0 * p.strideB + (p.transB ? ch.n0 * p.ldb + ch.k0 : ch.k0 * p.ldb + ch.n0);
    const firstC = ch.b0 * p.strideC + ch.m0 * p.ldc + ch.n0;
    const rA = bind(a, firstA, spanA(p, ch.bb, ch.mb, ch.kb));
    const rB = bind(b, firstB, spanB(p, ch.bb, ch.nb, ch.kb));
    const rC = bind(c, firstC, spanC(p, ch.bb, ch.mb, ch.nb));
    const useBias = bias !== undefined && ch.first;
    // without a bias the binding still needs a buffer: A's range is read-only, and the kernel selects 0
    const rBias = useBias ? bind({ t: bias, off: 0 }, ch.n0, ch.nb) : rA;
    const u: MatmulUniforms = {
      M: ch.mb,
      N: ch.nb,
      K: ch.kb,
      lda: p.lda,
      ldb: p.ldb,
      ldc: p.ldc,
      offA: rA.elemOffset,
      offB: rB.elemOffset,
      offC: rC.elemOffset,
      offBias: useBias ? rBias.elemOffset : 0,
      strideA: p.strideA,
      strideB: p.strideB,
      strideC: p.strideC,
      hasBias: useBias ? 1 : 0,
      alpha,
    };
    engine.dispatch(
      kernel(config),
      u,
      [rA, rB, rBias, rC],
      matmulWorkgroups(config, ch.mb, ch.nb, ch.bb),
    );
  }
}
