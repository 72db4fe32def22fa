// Generation speed: `generate` (KV cache: the prompts run once, then one token per row per step) beside
// re-running the whole prefix every step (the path before the cache), greedy, on the same prompts in one
// run; it also says whether the two produced the same tokens. Shapes: a CounterFact case's generation
// tests on the bundled model (10 prompts, 95 new tokens; eval's GE/RS), and GPT-2 small's shapes (random
// weights, 1 prompt of 8 tokens, 32 new tokens).
import { type Engine, getEngine } from "../engine/engine.ts";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";
import { generate, nextTokenLogprobs, topK } from "../engine/gpt2/generate.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { GPT2_SMALL } from "../tests/lib/fixtures.ts";
import { randomGpt2Model, runAlone } from "./util.ts";

const BUNDLED = new URL("../models/world-gpt2", import.meta.url).pathname;

/** Greedy decoding by re-running every row's whole prefix each step (no cache). */
async function fullPrefixGreedy(
  model: Gpt2Model,
  prompts: number[][],
  maxTokens: number,
): Promise<number[][]> {
  const rows = prompts.map((p) => [...p]), out: number[][] = prompts.map(() => []);
  for (let step = 0; step < maxTokens; step++) {
    const live = rows.map((_, i) => i).filter((i) => rows[i].length < model.config.nPositions);
    if (live.length === 0) break;
    const lps = await nextTokenLogprobs(model, live.map((i) => rows[i]));
    live.forEach((i, j) => {
      const id = topK(lps[j], 1)[0].id;
      rows[i].push(id);
      out[i].push(id);
    });
  }
  return out;
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, (performance.now() - t0) / 1000];
}

export async function run(
  engine: Engine,
  opts: { json: boolean; quick?: boolean },
): Promise<Record<string, unknown>[]> {
  const cases: { name: string; model: Gpt2Model; prompts: number[][]; tokens: number }[] = [];
  const { model: world, tokenizer } = await loadGpt2Folder(engine, BUNDLED);
  const texts = [
    "Prices in Canada are",
    "The people of Canada are",
    "In Canada, people often",
    "Canada is a",
    "Canada has a",
    "The history of Canada is",
    "Travelling through Canada, you will see",
    "The official currency of Canada is the",
    "To buy things in Canada, you need the",
    "Canada uses a currency called the",
  ];
  cases.push({
    name: "bundled_b10_new95",
    model: world,
    prompts: texts.map((t) => tokenizer.encode(t)),
    tokens: opts.quick ? 20 : 95,
  });
  if (!opts.quick) {
    const small = randomGpt2Model(engine, GPT2_SMALL);
    cases.push({
      name: "gpt2_small_b1_new32",
      model: small,
      prompts: [[464, 3139, 286, 4881, 318, 6342, 13, 383]],
      tokens: 32,
    });
  }
  if (!opts.json) {
    console.log("case                   new tokens   cached s   full-prefix s   speed-up   same tokens");
  }
  const rows: Record<string, unknown>[] = [];
  for (const c of cases) {
    await generate(c.model, c.prompts, { maxTokens: 2, topK: 1, seed: 0 }); // compiles pipelines
    await fullPrefixGreedy(c.model, c.prompts, 2);
    const [cached, cachedS] = await timed(() =>
      generate(c.model, c.prompts, { maxTokens: c.tokens, topK: 1, seed: 0 })
    );
    const [full, fullS] = await timed(() => fullPrefixGreedy(c.model, c.prompts, c.tokens));
    const same = cached.every((r, i) => r.join() === full[i].join());
    const row = {
      name: c.name,
      new_tokens: c.tokens * c.prompts.length,
      cached_s: cachedS,
      full_prefix_s: fullS,
      speedup: fullS / cachedS,
      same_tokens: same,
    };
    rows.push(row);
    if (!opts.json) {
      console.log(
        `${c.name.padEnd(22)} ${String(row.new_tokens).padStart(10)} ${cachedS.toFixed(2).padStart(10)} ${
          fullS.toFixed(2).padStart(15)
        } ${row.speedup.toFixed(1).padStart(9)}× ${String(same).padStart(13)}`,
      );
    }
    for (const t of c.model.weights.values()) t.dispose();
  }
  engine.pool.trim();
  return rows;
}

if (import.meta.main) await runAlone(run, await getEngine(), 2);
