// Matmul kernel family: C[b] (+)= alpha * op(A[b]) · op(B[b]) + bias, op = identity or transpose,
// batched through workgroup z with per-operand batch strides (stride 0 broadcasts an operand).
// Plain ES module: no Deno API.
//
// Why the kernel looks the way it does (measured on Mesa 22.3 lavapipe, LLVM 15, 2 cores, AVX-512 VL):
// llvmpipe runs a workgroup as SIMD groups of 8 invocations ("lanes"), one 256-bit vector per value.
// Every storage or workgroup-memory access is compiled to a loop over the 8 lanes with an exec-mask
// test, a bounds test and a masked broadcast per component (~40 instructions per lane for a vec4, one
// dependent chain per component), whereas arithmetic and register spills are plain 8-wide vector
// instructions. So a matmul costs almost only the loads a lane issues: per 4 k-steps a lane with a
// TM x TN register tile issues TM + TN vec4 loads for 4·TM·TN FMAs, and the lever is a big per-lane
// register tile; spilling it to the stack is cheap by comparison. Shared memory does not help: its
// loads take the same per-lane loop, and the cooperative fill and barriers (coroutine switches) come
// on top. Experiments at 1024³ (GFLOP/s from process CPU time, i.e. what two idle cores give; wall
// clock on this shared machine was too noisy to rank variants):
//   shared-memory tiles 64x64..128x64, lane tiles 8x8/16x8, K-tile 16/32, 16..64 lanes:    4 - 9
//   no shared memory, all loads of a k-block first, then FMAs, lane tiles 4x4 .. 8x8:         6 - 14
//   same, lane tiles 16x8 / 20x8 / 24x8 (spilling):                                           15 - 19
//   B columns interleaved across lanes (lane l reads vec4 l, l+8, ...: 8 lanes touch 2 cache lines
//     instead of 8) and each A row loaded right before its 4·TN FMAs (its accumulators stay in
//     registers for 4 k-steps): lane tile 16x16 -> 24, 32x16 -> 26, 32x32 -> 29 (5 s to compile)
//   software-pipelining the next k-block's loads between FMA rows: slower (19 vs 24)
//   workgroups of 8x1, 8x2, 8x4, 8x8 lanes: equal within noise; 16x1: no better
//   workgroup order walking down column blocks in bands of 4 row blocks (see WORKGROUP_ORDER): +10%
// Kept: 8 lanes per workgroup (one SIMD group: no barrier, no idle lanes for small M), lane tiles 8x16,
// 16x16, 32x16 and 32x32 chosen per shape by the op (1024³ and T = 128: 32x32 27-28 vs 32x16 24-25,
// 3-8 s to compile cold; T = 16: 16x16 beat 8x16, 16x24, 16x32 and 32x16), vec4 loads wherever the
// layout is 4-aligned (the op decides), no K % 4 tail in the blocked kernel (the op runs the tail with
// the scalar k1 kernel, accumulating).
// Edges: rows and columns past M / N are clamped to the last valid one once, before the K loop, so the
// inner loop has no bounds test whatever the shape and there is no separate "unchecked" variant: the
// code of the loop is the same; only the stores are guarded. Epilogue: see `matmulKernel`.
import type { KernelSpec, Workgroups } from "./descriptor.ts";

/** Invocations per workgroup: one llvmpipe SIMD group, all along N. */
export const MATMUL_LANES = 8;

export interface MatmulConfig {
  readonly transA: boolean;
  readonly transB: boolean;
  /** A bound as vec4 (4-aligned lda/offset/stride; with transA also M % 4 == 0). */
  readonly vecA: boolean;
  /** B bound as vec4 (4-aligned ldb/offset/stride; without transB also N % 4 == 0). */
  readonly vecB: boolean;
  /** Rows of C per workgroup = rows of each lane's register tile; a multiple of 4. */
  readonly tm: number;
  /** Columns per lane, a multiple of 4; a workgroup covers MATMUL_LANES * tn columns. */
  readonly tn: number;
  /** C bound as vec4 (4-aligned ldc/offset/stride and N % 4 == 0): one store per 4 columns. */
  readonly vecC: boolean;
  /** C += result (read-modify-write of C); otherwise C is only written. */
  readonly acc: boolean;
  /**
   * K-steps per loop iteration: 4 (loads a 4-deep block; the caller guarantees K % 4 == 0) or 1 (any K;
   * scalar loads only, for operands that are not 4-aligned and for the K % 4 tail).
   */
  readonly kstep: 1 | 4;
}

