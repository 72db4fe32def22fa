// The evaluation datasets in the reference's file formats (reference §3.1, §3.6): CounterFact records
// (`counterfact.json`, also the bundled world's), attribute snippets (`attribute_snippets.json`, in the
// reference's list form or the nested {relation: {target: [...]}} form), and zsRE records
// (`zsre_mend_eval.json`, MEND's split), converted to requests as dsets/zsre.py does. Runtime-neutral:
// JSON values in, checked records out; a DatasetError names the file, the record and the field.
import { InputError } from "../engine/errors.ts";
import type { CounterFactCase } from "../rome/cases.ts";

export class DatasetError extends InputError {
  override name = "DatasetError";
}

export interface CounterFactRecord {
  case_id: number;
  pararel_idx?: number;
  requested_rewrite: {
    /** With "{}" where the subject goes. */
    prompt: string;
    relation_id: string;
    target_new: { str: string; id: string };
    target_true: { str: string; id: string };
    subject: string;
  };
  paraphrase_prompts: string[];
  neighborhood_prompts: string[];
  attribute_prompts: string[];
  generation_prompts: string[];
  /**
   * Not in the reference's schema (the bundled world adds it to records that move a city to another country):
   * the subject's other attributes, each with the value the new fact implies (target_new) and its own
   * (target_true). An edit that ports rewrites these too.
   */
  portability_prompts?: PortabilityPrompt[];
}

export interface PortabilityPrompt {
  relation_id?: string;
  /** The full prompt, subject filled in. */
  prompt: string;
  target_new: { str: string; id?: string };
  target_true: { str: string; id?: string };
}

/** A raw zsRE record of `zsre_mend_eval.json`. */
export interface ZsreRawRecord {
  subject: string;
  /** The question, containing the subject. */
  src: string;
  /** A paraphrase of the question. */
  rephrase: string;
  /** answers[0] is the edit's target (a true fact: zsRE edits teach, they do not counter). */
  answers: string[];
  /** "nq question: …", an unrelated Natural Questions question. */
  loc: string;
  /** Its gold answer. */
  loc_ans: string;
}

/** A zsRE record as the reference's MENDQADataset presents it (tokenizer-dependent parts are built later). */
export interface ZsreRecord {
  /** The record's index in the file. */
  case_id: number;
  /** prompt: src with the subject replaced by "{}"; target_true: "<|endoftext|>", as the reference (unused). */
  requested_rewrite: CounterFactCase["requested_rewrite"];
  paraphrase_prompts: string[];
  /** The NQ question and its answer; the per-token prompts need the tokenizer (zsreNeighbourhood). */
  loc: string;
  loc_ans: string;
}

export type EvalDataset =
  | { kind: "counterfact"; records: CounterFactRecord[] }
  | { kind: "zsre"; records: ZsreRecord[] };

export type Snippet = { name: string; text: string };
/** attribute_snippets[relation_id][target_id] = snippets of subjects that truly have that object. */
export type AttributeSnippets = Map<string, Map<string, Snippet[]>>;

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === "string");

/** Which format a dataset is, from its first record: CounterFact (requested_rewrite) or zsRE (src, answers). */
export function parseDataset(json: unknown, where: string): EvalDataset {
  if (!Array.isArray(json)) {
    throw new DatasetError(`${where}: expected a JSON list of CounterFact or zsRE records`);
  }
  if (json.length === 0) throw new DatasetError(`${where}: the dataset has no records`);
  const first = json[0];
  if (isObj(first) && "requested_rewrite" in first) {
    return { kind: "counterfact", records: parseCounterFact(json, where) };
  }
  if (isObj(first) && "src" in first && "answers" in first) {
    return { kind: "zsre", records: parseZsre(json, where) };
  }
  throw new DatasetError(
    `${where}: record 0 is neither a CounterFact record (with requested_rewrite) nor a zsRE record ` +
      `(with src and answers)`,
  );
}

/** Checks CounterFact records (every field the evaluation reads); case ids must be distinct integers. */
export function parseCounterFact(json: unknown, where: string): CounterFactRecord[] {
  if (!Array.isArray(json)) throw new DatasetError(`${where}: expected a JSON list of CounterFact records`);
  const seen = new Set<number>();
  return json.map((r, i) => {
    const bad = (field: string, want: string): never => {
      throw new DatasetError(`${where}: record ${i}: '${field}' must be ${want}`);
    };
    if (!isObj(r)) bad("(record)", "an object");
    const rec = r as Record<string, unknown>;
    if (!Number.isInteger(rec.case_id)) bad("case_id", "an integer");
    const id = rec.case_id as number;
    if (seen.has(id)) {
      throw new DatasetError(`${where}: case_id ${id} appears twice (records must be distinct)`);
    }
    seen.add(id);
    const rw = rec.requested_rewrite;
    if (!isObj(rw)) bad("requested_rewrite", "an object");
    const q = rw as Record<string, unknown>;
    for (const k of ["prompt", "subject", "relation_id"]) {
      if (typeof q[k] !== "string" || q[k] === "") bad(`requested_rewrite.${k}`, "a non-empty string");
    }
    for (const k of ["target_new", "target_true"]) {
      const t = q[k];
      if (!isObj(t) || typeof t.str !== "string" || t.str.trim() === "") {
        bad(`requested_rewrite.${k}.str`, "a non-empty string");
      }
      if (typeof (t as Record<string, unknown>).id !== "string") bad(`requested_rewrite.${k}.id`, "a string");
    }
    if ((q.prompt as string).split("{}").length !== 2) {
      bad("requested_rewrite.prompt", `a template with exactly one "{}" for the subject`);
    }
    for (
      const k of ["paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts"]
    ) {
      rec[k] ??= [];
      if (!isStrings(rec[k])) bad(k, "a list of strings");
    }
    if (rec.portability_prompts !== undefined) {
      if (!Array.isArray(rec.portability_prompts)) bad("portability_prompts", "a list");
      (rec.portability_prompts as unknown[]).forEach((p, j) => {
        const where = `portability_prompts[${j}]`;
        if (!isObj(p) || typeof p.prompt !== "string" || p.prompt === "") {
          bad(`${where}.prompt`, "a non-empty string");
        }
        for (const k of ["target_new", "target_true"]) {
          const t = (p as Record<string, unknown>)[k];
          if (!isObj(t) || typeof t.str !== "string" || t.str.trim() === "") {
            bad(`${where}.${k}.str`, "a non-empty string");
          }
        }
      });
    }
    return rec as unknown as CounterFactRecord;
  });
}

