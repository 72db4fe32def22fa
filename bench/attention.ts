// Attention, embedding and plumbing ops at GPT-2 small's shapes (C = 768, 12 heads of 64): forward and
// backward attention at several T in ms and effective GFLOP/s (causal half of QKᵀ and PV, twice more for
// the backward), and the memory-bound ops (gather, scatter-add, casts, row copies) in GB/s of bytes moved.
// The comparison printed beside each is its own roofline quantity, so runs on different devices compare.
import { type Engine, getEngine } from "../engine/engine.ts";
import { attentionBackward, launchAttention } from "../engine/launch/attention.ts";
import { castF16ToF32, castF32ToF16, copyRows } from "../engine/launch/copy.ts";
import { launchGatherRows, scatterAddRows } from "../engine/launch/gather.ts";
import type { Tensor } from "../engine/tensor.ts";
import { randInt, randn } from "../tests/lib/util.ts";
import { bestTimeGpu, isSoftwareAdapter, runAlone } from "./util.ts";

/** Packed q|k|v [B, T, 3C] with ragged lengths, an output gradient, and the forward's saved probabilities. */
function attentionInputs(engine: Engine, B: number, T: number, C: number, H: number) {
  return engine.scope(() => {
    const qkv = engine.upload(randn(B * T * 3 * C, T), [B, T, 3 * C]);
    const lengths = engine.upload(Uint32Array.from({ length: B }, (_, b) => T - (b * 13) % T), [B], "u32");
    const dOut = engine.upload(randn(B * T * C, T + 1), [B, T, C]);
    const probs = launchAttention(qkv, lengths, H, { saveProbs: true }).probs!;
    return { qkv, lengths, dOut, probs };
  });
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const soft = isSoftwareAdapter(engine);
  const C = 768, H = 12, hd = C / H;
  const attnShapes: [number, number][] = opts.quick
    ? [[1, 64]]
    : soft
    ? [[1, 16], [32, 16], [1, 64], [1, 128], [4, 128], [1, 256]]
    : [[32, 16], [1, 128], [8, 128], [1, 1024], [8, 1024]];
  if (!opts.json) {
    console.log("attention     B      T   fwd ms  fwd GFLOP/s   fwd+probs ms   bwd ms  bwd GFLOP/s");
  }
  for (const [B, T] of attnShapes) {
    const iters = soft ? (B * T >= 512 ? 2 : 5) : 20;
    const tensors = attentionInputs(engine, B, T, C, H);
    const { qkv, lengths, dOut, probs } = tensors;
    const fwd = await bestTimeGpu(engine, iters, () => launchAttention(qkv, lengths, H));
    const fwdP = await bestTimeGpu(
      engine,
      iters,
      () => launchAttention(qkv, lengths, H, { saveProbs: true }),
    );
    const bwd = await bestTimeGpu(engine, iters, () => attentionBackward(qkv, probs, dOut, lengths, H));
    // useful FLOPs over the causal half (full lengths assumed): QKᵀ and PV forward; four such products back
    const fwdFlops = B * H * 2 * 2 * (T * (T + 1) / 2) * hd;
    const row = {
      op: "attention",
      B,
      T,
      C,
      heads: H,
      fwdMs: fwd,
      fwdGflops: fwdFlops / fwd / 1e6,
      fwdSaveProbsMs: fwdP,
      bwdMs: bwd,
      bwdGflops: 2 * fwdFlops / bwd / 1e6,
    };
    rows.push(row);
    if (!opts.json) {
      console.log(
        `${"".padEnd(9)} ${String(B).padStart(5)} ${String(T).padStart(6)} ${fwd.toFixed(2).padStart(8)} ${
          row.fwdGflops.toFixed(1).padStart(12)
        } ${fwdP.toFixed(2).padStart(14)} ${bwd.toFixed(2).padStart(8)} ${
          row.bwdGflops.toFixed(1).padStart(12)
        }`,
      );
    }
    for (const t of Object.values(tensors)) t.dispose();
  }

  // memory-bound ops: bytes read + written per call
  const V = opts.quick ? 4096 : 50257, N = opts.quick ? 256 : soft ? 1024 : 8192;
  const owned: Tensor[] = [];
  const keep = <T extends Tensor>(t: T): T => {
    owned.push(engine.keep(t));
    return t;
  };
  const table = keep(engine.upload(randn(V * C, 1, 0.02), [V, C]));
  const ids = keep(engine.upload(randInt(N, V, 2), [N], "u32"));
  const dy = keep(engine.upload(randn(N * C, 3), [N, C]));
  const half = keep(castF32ToF16(table));
  const dst = keep(engine.zeros([N, C]));
  const rowsHost = Array.from({ length: N }, (_, k) => (k * 37) % V);
  const iters = soft ? 3 : 20;
  const mem: [string, number, () => unknown][] = [
    [`gatherRows ${V}x${C} table, ${N} ids`, 2 * N * C * 4, () => launchGatherRows(table, ids)],
    [`scatterAddRows ${N} rows into ${V}`, (V * C + 2 * N * C) * 4, () => scatterAddRows(dy, ids, V)],
    [`castF32ToF16 ${V}x${C}`, V * C * 6, () => castF32ToF16(table)],
    [`castF16ToF32 ${V}x${C}`, V * C * 6, () => castF16ToF32(half)],
    [`castF32ToF16 bits ${V}x${C}`, V * C * 6, () => castF32ToF16(table, { native: false })],
    [`copyRows ${N} scattered rows (host list)`, 2 * N * C * 4, () => copyRows(table, rowsHost, dst, null)],
  ];
  if (!opts.json) console.log("\nmemory-bound op                                   ms      GB/s");
  for (const [name, bytes, fn] of mem) {
    const ms = await bestTimeGpu(engine, iters, fn);
    rows.push({ op: name, ms, gbPerS: bytes / ms / 1e6 });
    if (!opts.json) {
      console.log(
        `${name.padEnd(44)} ${ms.toFixed(3).padStart(9)} ${(bytes / ms / 1e6).toFixed(1).padStart(9)}`,
      );
    }
  }
  for (const t of owned) t.dispose();
  return rows;
}

