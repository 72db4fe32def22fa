// Causal tracing of one prompt on tiny random checkpoints: the reference's window and noise rules, the base
// pass, and the batched, layer-skipping evaluation of cells (restored, frozen, severed) against the
// reference-shaped one and against a float64 CPU forward.
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { decisiveWeights, disposeModel, memoryModel, TINY_CONFIG, tinyVocab } from "./lib/fixtures.ts";
import { assertClose, testEngine } from "./lib/util.ts";
import {
  BasePass,
  kindCells,
  restoredWindow,
  severedTrace,
  type TraceCell,
  traceCells,
  traceCellsNaive,
  traceKind,
} from "../tracing/trace.ts";
import { parseNoiseSpec, standardNormal, subjectEmbeddingStd, unbiasedStd } from "../tracing/noise.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";

const engine = await testEngine();

/** Six layers, so windows clip at both ends and cells group by several start layers. */
const C6: Gpt2Config = { ...TINY_CONFIG, nLayer: 6 };

/** A decisive model (lib/fixtures.ts decisiveWeights) on the GPU, its weights, and how to free it. */
function decisiveModel(c: Gpt2Config, seed: number) {
  const W = decisiveWeights(c, seed);
  const model = memoryModel(engine, c, W);
  return { W, model, dispose: () => disposeModel(model) };
}

const IDS = [5, 104, 263, 32, 7, 99, 44];
const SUBJECT: [number, number] = [1, 4];
const SETTINGS = { samples: 4, noise: 0.9, seed: 3 };

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// ------------------------------------------------------------------ window and noise rules

/** Python's floor division, written from its definition (a = b·q + r with r of b's sign). */
function pyFloorDiv(a: number, b: number): number {
  const r = ((a % b) + b) % b;
  return (a - r) / b;
}

/** `list(range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2))))`, literally. */
function pythonWindow(layer: number, window: number, numLayers: number): number[] {
  const out: number[] = [];
  for (
    let l = Math.max(0, layer - pyFloorDiv(window, 2));
    l < Math.min(numLayers, layer - pyFloorDiv(-window, 2));
    l++
  ) {
    out.push(l);
  }
  return out;
}

Deno.test("restoredWindow matches the reference's Python expression (first/last layers, odd and even windows)", () => {
  for (const n of [1, 3, 6, 12, 48]) {
    for (const w of [1, 2, 3, 4, 5, 9, 10, 11, 13, 60]) {
      for (let L = 0; L < n; L++) {
        const [lo, hi] = restoredWindow(L, w, n);
        deepStrictEqual(
          Array.from({ length: hi - lo }, (_, i) => lo + i),
          pythonWindow(L, w, n),
          `n ${n} w ${w} L ${L}`,
        );
      }
    }
  }
  // The code's window of 10 is [L−5, L+4], one layer below the paper's description: restoring 10 layers
  // around layer 20 of 48 starts 5 layers below it.
  deepStrictEqual(restoredWindow(20, 10, 48), [20 - 5, 20 + 5]);
  throws(() => restoredWindow(3, 0, 12), /window/);
});

Deno.test("noise spec: '3x' is a factor of σ_t, a bare number is ν; anything else is a one-line error", () => {
  deepStrictEqual(parseNoiseSpec("3x"), { factor: 3 });
  deepStrictEqual(parseNoiseSpec("0.1"), { absolute: 0.1 });
  deepStrictEqual(parseNoiseSpec("2.5X"), { factor: 2.5 });
  for (const bad of ["", "x", "-1", "0", "3y", "s3", "abc"]) {
    throws(() => parseNoiseSpec(bad), (e: Error) => e instanceof RangeError && !e.message.includes("\n"));
  }
});

Deno.test("σ_t: one unbiased std over the token embeddings of every subject tokenized alone (float64 host)", async () => {
  const c = TINY_CONFIG;
  const W = randomGpt2Weights(c, 9);
  const model = memoryModel(engine, c, W);
  const { vocab, merges } = tinyVocab();
  const tok = Gpt2Tokenizer.fromVocabMerges(vocab, merges);
  const subjects = ["Eiffel Tower", "the Alps", "Rome", "Eiffel Tower", "Tower of London"];
  const got = await subjectEmbeddingStd(model, tok, subjects);
  // Host: rows of wte for each subject's tokens (repeats included), one std with n − 1 over all elements.
  const wte = W.get("wte.weight")!;
  const vals: number[] = [];
  for (const s of subjects) {
    for (const id of tok.encode(s)) for (let k = 0; k < c.nEmbd; k++) vals.push(wte[id * c.nEmbd + k]);
  }
  const n = vals.length;
  const mean = vals.reduce((a, b) => a + b, 0) / n;
  const std = Math.sqrt(vals.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1));
  ok(Math.abs(got.std - std) <= 1e-7 * std, `${got.std} vs ${std}`);
  equal(got.rows, n / c.nEmbd);
  equal(unbiasedStd([1, 2, 3, 4]), Math.sqrt(5 / 3));
  disposeModel(model);
});

