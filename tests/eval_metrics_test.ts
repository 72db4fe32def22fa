// The evaluation's pure parts on hand-computable cases: word tokens against nltk's documented outputs, the
// n-gram entropy of a known distribution, a tf-idf cosine against the sklearn formulas worked by hand,
// the harmonic mean with a zero, the table columns of synthetic per-case records, shards and their merge,
// the dataset readers (CounterFact, both snippet forms, zsRE) and the reports.
import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import {
  DatasetError,
  parseAttributeSnippets,
  parseDataset,
  recordsWithoutSnippets,
  snippetTexts,
} from "../eval/datasets.ts";
import {
  type CaseResult,
  type CounterFactMetrics,
  groupRuns,
  harmonicMean,
  MergeError,
  parseShard,
  type RunIdentity,
  shardItems,
  stat,
  summarize,
  type TargetNll,
} from "../eval/metrics.ts";
import { htmlReport, jsonRecord, markdownReport, type ReportRun, textTable } from "../eval/report.ts";
import {
  generationEntropy,
  ngramEntropy,
  splitSentences,
  textNgramEntropy,
  tfidfSimilarity,
  tfidfTerms,
  TfidfVectorizer,
  wordTokenize,
} from "../eval/text.ts";
import { SYNTHETIC_RUN } from "./lib/fixtures.ts";

