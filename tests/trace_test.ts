// Causal tracing: the batched, layer-skipping evaluation against the reference-shaped one and against a
// float64 CPU forward, the reference's window and noise rules, AIE aggregation, the renderers,
// dataset caching, and the CLI (`deno task trace`) end to end on tiny random checkpoints.
import { deepStrictEqual, equal, match, ok, throws } from "node:assert/strict";
import { join } from "node:path";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { buildGpt2 } from "../engine/gpt2/load.ts";
import { expectedWeightShapes } from "../engine/gpt2/model.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { logSoftmaxRow } from "../engine/gpt2/generate.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { TINY_CONFIG, tinyVocab, writeTinyModel } from "./lib/fixtures.ts";
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
import {
  averageIndirectEffect,
  categoryRows,
  effectBand,
  suggestedEditLayer,
  type TracedCase,
} from "../tracing/aggregate.ts";
import { FactsFormatError, parseKnownFacts } from "../tracing/facts.ts";
import { type CaseRecord, summarizeFacts, type TraceCaseStore, traceFacts } from "../tracing/dataset.ts";
import { Colormap, LUT_SIZE, parseHex } from "../tracing/colormap.ts";
import { decode as decodePng } from "fast-png";
import { FIGURE_SCALE } from "../cli/figures.ts";
import { ansiHeatmap, heatmapSvg, svgSize } from "../tracing/render.ts";
import { readSuggestedLayer } from "../cli/cache.ts";

const engine = await testEngine();

/** Six layers, so windows clip at both ends and cells group by several start layers. */
const C6: Gpt2Config = { ...TINY_CONFIG, nLayer: 6 };

/**
 * A tiny random model with sharper outputs than the fixtures' default (embeddings ×6, weight matrices ×2),
 * so restored cells move p(answer) by far more than the tolerances below.
 */
