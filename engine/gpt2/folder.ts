// The Deno edge of model loading: a Hugging Face model folder on disk (config.json, safetensors single or
// sharded, vocab.json + merges.txt or tokenizer.json). Browsers load the same pieces over fetch instead.
import type { Engine } from "../engine.ts";
import {
  assertNotPickle,
  exists,
  killPoint,
  readShardedSafetensors,
  replaceFolder,
  writeSafetensorsFile,
} from "../files.ts";
import { gpt2ConfigJson, parseGpt2Config } from "./config.ts";
import { buildGpt2, CheckpointError, checkTokenizerFits, tiedEmbeddings } from "./load.ts";
import type { Gpt2Model } from "./model.ts";
import { Gpt2Tokenizer } from "./tokenizer.ts";

export interface LoadedModel {
  dir: string;
  model: Gpt2Model;
  tokenizer: Gpt2Tokenizer;
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new CheckpointError(`${path} not found`);
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

export function loadTokenizer(dir: string): Gpt2Tokenizer {
  if (exists(`${dir}/vocab.json`) && exists(`${dir}/merges.txt`)) {
    const vocab = readJson(`${dir}/vocab.json`) as Record<string, number>;
    return Gpt2Tokenizer.fromVocabMerges(vocab, Deno.readTextFileSync(`${dir}/merges.txt`));
  }
  if (exists(`${dir}/tokenizer.json`)) {
    return Gpt2Tokenizer.fromTokenizerJson(readJson(`${dir}/tokenizer.json`));
  }
  throw new CheckpointError(`${dir}: no tokenizer (needs vocab.json + merges.txt, or tokenizer.json)`);
}

export async function loadGpt2Folder(
  engine: Engine,
  dir: string,
  opts: { onTensor?: (done: number, total: number) => void } = {},
): Promise<LoadedModel> {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(dir);
  } catch {
    throw new CheckpointError(
      `model folder '${dir}' not found (give --model DIR, a Hugging Face GPT-2 folder)`,
    );
  }
  if (!st.isDirectory) throw new CheckpointError(`--model '${dir}' is not a folder`);
  const cfgJson = readJson(`${dir}/config.json`);
  const config = parseGpt2Config(cfgJson, `${dir}/config.json`);
  assertNotPickle(dir);
  const tokenizer = loadTokenizer(dir);
  checkTokenizerFits(tokenizer.vocabSize, config, dir);
  const st8 = await readShardedSafetensors(dir);
  const model = buildGpt2(engine, config, {
    tensors: st8.tensors,
    read: (n) => st8.read(n),
    describe: (n) => st8.fileOf(n),
  }, { tied: tiedEmbeddings(cfgJson), onTensor: opts.onTensor });
  return { dir, model, tokenizer };
}

export interface SaveOptions {
  /** Files copied verbatim into the folder (tokenizer files, trainer state...), name → contents. */
  extraFiles?: Record<string, string | Uint8Array>;
  /** Extra tensors stored in their own safetensors files, file name → tensors (e.g. optimizer state). */
  extraTensors?: Record<string, { name: string; data: Float32Array; shape: number[] }[]>;
  /** safetensors `__metadata__` of model.safetensors. */
  metadata?: Record<string, string>;
}

/**
 * Writes the model as a complete Hugging Face GPT-2 folder (config.json, model.safetensors with bare
 * GPT-2 key names, plus `extraFiles`) atomically: everything goes into a sibling temp folder first, which
 * then replaces `dir` by renames; a crash leaves either the old folder or the new one (the old one
 * possibly under `<dir>.old-*`), never a half-written mix.
 */
export async function saveGpt2Folder(dir: string, model: Gpt2Model, opts: SaveOptions = {}): Promise<void> {
  const names = [...model.weights.keys()];
  const data = await model.engine.readMany(names.map((n) => model.w(n)));
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    await writeSafetensorsFile(
      `${tmp}/model.safetensors`,
      names.map((name, i) => ({
        name,
        dtype: "F32" as const,
        shape: [...model.w(name).shape],
        data: data[i],
      })),
      { format: "pt", ...opts.metadata },
    );
    killPoint("folder:partial", tmp);
    for (const [file, tensors] of Object.entries(opts.extraTensors ?? {})) {
      await writeSafetensorsFile(
        `${tmp}/${file}`,
        tensors.map((t) => ({ name: t.name, dtype: "F32" as const, shape: t.shape, data: t.data })),
      );
    }
    await Deno.writeTextFile(
      `${tmp}/config.json`,
      JSON.stringify(gpt2ConfigJson(model.config), null, 2) + "\n",
    );
    for (const [file, contents] of Object.entries(opts.extraFiles ?? {})) {
      if (typeof contents === "string") await Deno.writeTextFile(`${tmp}/${file}`, contents);
      else await Deno.writeFile(`${tmp}/${file}`, contents);
    }
    killPoint("folder:staged", tmp);
    await replaceFolder(tmp, dir, "folder");
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
