// The browser edge of loading: a Hugging Face GPT-2 folder over HTTP (config.json, model.safetensors,
// vocab.json + merges.txt or tokenizer.json) with byte-level progress, built by the same engine/gpt2 code
// the CLI's folder loader (engine/gpt2/folder.ts) uses. No DOM, no Deno: fetch only.
import type { Engine } from "../engine/engine.ts";
import { parseGpt2Config } from "../engine/gpt2/config.ts";
import { buildGpt2, checkTokenizerFits, type TensorSource, tiedEmbeddings } from "../engine/gpt2/load.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { parseSafetensorsHeader, readTensorF32 } from "../engine/safetensors.ts";
import { InputError } from "../engine/errors.ts";

/** A file the page needs and the server does not have (404): callers turn it into advice. */
export class MissingFileError extends InputError {
  override name = "MissingFileError";
  constructor(readonly url: string) {
    super(`${url} not found on the server`);
  }
}

/** Bytes received and expected (expected 0 when the server sent no Content-Length). */
export type ByteProgress = (received: number, expected: number) => void;

async function get(url: string): Promise<Response> {
  // no-store: the model folder can be rebuilt while the server runs; a cached half of it would not match.
  const res = await fetch(url, { cache: "no-store" });
  if (res.status === 404) throw new MissingFileError(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
  return res;
}

/** The body of `url`, read chunk by chunk so large files report progress. */
export async function fetchBytes(url: string, onProgress?: ByteProgress): Promise<Uint8Array> {
  const res = await get(url);
  const expected = Number(res.headers.get("content-length") ?? 0);
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const parts: Uint8Array[] = [];
  let received = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.byteLength;
    onProgress?.(received, expected);
  }
  if (expected > 0 && received !== expected) {
    throw new Error(`${url}: received ${received} bytes of ${expected}`);
  }
  const out = new Uint8Array(received);
  let at = 0;
  for (const p of parts) (out.set(p, at), at += p.byteLength);
  return out;
}

export async function fetchJson(url: string): Promise<unknown> {
  const text = await (await get(url)).text();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${url}: invalid JSON (${(e as Error).message})`);
  }
}

async function fetchText(url: string): Promise<string> {
  return await (await get(url)).text();
}

/** A TensorSource over one safetensors file held in memory. */
export function safetensorsSource(bytes: Uint8Array, name: string): TensorSource {
  const { tensors, dataOffset } = parseSafetensorsHeader(bytes, bytes.byteLength, name);
  const data = bytes.subarray(dataOffset);
  return {
    tensors,
    read: (n) => readTensorF32(tensors.get(n)!, data),
    describe: () => name,
  };
}

/** vocab.json + merges.txt when the folder has them, else tokenizer.json (as loadTokenizer on disk). */
async function fetchTokenizer(base: string): Promise<Gpt2Tokenizer> {
  try {
    const [vocab, merges] = await Promise.all([
      fetchJson(`${base}vocab.json`),
      fetchText(`${base}merges.txt`),
    ]);
    return Gpt2Tokenizer.fromVocabMerges(vocab as Record<string, number>, merges);
  } catch (e) {
    if (!(e instanceof MissingFileError)) throw e;
  }
  return Gpt2Tokenizer.fromTokenizerJson(await fetchJson(`${base}tokenizer.json`));
}

export interface RemoteModel {
  model: Gpt2Model;
  tokenizer: Gpt2Tokenizer;
}

/**
 * Loads the model folder at `base` (a URL ending in "/"): `onBytes` follows the weights' download,
 * `onTensor` their upload to the GPU. Only single-file safetensors checkpoints (the bundled model's
 * layout); a sharded one is refused by name.
 */
export async function loadRemoteModel(
  engine: Engine,
  base: string,
  opts: { onBytes?: ByteProgress; onTensor?: (done: number, total: number) => void } = {},
): Promise<RemoteModel> {
  const cfgJson = await fetchJson(`${base}config.json`);
  const config = parseGpt2Config(cfgJson, `${base}config.json`);
  const tokenizer = await fetchTokenizer(base);
  checkTokenizerFits(tokenizer.vocabSize, config, base);
  let bytes: Uint8Array;
  try {
    bytes = await fetchBytes(`${base}model.safetensors`, opts.onBytes);
  } catch (e) {
    if (e instanceof MissingFileError) {
      throw new Error(
        `${base}model.safetensors not found: the page loads single-file safetensors checkpoints only`,
      );
    }
    throw e;
  }
  const model = buildGpt2(engine, config, safetensorsSource(bytes, `${base}model.safetensors`), {
    tied: tiedEmbeddings(cfgJson),
    onTensor: opts.onTensor,
  });
  return { model, tokenizer };
}
