// The edited model folder on disk: its edits log (edits.json), where an edited model goes (--out or
// --in-place), and the atomic save of a complete Hugging Face folder carrying the edit.
import { dirname, join, resolve } from "node:path";
import { exists, killPoint, replaceFolder } from "../engine/files.ts";
import { saveGpt2Folder } from "../engine/gpt2/folder.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { type EditsLog, parseEditsLog, PatchError } from "../rome/patch.ts";
import { UsageError } from "./args.ts";

/** The edits log of a model folder, if it has one. */
export function readEditsLog(dir: string): EditsLog | undefined {
  const path = join(dir, "edits.json");
  if (!exists(path)) return undefined;
  try {
    return parseEditsLog(JSON.parse(Deno.readTextFileSync(path)), path);
  } catch (e) {
    if (e instanceof PatchError) throw e;
    throw new UsageError(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** The folder's unedited model hash (statistics and templates belong to it, as the reference computes them once). */
export function baseModelHash(dir: string, model: Gpt2Model): string {
  return readEditsLog(dir)?.base_model_hash ?? model.hash;
}

/**
 * Files never copied from the source folder on save: weights (rewritten; stale copies in other formats would
 * contradict the edit) and training state (an edited model is not a checkpoint to resume training from).
 */
const WEIGHT_FILE =
  /^(optimizer\.safetensors|trainer_state\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin|pytorch_model\.bin\.index\.json|tf_model\.h5|flax_model\.msgpack|.*\.(pt|pth|ckpt|bin))$/;

function folderFiles(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(dir, rel))) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...folderFiles(dir, r));
    else if (e.isFile) out.push(r);
  }
  return out;
}

/**
 * Writes the edited model as a complete Hugging Face folder: saveGpt2Folder into a fresh staging folder,
 * the source folder's other files (tokenizer, shipped statistics, earlier patch copies) and `files` added
 * there, then the staging folder replaces `out` by renames. Until that last step `out` is untouched; an
 * existing `out` that is not a model folder is refused rather than replaced.
 */
export async function saveEditedFolder(
  src: string,
  out: string,
  model: Gpt2Model,
  files: Record<string, string | Uint8Array>,
  drop: ReadonlySet<string> = new Set(),
): Promise<void> {
  if (exists(out) && !exists(join(out, "config.json"))) {
    if ([...Deno.readDirSync(out)].length > 0) {
      throw new UsageError(`--out '${out}' exists and is not a model folder; give a new folder`);
    }
  }
  const copied: Record<string, Uint8Array> = {};
  for (const rel of folderFiles(src)) {
    if (
      rel === "config.json" || rel === "edits.json" || WEIGHT_FILE.test(rel) || drop.has(rel) || rel in files
    ) continue;
    copied[rel] = await Deno.readFile(join(src, rel));
  }
  const all = { ...copied, ...files };
  const flat = Object.fromEntries(Object.entries(all).filter(([k]) => !k.includes("/")));
  const nested = Object.entries(all).filter(([k]) => k.includes("/"));
  const stage = `${out}.stage-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await saveGpt2Folder(stage, model, { extraFiles: flat });
    for (const [rel, data] of nested) {
      await Deno.mkdir(dirname(join(stage, rel)), { recursive: true });
      if (typeof data === "string") await Deno.writeTextFile(join(stage, rel), data);
      else await Deno.writeFile(join(stage, rel), data);
    }
    killPoint("edited:staged", stage);
    await replaceFolder(stage, out, "edited");
  } catch (e) {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** Where an edited model goes: --out DIR, or the input folder itself with --in-place; never the input otherwise. */
export function editOutputDir(
  opts: Record<string, unknown>,
  dir: string,
  required: boolean,
): string | undefined {
  const out = opts.out as string | undefined;
  if (opts["in-place"]) {
    if (out !== undefined && resolve(out) !== resolve(dir)) {
      throw new UsageError("give either --out DIR or --in-place");
    }
    return dir;
  }
  if (out === undefined) {
    if (required) {
      throw new UsageError("--out DIR is required (a new folder), or --in-place to change --model's folder");
    }
    return undefined;
  }
  if (resolve(out) === resolve(dir)) {
    throw new UsageError(
      `--out is the input folder '${dir}': pass --in-place to overwrite it, or choose another --out`,
    );
  }
  return out;
}
