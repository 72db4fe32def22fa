// The per-model cache, `${XDG_CACHE_HOME:-~/.cache}/rome-webgpu/<model hash>/`: what one command computes
// for a model and another reuses (statistics C, context templates, the suggested edit layer, eval's "pre"
// results). Keyed by the unedited model's hash, as the reference computes these once per model.
import { dirname, join } from "node:path";
import { exists, writeFileAtomic } from "../engine/files.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { generateContextTemplates, parseContextTemplates } from "../rome/templates.ts";
import { Progress } from "./progress.ts";

/** `${XDG_CACHE_HOME:-~/.cache}/rome-webgpu/<model hash>`: statistics and context templates of a model. */
export function romeCacheDir(hash: string): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  const root = xdg ? xdg : home ? join(home, ".cache") : undefined;
  if (!root) throw new Error("no cache directory: set XDG_CACHE_HOME or HOME");
  return join(root, "rome-webgpu", hash);
}

/** `<cache>/<hash>/suggested_layer.json`: where `trace --facts` stores the layer `edit --layer auto` uses. */
export function suggestedLayerPath(hash: string): string {
  return join(romeCacheDir(hash), "suggested_layer.json");
}

/** What `trace --facts` stores for a model: the layer and where it came from. */
export interface SuggestedLayer {
  layer: number;
  model_hash: string;
  facts_file: string;
  /** Facts the average was taken over. */
  n: number;
  /** The MLP AIE at the last subject token per layer. */
  mlp_aie_last_subject: number[];
  samples: number;
  noise: number;
  window: number;
  seed: number;
}

/** The suggested edit layer stored by `trace --facts` for this model hash, or undefined if none is stored. */
export async function readSuggestedLayer(hash: string): Promise<SuggestedLayer | undefined> {
  const path = suggestedLayerPath(hash);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  let r: SuggestedLayer;
  try {
    r = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message}); delete it and rerun trace --facts`);
  }
  if (!Number.isInteger(r?.layer) || r.model_hash !== hash) {
    throw new Error(`${path}: not a suggested-layer record for model ${hash}`);
  }
  return r;
}

export async function writeSuggestedLayer(stored: SuggestedLayer): Promise<void> {
  const path = suggestedLayerPath(stored.model_hash);
  await Deno.mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify(stored, null, 1) + "\n")]);
}

/** ROME's context templates of a model, generated once per seed and length parameters. */
export async function contextTemplatesCached(
  model: Gpt2Model,
  tokenizer: Gpt2Tokenizer,
  baseHash: string,
  params: [number, number][],
  seed: number,
  quiet: boolean,
): Promise<{ templates: string[]; cached: boolean }> {
  const key = params.map(([l, n]) => `${l}x${n}`).join("_");
  const path = join(romeCacheDir(baseHash), `context_templates_seed${seed}_${key}.json`);
  if (exists(path)) {
    try {
      const j = JSON.parse(await Deno.readTextFile(path));
      return { templates: parseContextTemplates(j.templates, path), cached: true };
    } catch {
      // regenerated below
    }
  }
  const bar = new Progress("context templates", params.length, quiet);
  const templates = await generateContextTemplates(model, tokenizer, params, seed, (d) => bar.update(d));
  bar.done();
  await Deno.mkdir(dirname(path), { recursive: true });
  const record = { model_hash: baseHash, seed, length_params: params, templates };
  await writeFileAtomic(path, [new TextEncoder().encode(JSON.stringify(record, null, 1) + "\n")]);
  return { templates, cached: false };
}
