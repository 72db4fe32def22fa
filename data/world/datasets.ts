// The facts world's evaluation files, in the reference's formats: CounterFact records (with portability
// prompts), known facts (known_1000.json) and attribute snippets.
import { statement, unmark } from "./corpus.ts";
import { makeRand, pick, type Rand, sample, shuffle } from "./random.ts";
import { fill, relationOf, RELATIONS } from "./relations.ts";
import { citySentence, countrySentence, genericSentence } from "./text.ts";
import { cmp, type Fact, objectId, type World } from "./world.ts";

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

export interface Datasets {
  counterfact: unknown[];
  known: unknown[];
  snippets: Record<string, Record<string, { name: string; text: string }[]>>;
}

export function buildDatasets(seed: number, world: World, facts: Fact[]): Datasets {
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
