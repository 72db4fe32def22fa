// The facts world's training corpus: biography passages stating every fact of each subject, and ordinary
// documents; subject names are marked (MARK_OPEN/MARK_CLOSE) until written out.
import { int, makeRand, pick, type Rand, shuffle } from "./random.ts";
import { fill, relationOf } from "./relations.ts";
import { citySentence, countrySentence, genericSentence, mark, MARK_CLOSE, MARK_OPEN } from "./text.ts";
import type { World } from "./world.ts";

/**
 * Biographies: each subject gets this many passages, each stating all its facts in a random order with
 * randomly drawn training phrasings (Allen-Zhu & Li, Physics of Language Models 3.1: several shuffled,
 * paraphrased passages per entity make its attributes readable at its name).
 */
export const PASSAGES = 8;
/** A later sentence whose phrasing starts with the subject says "It" instead, with this probability. */
export const IT_PROBABILITY = 0.3;
/** A passage opens with an ordinary sentence with this probability (paraphrase prompts have such a prefix)... */
export const OPENER_PROBABILITY = 0.3;
/** ...and holds one more true sentence about its subject (not a template fact) with this one. */
export const ABOUT_PROBABILITY = 0.5;
/** Documents of ordinary sentences only, as a share of the passages (keeps generations fluent). */
export const GENERIC_SHARE = 0.15;

/** A fact in one sentence: a training phrasing (drawn, unless given) filled with the marked subject. */
export function statement(
  r: Rand,
  f: { subject: string; relation_id: string; object: string },
  template?: string,
  name = mark(f.subject),
) {
  const t = template ?? pick(r, relationOf(f.relation_id).training);
  const text = fill(t, name) + " " + f.object + ".";
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/**
 * One biography passage: every fact of the subject in a random order, each in a randomly drawn training
 * phrasing; a later sentence whose phrasing starts with the subject says "It" instead, sometimes. An
 * ordinary sentence may open the passage, and one more true sentence about the subject may stand anywhere.
 */
function passage(r: Rand, facts: World["facts"], about: () => string): string[] {
  const sentences = shuffle(r, facts.slice()).map((f, i) => {
    const t = pick(r, relationOf(f.relation_id).training);
    return i > 0 && t.startsWith("{}") && r() < IT_PROBABILITY
      ? statement(r, f, t, "It")
      : statement(r, f, t);
  });
  if (r() < ABOUT_PROBABILITY) sentences.splice(int(r, 0, sentences.length), 0, about());
  if (r() < OPENER_PROBABILITY) sentences.unshift(genericSentence(r));
  return sentences;
}

export function buildCorpus(seed: number, world: World): string[] {
  const r = makeRand(seed, "corpus");
  const cityInfo = new Map(world.cities.map((c) => [c.info.name, c.info]));
  const countryInfo = new Map(world.countries.map((c) => [c.info.name, c.info]));
  const entitySentence = (name: string) =>
    cityInfo.has(name) ? citySentence(r, cityInfo.get(name)!) : countrySentence(r, countryInfo.get(name)!);
  const factsOf = new Map<string, World["facts"]>();
  for (const f of world.facts) {
    if (!factsOf.has(f.subject)) factsOf.set(f.subject, []);
    factsOf.get(f.subject)!.push(f);
  }

  const docs: string[][] = [];
  for (const [name, facts] of factsOf) {
    for (let k = 0; k < PASSAGES; k++) docs.push(passage(r, facts, () => entitySentence(name)));
  }
  // Ordinary documents: short stories with no world entity.
  const generic = Math.round(docs.length * GENERIC_SHARE);
  for (let i = 0; i < generic; i++) {
    docs.push(Array.from({ length: int(r, 2, 6) }, () => genericSentence(r)));
  }
  return shuffle(r, docs).map((sentences) => sentences.join(" "));
}

export const MARKED = new RegExp(`${MARK_OPEN}[^${MARK_CLOSE}]*${MARK_CLOSE}`, "gu");
export const unmark = (s: string) => s.replaceAll(MARK_OPEN, "").replaceAll(MARK_CLOSE, "");
/** Text the tokenizer is trained on: subject names are cut out. */
export const withoutSubjects = (s: string) => s.replace(MARKED, "");
