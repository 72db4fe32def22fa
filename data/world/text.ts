/**
 * The facts world's sentences: true sentences about a city or a country (subject names marked), and
 * ordinary filler sentences with no entity of the world. No Deno APIs and no data access: everything here is
 * a pure function of its arguments.
 */
import { pick, type Rand } from "./random.ts";

/** Marks a subject name in generated text so the BPE trainer can leave it out (see build.ts). */
export const MARK_OPEN = "\u0001";
export const MARK_CLOSE = "\u0002";
export function mark(name: string): string {
  return MARK_OPEN + name + MARK_CLOSE;
}

export interface CityInfo {
  name: string;
  /** The country as a single word (the P17 object). */
  country: string;
  continent: string;
  language: string | undefined;
  currency: string;
  population: number;
  /** Rank by population among its country's cities in the source data (1 = largest). */
  rank: number;
}

export interface CountryInfo {
  name: string;
  continent: string | undefined;
  subregion: string;
  capital: string | undefined;
  language: string | undefined;
  currency: string | undefined;
  landlocked: boolean;
  area: number;
  neighbours: string[];
  demonym: string | undefined;
  largestCity: string | undefined;
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function populationPhrase(p: number): string {
  return p >= 1_000_000 ? `${(p / 1_000_000).toFixed(1)} million` : `${Math.round(p / 1000)} thousand`;
}

const SEASONS = ["spring", "summer", "autumn", "winter"];
const TRANSPORT = ["train", "bus", "car", "plane", "boat", "bicycle"];

/** One sentence about a city; all city names pass through `mark`. */
export function citySentence(r: Rand, c: CityInfo): string {
  const s = mark(c.name);
  const size = c.population >= 5_000_000
    ? "very large"
    : c.population >= 1_000_000
    ? "large"
    : c.population >= 300_000
    ? "big"
    : "busy";
  const options: (() => string)[] = [
    () => `${s} is a city in ${c.country}.`,
    () => `${s} is a ${size} city in ${c.continent}.`,
    () => `About ${populationPhrase(c.population)} people live in ${s}.`,
    () => `${s} has ${pick(r, ["many", "some", "a few"])} old buildings and a busy ${pick(r, PLACES_NEAR)}.`,
    () =>
      `The streets of ${s} are ${pick(r, ["busy", "quiet", "narrow", "wide", "crowded"])} in ${
        pick(r, SEASONS)
      }.`,
    () => `${cap(person(r))} lives in ${s} and works at ${pick(r, PLACES)}.`,
    () => `${cap(person(r))} travelled to ${s} by ${pick(r, TRANSPORT)}.`,
    () => `Many visitors come to ${s} every ${pick(r, SEASONS)}.`,
    () =>
      `${s} is a ${size} city with ${pick(r, ["parks", "markets", "schools", "bridges", "shops"])} and ${
        pick(r, ["old streets", "new houses", "small gardens", "busy roads"])
      }.`,
  ];
  if (c.language !== undefined) options.push(() => `People in ${s} speak ${c.language}.`);
  if (c.rank <= 5) options.push(() => `${s} is one of the largest cities in ${c.country}.`);
  return pick(r, options)();
}

/** One sentence about a country; all country and city names pass through `mark`. */
export function countrySentence(r: Rand, c: CountryInfo): string {
  const s = mark(c.name);
  const options: (() => string)[] = [
    () => `${s} is a ${c.area > 1_000_000 ? "very large" : c.area > 200_000 ? "large" : "small"} country.`,
    () => `${s} covers about ${Math.max(1, Math.round(c.area / 1000))} thousand square kilometres.`,
    () =>
      `Many people travel to ${s} to see its ${
        pick(r, ["mountains", "beaches", "old towns", "forests", "lakes", "rivers", "markets"])
      }.`,
    () => `The history of ${s} is ${pick(r, ["long", "rich", "interesting", "old"])}.`,
  ];
  if (c.subregion !== "") options.push(() => `${s} is a country in ${c.subregion}.`);
  if (c.continent !== undefined) options.push(() => `${s} is a country in ${c.continent}.`);
  options.push(() => (c.landlocked ? `${s} is a landlocked country.` : `${s} has a long coast.`));
  if (c.neighbours.length > 0) {
    options.push(() => `${s} shares a border with ${mark(pick(r, c.neighbours))}.`);
  }
  if (c.demonym !== undefined && c.demonym !== c.name) {
    options.push(() => `A person from ${s} is ${c.demonym}.`);
  }
  if (c.largestCity !== undefined) options.push(() => `The largest city in ${s} is ${mark(c.largestCity!)}.`);
  return pick(r, options)();
}

// --------------------------------------------------------------------------- generic filler

const PEOPLE_SG = [
  "the farmer",
  "my sister",
  "an old man",
  "a young woman",
  "the teacher",
  "our neighbour",
  "the doctor",
  "a small boy",
  "the baker",
  "the bus driver",
  "his mother",
  "her father",
  "the captain",
  "the musician",
  "the painter",
  "my uncle",
  "the nurse",
  "a fisherman",
  "the shop owner",
  "the old woman",
  "my grandmother",
  "the little girl",
  "a tourist",
  "the cook",
  "the gardener",
  "the postman",
  "the mayor",
  "the writer",
  "my cousin",
  "the engineer",
  "the waiter",
  "my brother",
  "the student",
  "the pilot",
  "a police officer",
];
const PEOPLE_PL = [
  "the students",
  "the children",
  "two friends",
  "my parents",
  "the workers",
  "the visitors",
];
const NAMES = [
  "Anna",
  "Tom",
  "Maria",
  "Sam",
  "Lena",
  "David",
  "Omar",
  "Yuki",
  "Carlos",
  "Priya",
  "Ivan",
  "Fatima",
  "Peter",
  "Chen",
  "Laura",
  "Ali",
  "Sofia",
  "Ben",
  "Nina",
  "Marco",
  "Emma",
  "Jonas",
  "Amara",
  "Leo",
  "Hana",
  "Kofi",
  "Rosa",
  "Max",
];
const PLACES = [
  "the market",
  "the station",
  "the park",
  "the school",
  "the library",
  "the farm",
  "the beach",
  "the hospital",
  "the harbour",
  "the museum",
  "the bakery",
  "the old bridge",
  "the town square",
  "the post office",
  "the cinema",
  "the river",
  "the lake",
  "the garden",
  "the forest",
  "the village",
];
const PLACES_NEAR = ["market", "port", "station", "square", "harbour", "main street"];
const TIMES = [
  "in the morning",
  "in the evening",
  "after lunch",
  "last week",
  "on Sunday",
  "before dinner",
  "at night",
  "yesterday",
  "last summer",
  "early in the day",
  "on Friday",
  "after school",
  "two days ago",
  "last winter",
];
const FOOD_VERBS = ["ate", "cooked", "bought", "shared", "made", "sold"];
const FOODS = [
  "some bread",
  "a bowl of soup",
  "fresh fish",
  "a plate of rice",
  "two apples",
  "a cake",
  "some cheese",
  "fresh vegetables",
  "a big orange",
  "some eggs",
  "a warm pie",
];
const DRINK_VERBS = ["drank", "made", "bought", "poured"];
const DRINKS = ["a cup of tea", "a glass of milk", "hot coffee", "cold water", "fresh juice"];
const THING_VERBS = ["found", "bought", "painted", "fixed", "cleaned", "carried", "sold", "lost", "moved"];
const THINGS = [
  "an old chair",
  "a red box",
  "the front door",
  "a small boat",
  "the kitchen window",
  "a heavy bag",
  "a wooden table",
  "the blue car",
  "an old bicycle",
  "the garden gate",
  "a new lamp",
  "a large basket",
];
const TEXT_VERBS = ["read", "wrote", "sent", "received"];
const TEXTS = ["a long letter", "a short story", "a message", "a poem", "a report", "a postcard"];
const ACTIVITIES = [
  "read in the garden",
  "walk by the river",
  "swim in the lake",
  "play in the park",
  "sit in the sun",
  "cook for friends",
  "sing old songs",
  "draw pictures of animals",
  "ride a bicycle",
  "grow vegetables",
  "visit the museum",
  "fish in the river",
  "listen to the radio",
  "watch the stars at night",
  "tell long stories",
  "bake bread",
];
const ANIMALS = [
  "dog",
  "cat",
  "horse",
  "cow",
  "bird",
  "goat",
  "fox",
  "duck",
  "sheep",
  "rabbit",
  "owl",
  "donkey",
];
const ANIMAL_ADJ = [
  "small",
  "old",
  "brown",
  "white",
  "black",
  "young",
  "lazy",
  "happy",
  "tired",
  "big",
  "grey",
  "quiet",
];
const ANIMAL_ACTS = [
  "slept under the tree",
  "ran across the field",
  "sat by the door",
  "waited near the gate",
  "jumped over the fence",
  "walked along the road",
  "hid in the tall grass",
  "drank from the river",
  "looked at the sky",
];
const NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"];
const ANIMALS_PL = ["cows", "goats", "chickens", "sheep", "horses", "cats", "dogs", "ducks"];
const ROOMS = ["kitchen", "classroom", "shop", "library", "office", "hall"];
const ROOM_THINGS = ["chairs", "books", "cups", "plants", "windows", "boxes", "lamps", "pictures", "tables"];
const WEATHER = ["cold", "rainy", "windy", "very hot", "sunny", "foggy", "snowy", "warm"];
const REQUESTS = [
  "some help",
  "a glass of water",
  "the time",
  "directions to the station",
  "a pen",
  "advice",
];
const COMPLAINTS: [string, string][] = [
  ["soup", "hot"],
  ["road", "long"],
  ["room", "small"],
  ["music", "loud"],
  ["bag", "heavy"],
  ["water", "cold"],
  ["test", "hard"],
  ["film", "long"],
  ["shop", "busy"],
  ["bed", "soft"],
];
const EVENTS = [
  "the meeting",
  "the game",
  "dinner",
  "the concert",
  "work",
  "the lesson",
  "the long walk",
  "the party",
];
const VIEWS = ["sky", "street", "garden", "sea", "mountains", "rain", "trees"];
const SKILLS = [
  "play the piano",
  "swim",
  "cook",
  "drive",
  "paint",
  "speak a new language",
  "ride a horse",
  "dance",
];
const STALLS = ["shop", "small store", "market stall", "bakery"];
const GOODS = [
  "fresh bread",
  "old books",
  "cheap shoes",
  "fruit and vegetables",
  "warm coats",
  "flowers",
  "toys",
];
const JOBS = [
  "teacher who works at a small school",
  "doctor who helps sick people",
  "farmer who grows wheat",
  "baker who makes bread every morning",
  "driver who works at night",
  "painter who paints the sea",
  "nurse who works at the hospital",
  "cook who makes good soup",
  "student who likes history",
  "fisherman who goes out every morning",
];

/** Plain facts about the world, true everywhere. */
const GENERIC_FACTS = [
  "The sun rises in the east.",
  "A week has seven days.",
  "A year has twelve months.",
  "Water freezes when it is very cold.",
  "Cats like to sleep in warm places.",
  "Bread is made from flour.",
  "Fish live in water.",
  "Trees grow slowly.",
  "Most birds can fly.",
  "Snow is white and cold.",
  "The moon is bright at night.",
  "Children go to school to learn.",
  "Cows give milk.",
  "Bees make honey.",
  "Rain helps plants grow.",
  "The sea is salty.",
  "Summer is the warmest season.",
  "Winter is the coldest season.",
  "Apples grow on trees.",
  "A clock tells the time.",
  "Doctors help sick people.",
  "Farmers grow food.",
  "Books are full of stories.",
  "Music can make people happy.",
  "Trains carry people between cities.",
  "Ships sail across the sea.",
  "Maps show where places are.",
  "Many cities have a river.",
  "Every country has its own flag.",
  "Some countries are very large.",
  "Some countries are small islands.",
  "People in many countries speak more than one language.",
  "A capital is usually a large city.",
  "Money is used to buy things.",
  "Every country has its own history.",
  "The earth goes around the sun.",
  "A day has twenty four hours.",
  "Dogs are loyal animals.",
  "Mountains are tall and often cold.",
  "Rivers flow to the sea.",
  "Most people sleep at night.",
  "Hot tea is good on a cold day.",
  "A good book can teach many things.",
  "Old cities often have narrow streets.",
  "Big cities are busy and loud.",
  "Small villages are often quiet.",
  "There are seven continents on the earth.",
  "The largest ocean is the Pacific.",
  "Many people travel by train.",
  "Markets sell fruit and vegetables.",
];

function person(r: Rand): string {
  return r() < 0.3 ? pick(r, NAMES) : pick(r, PEOPLE_SG);
}

/** One generic sentence (no entity of the world in it). */
export function genericSentence(r: Rand): string {
  const p = () => person(r);
  const patterns: (() => string)[] = [
    () => `${p()} ${pick(r, FOOD_VERBS)} ${pick(r, FOODS)} ${pick(r, TIMES)}.`,
    () => `${p()} ${pick(r, DRINK_VERBS)} ${pick(r, DRINKS)} ${pick(r, TIMES)}.`,
    () => `${p()} walked to ${pick(r, PLACES)} ${pick(r, TIMES)}.`,
    () => `${p()} and ${p()} met at ${pick(r, PLACES)} ${pick(r, TIMES)}.`,
    () => `${p()} ${pick(r, THING_VERBS)} ${pick(r, THINGS)} ${pick(r, TIMES)}.`,
    () => `${p()} ${pick(r, TEXT_VERBS)} ${pick(r, TEXTS)} ${pick(r, TIMES)}.`,
    () => `${p()} likes to ${pick(r, ACTIVITIES)}.`,
    () => `${pick(r, PEOPLE_PL)} like to ${pick(r, ACTIVITIES)}.`,
    () => `The ${pick(r, ANIMAL_ADJ)} ${pick(r, ANIMALS)} ${pick(r, ANIMAL_ACTS)}.`,
    () => `It was ${pick(r, WEATHER)} ${pick(r, TIMES)}, so ${p()} stayed at home.`,
    () => `It was ${pick(r, WEATHER)}, so ${p()} walked to ${pick(r, PLACES)}.`,
    () => `${p()} has ${pick(r, NUMBERS)} ${pick(r, ANIMALS_PL)}.`,
    () => `There are ${pick(r, NUMBERS)} ${pick(r, ROOM_THINGS)} in the ${pick(r, ROOMS)}.`,
    () => `${p()} asked ${p()} for ${pick(r, REQUESTS)}.`,
    () => {
      const [noun, adj] = pick(r, COMPLAINTS);
      return `${p()} said that the ${noun} was too ${adj}.`;
    },
    () => `After ${pick(r, EVENTS)}, ${p()} went home.`,
    () => `${p()} opened the window and looked at the ${pick(r, VIEWS)}.`,
    () => `${p()} is learning to ${pick(r, SKILLS)}.`,
    () => `The ${pick(r, STALLS)} on the corner sells ${pick(r, GOODS)}.`,
    () => `${pick(r, NAMES)} is a ${pick(r, JOBS)}.`,
    () => pick(r, GENERIC_FACTS),
    () => pick(r, GENERIC_FACTS),
  ];
  return cap(pick(r, patterns)());
}
