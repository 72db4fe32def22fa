// Edits as files. A patch records one ROME edit: its math (u, Λ, the key k and v*), its provenance
// (request, hparams, seed, variant, hashes, probabilities) and, for exact application and revert, the
// bitwise XOR of the edited matrix's f32 words before and after the edit.
//
// Why the XOR: W + uΛᵀ − uΛᵀ is not W in floating point, and a rank-one update changes every element of
// the matrix, so an exact revert needs one word per element whatever is stored. The XOR is that word, and
// it serves both directions: W_after = W_before ⊕ X and W_before = W_after ⊕ X, bit for bit and without
// any GPU arithmetic (so applying a patch reproduces the edited model exactly on any device). Its size is
// the matrix's: 4·d_ff·d bytes — 256 KiB for the bundled model, 9 MiB for GPT-2 small, 39 MiB for GPT-2 XL
// (0.6% of the XL checkpoint). u and Λ alone (d_ff + d floats) describe the edit but cannot undo it.
//
// Format: safetensors with `u` F32 [d_ff], `lambda` F32 [d], `key` F32 [d_ff], `v_star` F32 [d], `xor`
// I32 [d_ff, d] (the XOR words, reinterpreted), and `__metadata__` = PatchMeta as strings (JSON for the
// structured fields). Runtime-neutral: bytes in, bytes out.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { ContentHash } from "../engine/gpt2/load.ts";
import { parseSafetensorsHeader, readTensorRaw, serializeSafetensors } from "../engine/safetensors.ts";
import { InputError } from "../engine/errors.ts";
import { sha16 } from "../engine/digest.ts";

export const PATCH_FORMAT = "rome-webgpu-patch";
export const PATCH_VERSION = 1;

/** Provenance and identity of a patch (stored in the safetensors metadata). */
export interface PatchMeta {
  /** First 16 hex digits of the SHA-256 of the matrix name, the base hashes and the XOR words. */
  id: string;
  layer: number;
  /** The edited tensor, e.g. "h.2.mlp.c_proj.weight" (GPT-2 names without "transformer."). */
  matrix: string;
  variant: "rome" | "r-rome";
  request: { prompt: string; subject: string; target_new: string; target_true?: string; case_id?: number };
  hparams: Record<string, unknown>;
  /** Seed of the context templates. */
  seed: number;
  model_hash_before: string;
  model_hash_after: string;
  matrix_hash_before: string;
  matrix_hash_after: string;
  /** Identity of the statistics C (e.g. "layer2_<corpus hash>_26328", "npz:<file>", "identity"). */
  c_hash: string;
  /** Probabilities of the targets' first tokens on the rewrite prompt, before and after. */
  pre: Record<string, number>;
  post: Record<string, number>;
  delta_norm: number;
  created: string;
}

export interface RomePatch {
  meta: PatchMeta;
  u: Float32Array;
  lambda: Float32Array;
  key: Float32Array;
  vStar: Float32Array;
  /** XOR of the matrix's f32 words before and after, [d_ff · d]. */
  xor: Uint32Array;
}

export class PatchError extends InputError {
  override name = "PatchError";
}

/** Content hash of one matrix, as ContentHash labels it while loading (name:shape over the f32 words). */
export function matrixHash(name: string, shape: readonly number[], data: Float32Array): string {
  const h = new ContentHash();
  h.update(`${name}:${shape.join("x")}`, data);
  return h.hex();
}

/** The model's content hash recomputed from its current weights (what loading a saved copy would give). */
export async function modelContentHash(model: Gpt2Model): Promise<string> {
  const h = new ContentHash();
  const names = [...model.weights.keys()];
  // groups of up to 256 MiB per readback keep the staging buffer bounded on large models
  for (let i = 0; i < names.length;) {
    const group: string[] = [];
    let bytes = 0;
    while (
      i < names.length && (group.length === 0 || bytes + model.w(names[i]).byteLength <= 256 * 2 ** 20)
    ) {
      bytes += model.w(names[i]).byteLength;
      group.push(names[i++]);
    }
    const data = await model.engine.readMany(group.map((n) => model.w(n)));
    group.forEach((n, k) => h.update(`${n}:${model.w(n).shape.join("x")}`, data[k] as Float32Array));
  }
  return h.hex();
}

/** The matrix's current f32 values (one readback). */
export async function readMatrix(model: Gpt2Model, name: string): Promise<Float32Array> {
  return (await model.engine.read(model.w(name))) as Float32Array;
}