Deno.test("noise samples: reproducible from the seed, standard normal moments", () => {
  const a = standardNormal(20001, 7), b = standardNormal(20001, 7), other = standardNormal(20001, 8);
  deepStrictEqual(a, b);
  ok(maxDiff(a, other) > 1);
  const n = a.length;
  const mean = a.reduce((s, v) => s + v, 0) / n;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / n);
  ok(Math.abs(mean) < 5 / Math.sqrt(n), `mean ${mean}`);
  ok(Math.abs(std - 1) < 5 * Math.sqrt(0.5 / n), `std ${std}`);
});

// ------------------------------------------------------------------ base pass and cells

/** float64 reference: p(answer) at the last position, mean over samples, with a patch per sample. */
function referenceScore(
  c: Gpt2Config,
  W: Map<string, Float32Array>,
  noise: Float32Array,
  answer: number,
  restore: (site: string, layer: number, t: number) => Float64Array | undefined,
  freeze?: (s: number, site: string, layer: number, t: number) => Float64Array | undefined,
): number {
  const [b, e] = SUBJECT, n = e - b, d = c.nEmbd;
  let sum = 0;
  for (let s = 0; s < SETTINGS.samples; s++) {
    const [lp] = referenceForward(c, W, IDS, {
      patch: (site, layer, t, v) => {
        if (site === "embed" && t >= b && t < e) {
          return v.map((x, k) => x + noise[(s * n + (t - b)) * d + k]);
        }
        return restore(site, layer, t) ?? freeze?.(s, site, layer, t);
      },
    });
    sum += Math.exp(lp[answer]);
  }
  return sum / SETTINGS.samples;
}

Deno.test("base pass: answer, high_score and low_score match a float64 forward with the same noise", async () => {
  const { W, model, dispose } = decisiveModel(C6, 5);
  const base = await BasePass.run(model, { ids: IDS, subjectRange: SUBJECT }, SETTINGS);
  try {
    const [clean] = referenceForward(C6, W, IDS);
    const top = clean.indexOf(Math.max(...clean));
    equal(base.answerId, top);
    assertClose([base.highScore], [Math.exp(clean[top])], { atol: 1e-5 }, "high_score");
    const noise = await base.noise.read() as Float32Array;
    const low = referenceScore(C6, W, noise, top, () => undefined);
    assertClose([base.lowScore], [low], { atol: 1e-5 }, "low_score");
    ok(Math.abs(base.highScore - base.lowScore) > 0.01, "the corruption must matter for this test model");
  } finally {
    base.dispose();
    dispose();
  }
});

Deno.test("restoring every token at one layer gives high_score at that layer; restoring nothing gives low_score", async () => {
  const { model, dispose } = decisiveModel(C6, 5);
  const base = await BasePass.run(model, { ids: IDS, subjectRange: SUBJECT }, SETTINGS);
  try {
    const T = IDS.length;
    const cells: TraceCell[] = Array.from({ length: C6.nLayer }, (_, L) => ({
      restore: Array.from({ length: T }, (_, t) => ({ site: "resid" as const, layer: L, token: t })),
    }));
    cells.push({ restore: [] });
    for (const run of [traceCells, traceCellsNaive]) {
      const { scores } = await run(base, cells);
      for (let L = 0; L < C6.nLayer; L++) {
        assertClose([scores[L]], [base.highScore], { atol: 1e-6 }, `${run.name}: all tokens at layer ${L}`);
      }
      assertClose([scores[C6.nLayer]], [base.lowScore], { atol: 1e-6 }, `${run.name}: nothing restored`);
    }
    // In a kind's heatmap the last token at the last layer is the clean output itself.
    const hidden = await traceKind(base, "hidden");
    assertClose(
      [hidden.scores[T - 1][C6.nLayer - 1]],
      [base.highScore],
      { atol: 1e-6 },
      "last token, last layer",
    );
  } finally {
    base.dispose();
    dispose();
  }
});

Deno.test("batched layer-skipping traces equal one full forward per cell (hidden, mlp, attn; chunked too)", async () => {
  const { model, dispose } = decisiveModel(C6, 5);
  const base = await BasePass.run(model, { ids: IDS, subjectRange: SUBJECT }, SETTINGS);
  try {
    for (const [kind, window] of [["hidden", 10], ["mlp", 3], ["attn", 4], ["mlp", 10]] as const) {
      const naive = await traceKind(base, kind, { window, strategy: "naive" });
      for (const maxRows of [undefined, 3 * SETTINGS.samples]) {
        const fast = await traceKind(base, kind, { window, maxRows });
        const d = maxDiff(fast.scores.flat(), naive.scores.flat());
        ok(d <= 1e-5, `${kind} window ${window} maxRows ${maxRows}: max |batched − naive| ${d}`);
        ok(fast.forwards < naive.forwards);
      }
      const spread = Math.max(...naive.scores.flat()) - Math.min(...naive.scores.flat());
      ok(spread > 0.01, `${kind}: the trace must vary across cells (spread ${spread})`);
    }
  } finally {
    base.dispose();
    dispose();
  }
});

