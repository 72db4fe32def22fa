// Text statistics of the CounterFact generation tests (reference §3.4): word tokens approximating
// nltk.word_tokenize, the weighted n-gram entropy behind GE (util/generate's n_gram_entropy), and
// scikit-learn's TfidfVectorizer (defaults) behind RS. Pure TypeScript on strings; runtime-neutral.
import { parseNpy } from "../rome/npz.ts";

// ------------------------------------------------------------------ word tokens (nltk.word_tokenize)

/** Python's `\w` for str patterns is Unicode-aware (letters, digits, underscore); JavaScript's is ASCII. */
const W = String.raw`[\p{L}\p{N}_]`;
const NOT_W_BEFORE = `(?<!${W})`;
const NOT_W_AFTER = `(?!${W})`;

/** Abbreviations after which a period does not end a sentence (a small stand-in for punkt's learned list). */
const ABBREVIATIONS = new Set([
  "mr",
  "mrs",
  "ms",
  "dr",
  "prof",
  "st",
  "jr",
  "sr",
  "vs",
  "etc",
  "e.g",
  "i.e",
  "u.s",
  "u.k",
  "inc",
  "ltd",
  "co",
  "no",
  "mt",
  "ft",
  "gen",
  "gov",
  "sen",
  "rep",
  "jan",
  "feb",
  "mar",
  "apr",
  "jun",
  "jul",
  "aug",
  "sep",
  "sept",
  "oct",
  "nov",
  "dec",
]);

/**
 * Sentences of `text`, approximating nltk's punkt (sent_tokenize): a sentence ends after ".", "!" or
 * "?" (and any closing quotes or brackets) followed by white space, unless the period closes a single
 * letter (an initial), a number ("3. "), or a common abbreviation. Punkt learns its abbreviations and
 * collocations from a corpus; that model is not reproduced here.
 */
