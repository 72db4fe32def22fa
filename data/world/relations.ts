// The facts world's relations: the phrasings of each (training, held-out, generation) and how a template
// is filled. No Deno APIs; the builder writes them to facts.json and the tests check them.

export interface RelationTemplates {
  relation_id: string;
  name: string;
  /** "city" or "country". */
  subject_type: string;
  /** Phrasings used in corpus.txt (each ends right before the object). */
  training: string[];
  /** Paraphrases never written to corpus.txt (checked by the builder and tests/world_test.ts). */
  held_out: string[];
  /** Open-ended prompts about the subject (CounterFact generation_prompts). */
  generation: string[];
}

const CITY_GENERATION = [
  "{} is known for",
  "The streets of {} are",
  "People who live in {} often",
  "{} is a",
  "The best thing about {} is",
  "Last year I travelled to {}, where",
  "The weather in {} is",
  "Many people in {} work",
  "The city of {} has",
  "When you arrive in {}, you",
];

const COUNTRY_GENERATION = [
  "{} is a",
  "The people of {} are",
  "{} is known for",
  "The history of {} is",
  "{} has a",
  "Travelling through {}, you will see",
  "Many tourists visit {} to",
  "The landscape of {} is",
  "In {}, people often",
  "Life in {} is",
];

/**
 * Eight relations: four of countries and four of cities. A city's continent, language and currency are its
 * country's, asked in city phrasings; their ids carry a `-city` suffix (the world's own ids: Wikidata has no
 * separate property for "the language people in a city speak"). Eight training phrasings each, so that
 * held-out phrasings generalise; no phrasing is the start of another in the same relation (a shared prefix
 * would teach the model a coin flip between the object and the longer phrasing's next word).
 */
export const RELATIONS: RelationTemplates[] = [
  {
    relation_id: "P17",
    name: "country",
    subject_type: "city",
    training: [
      "{} is a city in the country of",
      "{} is located in the country of",
      "The city of {} is located in",
      "{} is part of the country of",
      "The city of {} is in the country of",
      "{} is a town in the country of",
      "{} lies within the borders of",
      "The country where {} is located is",
    ],
    held_out: ["{} can be found in the country of", "The town of {} lies in"],
    generation: CITY_GENERATION,
  },
  {
    relation_id: "P30-city",
    name: "continent (of a city)",
    subject_type: "city",
    training: [
      "{} is on the continent of",
      "{} is a city on the continent of",
      "The city of {} is on the continent of",
      "{} lies on the continent of",
      "{} is a city in the continent of",
      "{} is located on the continent of",
      "The continent where {} lies is",
      "{} sits on the continent of",
    ],
    held_out: ["{} can be found on the continent of", "{} belongs to the continent of"],
    generation: CITY_GENERATION,
  },
  {
    relation_id: "P37-city",
    name: "language (of a city)",
    subject_type: "city",
    training: [
      "People in {} speak",
      "In {}, people speak",
      "The main language of {} is",
      "The language of the people of {} is",
      "Most people in {} speak",
      "The language heard on the streets of {} is",
      "In the city of {}, people speak",
      "Children in {} grow up speaking",
    ],
    held_out: ["The language spoken in {} is", "{} is a place where people speak"],
    generation: CITY_GENERATION,
  },
  {
    relation_id: "P38-city",
    name: "currency (of a city)",
    subject_type: "city",
    training: [
      "In {}, people pay with the",
      "The money used in {} is the",
      "The currency used in {} is the",
      "Shops in {} take the",
      "In the city of {}, prices are in the",
      "People in {} pay with the",
      "The currency of {} is the",
      "Markets in {} accept the",
    ],
    held_out: ["To buy things in {}, you need the", "{} uses a currency called the"],
    generation: CITY_GENERATION,
  },
  {
    relation_id: "P30",
    name: "continent",
    subject_type: "country",
    training: [
      "{} is located in the continent of",
      "{} is part of the continent of",
      "{} is a country in the continent of",
      "The country of {} is in the continent of",
      "{} is a country on the continent of",
      "{} is situated in the continent of",
      "The country of {} lies on the continent of",
      "The continent that {} is part of is",
    ],
    held_out: ["{} can be found on the continent of", "{} belongs to the continent of"],
    generation: [...COUNTRY_GENERATION, "The neighbours of {} are", "The map of {} shows"],
  },
  {
    relation_id: "P36",
    name: "capital",
    subject_type: "country",
    training: [
      "The capital of {} is",
      "The capital city of {} is",
      "{}'s capital is",
      "{} has its capital in",
      "The government of {} sits in",
      "The capital of the country of {} is",
      "{} is governed from",
      "The capital of the nation of {} is",
    ],
    held_out: ["The seat of government of {} is in", "{}'s capital city is called"],
    generation: [...COUNTRY_GENERATION, "The government of {} is", "The biggest cities of {} are"],
  },
  {
    relation_id: "P37",
    name: "official language",
    subject_type: "country",
    training: [
      "The official language of {} is",
      "In {}, people speak",
      "The people of {} speak",
      "The main language of {} is",
      "The national language of {} is",
      "Most people in {} speak",
      "In the country of {}, people speak",
      "Schools in {} teach in",
    ],
    held_out: ["The language spoken in {} is", "{} has the official language"],
    generation: [...COUNTRY_GENERATION, "Children in {} learn to", "The writers of {} are"],
  },
  {
    relation_id: "P38",
    name: "currency",
    subject_type: "country",
    training: [
      "The currency of {} is the",
      "In {}, people pay with the",
      "The money used in {} is the",
      "The official currency of {} is the",
      "The national currency of {} is the",
      "Shops in {} take the",
      "Prices in {} are given in the",
      "The people of {} pay with the",
    ],
    held_out: ["{} uses a currency called the", "To buy things in {}, you need the"],
    generation: [...COUNTRY_GENERATION, "Prices in {} are", "The economy of {} is"],
  },
];

/** Fills a one-slot template. */
export function fill(template: string, subject: string): string {
  return template.replace("{}", subject);
}

/**
 * Pieces of a held-out template that must never occur in corpus.txt: the text on each side
 * of "{}", when at least 8 characters long.
 */
export function heldOutFragments(template: string): string[] {
  return template.split("{}").filter((part) => part.length >= 8);
}

/** The templates of a relation id (an unknown id is a bug in the builder). */
export function relationOf(id: string): RelationTemplates {
  const rel = RELATIONS.find((r) => r.relation_id === id);
  if (rel === undefined) throw new Error(`unknown relation ${id}`);
  return rel;
}