const close = (a: number, b: number, tol = 1e-12, what = "value") =>
  ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (tol ${tol})`);

// ------------------------------------------------------------------ word tokens

Deno.test("wordTokenize reproduces nltk.word_tokenize on its documented examples", () => {
  // nltk.tokenize docstring example
  deepEqual(
    wordTokenize("Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks."),
    [
      "Good",
      "muffins",
      "cost",
      "$",
      "3.88",
      "in",
      "New",
      "York",
      ".",
      "Please",
      "buy",
      "me",
      "two",
      "of",
      "them",
      ".",
      "Thanks",
      ".",
    ],
  );
  // clitics and contractions (NLTKWordTokenizer doctests)
  deepEqual(wordTokenize("They'll save and invest more."), [
    "They",
    "'ll",
    "save",
    "and",
    "invest",
    "more",
    ".",
  ]);
  deepEqual(wordTokenize("hi, my name can't hello,"), ["hi", ",", "my", "name", "ca", "n't", "hello", ","]);
  deepEqual(wordTokenize("I cannot go (today)!"), ["I", "can", "not", "go", "(", "today", ")", "!"]);
  deepEqual(wordTokenize('He said "yes" -- twice...'), [
    "He",
    "said",
    "``",
    "yes",
    "''",
    "--",
    "twice",
    "...",
  ]);
});

Deno.test("splitSentences: breaks after . ! ? before white space, not after initials, numbers or common abbreviations", () => {
  deepEqual(splitSentences("Paris is big. It rains! Does it? Yes"), [
    "Paris is big.",
    "It rains!",
    "Does it?",
    "Yes",
  ]);
  deepEqual(splitSentences("Mr. Smith met J. Doe in 3. Street."), ["Mr. Smith met J. Doe in 3. Street."]);
  // a period mid-sentence stays on its word; the sentence-final one is split
  deepEqual(wordTokenize("Mr. Smith lives here."), ["Mr.", "Smith", "lives", "here", "."]);
});

// ------------------------------------------------------------------ n-gram entropy

Deno.test("n-gram entropy: a known distribution, the 2/3 and 4/3 weights, the mean over texts", () => {
  // tokens a b a b: bigrams (a,b) ×2, (b,a) ×1 → H₂ = −(2/3 log₂ 2/3 + 1/3 log₂ 1/3); trigrams (a,b,a), (b,a,b) → H₃ = 1
  const h2 = -(2 / 3) * Math.log2(2 / 3) - (1 / 3) * Math.log2(1 / 3);
  close(ngramEntropy(["a", "b", "a", "b"], 2), h2);
  close(ngramEntropy(["a", "b", "a", "b"], 3), 1);
  close(h2, 0.9182958340544896, 1e-15, "H₂ by hand");
  const score = (2 / 3 * h2 + 4 / 3 * 1) / 2; // mean of the weighted entropies = H₂/3 + 2H₃/3
  close(textNgramEntropy("a b a b"), score);
  close(score, h2 / 3 + 2 / 3, 1e-15);
  // fewer tokens than n: no n-grams, entropy 0 (numpy's sum over an empty array)
  equal(ngramEntropy(["x"], 2), 0);
  // eight distinct tokens: 7 distinct bigrams, 6 distinct trigrams → log₂ 7 and log₂ 6
  close(
    textNgramEntropy("one two three four five six seven eight"),
    (Math.log2(7) * 2 / 3 + Math.log2(6) * 4 / 3) / 2,
  );
  // GE of a case is the arithmetic mean over its texts
  close(generationEntropy(["a b a b", "x y z"]), (score + (2 / 3 * 1 + 4 / 3 * 0) / 2) / 2);
  ok(Number.isNaN(generationEntropy([])));
});

// ------------------------------------------------------------------ tf-idf

Deno.test("tf-idf: sklearn's analyzer, smooth idf and the cosine, worked by hand", () => {
  deepEqual(tfidfTerms("The CAT, a cat's Ärger_1 x"), ["the", "cat", "cat", "ärger_1"]);
  const vec = TfidfVectorizer.fit(["the cat sat", "the dog sat", "a cat ran"]);
  // vocabulary sorted: cat dog ran sat the ("a" has one character: not a token)
  deepEqual([...vec.vocabulary.entries()], [["cat", 0], ["dog", 1], ["ran", 2], ["sat", 3], ["the", 4]]);
  const idf2 = Math.log(4 / 3) + 1, idf1 = Math.log(4 / 2) + 1; // ln((1 + n) / (1 + df)) + 1, n = 3
  close(vec.idf[0], idf2);
  close(vec.idf[1], idf1);
  close(vec.idf[4], idf2);
  // a: the ×2, cat ×2 → (1/√2, 1/√2); b: dog, sat, the, cat once ("with" is unknown)
  const nb = Math.sqrt(idf1 ** 2 + 3 * idf2 ** 2);
  const expected = (Math.SQRT1_2 * idf2 + Math.SQRT1_2 * idf2) / nb;
  close(tfidfSimilarity("The cat, the CAT!", "a dog sat with the cat", vec), expected, 1e-12, "cosine");
  close(expected, 0.6503, 1e-4, "cosine by hand");
  close(tfidfSimilarity("the dog", "the dog", vec), 1, 1e-12);
  // no known term: 0 instead of the reference's 0/0
  equal(tfidfSimilarity("zzz qqq", "the cat", vec), 0);
  throws(() => new TfidfVectorizer(new Map([["a", 3]]), new Float64Array(2)), /column 3/);

  // the reference's saved form: tfidf_vocab.json and idf.npy (float64, as np.save writes it)
  const saved = TfidfVectorizer.fromReference(Object.fromEntries(vec.vocabulary), npyF64(vec.idf), "ref");
  deepEqual(saved.idf, vec.idf);
  equal(
    tfidfSimilarity("The cat, the CAT!", "a dog sat with the cat", saved),
    tfidfSimilarity("The cat, the CAT!", "a dog sat with the cat", vec),
  );
  throws(() => TfidfVectorizer.fromReference({ cat: 9 }, npyF64(vec.idf), "ref"), /ref: .*column 9/);
  throws(() => TfidfVectorizer.fromReference([], npyF64(vec.idf), "ref"), /term: column/);
});

/** A version 1.0 .npy file of a float64 vector, byte for byte as numpy.save writes it. */
function npyF64(v: Float64Array): Uint8Array {
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${v.length},), }`;
  header += " ".repeat(64 - ((10 + header.length + 1) % 64)) + "\n";
  const out = new Uint8Array(10 + header.length + 8 * v.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length & 255, header.length >> 8]);
  out.set(new TextEncoder().encode(header), 10);
  v.forEach((x, i) => new DataView(out.buffer).setFloat64(10 + header.length + 8 * i, x, true));
  return out;
}