export function splitSentences(text: string): string[] {
  const out: string[] = [];
  const re = /[.!?]+["'”’)\]}»]*(?=\s)/gu;
  let start = 0;
  for (const m of text.matchAll(re)) {
    const end = m.index! + m[0].length;
    if (m[0][0] === "." && m[0].length === 1) {
      const word = /([\p{L}\p{N}.]+)$/u.exec(text.slice(start, m.index!))?.[1] ?? "";
      const bare = word.toLowerCase();
      if (/^\p{L}$/u.test(word) || /^\p{N}+$/u.test(word) || ABBREVIATIONS.has(bare)) continue;
    }
    const s = text.slice(start, end).trim();
    if (s) out.push(s);
    start = end;
  }
  const rest = text.slice(start).trim();
  if (rest) out.push(rest);
  return out;
}

type Rule = readonly [RegExp, string];

// NLTKWordTokenizer (nltk/tokenize/destructive.py, nltk 3.8) rule by rule, in its order. Python's `\1`
// is `$1` here and `\g<0>` is `$&`.
const STARTING_QUOTES: readonly Rule[] = [
  [/([«“‘„]|[`]+)/gu, " $1 "],
  [/^"/u, "``"],
  [/(``)/gu, " $1 "],
  [/([ ([{<])("|'{2})/gu, "$1 `` "],
  [new RegExp(`(')(?!re|ve|ll|m|t|s|d|n)(${W})${NOT_W_AFTER}`, "giu"), "$1 $2"],
];
const PUNCTUATION: readonly Rule[] = [
  [/([^.])(\.)([\])}>"'»”’ ]*)\s*$/u, "$1 $2 $3 "],
  [/([:,])([^\p{Nd}])/gu, " $1 $2"],
  [/([:,])$/u, " $1 "],
  [/\.{2,}/gu, " $& "],
  [/[;@#$%&]/gu, " $& "],
  [/([^.])(\.)([\])}>"']*)\s*$/u, "$1 $2$3 "],
  [/[?!]/gu, " $& "],
  [/([^'])' /gu, "$1 ' "],
  [/[*]/gu, " $& "],
];
const PARENS_BRACKETS: Rule = [/[\][(){}<>]/gu, " $& "];
const DOUBLE_DASHES: Rule = [/--/gu, " -- "];
const ENDING_QUOTES: readonly Rule[] = [
  [/([»”’])/gu, " $1 "],
  [/''/gu, " '' "],
  [/"/gu, " '' "],
  [/([^' ])('[sS]|'[mM]|'[dD]|') /gu, "$1 $2 "],
  [/([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) /gu, "$1 $2 "],
];
// MacIntyre's contractions (CONTRACTIONS2 and CONTRACTIONS3), applied with " \1 \2 ".
const CONTRACTIONS: readonly RegExp[] = [
  ...["(can)(not)", "(d)('ye)", "(gim)(me)", "(gon)(na)", "(got)(ta)", "(lem)(me)", "(more)('n)"].map((p) =>
    new RegExp(`${NOT_W_BEFORE}${p}${NOT_W_AFTER}`, "giu")
  ),
  new RegExp(`${NOT_W_BEFORE}(wan)(na)(?=\\s)`, "giu"),
  / ('t)(is)(?![\p{L}\p{N}_])/giu,
  / ('t)(was)(?![\p{L}\p{N}_])/giu,
];

/** NLTKWordTokenizer.tokenize of one sentence (no parenthesis conversion). */
export function treebankTokens(sentence: string): string[] {
  let text = sentence;
  for (const [re, to] of STARTING_QUOTES) text = text.replace(re, to);
  for (const [re, to] of PUNCTUATION) text = text.replace(re, to);
  text = text.replace(PARENS_BRACKETS[0], PARENS_BRACKETS[1]);
  text = text.replace(DOUBLE_DASHES[0], DOUBLE_DASHES[1]);
  text = " " + text + " ";
  for (const [re, to] of ENDING_QUOTES) text = text.replace(re, to);
  for (const re of CONTRACTIONS) text = text.replace(re, " $1 $2 ");
  return text.split(/\s+/u).filter((t) => t !== "");
}

/**
 * Word tokens approximating `nltk.word_tokenize(text)` (English): sentences split as `splitSentences`
 * (punkt approximated: see there), then the Treebank-style rules of nltk 3.8's NLTKWordTokenizer on each
 * sentence, which split punctuation, quotes, brackets and clitics ("don't" → "do", "n't") and the
 * sentence-final period. On generated prose the two agree except around abbreviations punkt has learned
 * that are not in the small list here.
 */
export function wordTokenize(text: string): string[] {
  return splitSentences(text).flatMap(treebankTokens);
}

// ------------------------------------------------------------------ n-gram entropy (GE)

/** Entropy in bits, −Σ f log₂ f, of the relative frequencies of the n-grams of `tokens` (0 when none). */
export function ngramEntropy(tokens: readonly string[], n: number): number {
  const counts = new Map<string, number>();
  for (let i = 0; i + n <= tokens.length; i++) {
    const key = tokens.slice(i, i + n).join("\u0000");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const total = Math.max(0, tokens.length - n + 1);
  let h = 0;
  for (const c of counts.values()) {
    const f = c / total;
    h -= f * Math.log2(f);
  }
  return h;
}

/** n of the n-grams and their weights (compute_n_gram_entropy's defaults: ns [2, 3], weights [2/3, 4/3]). */
export const NGRAM_ORDERS = [2, 3] as const;
export const NGRAM_WEIGHTS = [2 / 3, 4 / 3] as const;

/**
 * One text's score: the arithmetic mean of the weighted entropies, mean(2/3·H₂, 4/3·H₃) = H₂/3 + 2·H₃/3
 * (compute_n_gram_entropy with agg "arith").
 */
export function textNgramEntropy(text: string): number {
  const tokens = wordTokenize(text);
  const weighted = NGRAM_ORDERS.map((n, i) => NGRAM_WEIGHTS[i] * ngramEntropy(tokens, n));
  return weighted.reduce((a, b) => a + b, 0) / weighted.length;
}

/** GE of one case: the arithmetic mean of `textNgramEntropy` over its generated texts (n_gram_entropy). */
export function generationEntropy(texts: readonly string[]): number {
  if (texts.length === 0) return NaN;
  return texts.reduce((a, t) => a + textNgramEntropy(t), 0) / texts.length;
}

// ------------------------------------------------------------------ TF-IDF (RS)

/**
 * scikit-learn's `TfidfVectorizer()` with its defaults: lower-cased text, tokens `\b\w\w+\b` (Unicode
 * word characters, so: maximal runs of at least two letters, digits or underscores), raw term counts
 * over the fitted vocabulary (unknown terms dropped), times idf, and l2-normalised.
 */
export class TfidfVectorizer {
  constructor(
    /** term → column. */
    readonly vocabulary: ReadonlyMap<string, number>,
    /** idf per column. */
    readonly idf: Float64Array,
  ) {
    for (const [term, col] of vocabulary) {
      if (!Number.isInteger(col) || col < 0 || col >= idf.length) {
        throw new RangeError(`tf-idf vocabulary: '${term}' has column ${col}, the idf has ${idf.length}`);
      }
    }
  }

  /**
   * Fits the idf on `documents` as `TfidfVectorizer().fit` does (smooth_idf): idf(t) = ln((1 + n) /
   * (1 + df(t))) + 1, n documents, df(t) the number containing t. Columns are the terms in sorted order.
   */
  static fit(documents: readonly string[]): TfidfVectorizer {
    const df = new Map<string, number>();
    for (const d of documents) for (const t of new Set(tfidfTerms(d))) df.set(t, (df.get(t) ?? 0) + 1);
    // sklearn sorts the vocabulary by Python's code-point order; compare code points, not UTF-16 units
    const terms = [...df.keys()].sort((a, b) => {
      const x = [...a], y = [...b];
      for (let i = 0; i < Math.min(x.length, y.length); i++) {
        const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
        if (d !== 0) return d;
      }
      return x.length - y.length;
    });
    const n = documents.length;
    const idf = Float64Array.from(terms, (t) => Math.log((1 + n) / (1 + df.get(t)!)) + 1);
    return new TfidfVectorizer(new Map(terms.map((t, i) => [t, i])), idf);
  }

  /**
   * The reference's saved vectorizer (dsets/tfidf_stats.py): `idf.npy` (float64 [n_terms]) and
   * `tfidf_vocab.json` ({term: column}). Throws a RangeError naming `where` when they do not fit together.
   */
  static fromReference(vocabJson: unknown, idfNpy: Uint8Array, where: string): TfidfVectorizer {
    if (!vocabJson || typeof vocabJson !== "object" || Array.isArray(vocabJson)) {
      throw new RangeError(`${where}: tfidf_vocab.json must be an object {term: column}`);
    }
    const idf = parseNpy(idfNpy, `${where}/idf.npy`);
    if (idf.shape.length !== 1) {
      throw new RangeError(`${where}: idf.npy must be one-dimensional, got [${idf.shape}]`);
    }
    try {
      return new TfidfVectorizer(
        new Map(Object.entries(vocabJson as Record<string, number>)),
        Float64Array.from(idf.data),
      );
    } catch (e) {
      throw new RangeError(`${where}: ${(e as Error).message}`);
    }
  }

  /** The l2-normalised tf-idf vector of `text`, sparse (column → weight); empty when no term is known. */
  transform(text: string): Map<number, number> {
    const v = new Map<number, number>();
    for (const t of tfidfTerms(text)) {
      const col = this.vocabulary.get(t);
      if (col !== undefined) v.set(col, (v.get(col) ?? 0) + 1);
    }
    let sq = 0;
    for (const [col, tf] of v) {
      const w = tf * this.idf[col];
      v.set(col, w);
      sq += w * w;
    }
    const norm = Math.sqrt(sq);
    if (norm > 0) { for (const [col, w] of v) v.set(col, w / norm); }
    return v;
  }
}

/** The analyzer of TfidfVectorizer's defaults: lower-case, then every `\b\w\w+\b` match. */
export function tfidfTerms(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}_]{2,}/gu) ?? [];
}

/**
 * The reference's tfidf_similarity(a, b, vec): the cosine of the two tf-idf vectors. Deliberate
 * difference: the reference divides by the norms and so returns NaN when a text has no term of the
 * vocabulary; here that case is 0 (nothing in common), so one such case cannot turn a whole RS mean NaN.
 */
export function tfidfSimilarity(a: string, b: string, vec: TfidfVectorizer): number {
  const va = vec.transform(a), vb = vec.transform(b);
  if (va.size === 0 || vb.size === 0) return 0;
  let dot = 0;
  for (const [col, w] of va) dot += w * (vb.get(col) ?? 0);
  return dot;
}
