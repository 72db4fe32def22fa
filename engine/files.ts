/**
 * The Deno edge for weight files: reading safetensors lazily from disk, sharded checkpoints,
 * atomic writes, and refusing pickle checkpoints. Byte-level parsing lives in `safetensors.ts`.
 */

import {
  decodeTensorF32,
  parseSafetensorsHeader,
  readHeaderLength,
  SafetensorsError,
  serializeSafetensors,
  type StTensorInfo,
  type StTensorInput,
} from "./safetensors.ts";
import { InputError } from "./errors.ts";

/** A readable set of tensors: one file, or a sharded checkpoint merged into one view. */
export interface SafetensorsSource {
  tensors: Map<string, StTensorInfo>;
  metadata: Record<string, string>;
  /** Reads a float tensor (F32/F16/BF16/F64) as f32, from disk, on each call. */
  read(name: string): Float32Array;
  /** Reads a tensor's raw little-endian bytes, from disk, on each call. */
  raw(name: string): Uint8Array;
  /** The file that holds `name` (for error messages and tooling). */
  fileOf(name: string): string;
}

// ---------------------------------------------------------------------------------------------
// Pickle refusal
// ---------------------------------------------------------------------------------------------

/** Why we will not load `pytorch_model.bin` and how to convert it. `DIR` is a placeholder. */
export const PICKLE_REFUSAL_MESSAGE =
  "pytorch_model.bin (and .pt/.pth/.ckpt) checkpoints are Python pickles: " +
  "loading one can execute arbitrary code, so this engine refuses them. Convert the checkpoint " +
  "to safetensors once, in a Python environment you trust:\n" +
  '  python -c "from transformers import AutoModel; ' +
  "AutoModel.from_pretrained('DIR').save_pretrained('DIR', safe_serialization=True)\"\n" +
  "then load DIR/model.safetensors (or model.safetensors.index.json for sharded checkpoints).";

const PICKLE_NAMES = ["pytorch_model.bin", "pytorch_model.bin.index.json"];
const PICKLE_EXTENSIONS = [".bin", ".pt", ".pth", ".ckpt", ".pkl"];

export class PickleCheckpointError extends InputError {
  constructor(path: string, dir: string) {
    super(`${path}: ${PICKLE_REFUSAL_MESSAGE.replaceAll("DIR", dir)}`);
    this.name = "PickleCheckpointError";
  }
}

/** Whether a path exists (a permission or I/O error is thrown, not taken as absence). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function dirname(path: string): string {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

function join(dir: string, name: string): string {
  return dir.endsWith("/") || dir.endsWith("\\") ? dir + name : `${dir}/${name}`;
}

/**
 * Throws `PickleCheckpointError` if `path` is a pickle file, or a directory whose only weights
 * are pickles (a directory that also has safetensors is fine: we never touch the .bin).
 */
export function assertNotPickle(path: string): void {
  const stat = Deno.statSync(path);
  if (stat.isFile) {
    if (PICKLE_EXTENSIONS.some((ext) => path.endsWith(ext))) {
      throw new PickleCheckpointError(path, dirname(path));
    }
    return;
  }
  const hasSafetensors = exists(join(path, "model.safetensors")) ||
    exists(join(path, "model.safetensors.index.json"));
  if (hasSafetensors) return;
  for (const name of PICKLE_NAMES) {
    if (exists(join(path, name))) throw new PickleCheckpointError(join(path, name), path);
  }
}

/** Torch's zip container ("PK\3\4") or a raw pickle (PROTO opcode 0x80, protocol 2..5). */
function looksLikePickle(first: Uint8Array): boolean {
  const zip = first[0] === 0x50 && first[1] === 0x4b && first[2] === 0x03 && first[3] === 0x04;
  const pickle = first[0] === 0x80 && first[1] >= 2 && first[1] <= 5;
  return zip || pickle;
}

// ---------------------------------------------------------------------------------------------
// Single-file reader
// ---------------------------------------------------------------------------------------------

function readFullSync(file: Deno.FsFile, into: Uint8Array): number {
  let done = 0;
  while (done < into.byteLength) {
    const n = file.readSync(into.subarray(done));
    if (n === null || n === 0) break;
    done += n;
  }
  return done;
}

