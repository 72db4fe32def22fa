// Statistics C computed by a job array: each shard sums Σ k kᵀ over one contiguous range of the corpus's
// documents (a partial sum, not divided by its count) and records in its header what it covered and how;
// a merge checks the shards belong to one run, covers each index once and adds them. Contiguous ranges
// (not every n-th document) because the merged sum then adds exactly the documents a single run adds, and a
// shard's range follows from i, n and the document count alone, so a merge can check it.
//
// Runtime-neutral: headers are string maps (safetensors metadata); the CLI reads and writes the files.
import { ENGINE_VERSION } from "../engine/version.ts";
import { StatsError } from "./stats.ts";
import { shardsByIndex } from "../engine/shards.ts";

/** What a shard's sums depend on besides its range: every shard of one merge agrees on all of it. */
export interface ShardSettings {
  /** The base model's hash (cli/edited_folder.ts baseModelHash). */
  model_hash: string;
  layer: number;
  /** Hash of the whole corpus, not of the shard's documents. */
  corpus_hash: string;
  /** Documents in the corpus. */
  corpus_documents: number;
  /** Documents the whole run takes from the start of the corpus (--samples), split among the shards. */
  samples: number;
  /** Documents per group (rome/stats.ts groupSize): sums are added group by group. */
  group_size: number;
  /** Tokens each document is cut at (the model's n_positions). */
  max_positions: number;
  /** Accumulation dtype of Σ k kᵀ. */
  precision: string;
  /** engine/version.ts at the time of computing. */
  engine_version: string;
}

/** The settings, in the order a merge compares them (the first difference is the one reported). */
export const SHARD_SETTING_FIELDS: readonly (keyof ShardSettings)[] = [
  "model_hash",
  "layer",
  "corpus_hash",
  "corpus_documents",
  "samples",
  "group_size",
  "max_positions",
  "precision",
  "engine_version",
];

/** Settings of a run computed now (float32 sums, this engine's version). */
export function currentShardSettings(
  s: Omit<ShardSettings, "precision" | "engine_version">,
): ShardSettings {
  return { ...s, precision: "float32", engine_version: ENGINE_VERSION };
}

/** Documents [start, end) of shard `index` of `count` over `total` documents: contiguous, sizes differ by ≤ 1. */
export function shardRange(total: number, index: number, count: number): { start: number; end: number } {
  return { start: Math.floor(index * total / count), end: Math.floor((index + 1) * total / count) };
}

/** A shard's header: the extra metadata written after the statistics' own (rome/stats.ts encodeSecondMoment). */
export function shardMetadata(
  s: ShardSettings,
  shard: { index: number; count: number },
): Record<string, string> {
  const { start, end } = shardRange(s.samples, shard.index, shard.count);
  return {
    kind: "shard",
    ...settingsMetadata(s),
    shard: `${shard.index}/${shard.count}`,
    doc_start: String(start),
    doc_end: String(end),
  };
}

function settingsMetadata(s: ShardSettings): Record<string, string> {
  return Object.fromEntries(SHARD_SETTING_FIELDS.map((k) => [k, String(s[k])]));
}

/** A shard file's header as read back: its place in the array, its range and how far it got. */
export interface ShardHeader {
  name: string;
  index: number;
  count: number;
  start: number;
  end: number;
  /** Documents consumed so far (absolute); equals `end` when the shard is finished. */
  cursor: number;
  /** The settings as the header spells them (compared as text). */
  settings: Record<keyof ShardSettings, string>;
}

