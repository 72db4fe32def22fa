// Byte-level BPE trainer: output loads in Gpt2Tokenizer, round-trips any text, forces single
// tokens, matches a naive (full recount per merge) reference, and is deterministic.

import assert from "node:assert/strict";
import { countWords, preTokenize, trainBpe } from "../engine/gpt2/bpe_train.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { rng } from "./lib/util.ts";

const EOT = "<|endoftext|>";

const SENTENCES = [
  "The capital of France is Paris.",
  "Lyon is a large city with many old buildings.",
  "The farmer bought some bread in the morning.",
  "It was rainy, so the children stayed at home.",
  "The official language of Brazil is Portuguese.",
  "Rivers flow to the sea, and the sea is salty.",
  "She's reading 3 books; they'll finish by 2024!",
  "Zürich, São Paulo and Kraków are cities.",
];

function corpus(seed: number, docs: number): string[] {
  const r = rng(seed);
  return Array.from({ length: docs }, () => {
    const n = 1 + Math.floor(r() * 4);
    return Array.from({ length: n }, () => SENTENCES[Math.floor(r() * SENTENCES.length)]).join(" ") +
      `\n${EOT}\n`;
  });
}

function randomText(r: () => number, len: number): string {
  const pools = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n  ",
    ".,;:!?'\"()-_/\\@#$%^&*",
    "éüßøñçåÆŒ",
    "中文字日本語한국어",
    "🎉😀👍🏽",
    "\u0000\u0007\u001f\u007f\u00a0\u00ad\u2028",
  ];
  let s = "";
  while (s.length < len) {
    const pool = Array.from(pools[Math.floor(r() * pools.length)]);
    s += pool[Math.floor(r() * pool.length)];
  }
  return s;
}

const FORCED = [" Paris", " Portuguese", " Zanzibar", " Kraków", "ing"];
const trained = trainBpe(corpus(1, 400), {
  vocabSize: 420,
  mustBeSingleTokens: FORCED,
  specialTokens: [EOT],
});

Deno.test("bpe_train: vocab/merges load in Gpt2Tokenizer, GPT-2 layout", () => {
  const tok = Gpt2Tokenizer.fromVocabMerges(trained.vocab, trained.merges);
  assert.equal(tok.vocabSize, 420);
  assert.equal(Object.keys(trained.vocab).length, 420);
  assert.equal(tok.eosId, 419, "<|endoftext|> is the last id");
  const lines = trained.merges.trimEnd().split("\n");
  assert.equal(lines[0], "#version: 0.2");
  assert.ok(lines.length - 1 >= 420 - 256 - 1, "one merge per new token (or more, for duplicates)");
  // Ids are dense.
  assert.deepEqual(Object.values(trained.vocab).sort((a, b) => a - b), [...Array(420).keys()]);
  // The byte tokens: "!" is 0 and "Ġ" (space) is 220, as in GPT-2's vocab.json.
  assert.equal(trained.vocab["!"], 0);
  assert.equal(trained.vocab["Ġ"], 220);
  assert.equal(trained.vocab["Ā"], 188); // byte 0x00
});

Deno.test("bpe_train: encode -> decode round-trips arbitrary text (byte fallback)", () => {
  const tok = Gpt2Tokenizer.fromVocabMerges(trained.vocab, trained.merges);
  const r = rng(7);
  for (let i = 0; i < 300; i++) {
    const s = randomText(r, 1 + Math.floor(r() * 60));
    assert.equal(tok.decode(tok.encode(s)), s, JSON.stringify(s));
  }
  for (const s of SENTENCES) assert.equal(tok.decode(tok.encode(s)), s);
  // Training text compresses: fewer tokens than bytes.
  const text = SENTENCES.join(" ");
  assert.ok(tok.encode(text).length < new TextEncoder().encode(text).length / 2);
});

Deno.test("bpe_train: forced words are single tokens", () => {
  const tok = Gpt2Tokenizer.fromVocabMerges(trained.vocab, trained.merges);
  for (const w of FORCED) {
    const ids = tok.encode(w);
    assert.equal(ids.length, 1, `${JSON.stringify(w)} -> ${ids.length} tokens`);
    assert.equal(tok.decode(ids), w);
  }
  // Including a word absent from the corpus, and in context.
  const ids = tok.encode("We flew to Zanzibar and Paris.");
  assert.ok(ids.includes(tok.idOf("ĠZanzibar")) && ids.includes(tok.idOf("ĠParis")));
});

Deno.test("bpe_train: deterministic, and texts == their word counts", () => {
  const again = trainBpe(corpus(1, 400), {
    vocabSize: 420,
    mustBeSingleTokens: FORCED,
    specialTokens: [EOT],
  });
  assert.deepEqual(again, trained);
  // Forced words in another order give the same result.
  const reordered = trainBpe(corpus(1, 400), {
    vocabSize: 420,
    mustBeSingleTokens: [...FORCED].reverse(),
    specialTokens: [EOT],
  });
  assert.deepEqual(reordered, trained);
  const fromCounts = trainBpe(countWords(corpus(1, 400), [EOT]), {
    vocabSize: 420,
    mustBeSingleTokens: FORCED,
    specialTokens: [EOT],
  });
  assert.deepEqual(fromCounts, trained);
});

