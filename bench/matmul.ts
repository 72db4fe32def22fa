// Matmul GFLOP/s: square 256..2048 and GPT-2 small's projections (T x 768 · 768x2304 c_attn, 768x3072
// c_fc, T x 3072 · 3072x768 mlp c_proj, and the logits T x 768 · (50257x768)ᵀ against the tied token
// embedding, 147 MiB: more than lavapipe's 128 MiB binding, so the op splits it) for T = 16 and 128,
// each beside a plain single-threaded TypeScript matmul on the same inputs.
import { type Engine, getEngine } from "../engine/engine.ts";
import { launchMatmul } from "../engine/launch/matmul.ts";
import { randn } from "../tests/lib/util.ts";
import { bestTimeGpu, isSoftwareAdapter, runAlone } from "./util.ts";

interface Shape {
  name: string;
  m: number;
  n: number;
  k: number;
  /** B stored as [n, k] (the logits' tied embedding). */
  transB?: boolean;
}

function shapes(quick: boolean): Shape[] {
  const out: Shape[] = [];
  for (const s of quick ? [256, 512] : [256, 512, 1024, 2048]) {
    out.push({ name: `square${s}`, m: s, n: s, k: s });
  }
  for (const T of quick ? [16] : [16, 128]) {
    out.push({ name: `c_attn_T${T}`, m: T, n: 2304, k: 768 });
    out.push({ name: `c_fc_T${T}`, m: T, n: 3072, k: 768 });
    out.push({ name: `mlp_c_proj_T${T}`, m: T, n: 768, k: 3072 });
    if (!quick) out.push({ name: `logits_T${T}`, m: T, n: 50257, k: 768, transB: true });
  }
  return out;
}

/**
 * The CPU baseline: Float32Array, single thread, i-k-j order (the inner loop runs along contiguous rows
 * of B and C). For B stored [n, k] the contiguous order is i-j-k (a dot product of two rows).
 * Computes rows [0, rows) only, so a big product can be timed on a subset.
 */
function cpuMatmul(a: Float32Array, b: Float32Array, c: Float32Array, s: Shape, rows: number): void {
  const { n, k } = s;
  if (s.transB) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let p = 0; p < k; p++) acc += a[i * k + p] * b[j * k + p];
        c[i * n + j] = acc;
      }
    }
    return;
  }
  c.fill(0, 0, rows * n);
  for (let i = 0; i < rows; i++) {
    const ci = i * n;
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p], bp = p * n;
      for (let j = 0; j < n; j++) c[ci + j] += av * b[bp + j];
    }
  }
}

/** CPU GFLOP/s: whole rows of C, as many as fit in about `budgetMs` (at least one), scaled to all m. */
function timeCpu(
  a: Float32Array,
  b: Float32Array,
  s: Shape,
  budgetMs: number,
): { gflops: number; rows: number } {
  const c = new Float32Array(s.m * s.n);
  // warm-up until the JIT has settled (~50 ms), which also measures the time of one row
  let calls = 0;
  const t0 = performance.now();
  do {
    cpuMatmul(a, b, c, s, 1);
    calls++;
  } while (performance.now() - t0 < 50);
  const perRow = (performance.now() - t0) / calls;
  const rows = Math.max(1, Math.min(s.m, Math.floor(budgetMs / perRow)));
  let best = Infinity;
  for (let r = 0; r < 2; r++) {
    const t1 = performance.now();
    cpuMatmul(a, b, c, s, rows);
    best = Math.min(best, performance.now() - t1);
  }
  return { gflops: (2 * rows * s.n * s.k) / best / 1e6, rows };
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const soft = isSoftwareAdapter(engine);
  const rows: Record<string, unknown>[] = [];
  if (!opts.json) {
    console.log(
      "name                  m      n      k    GPU ms  GPU GFLOP/s  CPU GFLOP/s  CPU timed on",
    );
  }
  for (const s of shapes(opts.quick ?? false)) {
    const flops = 2 * s.m * s.n * s.k;
    const A = randn(s.m * s.k, s.m + s.k), B = randn(s.k * s.n, s.n + 1);
    const { a, b } = engine.scope(() => ({
      a: engine.upload(A, [s.m, s.k]),
      b: engine.upload(B, s.transB ? [s.n, s.k] : [s.k, s.n]),
    }));
    // about half a second of GPU work per round on lavapipe (~20 GFLOP/s), more calls on a real GPU
    const iters = Math.max(1, Math.min(soft ? 20 : 200, Math.round((soft ? 1e10 : 2e12) / flops)));
    const ms = await bestTimeGpu(engine, iters, () => void launchMatmul(a, b, { transB: s.transB }));
    a.dispose();
    b.dispose();
    const cpu = timeCpu(A, B, s, opts.quick ? 100 : 250);
    const row = { name: s.name, m: s.m, n: s.n, k: s.k, gflops: flops / ms / 1e6, cpu_gflops: cpu.gflops };
    rows.push(row);
    if (!opts.json) {
      const on = cpu.rows === s.m ? "all rows" : `${cpu.rows} of ${s.m} rows, scaled`;
      console.log(
        `${s.name.padEnd(18)} ${String(s.m).padStart(5)} ${String(s.n).padStart(6)} ${
          String(s.k).padStart(6)
        } ${ms.toFixed(2).padStart(9)} ${row.gflops.toFixed(2).padStart(12)} ${
          row.cpu_gflops.toFixed(2).padStart(12)
        }  ${on}${s.transB ? " (B stored [n, k]: i-j-k)" : ""}`,
      );
    }
  }
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine(), 2);
