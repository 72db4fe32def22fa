/**
 * GPT-2 byte-level BPE tokenizer.
 *
 * Plain ES module with no Deno APIs so the same code runs in the browser.
 *
 * Behaviour choices (all checked against npm `gpt-tokenizer`'s r50k_base encoding in
 * tests/tokenizer_test.ts):
 * - `encode` treats the literal text "<|endoftext|>" as ordinary text (7 tokens), like
 *   `gpt-3-encoder` and like `gpt-tokenizer` called with `{ disallowedSpecial: new Set() }`.
 *   HF's `GPT2TokenizerFast` would instead emit the special id 50256; callers that want
 *   an EOS token should append `eosId` explicitly, which keeps user text from smuggling
 *   control tokens into a prompt.
 * - Pre-tokenisation uses GPT-2's regex with JavaScript's `u` flag. JS `\s` differs from
 *   Python's `regex` module on a few exotic code points (e.g. U+001C..U+001F, U+FEFF);
 *   we follow the JS oracle.
 * - Lone UTF-16 surrogates cannot be represented in UTF-8; they are encoded as U+FFFD
 *   (what `TextEncoder` does), so `decode(encode(s)) === s` holds only for well-formed s.
 */

// GPT-2 splits text into "words" before BPE; merges never cross these boundaries.
export const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const EOS_TOKEN = "<|endoftext|>";

// Words longer than this are not cached: they are rare, and would let one huge input
// dominate the cache's memory.
const MAX_CACHED_WORD_LENGTH = 256;
const DEFAULT_CACHE_SIZE = 20_000;

/**
 * GPT-2's reversible byte -> printable-character table: bytes that are already printable
 * map to themselves, the rest to U+0100 onwards, so every vocab entry is a visible string
 * with one character per byte.
 */
function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + next++);
  }
  return table;
}

export const BYTE_TO_CHAR: readonly string[] = bytesToUnicode();
const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });

/** Number of UTF-8 bytes `TextEncoder` emits for the code point (lone surrogates become U+FFFD: 3). */
function utf8Length(codePoint: number): number {
  if (codePoint < 0x80) return 1;
  if (codePoint < 0x800) return 2;
  if (codePoint < 0x10000) return 3;
  return 4;
}

/** Token ids plus, for each token, the [start, end) UTF-16 range of `text` it covers. */
export interface EncodingWithOffsets {
  ids: number[];
  offsets: [number, number][];
}

export class Gpt2Tokenizer {
  /** max id + 1, i.e. the number of rows an embedding matrix for this vocab needs. */
  readonly vocabSize: number;
  /** Id of "<|endoftext|>", or -1 when the vocab has no such token. */
  readonly eosId: number;

  private readonly tokenToId: Map<string, number>;
  private readonly idToToken: (string | undefined)[];
  // Bytes each token stands for, filled lazily by `tokenBytes`.
  private readonly idToBytes: (Uint8Array | undefined)[];
  // Vocab id of the single-byte token for each byte value (-1 if missing).
  private readonly byteIds: Int32Array;
  // Merge (left id, right id) -> rank, keyed by left * vocabSize + right so lookups avoid
  // building strings in the BPE inner loop.
  private readonly pairRank: Map<number, number>;
  // Id produced by the merge of each rank.
  private readonly mergeResult: Int32Array;
  private readonly cache = new Map<string, number[]>();
  private readonly cacheSize: number;