async function readFull(file: Deno.FsFile, into: Uint8Array): Promise<number> {
  let done = 0;
  while (done < into.byteLength) {
    const n = await file.read(into.subarray(done));
    if (n === null || n === 0) break;
    done += n;
  }
  return done;
}

/** What identifies the file version the header was parsed from. */
interface FileIdentity {
  size: number;
  mtime: number | undefined;
  ino: number | null;
}

function identity(stat: Deno.FileInfo): FileIdentity {
  return { size: stat.size, mtime: stat.mtime?.getTime(), ino: stat.ino };
}

/**
 * Opens a safetensors file and parses only its header (8 + N bytes); tensor bytes are read
 * on each `read`/`raw` call with a seek, so a multi-GB checkpoint is never held in one buffer.
 *
 * No file handle is kept open between calls (nothing to close, nothing leaked). Each read
 * reopens the file and checks size/mtime/inode against what the header was parsed from, so a
 * file replaced underneath us (e.g. by `writeFileAtomic`) is an error, not silently mixed data.
 */
export async function readSafetensorsFile(path: string): Promise<SafetensorsSource> {
  const file = await Deno.open(path, { read: true });
  let header;
  let ident: FileIdentity;
  try {
    ident = identity(await file.stat());
    const prefix = new Uint8Array(Math.min(8, ident.size));
    await readFull(file, prefix);
    if (prefix.byteLength >= 4 && looksLikePickle(prefix)) {
      throw new PickleCheckpointError(path, dirname(path));
    }
    const headerLen = readHeaderLength(prefix, ident.size, path);
    const head = new Uint8Array(8 + headerLen);
    head.set(prefix);
    const got = await readFull(file, head.subarray(8));
    if (got !== headerLen) throw new SafetensorsError(path, `file shrank while reading the header`);
    header = parseSafetensorsHeader(head, ident.size, path);
  } finally {
    file.close();
  }
  const { tensors, metadata, dataOffset } = header;

  const raw = (name: string): Uint8Array => {
    const info = tensors.get(name);
    if (info === undefined) throw new SafetensorsError(path, "no such tensor in this file", name);
    const f = Deno.openSync(path, { read: true });
    try {
      const now = identity(f.statSync());
      if (now.size !== ident.size || now.mtime !== ident.mtime || now.ino !== ident.ino) {
        throw new SafetensorsError(path, "file changed on disk since its header was read; reopen it", name);
      }
      const out = new Uint8Array(info.end - info.begin);
      f.seekSync(dataOffset + info.begin, Deno.SeekMode.Start);
      if (readFullSync(f, out) !== out.byteLength) {
        throw new SafetensorsError(path, "unexpected end of file while reading tensor bytes", name);
      }
      return out;
    } finally {
      f.close();
    }
  };
  const read = (name: string): Float32Array => {
    const bytes = raw(name); // checks the name first
    return decodeTensorF32(tensors.get(name)!.dtype, bytes, name);
  };
  const fileOf = (name: string): string => {
    if (!tensors.has(name)) throw new SafetensorsError(path, "no such tensor in this file", name);
    return path;
  };
  return { tensors, metadata, read, raw, fileOf };
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints
// ---------------------------------------------------------------------------------------------

export const SAFETENSORS_SINGLE = "model.safetensors";
export const SAFETENSORS_INDEX = "model.safetensors.index.json";

/** Shard names must be plain file names in the checkpoint dir: an index is untrusted input. */
function checkShardName(indexPath: string, tensor: string, shard: unknown): string {
  if (
    typeof shard !== "string" || shard === "" || shard === "." || shard === ".." ||
    shard.includes("/") || shard.includes("\\") || shard.includes("\0")
  ) {
    throw new SafetensorsError(
      indexPath,
      `weight_map entry ${JSON.stringify(shard)} must be a file name in the same directory`,
      tensor,
    );
  }
  return shard;
}

/**
 * Opens a checkpoint directory: `model.safetensors.index.json` (HF sharded layout) if present,
 * else `model.safetensors`. For an index, every listed shard must exist, every tensor must be in
 * the shard the index names, and every shard tensor must be listed (save_pretrained always
 * writes a complete map, so anything else is a corrupt or mixed-up checkpoint).
 *
 * Metadata: for a single file, its `__metadata__`; for an index, the index's `metadata` object
 * with non-string values JSON-encoded (e.g. total_size → "548105216").
 */
export async function readShardedSafetensors(dir: string): Promise<SafetensorsSource> {
  const indexPath = join(dir, SAFETENSORS_INDEX);
  if (!exists(indexPath)) {
    const single = join(dir, SAFETENSORS_SINGLE);
    if (exists(single)) return await readSafetensorsFile(single);
    assertNotPickle(dir);
    throw new Error(`${dir}: no ${SAFETENSORS_SINGLE} or ${SAFETENSORS_INDEX} found`);
  }

  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (e) {
    throw new SafetensorsError(indexPath, `index is not valid JSON (${(e as Error).message})`);
  }
  if (typeof index !== "object" || index === null || Array.isArray(index)) {
    throw new SafetensorsError(indexPath, "index must be a JSON object");
  }
  const { weight_map: weightMap, metadata: rawMeta } = index as Record<string, unknown>;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new SafetensorsError(indexPath, `index has no "weight_map" object`);
  }

  const wanted = new Map<string, string>(); // tensor -> shard file name
  for (const [tensor, shard] of Object.entries(weightMap)) {
    wanted.set(tensor, checkShardName(indexPath, tensor, shard));
  }

  const shardNames = [...new Set(wanted.values())].sort();
  for (const shard of shardNames) {
    if (!exists(join(dir, shard))) {
      const example = [...wanted].find(([, s]) => s === shard)![0];
      throw new SafetensorsError(
        indexPath,
        `shard ${JSON.stringify(shard)} listed in the index is missing from ${dir}`,
        example,
      );
    }
  }
  const shards = new Map<string, SafetensorsSource>();
  for (const shard of shardNames) shards.set(shard, await readSafetensorsFile(join(dir, shard)));

  const tensors = new Map<string, StTensorInfo>();
  const owner = new Map<string, SafetensorsSource>();
  for (const [tensor, shard] of wanted) {
    const source = shards.get(shard)!;
    const info = source.tensors.get(tensor);
    if (info === undefined) {
      throw new SafetensorsError(
        indexPath,
        `index says it is in shard ${JSON.stringify(shard)}, which lacks it`,
        tensor,
      );
    }
    tensors.set(tensor, info);
    owner.set(tensor, source);
  }
  for (const [shard, source] of shards) {
    for (const tensor of source.tensors.keys()) {
      if (wanted.get(tensor) !== shard) {
        throw new SafetensorsError(
          join(dir, shard),
          `tensor is not mapped to this shard by ${SAFETENSORS_INDEX}`,
          tensor,
        );
      }
    }
  }

  const metadata: Record<string, string> = {};
  if (typeof rawMeta === "object" && rawMeta !== null && !Array.isArray(rawMeta)) {
    for (const [k, v] of Object.entries(rawMeta)) metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  const sourceOf = (name: string): SafetensorsSource => {
    const s = owner.get(name);
    if (s === undefined) throw new SafetensorsError(indexPath, "no such tensor in this checkpoint", name);
    return s;
  };
  return {
    tensors,
    metadata,
    read: (name) => sourceOf(name).read(name),
    raw: (name) => sourceOf(name).raw(name),
    fileOf: (name) => sourceOf(name).fileOf(name),
  };
}

// ---------------------------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------------------------

/** Hits so far of each kill point (see `killPoint`), and the parsed ROME_DRILL_KILL_AT (null: off). */
const killHits = new Map<string, number>();
let killSpec: { point: string; n: number } | null | undefined;

/**
 * Test-only (tests/kill_test.ts): with ROME_DRILL_KILL_AT=POINT or POINT#N in the environment, the process
 * SIGKILLs itself the N-th time (default the first) it reaches the write step named POINT (`*` counts every
 * point), after a line `kill point POINT#N DETAIL` on stderr (`kill point *#N POINT DETAIL` for `*`).
 * Points: `atomic:partial` (a temp file holds its first chunk), `atomic:written` (temp file complete, not
 * renamed), `atomic:renamed`, `folder:partial` (a temp folder holds model.safetensors only),
 * `folder:staged` (temp folder complete, not swapped in), `folder:moved-aside` (between the two renames of
 * a swap), `folder:swapped` (before the old copy is removed), `edited:staged`, `edited:moved-aside`,
 * `edited:swapped` (the same steps of an edited-model save), `stats:final-written` (the statistics file
 * renamed, its checkpoint not yet removed).
 */
export function killPoint(point: string, detail = ""): void {
  if (killSpec === undefined) {
    killSpec = null;
    try {
      const state = Deno.permissions.querySync({ name: "env", variable: "ROME_DRILL_KILL_AT" }).state;
      const raw = state === "granted" ? Deno.env.get("ROME_DRILL_KILL_AT") : undefined;
      const m = raw ? /^([^#]+)(?:#(\d+))?$/.exec(raw) : null;
      if (m) killSpec = { point: m[1], n: m[2] === undefined ? 1 : Number(m[2]) };
    } catch { /* no environment access: never armed */ }
  }
  if (killSpec === null) return;
  const key = killSpec.point === "*" ? "*" : point;
  if (key !== killSpec.point) return;
  const hit = (killHits.get(key) ?? 0) + 1;
  killHits.set(key, hit);
  if (hit !== killSpec.n) return;
  const what = `${killSpec.point}#${hit}${key === "*" ? ` ${point}` : ""}`;
  Deno.stderr.writeSync(new TextEncoder().encode(`kill point ${what} ${detail}\n`));
  try {
    Deno.kill(Deno.pid, "SIGKILL");
  } catch { /* no --allow-run: the nearest thing */ }
  Deno.exit(137);
}

function randomSuffix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) done += await file.write(bytes.subarray(done));
}

/**
 * Writes `chunks` to `path` so that readers see either the old file or the complete new one:
 * write `path.tmp-<random>` in the same directory (rename is only atomic within a filesystem),
 * fsync it, rename it over `path`, then fsync the directory so the rename itself survives a
 * crash. On any error (including the chunk iterator throwing) the temp file is removed and the
 * error rethrown; the old file is untouched.
 */
export async function writeFileAtomic(
  path: string,
  chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
): Promise<void> {
  const tmp = `${path}.tmp-${randomSuffix()}`;
  let file: Deno.FsFile | undefined;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    let first = true;
    for await (const chunk of chunks) {
      await writeAll(file, chunk);
      if (first) killPoint("atomic:partial", path);
      first = false;
    }
    await file.sync();
    file.close();
    file = undefined;
    killPoint("atomic:written", path);
    await Deno.rename(tmp, path);
    killPoint("atomic:renamed", path);
  } catch (e) {
    try {
      file?.close();
    } catch { /* already closed */ }
    try {
      await Deno.remove(tmp);
    } catch { /* never created, or already gone */ }
    throw e;
  }
  await syncDir(dirname(path));
}