/**
 * zsRE records as dsets/zsre.py's MENDQADataset builds them: case_id = index, prompt = src with the
 * subject replaced by "{}", target_new = answers[0], target_true = "<|endoftext|>", one paraphrase. The
 * reference's `src.replace(subject, "{}")` replaces every occurrence (and `.format` fills them all);
 * here only the first becomes "{}", the one ROME's request needs, which gives the same prompt text.
 */
export function parseZsre(json: unknown, where: string): ZsreRecord[] {
  if (!Array.isArray(json)) throw new DatasetError(`${where}: expected a JSON list of zsRE records`);
  return json.map((r, i) => {
    const bad = (field: string, want: string): never => {
      throw new DatasetError(`${where}: record ${i}: '${field}' must be ${want}`);
    };
    if (!isObj(r)) bad("(record)", "an object");
    const rec = r as Record<string, unknown>;
    for (const k of ["subject", "src", "rephrase", "loc", "loc_ans"]) {
      if (typeof rec[k] !== "string" || rec[k] === "") bad(k, "a non-empty string");
    }
    if (!isStrings(rec.answers) || rec.answers.length === 0 || rec.answers[0].trim() === "") {
      bad("answers", "a non-empty list of strings");
    }
    const raw = rec as unknown as ZsreRawRecord;
    if (!raw.loc.includes("nq question: ")) {
      bad("loc", `an NQ question ("nq question: …"), as the reference asserts`);
    }
    const at = raw.src.indexOf(raw.subject);
    if (at < 0) {
      throw new DatasetError(
        `${where}: record ${i}: the subject ${JSON.stringify(raw.subject)} is not in its question ` +
          `${JSON.stringify(raw.src)} (ROME needs the subject in the prompt)`,
      );
    }
    return {
      case_id: i,
      requested_rewrite: {
        prompt: raw.src.slice(0, at) + "{}" + raw.src.slice(at + raw.subject.length),
        subject: raw.subject,
        target_new: { str: raw.answers[0] },
        target_true: { str: "<|endoftext|>" },
      },
      paraphrase_prompts: [raw.rephrase],
      loc: raw.loc,
      loc_ans: raw.loc_ans,
    };
  });
}

/**
 * Attribute snippets in either form: the reference's file, a list of {relation_id, target_id, samples:
 * [{name, text}]} (dsets/attr_snippets.py groups it by relation and target), or that grouping written
 * out as {relation_id: {target_id: [{name, text}]}} (the bundled world's file).
 */
export function parseAttributeSnippets(json: unknown, where: string): AttributeSnippets {
  const out: AttributeSnippets = new Map();
  const add = (rel: string, tid: string, samples: unknown, at: string) => {
    if (!Array.isArray(samples)) throw new DatasetError(`${where}: ${at} must be a list of {name, text}`);
    const list = out.get(rel) ?? new Map<string, Snippet[]>();
    out.set(rel, list);
    const into = list.get(tid) ?? [];
    list.set(tid, into);
    samples.forEach((s, k) => {
      if (!isObj(s) || typeof s.text !== "string" || typeof s.name !== "string") {
        throw new DatasetError(`${where}: ${at}[${k}] must be {name, text} strings`);
      }
      into.push({ name: s.name, text: s.text });
    });
  };
  if (Array.isArray(json)) {
    json.forEach((el, i) => {
      if (!isObj(el) || typeof el.relation_id !== "string" || typeof el.target_id !== "string") {
        throw new DatasetError(`${where}: entry ${i} must have string relation_id and target_id`);
      }
      add(el.relation_id, el.target_id, el.samples, `entry ${i}.samples`);
    });
  } else if (isObj(json)) {
    for (const [rel, byTarget] of Object.entries(json)) {
      if (!isObj(byTarget)) throw new DatasetError(`${where}: '${rel}' must map target ids to snippets`);
      for (const [tid, samples] of Object.entries(byTarget)) add(rel, tid, samples, `${rel}.${tid}`);
    }
  } else {
    throw new DatasetError(`${where}: expected attribute snippets (a list, or {relation: {target: [...]}})`);
  }
  return out;
}

/** Every snippet text, in file order (the documents the reference fits its tf-idf on, dsets/tfidf_stats.py). */
export function snippetTexts(snips: AttributeSnippets): string[] {
  return [...snips.values()].flatMap((m) => [...m.values()].flatMap((l) => l.map((s) => s.text)));
}

/** The CounterFact records whose new object has no snippets (the reference asserts there are some). */
export function recordsWithoutSnippets(
  records: readonly CounterFactRecord[],
  snips: AttributeSnippets,
): CounterFactRecord[] {
  return records.filter((r) => {
    const rw = r.requested_rewrite;
    return (snips.get(rw.relation_id)?.get(rw.target_new.id)?.length ?? 0) === 0;
  });
}