// ------------------------------------------------------------------ the table

Deno.test("harmonic mean: scipy's hmean, 0 with a zero, NaN for negatives", () => {
  close(harmonicMean([1, 0.964, 0.754]), 0.892, 5e-4, "ROME GPT-2 XL row: hmean(100.0, 96.4, 75.4) = 89.2");
  close(harmonicMean([1, 2, 4]), 3 / (1 + 0.5 + 0.25));
  equal(harmonicMean([0.5, 0, 1]), 0);
  ok(Number.isNaN(harmonicMean([0.5, -1])));
  ok(Number.isNaN(harmonicMean([])));
});

const RUN: RunIdentity = {
  ...SYNTHETIC_RUN,
  generation: { max_out_len: 100, top_k: 5, seed: 1, tfidf: "fit:x" },
};

const nll = (n: number, t: number): TargetNll => ({ target_new: n, target_true: t });

function cfCase(
  id: number,
  m: Partial<CounterFactMetrics>,
  pre?: Partial<CounterFactMetrics>,
  run = RUN,
): CaseResult {
  const full = (x: Partial<CounterFactMetrics>): CounterFactMetrics => ({
    rewrite_prompts_probs: [],
    paraphrase_prompts_probs: [],
    neighborhood_prompts_probs: [],
    attribute_prompts_probs: [],
    ...x,
  });
  return { case_id: id, requested_rewrite: {}, time: id / 10, post: full(m), pre: full(pre ?? m), run };
}

Deno.test("summary: ES/EM, PS/PM, NS/NM, GE, RS and S of synthetic cases, with mean, population std and 1.96·std/√n", () => {
  const c0 = cfCase(0, {
    rewrite_prompts_probs: [nll(0.5, 2)], // new more likely: ES 1, EM e^−0.5 − e^−2
    paraphrase_prompts_probs: [nll(1, 3), nll(3, 1)], // PS 1/2
    neighborhood_prompts_probs: [nll(1, 2), nll(3, 1), nll(4, 2), nll(5, 2)], // NS: true more likely in 3 of 4
    attribute_prompts_probs: [nll(9, 9)],
    ngram_entropy: 6,
    reference_score: 0.4,
  });
  const c1 = cfCase(1, {
    rewrite_prompts_probs: [nll(3, 1)],
    paraphrase_prompts_probs: [nll(3, 1), nll(3, 1)],
    neighborhood_prompts_probs: [nll(2, 1)],
    ngram_entropy: 5,
    reference_score: 0.2,
  });
  const s = summarize([c1, c0]);
  equal(s.n, 2);
  const p = s.post;
  close(p.ES!.mean, 50);
  close(p.ES!.std, 50);
  close(p.ES!.ci95, 1.96 * 50 / Math.SQRT2);
  close(p.EM!.mean, 100 * ((Math.exp(-0.5) - Math.exp(-2)) + (Math.exp(-3) - Math.exp(-1))) / 2, 1e-12);
  close(p.PS!.mean, 25);
  close(p.NS!.mean, 100 * (0.75 + 1) / 2);
  const nm0 = ((Math.exp(-2) - Math.exp(-1)) + (Math.exp(-1) - Math.exp(-3)) + (Math.exp(-2) - Math.exp(-4)) +
    (Math.exp(-2) - Math.exp(-5))) / 4;
  close(p.NM!.mean, 100 * (nm0 + (Math.exp(-1) - Math.exp(-2))) / 2, 1e-12);
  close(p.GE!.mean, 550);
  close(p.RS!.mean, 30, 1e-12);
  close(p.S!.mean, 100 * harmonicMean([0.5, 0.25, 0.875]), 1e-12);
  ok(Number.isNaN(p.S!.std));
  close(s.time.mean, 0.05);
  // a zero column makes S zero
  const zero = summarize([
    cfCase(0, {
      rewrite_prompts_probs: [nll(3, 1)],
      paraphrase_prompts_probs: [nll(1, 3)],
      neighborhood_prompts_probs: [nll(1, 3)],
    }),
  ]);
  equal(zero.post.ES!.mean, 0);
  equal(zero.post.S!.mean, 0);
  // without generation results GE and RS are absent, not NaN
  equal(zero.post.GE, undefined);
  deepEqual(stat([1, 2, 3]), {
    mean: 2,
    std: Math.sqrt(2 / 3),
    ci95: 1.96 * Math.sqrt(2 / 3) / Math.sqrt(3),
    n: 3,
  });
});