/** Bitwise XOR of two f32 arrays' words. */
export function xorWords(a: Float32Array, b: Float32Array): Uint32Array {
  if (a.length !== b.length) throw new PatchError(`xor: ${a.length} words vs ${b.length}`);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length),
    y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const out = new Uint32Array(a.length);
  for (let i = 0; i < out.length; i++) out[i] = x[i] ^ y[i];
  return out;
}

/**
 * W ← W ⊕ xor on the model's matrix `name`: read back, XOR on the host, written over the tensor's buffer
 * (same tensor object). Returns the matrix hashes before and after.
 */
export async function xorMatrix(
  model: Gpt2Model,
  name: string,
  xor: Uint32Array,
): Promise<{ before: string; after: string }> {
  const W = model.w(name);
  if (xor.length !== W.size) {
    throw new PatchError(`the patch has ${xor.length} words for ${name}, which has ${W.size}`);
  }
  const data = await readMatrix(model, name);
  const before = matrixHash(name, W.shape, data);
  const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < words.length; i++) words[i] ^= xor[i];
  const e = model.engine;
  e.scope(() => {
    const up = e.upload(data, W.shape);
    e.copy(up.buffer, 0, W.buffer, 0, W.byteLength);
  });
  await e.sync();
  return { before, after: matrixHash(name, W.shape, data) };
}

/** The patch id: SHA-256 over the matrix name, its hashes and the XOR words (Web Crypto). */
export async function patchId(
  matrix: string,
  matrixHashBefore: string,
  modelHashBefore: string,
  xor: Uint32Array,
) {
  const head = new TextEncoder().encode(
    `${PATCH_FORMAT}\0${matrix}\0${matrixHashBefore}\0${modelHashBefore}\0`,
  );
  const buf = new Uint8Array(head.byteLength + xor.byteLength);
  buf.set(head);
  buf.set(new Uint8Array(xor.buffer, xor.byteOffset, xor.byteLength), head.byteLength);
  return await sha16(buf);
}

const STRUCTURED = ["request", "hparams", "pre", "post"] as const;
const NUMERIC = ["layer", "seed", "delta_norm"] as const;

/** Safetensors bytes of a patch. */
export function encodePatch(p: RomePatch): Uint8Array[] {
  const d = p.lambda.length, dff = p.u.length;
  if (p.xor.length !== dff * d || p.key.length !== dff || p.vStar.length !== d) {
    throw new PatchError(
      `inconsistent patch: u ${dff}, lambda ${d}, key ${p.key.length}, xor ${p.xor.length}`,
    );
  }
  const md: Record<string, string> = { format: PATCH_FORMAT, version: String(PATCH_VERSION) };
  for (const [k, v] of Object.entries(p.meta)) {
    md[k] = (STRUCTURED as readonly string[]).includes(k) ? JSON.stringify(v) : String(v);
  }
  return serializeSafetensors([
    { name: "u", dtype: "F32", shape: [dff], data: p.u },
    { name: "lambda", dtype: "F32", shape: [d], data: p.lambda },
    { name: "key", dtype: "F32", shape: [dff], data: p.key },
    { name: "v_star", dtype: "F32", shape: [d], data: p.vStar },
    {
      name: "xor",
      dtype: "I32",
      shape: [dff, d],
      data: new Int32Array(p.xor.buffer, p.xor.byteOffset, p.xor.length),
    },
  ], md);
}

/** What an executed edit contributes to its patch (rome/edit.ts's RomeEdit has these fields). */
export interface EditForPatch {
  matrix: string;
  matrixHashBefore: string;
  matrixHashAfter: string;
  deltaNorm: number;
  u: Float32Array;
  lambda: Float32Array;
  key: Float32Array;
  vStar: Float32Array;
  xor: Uint32Array;
}

/** The rewrite prompt's target probabilities, as rome/evaluate.ts reports them. */
interface RewriteProbabilities {
  rewrite: { target_new: number; target_true?: number };
}

/** The targets' probabilities on the rewrite prompt, as a patch (and `edit --json`) records them. */
export function rewriteProbabilities(e: RewriteProbabilities): Record<string, number> {
  return {
    target_new: e.rewrite.target_new,
    ...(e.rewrite.target_true !== undefined ? { target_true: e.rewrite.target_true } : {}),
  };
}

/**
 * The patch of an executed edit: its math from `edit`, its provenance from `context` (the CLI's `edit`,
 * the soak and any other caller record the same fields the same way).
 */