/** Uniform layout shared by every matmul kernel. Offsets and strides are in f32 elements. */
export const MATMUL_UNIFORMS = [
  ["M", "u32"],
  ["N", "u32"],
  ["K", "u32"],
  ["lda", "u32"],
  ["ldb", "u32"],
  ["ldc", "u32"],
  ["offA", "u32"],
  ["offB", "u32"],
  ["offC", "u32"],
  ["offBias", "u32"],
  ["strideA", "u32"],
  ["strideB", "u32"],
  ["strideC", "u32"],
  ["hasBias", "u32"],
  ["alpha", "f32"],
] as const;

export type MatmulUniforms = Record<(typeof MATMUL_UNIFORMS)[number][0], number>;

export function matmulKey(c: MatmulConfig): string {
  const parts = [`matmul_f32_${c.tm}x${MATMUL_LANES * c.tn}`];
  if (c.transA) parts.push("transA");
  if (c.transB) parts.push("transB");
  if (c.vecA) parts.push("vec4A");
  if (c.vecB) parts.push("vec4B");
  if (c.vecC) parts.push("vec4C");
  if (c.acc) parts.push("acc");
  parts.push(c.kstep === 4 ? "k4" : "k1");
  return parts.join("_");
}

const XYZW = "xyzw";

/**
 * Workgroup order. lavapipe hands workgroups to its threads in linear x-fastest order; walked that way
 * (along N first) every workgroup streams a fresh K x 128 slice of B and B is re-read from L3 once per
 * row block. Instead the linear id walks super-tiles of SUPER_ROWS row blocks down one column block at a
 * time: the column block's B slice and the super-tile's A rows both stay in the 2 MiB L2 (at K = 2048:
 * 1 MiB each). Measured at 2048³: 20.1 (x-fastest), 21.6 (all rows of a column first), 23.9 GFLOP/s.
 */
const SUPER_ROWS = 4;
const WORKGROUP_ORDER = /* wgsl */ `
  let wl = wid.x + wid.y * nwg.x;
  let band = wl / (${SUPER_ROWS}u * nwg.x);
  let r0 = band * ${SUPER_ROWS}u;
  let rows = min(${SUPER_ROWS}u, nwg.y - r0);
  let within = wl - band * ${SUPER_ROWS}u * nwg.x;
  let rowBlock = r0 + within % rows;
  let colBlock = within / rows;`;