function decisiveModel(c: Gpt2Config, seed: number) {
  const W = randomGpt2Weights(c, seed);
  for (const [n, v] of W) {
    const k = n === "wte.weight" ? 6 : /(c_attn|c_fc|c_proj)\.weight$/.test(n) ? 2 : 1;
    for (let i = 0; i < v.length; i++) v[i] *= k;
  }
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  const model = buildGpt2(engine, c, { tensors: shapes, read: (n) => W.get(n)!, describe: () => "memory" });
  return { W, model, dispose: () => model.weights.forEach((t) => t.dispose()) };
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
  const shapes = new Map([...expectedWeightShapes(c)].map(([n, shape]) => [n, { shape, dtype: "F32" }]));
  const model = buildGpt2(engine, c, { tensors: shapes, read: (n) => W.get(n)!, describe: () => "memory" });
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
  model.weights.forEach((t) => t.dispose());
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

// ------------------------------------------------------------------ aggregation

Deno.test("AIE: six categories, middle and further rows pooled, clipped at 0, ATE = mean high − mean low", () => {
  const L = 4;
  // Distinct values per (case, token, layer) so any misplaced row shows.
  const grid = (T: number, base: number) =>
    Array.from({ length: T }, (_, t) => Array.from({ length: L }, (_, l) => base + 0.01 * t + 0.001 * l));
  const A: TracedCase = { scores: grid(6, 0.1), lowScore: 0.1, highScore: 0.6, subjectRange: [1, 4] };
  const B: TracedCase = { scores: grid(7, 0.3), lowScore: 0.3, highScore: 0.5, subjectRange: [0, 1] };
  deepStrictEqual(categoryRows(6, [1, 4]), [[1], [2], [3], [4], [], [5]]);
  deepStrictEqual(categoryRows(7, [0, 1]), [[0], [], [0], [1], [2, 3, 4, 5], [6]]);
  const s = averageIndirectEffect([A, B]);
  const pooled = [
    [A.scores[1], B.scores[0]],
    [A.scores[2]],
    [A.scores[3], B.scores[0]],
    [A.scores[4], B.scores[1]],
    [B.scores[2], B.scores[3], B.scores[4], B.scores[5]],
    [A.scores[5], B.scores[6]],
  ];
  const low = (A.lowScore + B.lowScore) / 2;
  pooled.forEach((rows, k) => {
    for (let l = 0; l < L; l++) {
      const m = rows.reduce((a, r) => a + r[l], 0) / rows.length;
      const sd = Math.sqrt(rows.reduce((a, r) => a + (r[l] - m) ** 2, 0) / rows.length);
      assertClose([s.avg[k][l]], [m], { atol: 1e-15 }, `avg ${k} ${l}`);
      assertClose([s.std[k][l]], [sd], { atol: 1e-15 }, `std ${k} ${l}`);
      equal(s.aie[k][l], Math.max(0, m - low));
    }
    equal(s.rows[k], rows.length);
  });
  ok(s.aie[1].every((v) => v === 0), "middle subject rows sit below the mean low score: clipped to 0");
  ok(s.aie[4].every((v) => v > 0));
  equal(s.ate, (A.highScore + B.highScore) / 2 - low);
  equal(s.n, 2);
  const band = effectBand(s);
  assertClose([band.hi[4][0] - band.mid[4][0]], [1.96 * s.std[4][0] / Math.sqrt(2)], { atol: 1e-15 });
  // The suggested edit layer is the argmax of the (mlp) AIE at the last subject token.
  const bumped = averageIndirectEffect([{
    ...A,
    scores: A.scores.map((r, t) => t === 3 ? r.map((v, l) => l === 2 ? v + 1 : v) : r),
  }]);
  equal(suggestedEditLayer(bumped), 2);
  throws(() => averageIndirectEffect([]), /no traced cases/);
});

// ------------------------------------------------------------------ facts, dataset mode

Deno.test("facts file: malformed records give one-line errors naming the record", () => {
  const good = { known_id: 0, subject: "Rome", attribute: "Italy", prompt: "Rome is in" };
  equal(parseKnownFacts([good], "f.json").length, 1);
  const bad: [unknown, RegExp][] = [
    [{ facts: [] }, /expected a JSON array/],
    [[], /no fact records/],
    [[good, 3], /record 1 is not an object/],
    [[{ ...good, known_id: "0" }], /record 0: 'known_id' must be an integer/],
    [[good, { ...good }], /record 1 \(known_id 0\): duplicate known_id/],
    [[{ ...good, attribute: "" }], /'attribute' must be a non-empty string/],
    [[{ ...good, prompt: undefined }], /'prompt' must be a non-empty string/],
    [[{ ...good, subject: "Paris" }], /subject "Paris" does not occur in prompt "Rome is in"/],
  ];
  for (const [json, re] of bad) {
    throws(
      () => parseKnownFacts(json, "f.json"),
      (e: Error) => e instanceof FactsFormatError && re.test(e.message) && !e.message.includes("\n"),
    );
  }
});

function memoryStore(): TraceCaseStore & { map: Map<string, CaseRecord>; saves: number } {
  const map = new Map<string, CaseRecord>();
  const store = {
    map,
    saves: 0,
    load: (id: number, kind: string) => Promise.resolve(structuredClone(map.get(`${id}_${kind}`))),
    save: (r: CaseRecord) => {
      store.saves++;
      map.set(`${r.known_id}_${r.kind}`, structuredClone(r));
      return Promise.resolve();
    },
  };
  return store;
}

Deno.test("dataset mode: the reference's filter, cached cases resume, a changed setting recomputes", async () => {
  const { model, dispose } = decisiveModel({ ...C6, nPositions: 64 }, 5);
  const { vocab, merges } = tinyVocab();
  const tok = Gpt2Tokenizer.fromVocabMerges(vocab, merges);
  try {
    // Attributes = the model's own top-1 answers, so those facts count; one wrong attribute is skipped.
    const prompts = [["The Tower is in", "Tower"], ["Rome is the capital of", "Rome"], [
      "Alps are in",
      "Alps",
    ]];
    const answers: string[] = [];
    for (const [p] of prompts) {
      const { logits } = model.forward([tok.encode(p)], { logits: "last" });
      const lp = logSoftmaxRow(await logits!.read());
      logits!.dispose();
      answers.push(tok.decode([lp.indexOf(Math.max(...lp))]));
    }
    ok(
      answers.every((a) => a.trim() !== ""),
      `test prompts need visible answers: ${JSON.stringify(answers)}`,
    );
    const facts = parseKnownFacts(
      prompts.map(([prompt, subject], i) => ({
        known_id: 10 + i,
        subject,
        prompt,
        attribute: i === 2 ? answers[i].trim() + "zz" : answers[i],
      })),
      "test facts",
    );
    const store = memoryStore();
    const opts = {
      samples: 2,
      noise: 0.5,
      seed: 1,
      window: 3,
      kinds: ["hidden", "mlp", "attn"] as const,
      store,
    };
    const first = await traceFacts(model, tok, facts, { ...opts, kinds: [...opts.kinds] });
    equal(first.skipped, 1);
    equal(first.cases.mlp.length, 2);
    equal(store.saves, 9);
    ok(store.map.get("12_hidden")!.correct_prediction === false && !store.map.get("12_hidden")!.scores);
    const summary = summarizeFacts(first, opts.kinds);
    equal(summary.n, 2);
    ok(Number.isInteger(summary.suggestedLayer) && summary.suggestedLayer! < C6.nLayer);

    const statuses: string[] = [];
    const again = await traceFacts(model, tok, facts, {
      ...opts,
      kinds: [...opts.kinds],
      onFact: (_d, _n, _f, s) => statuses.push(s),
    });
    deepStrictEqual(statuses, ["cached", "cached", "skipped"]);
    equal(again.rows, 0);
    equal(store.saves, 9);
    deepStrictEqual(again.cases.hidden.map((c) => c.scores), first.cases.hidden.map((c) => c.scores));

    const reseeded = await traceFacts(model, tok, facts.slice(0, 1), { ...opts, kinds: ["hidden"], seed: 2 });
    ok(reseeded.rows > 0, "a different seed must not reuse cached cases");
    equal(store.map.get("10_hidden")!.key.seed, 2);
  } finally {
    dispose();
  }
});

// ------------------------------------------------------------------ pictures

Deno.test("colormaps: the LUT is matplotlib's _create_lookup_table over the nine control points", () => {
  const brewer = {
    Purples: [
      "#fcfbfd",
      "#efedf5",
      "#dadaeb",
      "#bcbddc",
      "#9e9ac8",
      "#807dba",
      "#6a51a3",
      "#54278f",
      "#3f007d",
    ],
    Reds: ["#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d"],
  } as const;
  for (const [name, hex] of Object.entries(brewer) as [keyof typeof brewer, readonly string[]][]) {
    const cm = new Colormap(name);
    const pts = hex.map(parseHex);
    const x = pts.map((_, k) => k / (pts.length - 1));
    for (let ch = 0; ch < 3; ch++) {
      // Port of matplotlib.colors._create_lookup_table(N, data) with y0 = y1 = the channel values.
      const y = pts.map((p) => p[ch] / 255);
      const xind = Array.from({ length: LUT_SIZE }, (_, i) => i / (LUT_SIZE - 1));
      const lut = [y[0]];
      for (let i = 1; i < LUT_SIZE - 1; i++) {
        const ind = x.findIndex((v) => v >= xind[i]); // numpy.searchsorted, side="left"
        const dist = (xind[i] - x[ind - 1]) / (x[ind] - x[ind - 1]);
        lut.push(dist * (y[ind] - y[ind - 1]) + y[ind - 1]);
      }
      lut.push(y[y.length - 1]);
      assertClose(
        Array.from({ length: LUT_SIZE }, (_, i) => cm.lut[i * 3 + ch]),
        lut,
        { atol: 1e-12 },
        `${name} ${ch}`,
      );
    }
    deepStrictEqual(cm.rgb(0), pts[0]);
    deepStrictEqual(cm.rgb(1), pts[8]);
    deepStrictEqual(cm.rgb(-0.5), pts[0], "under = first entry");
    deepStrictEqual(cm.at(5, 0, 1), pts[8], "over = last entry");
  }
});

Deno.test("heatmap renderers: one hoverable cell per value; ANSI colour only when asked", () => {
  const spec = {
    values: [[0.1, 0.5, 0.2], [0.3, 0.05, 0.9]],
    rowLabels: ["a<b", " c*"],
    vmin: 0.05,
    vmax: 0.9,
    cmap: "Purples" as const,
    title: "t",
    xlabel: "x",
    colorbarTitle: "p(x)",
  };
  const svg = heatmapSvg(spec);
  equal(svg.match(/class="cell"/g)?.length, 6);
  ok(svg.includes("a&lt;b") && !svg.includes("a<b"));
  match(svg, /<title>[^<]*layer 2: 0\.9<\/title>/);
  const plain = ansiHeatmap(spec, { color: false }), color = ansiHeatmap(spec, { color: true });
  ok(!plain.includes("\x1b["));
  ok(color.includes("\x1b[48;2;"));
  equal(plain.split("\n").length, 4);
});

// ------------------------------------------------------------------ CLI

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function cli(args: string[], env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "trace", ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, out: new TextDecoder().decode(stdout), err: new TextDecoder().decode(stderr) };
}