/**
 * Puts the complete folder `staged` in place of `dir` by renames: the old `dir` (if any) is moved aside to
 * `<dir>.old-*` first and removed last, so a crash leaves the old folder or the new one, never a mix.
 * `label` names the kill points (`<label>:moved-aside`, `<label>:swapped`) the crash tests stop at.
 */
export async function replaceFolder(staged: string, dir: string, label: string): Promise<void> {
  let old: string | undefined;
  if (exists(dir)) {
    old = `${dir}.old-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.rename(dir, old);
    killPoint(`${label}:moved-aside`, old);
  }
  await Deno.rename(staged, dir);
  if (old) killPoint(`${label}:swapped`, dir);
  if (old) await Deno.remove(old, { recursive: true });
}

/** Best effort: directories cannot be opened for fsync on every platform (e.g. Windows). */
async function syncDir(dir: string): Promise<void> {
  let d: Deno.FsFile | undefined;
  try {
    d = await Deno.open(dir, { read: true });
    await d.sync();
  } catch {
    // The data itself is already durable; only the rename's durability is weaker here.
  } finally {
    d?.close();
  }
}

/** Serializes tensors (see `serializeSafetensors` for ordering) and writes them atomically. */
export async function writeSafetensorsFile(
  path: string,
  tensors: StTensorInput[],
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