export function matmulKernel(c: MatmulConfig): KernelSpec {
  const { transA, transB, vecA, vecB, vecC, acc, tm, tn, kstep } = c;
  if (tm % 4 !== 0 || tn % 4 !== 0 || tm <= 0 || tn <= 0) throw new Error(`matmul: bad tile ${tm}x${tn}`);
  if (kstep === 1 && (vecA || vecB)) throw new Error("matmul: the k1 kernel reads scalars only");
  const G = tn / 4; // column groups of 4 per lane
  const L = MATMUL_LANES;
  const pre: string[] = [];
  const loop: string[] = [];

  // ---- per-lane row (A) and column (B) bases, clamped into range once, outside the K loop
  for (let i = 0; i < tm; i++) {
    const row = `min(m0 + ${i}u, M - 1u)`;
    if (!transA) pre.push(`let ra${i} = ${vecA ? `(oA + ${row} * P.lda) / 4u` : `oA + ${row} * P.lda`};`);
    else if (!vecA) pre.push(`let ca${i} = oA + ${row};`);
    else if (i % 4 === 0) pre.push(`let ca${i / 4} = (oA + min(m0 + ${i}u, M - 4u)) / 4u;`);
  }
  const col = (g: number) => `n0 + ${4 * L * g}u + 4u * lane`;
  for (let g = 0; g < G; g++) {
    if (!transB && vecB) pre.push(`let cb${g} = (oB + min(${col(g)}, N - 4u)) / 4u;`);
    else {
      for (let q = 0; q < 4; q++) {
        const n = `min(${col(g)} + ${q}u, N - 1u)`;
        if (!transB) pre.push(`let cb${g}_${q} = oB + ${n};`);
        else pre.push(`let rb${g}_${q} = ${vecB ? `(oB + ${n} * P.ldb) / 4u` : `oB + ${n} * P.ldb`};`);
      }
    }
  }
  // accumulators c{i}_{g}: row i, columns of group g (in SoA form a vec4 is just 4 vector registers)
  const accDecl: string[] = [];
  for (let i = 0; i < tm; i++) for (let g = 0; g < G; g++) accDecl.push(`var c${i}_${g} = vec4<f32>(0.0);`);
  const fma = (i: number, q: number, g: number, a: string) =>
    `c${i}_${g} = fma(vec4<f32>(${a}), b${q}_${g}, c${i}_${g});`;

  if (kstep === 4) {
    // B block: b{q}_{g} = B-values of the 4 columns of group g at k + q
    for (let g = 0; g < G; g++) {
      if (!transB && vecB) {
        for (let q = 0; q < 4; q++) loop.push(`let b${q}_${g} = B[cb${g} + (k + ${q}u) * ldb4];`);
      } else if (!transB) {
        for (let q = 0; q < 4; q++) {
          const e = [0, 1, 2, 3].map((x) => `B[cb${g}_${x} + (k + ${q}u) * P.ldb]`);
          loop.push(`let b${q}_${g} = vec4<f32>(${e.join(", ")});`);
        }
      } else {
        // transB: each column is contiguous along k
        for (let x = 0; x < 4; x++) {
          const e = vecB
            ? `B[rb${g}_${x} + kb]`
            : `vec4<f32>(${[0, 1, 2, 3].map((q) => `B[rb${g}_${x} + k + ${q}u]`).join(", ")})`;
          loop.push(`let t${g}_${x} = ${e};`);
        }
        for (let q = 0; q < 4; q++) {
          const s = XYZW[q];
          loop.push(`let b${q}_${g} = vec4<f32>(t${g}_0.${s}, t${g}_1.${s}, t${g}_2.${s}, t${g}_3.${s});`);
        }
      }
    }
    // A, a group of 4 rows at a time, each row's 4 k-values followed at once by its 4·tn FMAs
    for (let r = 0; r < tm / 4; r++) {
      if (transA && vecA) {
        for (let q = 0; q < 4; q++) loop.push(`let u${r}_${q} = A[ca${r} + (k + ${q}u) * lda4];`);
      }
      for (let ii = 0; ii < 4; ii++) {
        const i = 4 * r + ii;
        let a: string;
        if (!transA && vecA) a = `A[ra${i} + kb]`;
        else if (!transA) a = `vec4<f32>(${[0, 1, 2, 3].map((q) => `A[ra${i} + k + ${q}u]`).join(", ")})`;
        else if (vecA) a = `vec4<f32>(${[0, 1, 2, 3].map((q) => `u${r}_${q}.${XYZW[ii]}`).join(", ")})`;
        else a = `vec4<f32>(${[0, 1, 2, 3].map((q) => `A[ca${i} + (k + ${q}u) * P.lda]`).join(", ")})`;
        loop.push(`let a${i} = ${a};`);
        for (let q = 0; q < 4; q++) for (let g = 0; g < G; g++) loop.push(fma(i, q, g, `a${i}.${XYZW[q]}`));
      }
    }
  } else {
    for (let g = 0; g < G; g++) {
      const e = [0, 1, 2, 3].map((x) => transB ? `B[rb${g}_${x} + k]` : `B[cb${g}_${x} + k * P.ldb]`);
      loop.push(`let b0_${g} = vec4<f32>(${e.join(", ")});`);
    }
    for (let i = 0; i < tm; i++) {
      loop.push(`let a${i} = ${transA ? `A[ca${i} + k * P.lda]` : `A[ra${i} + k]`};`);
      for (let g = 0; g < G; g++) loop.push(fma(i, 0, g, `a${i}`));
    }
  }

  const loopHead = kstep === 4
    ? `for (var kb = 0u; kb < P.K / 4u; kb++) {\n    let k = kb * 4u;`
    : `for (var k = 0u; k < P.K; k++) {`;

  // ---- epilogue. llvmpipe executes both sides of every branch (masked), and every guarded memory
  // access is a per-lane loop, so the epilogue is kept to one access per 4 outputs where C is aligned
  // and to a runtime loop (one copy of the store code) where it is not: unrolled guarded scalar stores
  // made the LLVM compile of a 32x128 tile take 25 s instead of 3 s. The bias is read once per column
  // group (a select, not a branch: without a bias the binding is a dummy) and accumulation is a
  // compile-time flag: an epilogue with runtime `if (hasBias)` / `if (beta != 0)` branches around
  // per-component loads and stores cost 20% of the whole kernel at 1024³.
  const epi: string[] = [];
  for (let g = 0; g < G; g++) {
    const e = [0, 1, 2, 3].map((x) => `bias[min(P.offBias + ${col(g)} + ${x}u, nbias)]`);
    epi.push(`let bias${g} = select(vec4<f32>(0.0), vec4<f32>(${e.join(", ")}), P.hasBias != 0u);`);
  }
  if (vecC) {
    for (let i = 0; i < tm; i++) {
      for (let g = 0; g < G; g++) {
        const v = `P.alpha * c${i}_${g} + bias${g}`;
        epi.push(
          `if (m0 + ${i}u < M && ${col(g)} < N) {`,
          `  let ci = (oC + (m0 + ${i}u) * P.ldc + ${col(g)}) / 4u;`,
          `  C[ci] = ${acc ? `C[ci] + ${v}` : v};`,
          `}`,
        );
      }
    }
  } else {
    for (let i = 0; i < tm; i++) {
      for (let g = 0; g < G; g++) {
        epi.push(`stage[${(i * G + g) * L}u + lane] = P.alpha * c${i}_${g} + bias${g};`);
      }
    }
    epi.push(
      `for (var t = 0u; t < ${tm * G}u; t++) {`,
      `  let row = m0 + t / ${G}u;`,
      `  let cl = n0 + ${4 * L}u * (t % ${G}u) + 4u * lane;`,
      `  let v = stage[t * ${L}u + lane];`,
      `  let ci = oC + row * P.ldc + cl;`,
      `  for (var x = 0u; x < 4u; x++) {`,
      `    if (row < M && cl + x < N) { C[ci + x] = ${acc ? "C[ci + x] + v[x]" : "v[x]"}; }`,
      `  }`,
      `}`,
    );
  }

  const body = /* wgsl */ `
${vecC ? "" : `var<workgroup> stage: array<vec4<f32>, ${tm * G * L}>;\n`}
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
) {
  let lane = lid.x;
  let M = P.M;
  let N = P.N;
  ${WORKGROUP_ORDER}
  let m0 = rowBlock * ${tm}u;
  let n0 = colBlock * ${L * tn}u;
  let oA = P.offA + wid.z * P.strideA;
  let oB = P.offB + wid.z * P.strideB;
  let oC = P.offC + wid.z * P.strideC;
  let lda4 = P.lda / 4u;
  let ldb4 = P.ldb / 4u;
  let nbias = arrayLength(&bias) - 1u;
  ${pre.join("\n  ")}
  ${accDecl.join("\n  ")}
  ${loopHead}
    ${loop.join("\n    ")}
  }
  ${epi.join("\n  ")}
}`;
  return {
    key: matmulKey(c),
    uniforms: MATMUL_UNIFORMS,
    bindings: [
      { name: "A", access: "read", type: vecA ? "vec4<f32>" : "f32" },
      { name: "B", access: "read", type: vecB ? "vec4<f32>" : "f32" },
      { name: "bias", access: "read", type: "f32" },
      { name: "C", access: "read_write", type: vecC ? "vec4<f32>" : "f32" },
    ],
    workgroupSize: [L, 1, 1],
    body,
  };
}

/** Workgroups covering an M x N output for `batches` batches (z). */
export function matmulWorkgroups(c: MatmulConfig, M: number, N: number, batches: number): Workgroups {
  return [Math.ceil(N / (MATMUL_LANES * c.tn)), Math.ceil(M / c.tm), batches];
}