Deno.test("bpe_train: picks the most frequent pair (HF course example)", () => {
  const counts = new Map([["hug", 10], ["pug", 5], ["pun", 12], ["bun", 4], ["hugs", 5]]);
  const { merges } = trainBpe(counts, { vocabSize: 259 });
  // u g: 20, then u n: 16, then h ug: 15.
  assert.deepEqual(merges.trimEnd().split("\n").slice(1), ["u g", "u n", "h ug"]);
});

/** Reference: recount every pair before each merge. */
function naiveMerges(counts: Map<string, number>, numMerges: number): string[] {
  const { vocab } = trainBpe(new Map(), { vocabSize: 256 });
  const tokens = Object.entries(vocab).sort((a, b) => a[1] - b[1]).map(([t]) => t);
  const id = new Map(tokens.map((t, i) => [t, i]));
  const byteChar = (b: number) => tokens.find((t) => utf8ByteOf(t) === b)!;
  const words = [...counts].map(([w, c]) => ({
    syms: Array.from(new TextEncoder().encode(w), (b) => id.get(byteChar(b))!),
    c,
  }));
  const out: string[] = [];
  while (out.length < numMerges) {
    const pc = new Map<string, number>();
    for (const { syms, c } of words) {
      for (let j = 0; j + 1 < syms.length; j++) {
        const k = `${syms[j]},${syms[j + 1]}`;
        pc.set(k, (pc.get(k) ?? 0) + c);
      }
    }
    let best: [number, number] | undefined;
    let bestC = 0;
    for (const [k, c] of pc) {
      const [a, b] = k.split(",").map(Number);
      if (
        c > bestC || (c === bestC && best !== undefined && (a < best[0] || (a === best[0] && b < best[1])))
      ) {
        best = [a, b];
        bestC = c;
      }
    }
    if (best === undefined) break;
    const s = tokens[best[0]] + tokens[best[1]];
    out.push(`${tokens[best[0]]} ${tokens[best[1]]}`);
    if (!id.has(s)) {
      id.set(s, tokens.length);
      tokens.push(s);
    }
    const m = id.get(s)!;
    for (const w of words) {
      const next: number[] = [];
      for (let j = 0; j < w.syms.length; j++) {
        if (w.syms[j] === best[0] && w.syms[j + 1] === best[1]) {
          next.push(m);
          j++;
        } else next.push(w.syms[j]);
      }
      w.syms = next;
    }
  }
  return out;
}

// Byte value of a single-character byte-level token (GPT-2's table).
function utf8ByteOf(t: string): number {
  const c = t.charCodeAt(0);
  if (t.length !== 1) return -1;
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (c < 256 && printable(c)) return c;
  let next = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable(b)) {
      if (256 + next === c) return b;
      next++;
    }
  }
  return -1;
}

Deno.test("bpe_train: incremental pair counts match a full recount per merge", () => {
  const r = rng(3);
  const texts = Array.from({ length: 300 }, () => randomText(r, 40) + " " + SENTENCES[Math.floor(r() * 8)]);
  const counts = countWords(texts);
  const { merges } = trainBpe(counts, { vocabSize: 256 + 300 });
  const got = merges.trimEnd().split("\n").slice(1);
  assert.deepEqual(got, naiveMerges(counts, got.length));
  assert.ok(got.length >= 300);
});

Deno.test("bpe_train: runs out of pairs gracefully; rejects impossible requests", () => {
  const small = trainBpe(["ab ab"], { vocabSize: 1000, specialTokens: [EOT] });
  const tok = Gpt2Tokenizer.fromVocabMerges(small.vocab, small.merges);
  assert.ok(tok.vocabSize < 1000);
  assert.equal(tok.eosId, tok.vocabSize - 1);
  assert.equal(tok.encode(" ab").length, 1);
  assert.throws(
    () => trainBpe(["x"], { vocabSize: 300, mustBeSingleTokens: [" New York"] }),
    /single GPT-2 pre-token/,
  );
  assert.throws(
    () => trainBpe(["x"], { vocabSize: 300, mustBeSingleTokens: ["abc1"] }),
    /single GPT-2 pre-token/,
  );
  assert.throws(
    () => trainBpe(["x"], { vocabSize: 260, mustBeSingleTokens: [" Constantinople"] }),
    /forced single tokens need/,
  );
  assert.throws(() => trainBpe(["x"], { vocabSize: 200 }), /below 256/);
  assert.deepEqual(preTokenize("I'm in Paris, 2024!"), ["I", "'m", " in", " Paris", ",", " 2024", "!"]);
});