Deno.test("summary of zsRE cases: per-case token accuracies averaged, S their harmonic mean", () => {
  const z = (id: number, r: boolean[], p: boolean[], n: boolean[]): CaseResult => {
    const m = { rewrite_prompts_correct: r, paraphrase_prompts_correct: p, neighborhood_prompts_correct: n };
    return {
      case_id: id,
      requested_rewrite: {},
      time: 0,
      post: m,
      pre: m,
      run: { ...RUN, dataset_kind: "zsre" },
    };
  };
  const s = summarize([
    z(0, [true, false], [true], [true, true, false]),
    z(1, [true], [false, false], [false]),
  ]);
  equal(s.kind, "zsre");
  close(s.post.Efficacy!.mean, 75);
  close(s.post.Paraphrase!.mean, 50);
  close(s.post.Specificity!.mean, 100 / 3, 1e-12);
  close(s.post.S!.mean, 100 * harmonicMean([0.75, 0.5, 1 / 3]), 1e-12);
  throws(() => summarize([z(0, [true], [true], [true]), cfCase(1, {})]), /one dataset kind/);
});

// ------------------------------------------------------------------ shards and merging

Deno.test("shards: every item in exactly one shard, sequential groups never split; merged shards summarise as the whole", () => {
  deepEqual(parseShard("2/5"), { index: 2, count: 5 });
  throws(() => parseShard("5/5"), /0 ≤ i < n/);
  throws(() => parseShard("1"), /i\/n/);
  const items = Array.from({ length: 11 }, (_, i) => i);
  for (const [count, group] of [[1, 1], [3, 1], [4, 2], [2, 5], [20, 3]]) {
    const parts = Array.from({ length: count }, (_, i) => shardItems(items, { index: i, count }, group));
    deepEqual(parts.flat().sort((a, b) => a - b), items, `${count} shards of groups of ${group}`);
    for (const part of parts) {
      for (let g0 = 0; g0 < items.length; g0 += group) {
        const g = items.slice(g0, g0 + group);
        ok(g.every((x) => part.includes(x)) || g.every((x) => !part.includes(x)), "a group is never split");
      }
    }
  }
  deepEqual(shardItems(items, { index: 1, count: 3 }), [1, 4, 7, 10]);

  const rng = (s: number) => () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
  const r = rng(7);
  const cases = Array.from({ length: 23 }, (_, i) =>
    cfCase(i * 3 + 1, {
      rewrite_prompts_probs: [nll(r() * 5, r() * 5)],
      paraphrase_prompts_probs: [nll(r() * 5, r() * 5), nll(r() * 5, r() * 5)],
      neighborhood_prompts_probs: Array.from({ length: 10 }, () => nll(r() * 5, r() * 5)),
      ngram_entropy: 5 + r(),
      reference_score: r(),
    }));
  const whole = summarize(cases);
  const shards = [0, 1, 2].map((i) => shardItems(cases, { index: i, count: 3 }));
  const merged = groupRuns(shards.flatMap((s, i) => s.map((result) => ({ result, source: `shard${i}` }))));
  equal(merged.length, 1);
  deepEqual(summarize(merged[0].cases), whole, "bit-identical summary (cases are summed in case_id order)");
  // a shard copied twice is harmless; a conflicting copy is refused
  const twice = groupRuns([...cases, cases[0]].map((result) => ({ result, source: "x" })));
  equal(twice[0].cases.length, cases.length);
  const changed = { ...cases[0], post: { ...cases[0].post, ngram_entropy: 1 } as CounterFactMetrics };
  throws(() => groupRuns([cases[0], changed].map((result, i) => ({ result, source: `d${i}` }))), MergeError);
  // different runs stay apart
  const other = cases.slice(0, 3).map((c) => ({ ...c, run: { ...RUN, method: "ft" } }));
  deepEqual(
    groupRuns([...cases, ...other].map((result) => ({ result, source: "y" }))).map((
      g,
    ) => [g.run.method, g.cases.length]),
    [
      ["rome", 23],
      ["ft", 3],
    ],
  );
});

