// The evaluation on tiny random GPT-2 models: length-normalised target NLLs against hand arithmetic on a
// float64 forward's log-probabilities, generations as generate_fast shapes them, the perplexity, zsRE's
// teacher-forced top-1 checks on a hand-written file, the L∞ clamp kernel against float64, FT and FT+L
// (the constraint holds, and binds), and the harness (every edit reverted bit for bit, sequential groups).
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { generate } from "../engine/gpt2/generate.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { defaultHparams } from "../rome/hparams.ts";
import { normalizeRequest } from "../rome/request.ts";
import { type CounterFactRecord, parseDataset } from "../eval/datasets.ts";
import { executeFineTune, type FtHparams, parseFtHparams } from "../eval/finetune.ts";
import { clampToBand } from "../engine/ops.ts";
import { caseSeed, editGroups, type EvalCaseStore, runEvaluation } from "../eval/harness.ts";
import { counterFactMetrics, zsreMetrics } from "../eval/measure.ts";
import { type CaseResult, type CounterFactMetrics, type RunIdentity, summarize } from "../eval/metrics.ts";
import { fineTuneMethod, romeMethod } from "../eval/methods.ts";
import { EvalInputError, generateTexts, perplexity, targetNlls } from "../eval/probes.ts";
import { TfidfVectorizer } from "../eval/text.ts";
import {
  sensitiveWeights,
  TINY_CONFIG,
  tinyRewrite,
  tinyVocab,
  withModel,
  ZSRE_RIVER,
} from "./lib/fixtures.ts";
import { referenceForward } from "./lib/gpt2_reference.ts";
import { randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();
const CONFIG: Gpt2Config = { ...TINY_CONFIG, nEmbd: 32, nInner: 128, nPositions: 48 };
const tiny = tinyVocab();
const tokenizer = Gpt2Tokenizer.fromVocabMerges(tiny.vocab, tiny.merges);

const sensitive = (seed: number) => sensitiveWeights(CONFIG, seed);

async function weightBits(m: Gpt2Model): Promise<Map<string, Uint32Array>> {
  const names = [...m.weights.keys()];
  const data = await engine.readMany(names.map((n) => m.w(n)));
  return new Map(names.map((n, i) => [n, new Uint32Array((data[i] as Float32Array).slice().buffer)]));
}

function sameBits(a: Map<string, Uint32Array>, b: Map<string, Uint32Array>): boolean {
  return [...a].every(([n, x]) => {
    const y = b.get(n)!;
    return x.length === y.length && x.every((v, i) => v === y[i]);
  });
}

// ------------------------------------------------------------------ probes

Deno.test("targetNlls: the mean per-token NLL of a multi-token target, by hand from float64 log-probs", async () => {
  const w = sensitive(11);
  await withModel(engine, CONFIG, w, async (model) => {
    const prefix = "I saw the river";
    const p = tokenizer.encode(prefix);
    const a = tokenizer.encode(" tower on"), b = tokenizer.encode(" a");
    ok(a.length >= 3 && b.length === 1, `targets of ${a.length} and ${b.length} tokens`);
    const [got] = await targetNlls(model, tokenizer, [prefix], "tower on", "a");
    // log p(a_j | p, a_<j) from the float64 forward of the whole row, position P − 1 + j
    const lp = referenceForward(CONFIG, w, [...p, ...a], { positions: a.map((_, j) => p.length - 1 + j) });
    const byHand = -a.reduce((s, t, j) => s + lp[j][t], 0) / a.length;
    const [lpTrue] = referenceForward(CONFIG, w, p, { positions: [p.length - 1] });
    ok(Math.abs(got.target_new - byHand) < 2e-4, `new: ${got.target_new} vs ${byHand}`);
    ok(Math.abs(got.target_true - -lpTrue[b[0]]) < 2e-4, `true: ${got.target_true} vs ${-lpTrue[b[0]]}`);
    // length-normalised: the mean, not the sum, of the token NLLs
    ok(
      Math.abs(got.target_new * a.length - byHand * a.length) < 1e-3 &&
        Math.abs(got.target_new - byHand * a.length) > 0.1,
    );
    // batching several prefixes gives each row its own values
    const many = await targetNlls(model, tokenizer, ["the cat", prefix, "on a mat in"], "tower on", "a");
    ok(
      Math.abs(many[1].target_new - got.target_new) < 1e-5 &&
        Math.abs(many[1].target_true - got.target_true) < 1e-5,
    );
    await rejects(() => targetNlls(model, tokenizer, [""], "a", "b"), EvalInputError);
  });
});

Deno.test("generateTexts: prompt + continuation up to max_out_len tokens, seeded; perplexity by hand", async () => {
  const w = sensitive(12);
  await withModel(engine, CONFIG, w, async (model) => {
    const prompts = ["the cat", "the cat", "I saw the river on a mat"];
    const g = { maxOutLen: 20, topK: 5, seed: 3 };
    const texts = await generateTexts(model, tokenizer, prompts, g);
    // what generate_fast returns: each row's prompt and sampled tokens up to 20 in all, decoded whole
    const ids = prompts.map((p) => tokenizer.encode(p));
    const raw = await generate(model, ids, {
      maxTokens: 20 - Math.min(...ids.map((t) => t.length)),
      topK: 5,
      seed: 3,
    });
    deepEqual(
      texts,
      ids.map((t, i) =>
        tokenizer.decode([...t, ...raw[i].slice(0, 20 - t.length)]).normalize("NFKD").replaceAll("\n\n", " ")
      ),
    );
    texts.forEach((t, i) => ok(t.startsWith(prompts[i]), "each text starts with its prompt"));
    ok(texts[0] !== texts[1], "duplicate prompts are sampled independently");
    deepEqual(await generateTexts(model, tokenizer, prompts, g), texts, "the same seed gives the same texts");
    // a prompt already as long as max_out_len is returned as is
    deepEqual(await generateTexts(model, tokenizer, ["I saw the river"], { ...g, maxOutLen: 3 }), [
      "I saw the river",
    ]);

    const text = "the cat sat on a mat";
    const tt = tokenizer.encode(text);
    const lp = referenceForward(CONFIG, w, tt, { positions: tt.slice(0, -1).map((_, i) => i) });
    const sum = tt.slice(1).reduce((s, t, i) => s + lp[i][t], 0);
    const ppl = await perplexity(model, tokenizer, text);
    const want = Math.exp(-sum / tt.length);
    ok(Math.abs(ppl - want) / ppl < 1e-4, `perplexity ${ppl} vs ${want} (N = all tokens)`);
    equal(await perplexity(model, tokenizer, "a"), 1);
  });
});

Deno.test("zsRE: teacher-forced top-1 per target token on a hand-written file, against float64 argmaxes", async () => {
  const w = sensitive(13);
  await withModel(engine, CONFIG, w, async (model) => {
    const ds = parseDataset([
      ZSRE_RIVER,
      {
        subject: "Eiffel",
        src: "Eiffel was built by",
        rephrase: "Who built Eiffel",
        answers: ["a"],
        loc: "nq question: what is in a tower",
        loc_ans: "he",
      },
      // " a" is this model's most likely token after "the cat a" (found by search over short prompts)
      {
        subject: "the cat",
        src: "the cat a",
        rephrase: "the cat",
        answers: ["a"],
        loc: "nq question: the cat",
        loc_ans: "a",
      },
    ], "hand.json");
    if (ds.kind !== "zsre") throw new Error("not zsRE");
    let anyCorrect = false;
    for (const r of ds.records) {
      const m = await zsreMetrics(model, tokenizer, r);
      const t = tokenizer.encode(" " + r.requested_rewrite.target_new.str);
      const ans = tokenizer.encode(" " + r.loc_ans);
      const expect = (prompt: string, toks: number[]) =>
        toks.map((tok, i) => {
          const ids = tokenizer.encode(prompt + tokenizer.decode(toks.slice(0, i)));
          const [lp] = referenceForward(CONFIG, w, ids);
          let best = 0;
          for (let v = 1; v < lp.length; v++) if (lp[v] > lp[best]) best = v;
          return best === tokenizer.encode(tokenizer.decode([tok]))[0];
        });
      const src = r.requested_rewrite.prompt.replace("{}", r.requested_rewrite.subject);
      deepEqual(m.rewrite_prompts_correct, expect(src, t));
      deepEqual(m.paraphrase_prompts_correct, expect(r.paraphrase_prompts[0], t));
      deepEqual(m.neighborhood_prompts_correct, expect(r.loc + "?", ans));
      equal(m.rewrite_prompts_correct.length, t.length);
      anyCorrect ||= [...m.rewrite_prompts_correct, ...m.neighborhood_prompts_correct].some((b) => b);
    }
    ok(anyCorrect, "the model's top-1 answer counts as correct");
  });
});

// ------------------------------------------------------------------ FT and FT+L

Deno.test("clamp kernel: w = clamp(w, w0 − ε, w0 + ε) bit for bit against float32 arithmetic done in float64", async () => {
  for (const n of [1, 257, 70_001]) {
    const w = randn(n, n, 0.1), w0 = randn(n, n + 1, 0.1);
    const eps = 0.03;
    const wt = engine.upload(w, [n]), w0t = engine.upload(w0, [n]);
    engine.keep([wt, w0t]);
    clampToBand(wt, w0t, eps);
    const got = await wt.read() as Float32Array;
    wt.dispose();
    w0t.dispose();
    const e32 = Math.fround(eps);
    for (let i = 0; i < n; i++) {
      const lo = Math.fround(w0[i] - e32), hi = Math.fround(w0[i] + e32);
      const want = Math.min(Math.max(w[i], lo), hi);
      if (got[i] !== want) throw new Error(`n ${n}, element ${i}: ${got[i]} vs ${want}`);
    }
  }
});

function ftHparams(eps: number | false, steps = 12): FtHparams {
  return parseFtHparams(
    { layers: [1], num_steps: steps, lr: 0.02, weight_decay: 0, norm_constraint: eps },
    "test",
    eps !== false,
  );
}

Deno.test("FT+L keeps ‖W − W₀‖∞ ≤ ε (the bound is reached); FT without it moves further; both lower the loss", async () => {
  const request = normalizeRequest({ prompt: "I saw {}", subject: "the river", target_new: "tower on" });
  const eps = 0.004;
  const change = async (hp: FtHparams) => {
    return await withModel(engine, CONFIG, sensitive(14), async (model) => {
      const name = "h.1.mlp.c_proj.weight";
      const w0 = await model.w(name).read() as Float32Array;
      const r = await executeFineTune(model, tokenizer, request, hp);
      const w1 = await model.w(name).read() as Float32Array;
      let max = 0, outside = 0;
      for (let i = 0; i < w0.length; i++) {
        max = Math.max(max, Math.abs(w1[i] - w0[i]));
        const e32 = Math.fround(eps);
        if (w1[i] < Math.fround(w0[i] - e32) || w1[i] > Math.fround(w0[i] + e32)) outside++;
      }
      const other = await model.w("h.0.mlp.c_proj.weight").read();
      const orig = sensitive(14).get("h.0.mlp.c_proj.weight")!;
      ok(other.every((v, i) => v === orig[i]), "other layers untouched");
      return { r, max, outside };
    });
  };
  const l = await change(ftHparams(eps));
  equal(l.outside, 0, "every element within [w0 − ε, w0 + ε] (f32 bounds)");
  ok(l.max <= eps * (1 + 1e-5), `max |ΔW| ${l.max} ≤ ε ${eps}`);
  ok(l.max >= eps * 0.99, `the constraint binds: max |ΔW| ${l.max}`);
  ok(l.r.losses.at(-1)! < l.r.losses[0], `FT+L loss ${l.r.losses[0]} → ${l.r.losses.at(-1)}`);
  const f = await change(ftHparams(false));
  ok(f.max > 2 * eps, `unconstrained FT moves W by ${f.max}`);
  ok(f.r.losses.at(-1)! < l.r.losses.at(-1)!, "unconstrained FT fits better");
  equal(
    f.r.steps,
    f.r.losses.length - (f.r.losses.at(-1)! < 1e-2 ? 1 : 0),
    "a step after every forward above the stop loss",
  );
});

// ------------------------------------------------------------------ the harness

function cfRecord(id: number, subject: string, tnew: string, ttrue: string): CounterFactRecord {
  return {
    case_id: id,
    requested_rewrite: tinyRewrite(subject, tnew, ttrue),
    paraphrase_prompts: [`The cat sat. I saw ${subject} on`],
    neighborhood_prompts: ["I saw a mat in", "I saw the cat in"],
    attribute_prompts: [`the ${tnew} is in`],
    generation_prompts: [`${subject} is`, `${subject} is`],
  };
}

const RECORDS = [
  cfRecord(0, "the river", "the", "a"),
  cfRecord(4, "Eiffel Tower", "on", "the"),
  cfRecord(9, "a mat", "he", "in"),
];

function memoryStore(): EvalCaseStore & { map: Map<number, CaseResult> } {
  const map = new Map<number, CaseResult>();
  return {
    map,
    get: (id) => Promise.resolve(map.get(id)),
    put: (r) => Promise.resolve(void map.set(r.case_id, r)),
  };
}

const baseRun = (method: string, sequential = 1): RunIdentity => ({
  dataset_kind: "counterfact",
  dataset_hash: "t",
  method,
  hparams_hash: "t",
  model_hash: "t",
  sequential,
  generation: { max_out_len: 16, top_k: 5, seed: 2, tfidf: "fit" },
  engine_version: "test",
});

Deno.test("harness: FT, ROME and sequential runs leave the model bit for bit unchanged; post differs from pre; resumes", async () => {
  await withModel(engine, CONFIG, sensitive(15), async (model) => {
    const before = await weightBits(model);
    const snippets = new Map([[
      "P1",
      new Map(["the", "on", "he"].map((t) => [`N${t}`, [{ name: "x", text: `${t} cat sat on ${t} mat` }]])),
    ]]);
    const generation = {
      settings: { maxOutLen: 16, topK: 5, seed: 2 },
      snippets,
      vectorizer: TfidfVectorizer.fit(["the cat sat on the mat", "on cat", "he sat"]),
    };
    const dataset = { kind: "counterfact" as const, records: RECORDS };
    const ft = fineTuneMethod("ft", ftHparams(false, 8));
    const store = memoryStore();
    const runFt = () =>
      runEvaluation({
        model,
        tokenizer,
        dataset,
        method: ft,
        run: baseRun("ft"),
        generation,
        store,
      });
    const r1 = await runFt();
    equal(r1.computed, 3);
    ok(sameBits(before, await weightBits(model)), "FT edits reverted exactly");
    for (const c of r1.results) {
      const post = c.post as CounterFactMetrics, pre = c.pre as CounterFactMetrics;
      ok(
        post.rewrite_prompts_probs[0].target_new < pre.rewrite_prompts_probs[0].target_new,
        `case ${c.case_id}: FT lowers NLL(new)`,
      );
      equal(post.text!.length, 2);
      ok(c.time > 0 && c.edit!.matrix === "h.1.mlp.c_proj.weight");
    }
    // pre is what the unedited model gives
    deepEqual(
      r1.results[0].pre,
      await counterFactMetrics(model, tokenizer, RECORDS[0], {
        ...generation,
        settings: { ...generation.settings, seed: caseSeed(2, 0) },
      }),
    );
    // a second run finds every case
    const again = await runFt();
    equal(again.computed, 0);
    equal(again.skipped, 3);
    // results of another run are never overwritten
    await rejects(
      () => runEvaluation({ model, tokenizer, dataset, method: ft, run: baseRun("ft-l"), generation, store }),
      /already stored from another run/,
    );

    const hp = {
      ...defaultHparams(CONFIG).hparams,
      layers: [1],
      mom2_adjustment: false,
      v_num_grad_steps: 4,
    };
    const rome = romeMethod({
      hparams: hp,
      templates: ["{}", "The cat. {}"],
      secondMoment: null,
      statsId: "identity",
      templateSeed: 1,
    });
    const seq = memoryStore();
    const r2 = await runEvaluation({
      model,
      tokenizer,
      dataset,
      method: rome,
      run: baseRun("rome", 2),
      store: seq,
    });
    equal(r2.results.length, 3);
    ok(sameBits(before, await weightBits(model)), "two stacked ROME edits reverted exactly");
    deepEqual(r2.results.map((c) => c.sequential), [
      { n: 2, group: 0, position: 0, members: [0, 4] },
      { n: 2, group: 0, position: 1, members: [0, 4] },
      { n: 2, group: 1, position: 0, members: [9] },
    ]);
    ok(r2.results.every((c) => c.edit!.matrix === "h.1.mlp.c_proj.weight"));
    // only shard 1 of 2: the second group
    const sh = await runEvaluation({
      model,
      tokenizer,
      dataset,
      method: rome,
      run: baseRun("rome", 2),
      store: memoryStore(),
      shard: { index: 1, count: 2 },
    });
    deepEqual(sh.results.map((c) => c.case_id), [9]);
    deepEqual(sh.results[0].post, r2.results[2].post, "a group's results do not depend on the shard");
    equal(summarize(r2.results).n, 3);
    deepEqual(editGroups([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]]);
    ok(
      caseSeed(1, 5) !== caseSeed(1, 6) && caseSeed(2, 5) !== caseSeed(1, 5),
      "each case and seed draws its own texts",
    );
  });
});