export async function buildPatch(
  edit: EditForPatch,
  context: Pick<PatchMeta, "layer" | "variant" | "request" | "hparams" | "seed" | "c_hash"> & {
    hashBefore: string;
    hashAfter: string;
    pre: RewriteProbabilities;
    post: RewriteProbabilities;
  },
): Promise<RomePatch> {
  const probs = rewriteProbabilities;
  return {
    meta: {
      id: await patchId(edit.matrix, edit.matrixHashBefore, context.hashBefore, edit.xor),
      layer: context.layer,
      matrix: edit.matrix,
      variant: context.variant,
      request: context.request,
      hparams: { ...context.hparams },
      seed: context.seed,
      model_hash_before: context.hashBefore,
      model_hash_after: context.hashAfter,
      matrix_hash_before: edit.matrixHashBefore,
      matrix_hash_after: edit.matrixHashAfter,
      c_hash: context.c_hash,
      pre: probs(context.pre),
      post: probs(context.post),
      delta_norm: edit.deltaNorm,
      created: new Date().toISOString(),
    },
    u: edit.u,
    lambda: edit.lambda,
    key: edit.key,
    vStar: edit.vStar,
    xor: edit.xor,
  };
}

/** A patch file's bytes in one buffer. */
export function patchBytes(p: RomePatch): Uint8Array {
  const parts = encodePatch(p);
  const out = new Uint8Array(parts.reduce((n, q) => n + q.byteLength, 0));
  let at = 0;
  for (const q of parts) (out.set(q, at), at += q.byteLength);
  return out;
}

/** Parses a patch file's bytes; a PatchError names what is wrong ("malformed patch FILE: ..."). */
export function decodePatch(bytes: Uint8Array, file: string): RomePatch {
  const bad = (why: string): never => {
    throw new PatchError(`malformed patch ${file}: ${why}`);
  };
  let header;
  try {
    header = parseSafetensorsHeader(bytes, bytes.byteLength, file);
  } catch (e) {
    return bad(`not a safetensors file (${(e as Error).message})`);
  }
  const md = header.metadata;
  if (md.format !== PATCH_FORMAT) {
    bad(`metadata 'format' is ${JSON.stringify(md.format)}, expected "${PATCH_FORMAT}"`);
  }
  if (md.version !== String(PATCH_VERSION)) {
    bad(`version ${md.version} (this build reads version ${PATCH_VERSION})`);
  }
  const data = bytes.subarray(header.dataOffset);
  const tensor = (name: string, dtype: string, rank: number) => {
    const t = header.tensors.get(name);
    if (!t) return bad(`no tensor '${name}'`);
    if (t.dtype !== dtype || t.shape.length !== rank) {
      bad(`'${name}' is ${t.dtype} ${JSON.stringify(t.shape)}`);
    }
    return { shape: t.shape, bytes: readTensorRaw(t, data).slice() };
  };
  const u = tensor("u", "F32", 1), lambda = tensor("lambda", "F32", 1), key = tensor("key", "F32", 1);
  const vStar = tensor("v_star", "F32", 1), xor = tensor("xor", "I32", 2);
  const [dff, d] = [u.shape[0], lambda.shape[0]];
  if (xor.shape[0] !== dff || xor.shape[1] !== d || key.shape[0] !== dff || vStar.shape[0] !== d) {
    bad(
      `shapes disagree: u [${dff}], lambda [${d}], key [${key.shape}], v_star [${vStar.shape}], xor [${xor.shape}]`,
    );
  }
  const meta: Record<string, unknown> = {};
  for (
    const k of [
      "id",
      "matrix",
      "variant",
      "model_hash_before",
      "model_hash_after",
      "matrix_hash_before",
      "matrix_hash_after",
      "c_hash",
      "created",
      ...STRUCTURED,
      ...NUMERIC,
    ]
  ) {
    const v = md[k];
    if (v === undefined) bad(`metadata has no '${k}'`);
    try {
      meta[k] = (STRUCTURED as readonly string[]).includes(k)
        ? JSON.parse(v)
        : (NUMERIC as readonly string[]).includes(k)
        ? Number(v)
        : v;
    } catch {
      bad(`metadata '${k}' is not valid JSON`);
    }
  }
  const m = meta as unknown as PatchMeta;
  const layer = /^h\.(\d+)\.mlp\.c_proj\.weight$/.exec(m.matrix);
  if (!layer || Number(layer[1]) !== m.layer) bad(`matrix '${m.matrix}' does not match layer ${m.layer}`);
  if (m.variant !== "rome" && m.variant !== "r-rome") bad(`variant '${m.variant}'`);
  const f32 = (b: Uint8Array) => new Float32Array(b.buffer);
  return {
    meta: m,
    u: f32(u.bytes),
    lambda: f32(lambda.bytes),
    key: f32(key.bytes),
    vStar: f32(vStar.bytes),
    xor: new Uint32Array(xor.bytes.buffer),
  };
}