  private constructor(vocab: Map<string, number>, merges: [string, string][], cacheSize: number) {
    this.tokenToId = vocab;
    let maxId = -1;
    for (const id of vocab.values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.idToToken = new Array(this.vocabSize);
    for (const [token, id] of vocab) {
      const previous = this.idToToken[id];
      if (previous !== undefined) {
        throw new Error(
          `vocab: id ${id} is used by both ${JSON.stringify(previous)} and ${JSON.stringify(token)}`,
        );
      }
      this.idToToken[id] = token;
    }
    this.idToBytes = new Array(this.vocabSize);
    this.eosId = vocab.get(EOS_TOKEN) ?? -1;
    this.byteIds = new Int32Array(256).map((_, b) => vocab.get(BYTE_TO_CHAR[b]) ?? -1);

    this.pairRank = new Map();
    this.mergeResult = new Int32Array(merges.length);
    merges.forEach(([left, right], rank) => {
      const l = vocab.get(left);
      const r = vocab.get(right);
      const merged = vocab.get(left + right);
      if (l === undefined || r === undefined || merged === undefined) {
        const missing = l === undefined ? left : r === undefined ? right : left + right;
        throw new Error(
          `merges: rule ${rank} "${left} ${right}" uses ${
            JSON.stringify(missing)
          }, which is not in the vocab`,
        );
      }
      const key = l * this.vocabSize + r;
      // A duplicated rule takes its last rank, as the dicts in GPT-2's encoder.py and HF do.
      this.pairRank.set(key, rank);
      this.mergeResult[rank] = merged;
    });
    this.cacheSize = cacheSize;
  }

  /** Builds from GPT-2's `vocab.json` (token -> id) and the text of `merges.txt`. */
  static fromVocabMerges(
    vocab: Record<string, number>,
    merges: string,
    options: { cacheSize?: number } = {},
  ): Gpt2Tokenizer {
    if (typeof merges !== "string") throw new Error("merges: expected the text of merges.txt");
    const rules: [string, string][] = [];
    merges.split("\n").forEach((raw, i) => {
      const line = raw.replace(/\r$/, "");
      if (line.trim() === "" || (i === 0 && line.startsWith("#version"))) return;
      rules.push(parseMerge(line, `merges.txt line ${i + 1}`));
    });
    return new Gpt2Tokenizer(parseVocab(vocab, "vocab"), rules, options.cacheSize ?? DEFAULT_CACHE_SIZE);
  }

  /**
   * Builds from a parsed HF `tokenizer.json`. Only `model` is read: the pre-tokenizer and
   * decoder are assumed to be GPT-2's ByteLevel ones, and `added_tokens` are not split out
   * of the input (see the module comment on "<|endoftext|>").
   */
  static fromTokenizerJson(json: unknown, options: { cacheSize?: number } = {}): Gpt2Tokenizer {
    if (!isRecord(json)) throw new Error("tokenizer.json: expected a JSON object");
    const model = json.model;
    if (!isRecord(model)) throw new Error("tokenizer.json: missing 'model' object");
    if (model.type !== "BPE") {
      throw new Error(`tokenizer.json: model.type is ${JSON.stringify(model.type)}, expected "BPE"`);
    }
    if (!Array.isArray(model.merges)) throw new Error("tokenizer.json: model.merges must be an array");
    const rules = model.merges.map((m: unknown, i: number): [string, string] => {
      const where = `tokenizer.json model.merges[${i}]`;
      if (typeof m === "string") return parseMerge(m, where);
      if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") {
        return [m[0], m[1]];
      }
      throw new Error(`${where}: expected "a b" or ["a", "b"], got ${JSON.stringify(m)}`);
    });
    return new Gpt2Tokenizer(
      parseVocab(model.vocab, "tokenizer.json model.vocab"),
      rules,
      options.cacheSize ?? DEFAULT_CACHE_SIZE,
    );
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const match of text.matchAll(PRETOKENIZE)) {
      for (const id of this.encodeWord(match[0])) ids.push(id);
    }
    return ids;
  }

  /**
   * Like `encode`, plus each token's [start, end) range in `text` in UTF-16 code units.
   *
   * Rule: a token covers every character at least one of whose UTF-8 bytes it contains.
   * So tokens from ASCII text tile the text exactly, while when BPE splits one multi-byte
   * character (e.g. an emoji) over several tokens, each of them gets that character's
   * whole range, and consecutive ranges may overlap or repeat.
   */
  encodeWithOffsets(text: string): EncodingWithOffsets {
    const ids: number[] = [];
    const offsets: [number, number][] = [];
    for (const match of text.matchAll(PRETOKENIZE)) {
      const word = match[0];
      const wordIds = this.encodeWord(word);
      // Character range of each UTF-8 byte of the word.
      const byteStart: number[] = [];
      const byteEnd: number[] = [];
      for (let i = 0; i < word.length;) {
        const cp = word.codePointAt(i)!;
        const units = cp > 0xffff ? 2 : 1;
        for (let k = utf8Length(cp); k > 0; k--) {
          byteStart.push(match.index + i);
          byteEnd.push(match.index + i + units);
        }
        i += units;
      }
      let pos = 0;
      for (const id of wordIds) {
        const len = this.tokenBytes(id).length;
        ids.push(id);
        offsets.push([byteStart[pos], byteEnd[pos + len - 1]]);
        pos += len;
      }
    }
    return { ids, offsets };
  }

  /** Byte-level decode; invalid UTF-8 (e.g. half an emoji) becomes U+FFFD, as in HF. */
  decode(ids: number[]): string {
    const parts = ids.map((id) => this.tokenBytes(id));
    const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    return utf8Decoder.decode(bytes);
  }

  /** The raw vocab string of a token, e.g. "ĠTower" for " Tower". */
  tokenToString(id: number): string {
    const token = Number.isInteger(id) ? this.idToToken[id] : undefined;
    if (token === undefined) throw new Error(`token id ${id} is not in the vocab (size ${this.vocabSize})`);
    return token;
  }

  /** Id of a raw vocab string (e.g. "ĠTower"), or -1 when absent. */
  idOf(token: string): number {
    return this.tokenToId.get(token) ?? -1;
  }

  /** The bytes a token stands for. */
  private tokenBytes(id: number): Uint8Array {
    let bytes = this.idToBytes[id];
    if (bytes === undefined) {
      const token = this.tokenToString(id);
      const mapped = Array.from(token, (c) => CHAR_TO_BYTE.get(c));
      // Like HF's ByteLevel decoder: a token that is not byte-level text (possible for
      // added tokens) stands for its own UTF-8.
      bytes = mapped.every((b) => b !== undefined)
        ? Uint8Array.from(mapped as number[])
        : utf8Encoder.encode(token);
      this.idToBytes[id] = bytes;
    }
    return bytes;
  }

  private encodeWord(word: string): number[] {
    const cached = this.cache.get(word);
    if (cached !== undefined) return cached;
    const ids = this.bpe(utf8Encoder.encode(word));
    if (word.length <= MAX_CACHED_WORD_LENGTH && this.cacheSize > 0) {
      // Evict in insertion order (Map iterates oldest first): cheap and bounded.
      if (this.cache.size >= this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(word, ids);
    }
    return ids;
  }

  /**
   * GPT-2's BPE: repeatedly merge every occurrence of the lowest-ranked adjacent pair.
   * Quadratic in the word's length in the worst case (~0.7 s for a 20k-letter random
   * word), which is fine for prompts; a heap would only pay off for pathological input.
   */
  private bpe(bytes: Uint8Array): number[] {
    let symbols = Array.from(bytes, (b) => {
      const id = this.byteIds[b];
      if (id < 0) throw new Error(`vocab has no token for byte 0x${b.toString(16)} (${BYTE_TO_CHAR[b]})`);
      return id;
    });
    const n = this.vocabSize;
    while (symbols.length > 1) {
      let best = Infinity;
      let left = -1;
      let right = -1;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.pairRank.get(symbols[i] * n + symbols[i + 1]);
        if (rank !== undefined && rank < best) {
          best = rank;
          left = symbols[i];
          right = symbols[i + 1];
        }
      }
      if (best === Infinity) break;
      const merged = this.mergeResult[best];
      const next: number[] = [];
      for (let i = 0; i < symbols.length; i++) {
        // Left-to-right and non-overlapping, so "aaa" with rule "a a" gives ["aa", "a"].
        if (symbols[i] === left && i + 1 < symbols.length && symbols[i + 1] === right) {
          next.push(merged);
          i++;
        } else {
          next.push(symbols[i]);
        }
      }
      symbols = next;
    }
    return symbols;
  }
}

