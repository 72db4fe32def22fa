// Causal tracing over many facts: AIE aggregation (categories, pooling, clipping, the suggested layer), the
// facts file's errors, dataset mode's filter and per-case cache, and the pictures (colormaps, renderers).
import { deepStrictEqual, equal, match, ok, throws } from "node:assert/strict";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { logSoftmaxRow } from "../engine/gpt2/generate.ts";
import { decisiveWeights, TINY_CONFIG, tinyVocab, withModel } from "./lib/fixtures.ts";
import { assertClose, testEngine } from "./lib/util.ts";
import {
  averageIndirectEffect,
  categoryRows,
  effectBand,
  suggestedEditLayer,
  type TracedCase,
} from "../tracing/aggregate.ts";
import { FactsFormatError, parseKnownFacts } from "../tracing/facts.ts";
import { type CaseRecord, summarizeFacts, type TraceCaseStore, traceFacts } from "../tracing/dataset.ts";
import { Colormap, LUT_SIZE } from "../tracing/colormap.ts";
import { ansiHeatmap, heatmapSvg } from "../tracing/render.ts";

const engine = await testEngine();

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
  const c = { ...TINY_CONFIG, nLayer: 6, nPositions: 64 };
  const { vocab, merges } = tinyVocab();
  const tok = Gpt2Tokenizer.fromVocabMerges(vocab, merges);
  await withModel(engine, c, decisiveWeights(c, 5), async (model) => {
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
    ok(Number.isInteger(summary.suggestedLayer) && summary.suggestedLayer! < c.nLayer);

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
  });
});

// ------------------------------------------------------------------ pictures

Deno.test("colormaps: the LUT is matplotlib's _create_lookup_table over the nine control points", () => {
  // matplotlib's _cm.py data (its fractions of 255, as bytes), stated apart from tracing/colormap.ts's hex
  // table, so that a slip in that table shows here.
  const brewer = {
    Purples: [
      [252, 251, 253],
      [239, 237, 245],
      [218, 218, 235],
      [188, 189, 220],
      [158, 154, 200],
      [128, 125, 186],
      [106, 81, 163],
      [84, 39, 143],
      [63, 0, 125],
    ],
    Reds: [
      [255, 245, 240],
      [254, 224, 210],
      [252, 187, 161],
      [252, 146, 114],
      [251, 106, 74],
      [239, 59, 44],
      [203, 24, 29],
      [165, 15, 21],
      [103, 0, 13],
    ],
  } as const;
  for (
    const [name, pts] of Object.entries(brewer) as [keyof typeof brewer, readonly (readonly number[])[]][]
  ) {
    const cm = new Colormap(name);
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