// ---------------------------------------------------------------- the edits log of a saved model folder

/** One applied patch, in `edits.json`. */
export interface EditsLogEntry {
  id: string;
  /** The patch's copy inside the folder, relative to it. */
  file: string;
  layer: number;
  matrix: string;
  variant: "rome" | "r-rome";
  request: PatchMeta["request"];
  model_hash_before: string;
  model_hash_after: string;
  matrix_hash_before: string;
  matrix_hash_after: string;
  applied: string;
}

/** `edits.json`: the patches applied to a model folder, oldest first. */
export interface EditsLog {
  format: "rome-webgpu-edits";
  version: 1;
  /** Content hash of the model before its first edit (statistics and templates are keyed by it). */
  base_model_hash: string;
  edits: EditsLogEntry[];
}

export function emptyEditsLog(baseHash: string): EditsLog {
  return { format: "rome-webgpu-edits", version: 1, base_model_hash: baseHash, edits: [] };
}

export function parseEditsLog(json: unknown, where: string): EditsLog {
  const j = json as EditsLog;
  if (
    !j || j.format !== "rome-webgpu-edits" || j.version !== 1 || !Array.isArray(j.edits) ||
    typeof j.base_model_hash !== "string"
  ) {
    throw new PatchError(`${where}: not an edits log (format rome-webgpu-edits, version 1)`);
  }
  return j;
}

export function logEntry(p: RomePatch, file: string): EditsLogEntry {
  const m = p.meta;
  return {
    id: m.id,
    file,
    layer: m.layer,
    matrix: m.matrix,
    variant: m.variant,
    request: m.request,
    model_hash_before: m.model_hash_before,
    model_hash_after: m.model_hash_after,
    matrix_hash_before: m.matrix_hash_before,
    matrix_hash_after: m.matrix_hash_after,
    applied: new Date().toISOString(),
  };
}

/** A check of `patch` against the model it would change (its matrix hash `current`, its edits log); throws PatchError. */
type PatchCheck = (p: RomePatch, current: string, log: EditsLog | undefined, modelHash: string) => void;

/**
 * Whether `patch` may be applied to a model whose matrix has hash `current`: the matrix must be exactly
 * the one the patch was made from. Throws PatchError explaining the mismatch.
 */
export const checkApply: PatchCheck = (p, current, log, modelHash) => {
  const m = p.meta;
  if (log?.edits.some((e) => e.id === m.id)) {
    throw new PatchError(
      `patch ${m.id} is already applied to this model (see edits.json; --revert it first)`,
    );
  }
  if (current !== m.matrix_hash_before) {
    throw new PatchError(
      `patch ${m.id} was made for another model: it edits ${m.matrix} with hash ${m.matrix_hash_before} ` +
        `(model ${m.model_hash_before}); this model's ${m.matrix} has hash ${current} (model ${modelHash})`,
    );
  }
};

/**
 * Whether `patch` may be reverted from a model whose matrix has hash `current`. Reverting out of order is
 * refused when a later patch touched the same matrix (its XOR was taken against the words this one
 * produced); patches on other matrices commute, so reverting past them is allowed.
 */
export const checkRevert: PatchCheck = (p, current, log, modelHash) => {
  const m = p.meta;
  const at = log?.edits.findIndex((e) => e.id === m.id) ?? -1;
  if (at >= 0) {
    const later = log!.edits.slice(at + 1).filter((e) => e.matrix === m.matrix);
    if (later.length > 0) {
      throw new PatchError(
        `cannot revert patch ${m.id} before ${later.map((e) => e.id).join(", ")}, applied after it to the ` +
          `same matrix ${m.matrix}: revert the last one first`,
      );
    }
  }
  if (current !== m.matrix_hash_after) {
    throw new PatchError(
      `patch ${m.id} is not applied to this model: its ${m.matrix} has hash ${current} (model ${modelHash}), ` +
        `the patch leaves hash ${m.matrix_hash_after}`,
    );
  }
};
