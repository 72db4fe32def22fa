/**
 * Byte-level BPE trainer producing GPT-2-format `vocab.json` / `merges.txt` that load in our
 * `Gpt2Tokenizer` (engine/gpt2/tokenizer.ts).
 *
 * Plain ES module with no Deno APIs (runs in the browser too).
 *
 * Same pre-tokenisation regex and bytes_to_unicode alphabet as tokenizer.ts (imported from it).
 *
 * Algorithm (the standard one, as in HF `tokenizers`' BpeTrainer without min_frequency):
 * - Split every text into pre-tokens ("words") and count them; merges never cross words.
 * - Start from the 256 byte tokens, ids 0..255 in GPT-2's order (the printable bytes first).
 * - Repeatedly merge the most frequent adjacent pair (count = sum over words of occurrences
 *   x word count), ties broken by the smaller (left id, right id), until the vocab has
 *   `vocabSize` entries (special tokens included) or no pair is left.
 * - Pair counts are kept incrementally: a merge only rescans the words that contain the pair
 *   (an index pair -> words), and the best pair comes from a max-heap with lazy deletion.
 *
 * Forced single tokens (`mustBeSingleTokens`, e.g. " Paris"): before the frequency-driven
 * merges, a first phase runs the same algorithm on those words alone (weighted by their
 * corpus counts + 1) until each is one token. Their merges therefore have the lowest ranks,
 * and later merges can no longer split them (merging only joins tokens), so the tokenizer,
 * which applies merges in rank order, reproduces the single token. The result is verified by
 * encoding every forced word with `Gpt2Tokenizer`; a failure throws.
 */

import { BYTE_TO_CHAR, Gpt2Tokenizer, PRETOKENIZE } from "./tokenizer.ts";

/** GPT-2's vocab.json numbers the byte tokens in this order: printable bytes, then the rest. */
const BYTE_ORDER: readonly number[] = [...Array(256).keys()].sort((a, b) =>
  Number(BYTE_TO_CHAR[a].charCodeAt(0) >= 256) - Number(BYTE_TO_CHAR[b].charCodeAt(0) >= 256) || a - b
);
const utf8 = new TextEncoder();

export interface TrainBpeOptions {
  /** Total vocab size including the 256 byte tokens and the special tokens. */
  vocabSize: number;
  /**
   * Strings that must each encode to exactly one token, e.g. " Paris". Each must be a single
   * GPT-2 pre-token (one regex match: no inner space, no letter/digit/punctuation mix).
   */
  mustBeSingleTokens?: string[];
  /** Added after all merges, in order (put "<|endoftext|>" last so it gets the last id). */
  specialTokens?: string[];
}

export interface TrainBpeResult {
  /** token -> id, as in GPT-2's vocab.json. */
  vocab: Record<string, number>;
  /** Text of merges.txt: "#version: 0.2" then one "left right" rule per line, by rank. */
  merges: string;
}

/** Splits text into GPT-2 pre-tokens ("words"). */
export function preTokenize(text: string): string[] {
  return Array.from(text.matchAll(PRETOKENIZE), (m) => m[0]);
}

/**
 * Counts pre-tokens over texts. Occurrences of special tokens are cut out first (they are
 * never split by BPE); pass the same list as `trainBpe`'s `specialTokens`.
 */
export function countWords(texts: Iterable<string>, specialTokens: string[] = []): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) {
    let pieces = [text];
    for (const special of specialTokens) pieces = pieces.flatMap((p) => p.split(special));
    for (const piece of pieces) {
      for (const m of piece.matchAll(PRETOKENIZE)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
    }
  }
  return counts;
}

/** Trains a byte-level BPE on texts (or on a ready word -> count map of pre-tokens). */
export function trainBpe(
  input: Iterable<string> | Map<string, number>,
  opts: TrainBpeOptions,
): TrainBpeResult {
  const specials = opts.specialTokens ?? [];
  const forced = opts.mustBeSingleTokens ?? [];
  if (new Set(specials).size !== specials.length) throw new Error("trainBpe: duplicate special tokens");
  const mergeBudget = opts.vocabSize - 256 - specials.length;
  if (!Number.isInteger(opts.vocabSize) || mergeBudget < 0) {
    throw new Error(`trainBpe: vocabSize ${opts.vocabSize} is below 256 bytes + ${specials.length} specials`);
  }
  const counts = input instanceof Map ? input : countWords(input, specials);
  for (const word of forced) {
    const pieces = preTokenize(word);
    if (word === "" || pieces.length !== 1 || pieces[0] !== word) {
      throw new Error(
        `trainBpe: ${JSON.stringify(word)} is not a single GPT-2 pre-token (${
          JSON.stringify(pieces)
        }), so no vocab can make it one token`,
      );
    }
  }

  const tokens: string[] = BYTE_ORDER.map((b) => BYTE_TO_CHAR[b]);
  const tokenId = new Map<string, number>(tokens.map((t, i) => [t, i]));
  const byteId = new Int32Array(256);
  BYTE_ORDER.forEach((b, i) => (byteId[b] = i));
  const toSymbols = (word: string) => Array.from(utf8.encode(word), (b) => byteId[b]);

  const merges: [number, number][] = [];
  // Records a merge; returns the id of the merged token (new unless a different merge
  // already produced the same string, which BPE allows and the tokenizer handles).
  const addMerge = (a: number, b: number): number => {
    merges.push([a, b]);
    const s = tokens[a] + tokens[b];
    let id = tokenId.get(s);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(s);
      tokenId.set(s, id);
    }
    return id;
  };
  const newTokens = () => tokens.length - 256;

  // Phase 1: make the forced words single tokens.
  const uniqueForced = [...new Set(forced)].sort(cmpStr);
  if (uniqueForced.length > 0) {
    const phase = new PairCounter(
      uniqueForced.map(toSymbols),
      uniqueForced.map((w) => (counts.get(w) ?? 0) + 1),
    );
    for (;;) {
      const best = phase.best();
      if (best === undefined) break;
      const id = addMerge(best[0], best[1]);
      phase.merge(best[0], best[1], id);
    }
    if (newTokens() > mergeBudget) {
      throw new Error(
        `trainBpe: the ${uniqueForced.length} forced single tokens need ${newTokens()} merged tokens, ` +
          `more than vocabSize ${opts.vocabSize} leaves (${mergeBudget})`,
      );
    }
  }

  // Phase 2: frequency-driven merges on the whole corpus, after replaying phase 1's merges.
  const words = [...counts.keys()].sort(cmpStr);
  const corpus = new PairCounter(words.map(toSymbols), words.map((w) => counts.get(w)!));
  for (const [a, b] of merges) corpus.merge(a, b, tokenId.get(tokens[a] + tokens[b])!);
  while (newTokens() < mergeBudget) {
    const best = corpus.best();
    if (best === undefined) break;
    const id = addMerge(best[0], best[1]);
    corpus.merge(best[0], best[1], id);
  }

  for (const special of specials) {
    if (tokenId.has(special)) {
      throw new Error(`trainBpe: special token ${JSON.stringify(special)} is already a token`);
    }
    tokenId.set(special, tokens.length);
    tokens.push(special);
  }

  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => (vocab[t] = i));
  const mergesText = ["#version: 0.2", ...merges.map(([a, b]) => `${tokens[a]} ${tokens[b]}`)].join("\n") +
    "\n";

  // Verify with the real tokenizer.
  const tok = Gpt2Tokenizer.fromVocabMerges(vocab, mergesText);
  const failed = uniqueForced.filter((w) => tok.encode(w).length !== 1);
  if (failed.length > 0) {
    throw new Error(`trainBpe: forced words are not single tokens: ${JSON.stringify(failed.slice(0, 20))}`);
  }
  return { vocab, merges: mergesText };
}