/** Reads a shard's header; StatsError (one line, naming the file) for anything that is not a shard's. */
export function readShardHeader(name: string, md: Record<string, string>): ShardHeader {
  if (md.kind !== "shard") {
    throw new StatsError(
      `'${name}' is not a statistics shard (${
        md.kind === "merged" ? "it is a merge of shards" : "no shard record in its header"
      }; --merge takes the files of deno task stats --shard)`,
    );
  }
  const m = /^(\d+)\/(\d+)$/.exec(md.shard ?? "");
  const ints = [md.doc_start, md.doc_end, md.cursor].map((v) => /^\d+$/.test(v ?? "") ? Number(v) : NaN);
  const missing = SHARD_SETTING_FIELDS.find((k) => md[k] === undefined);
  if (!m || ints.some(Number.isNaN) || missing !== undefined) {
    throw new StatsError(`'${name}': a damaged shard header (${missing ?? "shard or document range"})`);
  }
  const settings = Object.fromEntries(SHARD_SETTING_FIELDS.map((k) => [k, md[k]])) as ShardHeader["settings"];
  const [start, end, cursor] = ints;
  return { name, index: Number(m[1]), count: Number(m[2]), start, end, cursor, settings };
}

/** The shards a merge holds, in index order, and the indices it lacks. */
export interface ShardSet {
  count: number;
  shards: ShardHeader[];
  missing: number[];
  settings: Record<keyof ShardSettings, string>;
}

/**
 * Checks that shard headers make one run's statistics, before anything is read or written: the same
 * settings and shard count, each finished, each over its own range, no index twice, none missing (unless
 * `allowMissing`). Every refusal is one line naming the field or index and the files.
 */
export function checkShardSet(headers: ShardHeader[], allowMissing: boolean): ShardSet {
  if (headers.length === 0) throw new StatsError("--merge needs the shard files to add");
  const first = headers[0];
  for (const h of headers) {
    for (const k of SHARD_SETTING_FIELDS) {
      if (h.settings[k] !== first.settings[k]) {
        throw new StatsError(
          `'${h.name}' and '${first.name}' differ in ${k} (${h.settings[k]} vs ${
            first.settings[k]
          }): shards of different runs`,
        );
      }
    }
    if (h.count !== first.count) {
      throw new StatsError(
        `'${h.name}' and '${first.name}' differ in the shard count (shard ${h.index}/${h.count} vs ${first.index}/${first.count})`,
      );
    }
    const want = shardRange(Number(h.settings.samples), h.index, h.count);
    if (h.start !== want.start || h.end !== want.end) {
      throw new StatsError(
        `'${h.name}' covers documents [${h.start}, ${h.end}), but shard ${h.index}/${h.count} of ` +
          `${h.settings.samples} documents is [${want.start}, ${want.end})`,
      );
    }
    if (h.cursor !== h.end) {
      throw new StatsError(
        `'${h.name}' is an unfinished shard (documents ${h.start} to ${h.cursor} of [${h.start}, ${h.end})); ` +
          `run shard ${h.index}/${h.count} again to finish it`,
      );
    }
  }
  const { byIndex, missing } = shardsByIndex(
    headers,
    (h) => h.index,
    first.count,
    (seen, h) =>
      new StatsError(
        `'${seen.name}' and '${h.name}' are both shard ${h.index}/${h.count} (documents [${h.start}, ${h.end}))`,
      ),
  );
  if (missing.length > 0 && !allowMissing) {
    throw new StatsError(
      `shard${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${first.count} ${
        missing.length > 1 ? "are" : "is"
      } missing; give ${
        missing.length > 1 ? "their files" : "its file"
      } (or --allow-missing to merge without them)`,
    );
  }
  const shards = [...byIndex.values()].sort((a, b) => a.index - b.index);
  return { count: first.count, shards, missing, settings: first.settings };
}

/** Metadata of a merged file after the statistics' own: which shards it adds, and the run's settings. */
export function mergedMetadata(set: ShardSet): Record<string, string> {
  const documents = set.shards.reduce((n, s) => n + s.end - s.start, 0);
  return {
    kind: "merged",
    ...set.settings,
    shards: String(set.count),
    shards_merged: set.shards.map((s) => s.index).join(","),
    ...(set.missing.length > 0 ? { shards_missing: set.missing.join(",") } : {}),
    documents: String(documents),
  };
}