/**
 * Token index range [b, e) of the tokens of `prompt` that overlap the first occurrence
 * of `subject` (by character offsets), e.g. "Eiffel Tower" in "The Eiffel Tower is located
 * in" gives the tokens " E", "iff", "el", " Tower" (the leading-space token counts, since
 * it contains the subject's first letter).
 *
 * The reference ROME code (`find_token_range` in causal_trace.py) decodes each token,
 * accumulates their lengths and takes the first token whose running end passes the
 * subject's start and the first whose end reaches the subject's end; for tokens that
 * decode to whole characters this is the same range. Working from offsets instead keeps
 * it right when a token splits a multi-byte character. Note that this uses the tokens of
 * the full prompt, which, when the subject ends mid-word, can differ from ROME's
 * `get_words_idxs_in_templates`, which tokenizes the prefix alone.
 */
export function findSubjectRange(
  tokenizer: Gpt2Tokenizer,
  prompt: string,
  subject: string,
): [number, number] {
  const start = subject === "" ? -1 : prompt.indexOf(subject);
  if (start < 0) {
    throw new Error(`subject ${JSON.stringify(subject)} not found in prompt ${JSON.stringify(prompt)}`);
  }
  const end = start + subject.length;
  const { offsets } = tokenizer.encodeWithOffsets(prompt);
  const b = offsets.findIndex(([, tokEnd]) => tokEnd > start);
  let e = b;
  while (e < offsets.length && offsets[e][0] < end) e++;
  return [b, e];
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function parseVocab(vocab: unknown, where: string): Map<string, number> {
  if (!isRecord(vocab)) throw new Error(`${where}: expected an object mapping token -> id`);
  const map = new Map<string, number>();
  for (const [token, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new Error(
        `${where}: id of ${JSON.stringify(token)} is ${JSON.stringify(id)}, expected an integer >= 0`,
      );
    }
    map.set(token, id as number);
  }
  if (map.size === 0) throw new Error(`${where}: vocab is empty`);
  return map;
}

function parseMerge(line: string, where: string): [string, string] {
  // Byte-level tokens never contain a space (it is "Ġ"), so a rule is exactly two parts.
  const parts = line.split(" ");
  if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
    throw new Error(`${where}: expected "left right", got ${JSON.stringify(line)}`);
  }
  return [parts[0], parts[1]];
}
