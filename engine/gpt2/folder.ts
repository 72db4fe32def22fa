// The Deno edge of model loading: a Hugging Face model folder on disk (config.json, safetensors single or
// sharded, vocab.json + merges.txt or tokenizer.json). Browsers load the same pieces over fetch instead.
import type { Engine } from "../engine.ts";
import { assertNotPickle, readShardedSafetensors } from "../files.ts";
import { parseGpt2Config } from "./config.ts";
import { buildGpt2, CheckpointError } from "./load.ts";
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

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
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
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new CheckpointError(
      `${dir}: the tokenizer has ${tokenizer.vocabSize} tokens but config.json says vocab_size ${config.vocabSize}`,
    );
  }
  const st8 = await readShardedSafetensors(dir);
  const tied = (cfgJson as Record<string, unknown>).tie_word_embeddings !== false;
  const model = buildGpt2(engine, config, {
    tensors: st8.tensors,
    read: (n) => st8.read(n),
    describe: (n) => st8.fileOf(n),
  }, { tied, onTensor: opts.onTensor });
  return { dir, model, tokenizer };
}