function cmpStr(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// Pair keys: left * KEY + right. Ids stay far below 2^21, so keys are exact doubles.
const KEY = 2 ** 21;

/** Incremental pair counts over a fixed set of words, with a lazily-updated max-heap. */
class PairCounter {
  private readonly words: number[][];
  private readonly freq: number[];
  private readonly pairCount = new Map<number, number>();
  private readonly pairWords = new Map<number, Set<number>>();
  // Max-heap of [count, key]; an entry is valid iff its count equals pairCount's.
  private readonly heap: [number, number][] = [];

  constructor(words: number[][], freq: number[]) {
    this.words = words;
    this.freq = freq;
    words.forEach((w, i) => this.addPairs(i, w));
    for (const [key, c] of this.pairCount) this.push(c, key);
  }

  /** Most frequent pair (ties: smallest key, i.e. left id then right id), or undefined. */
  best(): [number, number] | undefined {
    while (this.heap.length > 0) {
      const [c, key] = this.heap[0];
      const current = this.pairCount.get(key) ?? 0;
      if (current === c && c > 0) return [Math.floor(key / KEY), key % KEY];
      this.pop();
      // A stale entry whose pair lost occurrences: requeue with its current count.
      if (current > 0 && current < c) this.push(current, key);
    }
    return undefined;
  }

  /** Replaces every (a, b) in every word, left to right and non-overlapping, by `merged`. */
  merge(a: number, b: number, merged: number): void {
    const where = this.pairWords.get(a * KEY + b);
    if (where === undefined) return;
    const touched = [...where].sort((x, y) => x - y);
    const changed = new Set<number>();
    for (const i of touched) {
      const w = this.words[i];
      this.removePairs(i, w);
      const out: number[] = [];
      for (let j = 0; j < w.length; j++) {
        if (w[j] === a && j + 1 < w.length && w[j + 1] === b) {
          out.push(merged);
          j++;
        } else {
          out.push(w[j]);
        }
      }
      this.words[i] = out;
      for (const key of this.addPairs(i, out)) changed.add(key);
    }
    // Counts only grow through addPairs; requeue those (decreases are found lazily in best()).
    for (const key of changed) {
      const c = this.pairCount.get(key) ?? 0;
      if (c > 0) this.push(c, key);
    }
  }

  private addPairs(i: number, w: number[]): number[] {
    const f = this.freq[i];
    const keys: number[] = [];
    for (let j = 0; j + 1 < w.length; j++) {
      const key = w[j] * KEY + w[j + 1];
      this.pairCount.set(key, (this.pairCount.get(key) ?? 0) + f);
      let set = this.pairWords.get(key);
      if (set === undefined) this.pairWords.set(key, set = new Set());
      set.add(i);
      keys.push(key);
    }
    return keys;
  }

  private removePairs(i: number, w: number[]): void {
    const f = this.freq[i];
    for (let j = 0; j + 1 < w.length; j++) {
      const key = w[j] * KEY + w[j + 1];
      const c = this.pairCount.get(key)! - f;
      if (c === 0) this.pairCount.delete(key);
      else this.pairCount.set(key, c);
      const set = this.pairWords.get(key);
      if (set !== undefined) {
        set.delete(i);
        if (set.size === 0) this.pairWords.delete(key);
      }
    }
  }

  // Heap order: higher count first, then smaller key.
  private above(x: [number, number], y: [number, number]): boolean {
    return x[0] > y[0] || (x[0] === y[0] && x[1] < y[1]);
  }

  private push(c: number, key: number): void {
    const h = this.heap;
    h.push([c, key]);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && this.above(h[l], h[m])) m = l;
      if (r < h.length && this.above(h[r], h[m])) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m], h[i]];
      i = m;
    }
  }
}