// ------------------------------------------------------------------ datasets

const CF = [{
  case_id: 7,
  requested_rewrite: {
    prompt: "{} is located in",
    relation_id: "P17",
    target_new: { str: "France", id: "W:France" },
    target_true: { str: "Italy", id: "W:Italy" },
    subject: "Rome",
  },
  paraphrase_prompts: ["Rome lies in"],
  neighborhood_prompts: ["Milan is located in"],
  attribute_prompts: ["Paris is located in"],
  generation_prompts: ["Rome is"],
}];

Deno.test("datasets: CounterFact and zsRE are told apart and checked; snippets in both forms", () => {
  const cf = parseDataset(CF, "cf.json");
  equal(cf.kind, "counterfact");
  throws(
    () =>
      parseDataset([{ ...CF[0], requested_rewrite: { ...CF[0].requested_rewrite, prompt: "no hole" } }], "f"),
    /exactly one "\{\}"/,
  );
  throws(() => parseDataset([CF[0], CF[0]], "f"), /case_id 7 appears twice/);
  throws(() => parseDataset([{ ...CF[0], paraphrase_prompts: "x" }], "f"), /record 0: 'paraphrase_prompts'/);
  throws(() => parseDataset({}, "f"), DatasetError);
  throws(() => parseDataset([{ foo: 1 }], "f"), /neither a CounterFact record/);

  const zs = parseDataset([{
    subject: "Watts Humphrey",
    src: "What university did Watts Humphrey attend?",
    rephrase: "What university did Watts Humphrey take part in?",
    answers: ["Illinois Institute of Technology"],
    loc: "nq question: who played desmond doss father in hacksaw ridge",
    loc_ans: "Hugo Weaving",
  }], "zsre.json");
  equal(zs.kind, "zsre");
  if (zs.kind !== "zsre") return;
  deepEqual(zs.records[0].requested_rewrite, {
    prompt: "What university did {} attend?",
    subject: "Watts Humphrey",
    target_new: { str: "Illinois Institute of Technology" },
    target_true: { str: "<|endoftext|>" },
  });
  deepEqual(zs.records[0].paraphrase_prompts, ["What university did Watts Humphrey take part in?"]);
  throws(
    () =>
      parseDataset([{
        subject: "X",
        src: "no subject",
        rephrase: "r",
        answers: ["a"],
        loc: "nq question: q",
        loc_ans: "b",
      }], "z"),
    /not in its question/,
  );

  const nested = parseAttributeSnippets({
    P17: { "W:France": [{ name: "Paris", text: "Paris is in France." }] },
  }, "a");
  const list = parseAttributeSnippets([{
    name: "France",
    relation_id: "P17",
    target_id: "W:France",
    samples: [{ name: "Paris", text: "Paris is in France." }],
  }], "b");
  deepEqual(nested, list);
  deepEqual(snippetTexts(list), ["Paris is in France."]);
  equal(recordsWithoutSnippets(cf.records as never, list).length, 0);
  equal(recordsWithoutSnippets(cf.records as never, new Map()).length, 1);
  throws(() => parseAttributeSnippets([{ relation_id: "P1" }], "c"), /target_id/);
});