/**
 * The default path against the tiled kernels (`tile`: the path before the matmul one) on given shapes,
 * forward with probs and backward, in ms: `--compare B,T,C,H ...` (default: the training and GPT-2 small
 * shapes).
 */
export async function compare(engine: Engine, shapes: number[][]): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  console.log("    B      T     C   H   tiled fwd+probs   matmul fwd+probs   tiled bwd   matmul bwd  (ms)");
  for (const [B, T, C, H] of shapes) {
    const iters = B * T >= 1024 ? 2 : 4;
    const tensors = attentionInputs(engine, B, T, C, H);
    const { qkv, lengths, dOut, probs } = tensors;
    const tile = T <= 16 ? 16 : T <= 32 ? 32 : 64;
    const r = {
      B,
      T,
      C,
      H,
      tiledFwdMs: await bestTimeGpu(
        engine,
        iters,
        () => launchAttention(qkv, lengths, H, { saveProbs: true, tile }),
        2,
      ),
      fwdMs: await bestTimeGpu(engine, iters, () => launchAttention(qkv, lengths, H, { saveProbs: true }), 2),
      tiledBwdMs: await bestTimeGpu(
        engine,
        iters,
        () => attentionBackward(qkv, probs, dOut, lengths, H, { tile }),
        2,
      ),
      bwdMs: await bestTimeGpu(engine, iters, () => attentionBackward(qkv, probs, dOut, lengths, H), 2),
    };
    rows.push(r);
    console.log(
      [B, T, C, H].map((v, i) => String(v).padStart(i ? 6 - 2 * Number(i > 1) : 5)).join(" ") +
        [r.tiledFwdMs, r.fwdMs, r.tiledBwdMs, r.bwdMs].map((v, i) =>
          v.toFixed(1).padStart([17, 19, 12, 13][i])
        )
          .join(""),
    );
    for (const t of Object.values(tensors)) t.dispose();
  }
  return rows;
}

if (import.meta.main && Deno.args.includes("--compare")) {
  const given = Deno.args.filter((a) => /^\d+(,\d+){3}$/.test(a)).map((a) => a.split(",").map(Number));
  await compare(await getEngine(), given.length ? given : [[32, 128, 128, 4], [1, 128, 768, 12]]);
} else if (import.meta.main) {
  await runAlone(run, await getEngine(), 2);
}
