/**
 * Downloads a model folder from the Hugging Face hub (or a mirror) into `models/<name>`.
 *
 * Deno edge: uses fetch and the Deno file APIs. Only safetensors weights are fetched; a repo that
 * only has `pytorch_model.bin` is refused (see `PICKLE_REFUSAL_MESSAGE`).
 *
 * Every file is written to `<file>.part` and renamed to its final name only once it is complete
 * and verified (size against Content-Length / Content-Range, JSON files parse, safetensors
 * headers validate against the file size), so a final file is never half-written. An interrupted
 * download leaves the `.part`; the next call resumes it with `Range: bytes=<size>-`.
 */

import {
  PickleCheckpointError,
  readSafetensorsFile,
  readShardedSafetensors,
  SAFETENSORS_INDEX,
  SAFETENSORS_SINGLE,
} from "./files.ts";

export const DEFAULT_ENDPOINT = "https://huggingface.co";
export const DEFAULT_REVISION = "main";

/** Short names → hub repo ids (the un-namespaced ids only survive as redirects on the hub). */
export const KNOWN_MODELS: Readonly<Record<string, string>> = Object.freeze({
  "gpt2": "openai-community/gpt2",
  "gpt2-medium": "openai-community/gpt2-medium",
  "gpt2-large": "openai-community/gpt2-large",
  "gpt2-xl": "openai-community/gpt2-xl",
});

/** Tokenizer/config files, in download order. `tokenizer.json` is optional (skipped on 404). */
export const MODEL_FILES: readonly { name: string; required: boolean }[] = Object.freeze([
  { name: "config.json", required: true },
  { name: "vocab.json", required: true },
  { name: "merges.txt", required: true },
  { name: "tokenizer.json", required: false },
]);

const PICKLE_WEIGHTS = ["pytorch_model.bin", "pytorch_model.bin.index.json"];

export interface DownloadProgress {
  /** File name within the model folder. */
  file: string;
  /** Bytes of this file on disk so far (a resumed download starts at the `.part` size). */
  done: number;
  /** Full size of the file, when the server said. */
  total: number | undefined;
  /** Average transfer rate of this file's current request. */
  bytesPerSec: number;
}

export interface DownloadOptions {
  /** Target folder; default `models/<name>` with "/" → "--". */
  dir?: string;
  /** Hub base URL; default https://huggingface.co (callers pass `Deno.env.get("HF_ENDPOINT")`). */
  endpoint?: string;
  /** Branch, tag or commit; default "main". */
  revision?: string;
  /** Sent as `Authorization: Bearer <token>` (callers pass `Deno.env.get("HF_TOKEN")`). */
  token?: string;
  /** Called after received chunks, at most ~10 times a second per file, and once at the end. */
  onProgress?: (p: DownloadProgress) => void;
  /** Injectable fetch (tests, proxies). */
  fetch?: typeof fetch;
  signal?: AbortSignal;
}

export interface DownloadResult {
  /** The model folder. */
  dir: string;
  /** File names in the folder that make up the model (downloaded or already present). */
  files: string[];
}

export type HubErrorKind =
  | "offline"
  | "auth"
  | "not-found"
  | "http"
  | "interrupted"
  | "size"
  | "invalid"
  | "name";

export class HubError extends Error {
  readonly kind: HubErrorKind;
  readonly file: string | undefined;
  readonly status: number | undefined;