// ------------------------------------------------------------------ reports

Deno.test("reports: paper column names with 95% intervals, --json record shape, self-contained HTML", () => {
  const pre = {
    rewrite_prompts_probs: [nll(3, 1)],
    paraphrase_prompts_probs: [nll(3, 1)],
    neighborhood_prompts_probs: [nll(3, 1)],
    ngram_entropy: 6,
    reference_score: 0.3,
  };
  const post = {
    ...pre,
    rewrite_prompts_probs: [nll(1, 3)],
    paraphrase_prompts_probs: [nll(1, 3)],
    neighborhood_prompts_probs: [nll(3, 1), nll(1, 3)],
  };
  const cases = [cfCase(0, post, pre), cfCase(1, post, pre)];
  const run: ReportRun = { label: "ROME", run: RUN, summary: summarize(cases), cases };
  const seq = { ...run, label: "ROME, 10 sequential", run: { ...RUN, sequential: 10 } };
  const md = markdownReport([run, seq], "t");
  match(md, /\| Editor \| S \| ES \| EM \| PS \| PM \| NS \| NM \| GE \| RS \| n \|/);
  match(md, /\| ROME \| 75\.0 \| 100\.0 \(0\.0\) \|/); // S = hmean(1, 1, 0.5)
  match(md, /edits applied in sequence/);
  match(textTable([run]), /unedited model \(pre\)/);
  const j = jsonRecord(run);
  deepEqual(Object.keys(j).slice(0, 4), ["method", "n", "summary", "pre"]);
  deepEqual(Object.keys(j.summary as object), ["S", "ES", "EM", "PS", "PM", "NS", "NM", "GE", "RS"]);
  equal((j.summary as Record<string, number>).ES, 100);
  equal((j.pre as Record<string, number>).ES, 0);
  equal((j.summary as Record<string, number>).GE, 600);
  const html = htmlReport([run, seq], "t");
  ok(
    html.startsWith("<!doctype html>") && html.includes("<svg") && !/(src|href)=["']?https?:/.test(html),
    "offline page",
  );
  match(html, /after N edits in sequence/);
});

Deno.test("portability (PT): the share of ported attributes, a column only where records have them", () => {
  const base = {
    rewrite_prompts_probs: [nll(1, 3)],
    paraphrase_prompts_probs: [nll(1, 3)],
    neighborhood_prompts_probs: [nll(3, 1)],
    attribute_prompts_probs: [],
  };
  // case 0: 2 of 3 attributes follow the new fact; case 1 has no portability prompts and does not count
  const ported = { ...base, portability_prompts_probs: [nll(1, 2), nll(0.5, 4), nll(2, 1)] };
  const prePorted = { ...base, portability_prompts_probs: [nll(2, 1), nll(4, 0.5), nll(2, 1)] };
  const cases = [cfCase(0, ported, prePorted), cfCase(1, base, base)];
  const s = summarize(cases);
  close(s.post.PT!.mean, 100 * 2 / 3, 1e-9, "post PT");
  equal(s.post.PT!.n, 1);
  equal(s.pre.PT!.mean, 0);
  const run: ReportRun = { label: "ROME", run: RUN, summary: s, cases };
  match(
    markdownReport([run], "t"),
    /\| Editor \| S \| ES \| EM \| PS \| PM \| NS \| NM \| PT \| GE \| RS \| n \|/,
  );
  equal((jsonRecord(run).summary as Record<string, number>).PT, 66.67);
  // without portability prompts the paper's columns exactly
  const plain = summarize([cfCase(1, base, base)]);
  const run2: ReportRun = { label: "ROME", run: RUN, summary: plain, cases: [cfCase(1, base, base)] };
  ok(!Object.keys(jsonRecord(run2).summary as object).includes("PT"));
  ok(!markdownReport([run2], "t").includes("| PT |"));
});
