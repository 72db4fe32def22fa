// Fact files in the format of ROME's `known_1000.json` (reference §1.1): an array of records with
// `known_id`, `subject`, `attribute`, `prompt` (and `template`, `prediction`, `relation_id`, unused here).
// Parsing only; reading the file is the caller's business (cli/trace.ts on Deno, fetch in a browser).
import { InputError } from "../engine/errors.ts";

export interface KnownFact {
  known_id: number;
  subject: string;
  /** The expected answer: a case counts only if the clean top-1 token decodes (trimmed) to it. */
  attribute: string;
  prompt: string;
  relation_id?: string;
}

/**
 * The bundled world's example fact, by known_id in data/world/known_facts.json: what `deno task trace` traces
 * with no arguments and the page shows first. "The city of Agadir is in the country of" → Morocco: the model
 * reads the subject at its last token. (known_id 0, "Quezon City", ends in " City", a token many cities share.)
 */
export const EXAMPLE_KNOWN_ID = 12;

/** A malformed facts file; the message is one line naming the file and the record. */
export class FactsFormatError extends InputError {
  override name = "FactsFormatError";
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Validates a parsed known_1000-format file: every record complete, ids unique, subject inside prompt. */
export function parseKnownFacts(json: unknown, where: string): KnownFact[] {
  if (!Array.isArray(json)) throw new FactsFormatError(`${where}: expected a JSON array of fact records`);
  if (json.length === 0) throw new FactsFormatError(`${where}: no fact records`);
  const seen = new Set<number>();
  return json.map((r, i) => {
    const at = `${where}: record ${i}`;
    if (!isRecord(r)) throw new FactsFormatError(`${at} is not an object`);
    const id = r.known_id;
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new FactsFormatError(`${at}: 'known_id' must be an integer ≥ 0 (got ${JSON.stringify(id)})`);
    }
    const rec = `${at} (known_id ${id})`;
    if (seen.has(id as number)) throw new FactsFormatError(`${rec}: duplicate known_id`);
    seen.add(id as number);
    for (const f of ["subject", "attribute", "prompt"]) {
      if (typeof r[f] !== "string" || (r[f] as string).trim() === "") {
        throw new FactsFormatError(`${rec}: '${f}' must be a non-empty string (got ${JSON.stringify(r[f])})`);
      }
    }
    const fact: KnownFact = {
      known_id: id as number,
      subject: r.subject as string,
      attribute: r.attribute as string,
      prompt: r.prompt as string,
    };
    if (!fact.prompt.includes(fact.subject)) {
      throw new FactsFormatError(
        `${rec}: subject ${JSON.stringify(fact.subject)} does not occur in prompt ${
          JSON.stringify(fact.prompt)
        }`,
      );
    }
    if (typeof r.relation_id === "string") fact.relation_id = r.relation_id;
    return fact;
  });
}

/** The `subject` of every record of a known_1000-format file (the noise level's subject list). */
export function parseSubjects(json: unknown, where: string): string[] {
  if (!Array.isArray(json) || json.length === 0) {
    throw new FactsFormatError(`${where}: expected a non-empty JSON array of records with a 'subject'`);
  }
  return json.map((r, i) => {
    if (!isRecord(r) || typeof r.subject !== "string" || r.subject === "") {
      throw new FactsFormatError(`${where}: record ${i} has no non-empty 'subject' string`);
    }
    return r.subject;
  });
}