  constructor(
    kind: HubErrorKind,
    message: string,
    opts: { file?: string; status?: number; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "HubError";
    this.kind = kind;
    this.file = opts.file;
    this.status = opts.status;
  }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

const REPO_PART = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Maps a short name (gpt2, gpt2-medium, ...) or an "owner/name" repo id to a hub repo id. */
export function resolveRepoId(name: string): string {
  if (Object.hasOwn(KNOWN_MODELS, name)) return KNOWN_MODELS[name];
  const parts = name.split("/");
  if (parts.length === 2 && parts.every((p) => REPO_PART.test(p) && !p.includes(".."))) return name;
  throw new HubError(
    "name",
    `unknown model ${JSON.stringify(name)}: use one of ${Object.keys(KNOWN_MODELS).join(", ")} ` +
      `or a hub repo id of the form "owner/name"`,
  );
}

/** `models/<name>` with "/" replaced by "--" (the hub cache's convention). */
export function defaultModelDir(name: string): string {
  return `models/${name.replaceAll("/", "--")}`;
}

/** Shard names come from a downloaded index (untrusted): plain `.safetensors` file names only. */
function checkShardName(shard: unknown): string {
  if (
    typeof shard !== "string" || shard === "" || shard.startsWith(".") || shard.includes("/") ||
    shard.includes("\\") || shard.includes("\0") || !shard.endsWith(".safetensors")
  ) {
    throw new HubError(
      "invalid",
      `${SAFETENSORS_INDEX}: weight_map entry ${JSON.stringify(shard)} is not a plain ` +
        `".safetensors" file name; refusing to download it`,
      { file: SAFETENSORS_INDEX },
    );
  }
  return shard;
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

interface Ctx {
  name: string;
  repo: string;
  revision: string;
  endpoint: string;
  dir: string;
  token: string | undefined;
  fetch: typeof fetch;
  signal: AbortSignal | undefined;
  onProgress: ((p: DownloadProgress) => void) | undefined;
}

function fileUrl(ctx: Ctx, file: string): string {
  const repo = ctx.repo.split("/").map(encodeURIComponent).join("/");
  return `${ctx.endpoint}/${repo}/resolve/${encodeURIComponent(ctx.revision)}/${encodeURIComponent(file)}`;
}

function where(ctx: Ctx): string {
  return `${ctx.repo} (revision ${ctx.revision}) at ${ctx.endpoint}`;
}

function offlineMessage(ctx: Ctx, file: string, cause: unknown): string {
  const reason = cause instanceof Error
    ? (cause.cause instanceof Error ? cause.cause.message : cause.message)
    : String(cause);
  return `cannot reach ${ctx.endpoint} to download ${file} (${reason}). This machine seems to be ` +
    `offline, or the hub is blocked (set HF_ENDPOINT to use a mirror). Alternatively, copy a ` +
    `Hugging Face model folder for ${ctx.repo} into ${ctx.dir}: it needs config.json, vocab.json, ` +
    `merges.txt (tokenizer.json optional) and ${SAFETENSORS_SINGLE} (or ${SAFETENSORS_INDEX} plus ` +
    `every shard it lists).`;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException("aborted", "AbortError");
}

async function request(
  ctx: Ctx,
  file: string,
  method: "GET" | "HEAD",
  range?: number,
): Promise<Response> {
  throwIfAborted(ctx.signal);
  // identity: Content-Length and byte ranges must describe the bytes we store, not a gzip stream.
  const headers: Record<string, string> = { "accept-encoding": "identity" };
  if (ctx.token) headers["authorization"] = `Bearer ${ctx.token}`;
  if (range !== undefined) headers["range"] = `bytes=${range}-`;
  try {
    return await ctx.fetch(fileUrl(ctx, file), { method, headers, redirect: "follow", signal: ctx.signal });
  } catch (e) {
    if (ctx.signal?.aborted) throw e;
    throw new HubError("offline", offlineMessage(ctx, file, e), { file, cause: e });
  }
}

async function discard(res: Response): Promise<void> {
  try {
    await res.body?.cancel();
  } catch { /* already closed */ }
}

/** Throws a clear error for 401/403 and unexpected statuses; 404 is left to the caller. */
async function checkStatus(ctx: Ctx, file: string, res: Response, ok: number[]): Promise<void> {
  if (ok.includes(res.status)) return;
  await discard(res);
  const code = res.headers.get("x-error-code");
  if (res.status === 401 || res.status === 403) {
    const detail = code === "GatedRepo"
      ? "it is a gated repo"
      : code === "RepoNotFound"
      ? "the repo does not exist or is private"
      : "the repo may be gated or private (or may not exist)";
    throw new HubError(
      "auth",
      `HTTP ${res.status} downloading ${file} from ${where(ctx)}: access denied; ${detail}. For a gated ` +
        `repo, accept its terms on the hub page, then set HF_TOKEN to an access token ` +
        `(https://huggingface.co/settings/tokens)` + (ctx.token ? " (a token was sent; check it)" : ""),
      { file, status: res.status },
    );
  }
  throw new HubError(
    "http",
    `HTTP ${res.status} ${res.statusText} downloading ${file} from ${where(ctx)}` +
      (code ? ` (${code})` : ""),
    { file, status: res.status },
  );
}

function contentLength(res: Response): number | undefined {
  const enc = res.headers.get("content-encoding");
  if (enc !== null && enc !== "identity") return undefined; // fetch decodes: length is not ours
  const v = res.headers.get("content-length");
  if (v === null || !/^\d+$/.test(v.trim())) return undefined;
  return Number(v.trim());
}

/** Parses `bytes <start>-<end>/<total>` (206) or `bytes *\/<total>` (416). */
function contentRange(res: Response): { start?: number; end?: number; total?: number } | undefined {
  const v = res.headers.get("content-range");
  const m = v?.trim().match(/^bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)$/i);
  if (!m) return undefined;
  return {
    start: m[1] === undefined ? undefined : Number(m[1]),
    end: m[2] === undefined ? undefined : Number(m[2]),
    total: m[3] === "*" ? undefined : Number(m[3]),
  };
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const st = await Deno.stat(path);
    return st.isFile ? st.size : undefined;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) done += await file.write(bytes.subarray(done));
}

/**
 * Checks a complete `.part` before it gets its final name. Throws on a corrupt file; the caller
 * deletes the `.part` (resuming a corrupt file cannot fix it).
 */
async function validatePart(file: string, part: string): Promise<void> {
  if (file.endsWith(".safetensors")) {
    // Parses only the header and validates it against the file size: a truncated or spliced
    // file fails here (tensors must tile the data area exactly). Pickles are refused too.
    await readSafetensorsFile(part);
  } else if (file.endsWith(".json")) {
    JSON.parse(await Deno.readTextFile(part));
  }
}

/**
 * Downloads one file into `ctx.dir`. Returns false when the server says 404 (the caller decides
 * whether that is an error). Skips a final file whose size matches the server's.
 */
async function downloadFile(ctx: Ctx, file: string): Promise<boolean> {
  const final = `${ctx.dir}/${file}`;
  const part = `${final}.part`;

  const have = await sizeOf(final);
  if (have !== undefined) {
    const head = await request(ctx, file, "HEAD");
    if (head.status === 404) {
      await discard(head);
      return false;
    }
    if (head.ok) {
      await discard(head);
      const total = contentLength(head);
      if (total === have && await isValid(file, final)) {
        await removeIfExists(part); // a stale partial download of the same file
        return true;
      }
    } else if (head.status === 401 || head.status === 403) {
      await checkStatus(ctx, file, head, []);
    } else {
      await discard(head); // e.g. 405: fall back to the GET's Content-Length below
    }
  }

  for (let attempt = 0; attempt < 3; attempt++) {
    const partSize = await sizeOf(part) ?? 0;
    const res = await request(ctx, file, "GET", partSize > 0 ? partSize : undefined);
    if (res.status === 404) {
      await discard(res);
      return false;
    }
    await checkStatus(ctx, file, res, [200, 206, 416]);

    if (res.status === 416) {
      // Nothing left to send: the part is complete, or longer than the file (stale).
      await discard(res);
      let total = contentRange(res)?.total;
      if (total === undefined) {
        const head = await request(ctx, file, "HEAD");
        await discard(head);
        if (head.ok) total = contentLength(head);
      }
      if (total !== undefined && total === partSize) {
        await finish(file, part, final, total, partSize);
        return true;
      }
      await removeIfExists(part);
      continue;
    }

    let offset = 0;
    let total: number | undefined;
    if (res.status === 206) {
      const cr = contentRange(res);
      if (cr?.start !== partSize) {
        // Not the range we asked for: start over without a range.
        await discard(res);
        await removeIfExists(part);
        continue;
      }
      offset = partSize;
      total = cr.total;
      const len = contentLength(res);
      if (total === undefined && len !== undefined) total = offset + len;
    } else {
      // 200: full body (the server ignored our range, or we sent none).
      total = contentLength(res);
      if (partSize === 0 && have !== undefined && total === have && await isValid(file, final)) {
        await discard(res); // HEAD gave no size, but the GET's Content-Length matches
        return true;
      }
    }
    const done = await receive(ctx, file, res, part, offset, total);
    await finish(file, part, final, total, done);
    return true;
  }
  throw new HubError(
    "http",
    `${file} from ${where(ctx)}: the server keeps answering range requests inconsistently; ` +
      `delete ${part} and try again`,
    { file },
  );
}

async function isValid(file: string, path: string): Promise<boolean> {
  try {
    await validatePart(file, path);
    return true;
  } catch {
    return false;
  }
}

/** Streams the body into `part` (appending at `offset`); returns the part's size afterwards. */
async function receive(
  ctx: Ctx,
  file: string,
  res: Response,
  part: string,
  offset: number,
  total: number | undefined,
): Promise<number> {
  const out = await Deno.open(
    part,
    offset > 0 ? { write: true, append: true } : {
      write: true,
      create: true,
      truncate: true,
    },
  );
  let done = offset;
  const start = performance.now();
  let lastReport = -Infinity;
  const report = (force: boolean) => {
    if (ctx.onProgress === undefined) return;
    const now = performance.now();
    if (!force && now - lastReport < 100) return;
    lastReport = now;
    const secs = (now - start) / 1000;
    ctx.onProgress({ file, done, total, bytesPerSec: secs > 0 ? (done - offset) / secs : 0 });
  };
  try {
    if (res.body !== null) {
      const reader = res.body.getReader();
      try {
        for (;;) {
          const { done: end, value } = await reader.read();
          if (end) break;
          await writeAll(out, value);
          done += value.byteLength;
          if (total !== undefined && done > total) break; // checked by finish()
          report(false);
        }
      } finally {
        reader.releaseLock();
        await discard(res);
      }
    }
    await out.sync();
  } catch (e) {
    if (ctx.signal?.aborted) throw e;
    throw new HubError(
      "interrupted",
      `download of ${file} from ${where(ctx)} was interrupted after ${done}` +
        `${total === undefined ? "" : ` of ${total}`} bytes (${(e as Error).message}); ` +
        `run the download again to resume from ${part}`,
      { file, cause: e },
    );
  } finally {
    out.close();
  }
  report(true);
  return done;
}

/** Verifies a finished `.part` (size, then content) and renames it to its final name. */
async function finish(
  file: string,
  part: string,
  final: string,
  total: number | undefined,
  done: number,
): Promise<void> {
  const size = await sizeOf(part) ?? 0;
  if (size !== done || (total !== undefined && size !== total)) {
    // Shorter: keep it, a later call resumes. Longer: it can never become right.
    const expected = total ?? done;
    if (size > expected) await removeIfExists(part);
    throw new HubError(
      "size",
      `${file}: size mismatch: expected ${expected} bytes, got ${size}` +
        (size < expected ? `; run the download again to resume` : `; deleted the partial file`),
      { file },
    );
  }
  try {
    await validatePart(file, part);
  } catch (e) {
    await removeIfExists(part);
    if (e instanceof PickleCheckpointError) throw e;
    throw new HubError(
      "invalid",
      `${file}: downloaded file is corrupt or truncated (${(e as Error).message}); deleted it, ` +
        `run the download again`,
      { file, cause: e },
    );
  }
  await Deno.rename(part, final);
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

async function downloadWeights(ctx: Ctx): Promise<string[]> {
  if (await downloadFile(ctx, SAFETENSORS_SINGLE)) return [SAFETENSORS_SINGLE];

  if (await downloadFile(ctx, SAFETENSORS_INDEX)) {
    const index = JSON.parse(await Deno.readTextFile(`${ctx.dir}/${SAFETENSORS_INDEX}`));
    const map = index?.weight_map;
    if (typeof map !== "object" || map === null || Array.isArray(map)) {
      throw new HubError("invalid", `${SAFETENSORS_INDEX} from ${where(ctx)} has no "weight_map" object`, {
        file: SAFETENSORS_INDEX,
      });
    }
    const shards = [...new Set(Object.values(map).map(checkShardName))].sort();
    for (const shard of shards) {
      if (!await downloadFile(ctx, shard)) {
        throw new HubError(
          "not-found",
          `shard ${shard} listed in ${SAFETENSORS_INDEX} was not found in ${where(ctx)} (HTTP 404)`,
          { file: shard, status: 404 },
        );
      }
    }
    // Every shard is valid on its own; now check the index and shards agree tensor by tensor.
    await readShardedSafetensors(ctx.dir);
    return [SAFETENSORS_INDEX, ...shards];
  }

  for (const pickle of PICKLE_WEIGHTS) {
    const head = await request(ctx, pickle, "HEAD");
    await discard(head);
    if (head.ok) {
      throw new PickleCheckpointError(
        `${where(ctx)} has no ${SAFETENSORS_SINGLE} or ${SAFETENSORS_INDEX}, only ${pickle}; ` +
          `nothing was downloaded from it`,
        ctx.repo,
      );
    }
  }
  throw new HubError(
    "not-found",
    `${where(ctx)} has no weights: neither ${SAFETENSORS_SINGLE} nor ${SAFETENSORS_INDEX} exists (HTTP 404)`,
    { file: SAFETENSORS_SINGLE, status: 404 },
  );
}

/**
 * Downloads config, tokenizer files and safetensors weights of `name` (gpt2, gpt2-medium,
 * gpt2-large, gpt2-xl, or an "owner/name" hub repo id) into `opts.dir` (default
 * `models/<name>`, "/" → "--"). Resumes partial downloads and skips complete files.
 */
export async function downloadModel(name: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  const repo = resolveRepoId(name);
  const dir = opts.dir ?? defaultModelDir(name);
  const ctx: Ctx = {
    name,
    repo,
    revision: opts.revision ?? DEFAULT_REVISION,
    endpoint: (opts.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, ""),
    dir,
    token: opts.token,
    fetch: opts.fetch ?? fetch,
    signal: opts.signal,
    onProgress: opts.onProgress,
  };
  await Deno.mkdir(dir, { recursive: true });

  const files: string[] = [];
  for (const { name: file, required } of MODEL_FILES) {
    if (await downloadFile(ctx, file)) {
      files.push(file);
    } else if (required) {
      throw new HubError(
        "not-found",
        `${file} was not found in ${where(ctx)} (HTTP 404); check the model name and revision`,
        { file, status: 404 },
      );
    }
  }
  files.push(...await downloadWeights(ctx));
  return { dir, files };
}
