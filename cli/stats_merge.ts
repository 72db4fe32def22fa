// deno task stats --merge FILE... --out FILE: the shards of a job array (stats --shard) added into one
// statistics file, the format `stats --out` writes and `edit --stats` reads. Every check runs on the
// headers before a matrix is read or anything written (rome/stats_shards.ts checkShardSet); the sums are
// added in float64 in shard order, whatever order the files are given in.
import { dirname, resolve } from "node:path";
import { readSafetensorsFile, writeFileAtomic } from "../engine/files.ts";
import { decodeSecondMoment, encodeSecondMoment, meanDiagonal, StatsError } from "../rome/stats.ts";
import { checkShardSet, mergedMetadata, readShardHeader, type ShardHeader } from "../rome/stats_shards.ts";
import { fmt } from "../tracing/render.ts";
import { UsageError } from "./args.ts";
import { isFile } from "./files.ts";
import { statsOutIsFree } from "./layer_stats.ts";

/** Options --merge takes; any other is refused (the shards' headers say the model, layer and corpus). */
const MERGE_OPTIONS = ["merge", "out", "json", "allow-missing"];

export async function cmdStatsMerge(opts: Record<string, unknown>, files: string[]): Promise<void> {
  const unused = Object.keys(opts).find((k) => opts[k] !== undefined && !MERGE_OPTIONS.includes(k));
  if (unused !== undefined) {
    throw new UsageError(`--${unused} is not used by --merge (the shard files record their run)`);
  }
  if (files.length === 0) {
    throw new UsageError("--merge needs the shard files: deno task stats --merge FILE... --out FILE");
  }
  const out = opts.out as string | undefined;
  if (out === undefined) throw new UsageError("--merge needs --out FILE, the statistics file to write");
  for (const f of files) {
    if (!isFile(f)) throw new UsageError(`shard file '${f}' not found`);
    if (resolve(f) === resolve(out)) {
      throw new UsageError(`--out '${out}' is one of the shard files; name the merged file to write`);
    }
  }
  await statsOutIsFree(out);
  const allowMissing = Boolean(opts["allow-missing"]);

  const headers: ShardHeader[] = [];
  const sources = new Map<string, string>();
  for (const f of files) {
    let md: Record<string, string>;
    try {
      md = (await readSafetensorsFile(f)).metadata;
    } catch {
      throw new StatsError(`'${f}' is not a statistics shard (not a safetensors file)`);
    }
    headers.push(readShardHeader(f, md));
    sources.set(f, md.source ?? "");
  }
  const set = checkShardSet(headers, allowMissing);

  let sum: Float64Array | undefined;
  let count = 0;
  for (const h of set.shards) {
    const s = decodeSecondMoment(await Deno.readFile(h.name), h.name);
    sum ??= new Float64Array(s.mom2.length);
    if (s.mom2.length !== sum.length) {
      throw new StatsError(
        `'${h.name}' holds a ${Math.sqrt(s.mom2.length)}² matrix, the others ${Math.sqrt(sum.length)}²`,
      );
    }
    for (let i = 0; i < sum.length; i++) sum[i] += s.mom2[i];
    count += s.count;
  }
  const mom2 = Float32Array.from(sum!);
  const samples = Number(set.settings.samples);
  const extra = mergedMetadata(set);
  await Deno.mkdir(dirname(out), { recursive: true });
  await writeFileAtomic(
    out,
    encodeSecondMoment(mom2, count, {
      model_hash: set.settings.model_hash,
      layer: Number(set.settings.layer),
      corpus_hash: set.settings.corpus_hash,
      samples,
      cursor: samples,
      source: sources.get(set.shards[0].name) ?? "",
    }, extra),
  );

  const diag = count > 0 ? meanDiagonal(mom2, count) : NaN;
  const record = {
    out,
    layer: Number(set.settings.layer),
    model_hash: set.settings.model_hash,
    shards: set.count,
    merged: set.shards.map((s) => s.index),
    missing: set.missing,
    documents: Number(extra.documents),
    samples,
    count,
    mean_diagonal: diag,
  };
  if (opts.json) return console.log(JSON.stringify(record));
  console.log(
    `merged ${set.shards.length} of ${set.count} shards: C at layer ${record.layer} over ${record.documents} ` +
      `of ${samples} documents, ${count} tokens, mean diagonal ${fmt(diag, 4)}; wrote ${out}`,
  );
  if (set.missing.length > 0) {
    console.log(
      `without shard${set.missing.length > 1 ? "s" : ""} ${set.missing.join(", ")} (--allow-missing; ` +
        `the file's header records them as shards_missing)`,
    );
  }
}