const PROMPT = "The Tower is in the city";

/** STEM.png decodes to twice STEM.svg's size (tests/figures_test.ts checks that its text renders). */
async function checkFigurePng(stem: string): Promise<void> {
  const png = decodePng(await Deno.readFile(stem + ".png"));
  const [w, h] = svgSize(await Deno.readTextFile(stem + ".svg"));
  deepStrictEqual([png.width, png.height], [w * FIGURE_SCALE, h * FIGURE_SCALE], stem);
}

Deno.test("CLI: --json shape, files written; --expect refuses a wrong answer unless --force; bad input is one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinyModel(join(dir, "m"), { seed: 4 });
    const out = join(dir, "out");
    const common = ["--model", join(dir, "m"), "--prompt", PROMPT, "--subject", "Tower", "--samples", "2"];
    const r = await cli([...common, "--kind", "all", "--json", "--out", out]);
    equal(r.code, 0, r.err);
    const all = JSON.parse(r.out);
    equal(all.length, 3);
    const keys = [
      "prompt",
      "subject",
      "tokens",
      "subject_range",
      "answer",
      "answer_id",
      "high_score",
      "low_score",
      "kind",
      "window",
      "samples",
      "noise",
      "seconds",
      "scores",
    ];
    all.forEach((rec: Record<string, unknown>, i: number) => {
      deepStrictEqual(Object.keys(rec).sort(), [...keys].sort());
      equal(rec.kind, ["hidden", "mlp", "attn"][i]);
      const tokens = rec.tokens as string[], scores = rec.scores as number[][];
      equal(tokens.join(""), PROMPT);
      equal(scores.length, tokens.length);
      ok(scores.every((row) => row.length === TINY_CONFIG.nLayer && row.every((v) => v >= 0 && v <= 1)));
      equal(tokens.slice(...(rec.subject_range as [number, number])).join("").trim(), "Tower");
      equal(rec.samples, 2);
    });
    const saved = JSON.parse(await Deno.readTextFile(join(out, "trace.json")));
    equal(saved.length, 3);
    equal(typeof saved[0].model_hash, "string");
    await checkFigurePng(join(out, "heatmap_mlp"));
    ok((await Deno.readTextFile(join(out, "report.html"))).includes("<svg"));
    ok(!r.err.includes("\x1b["), "no escape codes on a pipe");

    const answer = all[0].answer as string;
    const refused = await cli([...common, "--kind", "hidden", "--expect", answer + "zz", "--out", out]);
    equal(refused.code, 1);
    match(refused.err, /^error: the model's top-1 answer is .*--force/m);
    equal(refused.err.trim().split("\n").filter((l) => l.startsWith("error")).length, 1);
    const forced = await cli([
      ...common,
      "--kind",
      "hidden",
      "--expect",
      answer + "zz",
      "--force",
      "--json",
      "--out",
      out,
    ]);
    equal(forced.code, 0, forced.err);
    const accepted = await cli([
      ...common,
      "--kind",
      "hidden",
      "--expect",
      ` ${answer.trim()} `,
      "--json",
      "--out",
      out,
    ]);
    equal(accepted.code, 0, accepted.err);

    const badSubject = await cli([...common.slice(0, 4), "--subject", "Paris"]);
    equal(badSubject.code, 2);
    match(badSubject.err, /^error: --subject "Paris" does not occur in --prompt/);
    const badNoise = await cli([...common, "--noise", "lots"]);
    equal(badNoise.code, 2);
    match(badNoise.err, /^error: --noise must be/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI dataset mode: summary JSON, the suggested layer stored per model hash, malformed facts file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinyModel(join(dir, "m"), { seed: 4 });
    const env = { XDG_CACHE_HOME: join(dir, "cache") };
    // Facts whose attribute is what the model answers (from a single-prompt run), plus one it gets wrong.
    const prompts = [[PROMPT, "Tower"], ["Rome is the capital of", "Rome"]];
    const facts = [];
    for (const [i, [prompt, subject]] of prompts.entries()) {
      const r = await cli([
        "--model",
        join(dir, "m"),
        "--prompt",
        prompt,
        "--subject",
        subject,
        "--kind",
        "hidden",
        "--samples",
        "1",
        "--json",
        "--out",
        join(dir, "o"),
      ]);
      equal(r.code, 0, r.err);
      const answer = JSON.parse(r.out).answer as string;
      ok(answer.trim() !== "", `test prompt needs a visible answer, got ${JSON.stringify(answer)}`);
      facts.push({ known_id: i, subject, prompt, attribute: answer.trim(), relation_id: "P0" });
    }
    facts.push({
      known_id: 7,
      subject: "Rome",
      prompt: "Rome is the capital of",
      attribute: "nothing-like-this",
    });
    const file = join(dir, "facts.json");
    await Deno.writeTextFile(file, JSON.stringify(facts));
    const out = join(dir, "facts-out");
    const args = ["--model", join(dir, "m"), "--facts", file, "--samples", "2", "--out", out];
    const r = await cli([...args, "--json"], env);
    equal(r.code, 0, r.err);
    const s = JSON.parse(r.out);
    equal(s.n, 2);
    equal(s.facts, 3);
    equal(s.skipped, 1);
    ok(Number.isInteger(s.suggested_layer));
    for (const kind of ["hidden", "mlp", "attn"]) {
      deepStrictEqual(Object.keys(s.kinds[kind].aie).length, 6);
      ok(
        Object.values(s.kinds[kind].aie as Record<string, number[]>).every((a) =>
          a.length === TINY_CONFIG.nLayer
        ),
      );
      equal(typeof s.kinds[kind].ate, "number");
    }
    ok(typeof s.seconds === "number");
    for (
      const f of [
        "summary.json",
        "aie_hidden.svg",
        "aie_mlp.png",
        "aie_heatmaps.png",
        "aie_lines.svg",
        "report.html",
        "cases/0_mlp.json",
      ]
    ) {
      ok((await Deno.stat(join(out, f))).isFile, f);
    }
    await checkFigurePng(join(out, "aie_heatmaps"));
    const layer = await cli([...args, "--suggest-layer"], env);
    equal(layer.code, 0, layer.err);
    equal(layer.out.trim(), String(s.suggested_layer));
    const prev = Deno.env.get("XDG_CACHE_HOME");
    Deno.env.set("XDG_CACHE_HOME", env.XDG_CACHE_HOME);
    try {
      const hash = JSON.parse(await Deno.readTextFile(join(out, "summary.json"))).model_hash;
      const stored = await readSuggestedLayer(hash);
      equal(stored?.layer, s.suggested_layer);
      equal(stored?.n, 2);
      equal(await readSuggestedLayer("0000000000000000"), undefined);
    } finally {
      if (prev === undefined) Deno.env.delete("XDG_CACHE_HOME");
      else Deno.env.set("XDG_CACHE_HOME", prev);
    }

    await Deno.writeTextFile(
      file,
      JSON.stringify([{ known_id: 1, subject: "Rome", prompt: "Paris is", attribute: "x" }]),
    );
    const bad = await cli(["--model", join(dir, "m"), "--facts", file]);
    equal(bad.code, 2);
    equal(bad.err.trim().split("\n").length, 1, bad.err);
    match(bad.err, /^error: .*facts\.json: record 0 \(known_id 1\): subject "Rome" does not occur/);
    const missing = await cli(["--model", join(dir, "m"), "--facts", join(dir, "nope.json")]);
    equal(missing.code, 2);
    match(missing.err, /^error: facts file '.*nope\.json' not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