Deno.test("severed paths: batched equals naive (which freezes every layer), and severing changes the effect", async () => {
  const { model, dispose } = decisiveModel(C6, 5);
  const base = await BasePass.run(model, { ids: IDS, subjectRange: SUBJECT }, SETTINGS, {
    corruptedSites: ["mlp", "attn"],
  });
  try {
    const fast = await severedTrace(base, ["attn", "mlp"]);
    const naive = await severedTrace(base, ["attn", "mlp"], { strategy: "naive" });
    equal(fast.token, SUBJECT[1] - 1);
    for (const k of ["ordinary", "attn", "mlp"] as const) {
      const d = maxDiff(fast[k]!, naive[k]!);
      ok(d <= 1e-5, `${k}: max |batched − naive| ${d}`);
    }
    // (far beyond the 1e-5 agreement above, so the comparison could tell severed from plain runs)
    ok(maxDiff(fast.mlp!, fast.ordinary) > 5e-4, "freezing the MLP outputs must change some effect");
    ok(maxDiff(fast.attn!, fast.ordinary) > 5e-4, "freezing the attention outputs must change some effect");
    // The ordinary curve is the hidden kind's row of the last subject token, minus low_score.
    const hidden = await traceKind(base, "hidden");
    const row = hidden.scores[fast.token].map((p) => p - base.lowScore);
    ok(maxDiff(row, fast.ordinary) <= 1e-6);
  } finally {
    base.dispose();
    dispose();
  }
});

Deno.test("restored and frozen cells match a float64 forward that patches the same states", async () => {
  const { W, model, dispose } = decisiveModel(C6, 5);
  const base = await BasePass.run(model, { ids: IDS, subjectRange: SUBJECT }, SETTINGS, {
    corruptedSites: ["mlp"],
  });
  try {
    const noise = await base.noise.read() as Float32Array;
    // Clean and corrupted states of the float64 model, by site, layer, token (and sample).
    const clean = new Map<string, Float64Array>();
    referenceForward(C6, W, IDS, { patch: (site, l, t, v) => void clean.set(`${site}.${l}.${t}`, v) });
    const corrupted = new Map<string, Float64Array>();
    const [b, e] = SUBJECT, n = e - b, d = C6.nEmbd;
    for (let s = 0; s < SETTINGS.samples; s++) {
      referenceForward(C6, W, IDS, {
        patch: (site, l, t, v) => {
          if (site === "embed" && t >= b && t < e) {
            return v.map((x, k) => x + noise[(s * n + (t - b)) * d + k]);
          }
          corrupted.set(`${s}.${site}.${l}.${t}`, v);
        },
      });
    }
    const a = base.answerId;
    const cases: { cell: TraceCell; ref: number }[] = [
      {
        cell: { restore: [{ site: "resid", layer: 2, token: 3 }] },
        ref: referenceScore(
          C6,
          W,
          noise,
          a,
          (site, l, t) => site === "resid" && l === 2 && t === 3 ? clean.get("resid.2.3") : undefined,
        ),
      },
      {
        cell: kindCells("mlp", IDS.length, C6.nLayer, 3)[2 * C6.nLayer + 1], // token 2, window [0, 3)
        ref: referenceScore(
          C6,
          W,
          noise,
          a,
          (site, l, t) => site === "mlp" && l < 3 && t === 2 ? clean.get(`mlp.${l}.2`) : undefined,
        ),
      },
      {
        cell: kindCells("attn", IDS.length, C6.nLayer, 4)[3 * C6.nLayer + 4], // token 3, window [2, 6)
        ref: referenceScore(
          C6,
          W,
          noise,
          a,
          (site, l, t) => site === "attn" && l >= 2 && t === 3 ? clean.get(`attn.${l}.3`) : undefined,
        ),
      },
      {
        cell: {
          restore: [{ site: "resid", layer: 1, token: 3 }],
          freeze: Array.from({ length: C6.nLayer }, (_, l) => ({ site: "mlp" as const, layer: l, token: 3 })),
        },
        ref: referenceScore(
          C6,
          W,
          noise,
          a,
          (site, l, t) => site === "resid" && l === 1 && t === 3 ? clean.get("resid.1.3") : undefined,
          (s, site, l, t) => site === "mlp" && t === 3 ? corrupted.get(`${s}.mlp.${l}.3`) : undefined,
        ),
      },
    ];
    const { scores } = await traceCells(base, cases.map((c) => c.cell));
    cases.forEach((c, i) => assertClose([scores[i]], [c.ref], { atol: 2e-5 }, `cell ${i}`));
  } finally {
    base.dispose();
    dispose();
  }
});
