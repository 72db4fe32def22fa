/**
 * Safetensors format: a validating header parser, tensor decoders and a serializer.
 *
 * This module works on bytes only (no Deno or Node APIs) so the same code loads weights
 * in the browser and on the CLI; the file-system edge lives in `files.ts`.
 *
 * Layout (https://github.com/huggingface/safetensors):
 *   [8 bytes: N, u64 little-endian][N bytes: UTF-8 JSON header][data area]
 * The header maps tensor names to `{dtype, shape, data_offsets: [begin, end]}` with offsets
 * relative to the start of the data area, plus an optional `__metadata__` string→string map.
 *
 * The header is untrusted input: every number in it is checked before it is used to slice
 * memory, and every failure is a `SafetensorsError` naming the file (and tensor).
 */
import { InputError } from "./errors.ts";

export type StDtype = "F32" | "F16" | "BF16" | "F64" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** Bytes per element of each dtype. */
export const ST_DTYPE_SIZE: Readonly<Record<StDtype, number>> = Object.freeze({
  F64: 8,
  I64: 8,
  F32: 4,
  I32: 4,
  F16: 2,
  BF16: 2,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
});

export interface StTensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Byte offset of the first byte, relative to the start of the data area. */
  begin: number;
  /** Byte offset one past the last byte, relative to the start of the data area. */
  end: number;
}

export interface StHeader {
  tensors: Map<string, StTensorInfo>;
  metadata: Record<string, string>;
  /** Absolute file offset of the data area (8 + N). */
  dataOffset: number;
}

export interface StTensorInput {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Raw little-endian element bytes (a typed array of the matching type on LE hosts). */
  data: ArrayBufferView;
}

/**
 * Upper bound on the JSON header. Same value as the Rust crate's MAX_HEADER_SIZE: real headers
 * are kilobytes; a huge N is a corrupt or hostile file and must not trigger a huge allocation.
 */
export const MAX_HEADER_SIZE = 100_000_000;

const METADATA_KEY = "__metadata__";

export class SafetensorsError extends InputError {
  readonly fileName: string;
  readonly tensorName: string | undefined;

  constructor(fileName: string, message: string, tensorName?: string) {
    const where = tensorName === undefined ? fileName : `${fileName}: tensor ${JSON.stringify(tensorName)}`;
    super(`safetensors ${where}: ${message}`);
    this.name = "SafetensorsError";
    this.fileName = fileName;
    this.tensorName = tensorName;
  }
}

export function isStDtype(value: unknown): value is StDtype {
  return typeof value === "string" && Object.hasOwn(ST_DTYPE_SIZE, value);
}

// ---------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------

/**
 * Reads and validates the 8-byte header length prefix. Exported so a streaming reader can learn
 * how many bytes to fetch before calling `parseSafetensorsHeader`.
 */
export function readHeaderLength(bytes: Uint8Array, fileSize: number, fileName: string): number {
  if (fileSize < 8 || bytes.byteLength < 8) {
    throw new SafetensorsError(
      fileName,
      `file is ${fileSize} bytes, shorter than the 8-byte header length prefix`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n === 0n) {
    throw new SafetensorsError(fileName, 'header length is 0 (a header must at least be "{}")');
  }
  if (n > BigInt(MAX_HEADER_SIZE)) {
    throw new SafetensorsError(
      fileName,
      `header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit (corrupt file or not safetensors)`,
    );
  }
  const headerLen = Number(n);
  if (8 + headerLen > fileSize) {
    throw new SafetensorsError(
      fileName,
      `header length ${headerLen} runs past the end of the file (${fileSize} bytes; truncated download?)`,
    );
  }
  return headerLen;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseMetadata(raw: unknown, fileName: string): Record<string, string> {
  // The reference deserializes into Option<HashMap<String, String>>, so null means "absent".
  if (raw === undefined || raw === null) return {};
  if (!isPlainObject(raw)) {
    throw new SafetensorsError(fileName, `"${METADATA_KEY}" must be an object of strings`);
  }
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== "string") {
      throw new SafetensorsError(
        fileName,
        `"${METADATA_KEY}" key ${JSON.stringify(key)} has a ${
          value === null ? "null" : typeof value
        } value; metadata values must be strings`,
      );
    }
    out[key] = value;
  }
  return out;
}

function isNonNegativeSafeInt(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function parseEntry(name: string, raw: unknown, dataSize: number, fileName: string): StTensorInfo {
  const fail = (message: string): never => {
    throw new SafetensorsError(fileName, message, name);
  };
  if (!isPlainObject(raw)) return fail("entry must be an object with dtype, shape and data_offsets");

  const { dtype, shape, data_offsets: offsets } = raw;
  if (!isStDtype(dtype)) {
    return fail(
      `unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(ST_DTYPE_SIZE).join(", ")})`,
    );
  }
  if (!Array.isArray(shape)) return fail(`shape must be an array, got ${JSON.stringify(shape)}`);
  let elements = 1;
  for (const dim of shape) {
    if (!isNonNegativeSafeInt(dim)) {
      return fail(
        `shape ${JSON.stringify(shape)} has ${JSON.stringify(dim)}; dims must be non-negative integers`,
      );
    }
    elements *= dim;
    if (!Number.isSafeInteger(elements)) return fail(`shape ${JSON.stringify(shape)} has too many elements`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    return fail(`data_offsets must be [begin, end], got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets;
  if (!isNonNegativeSafeInt(begin) || !isNonNegativeSafeInt(end)) {
    return fail(`data_offsets ${JSON.stringify(offsets)} must be non-negative integers`);
  }
  if (begin > end) return fail(`data_offsets [${begin}, ${end}] has begin > end`);
  if (end > dataSize) {
    return fail(`data_offsets [${begin}, ${end}] run past the end of the ${dataSize}-byte data area`);
  }
  const expected = elements * ST_DTYPE_SIZE[dtype];
  if (expected !== end - begin) {
    return fail(
      `shape ${JSON.stringify(shape)} × ${dtype} (${ST_DTYPE_SIZE[dtype]} B) = ${expected} bytes, ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin} bytes`,
    );
  }
  return { name, dtype, shape: shape.slice(), begin, end };
}

/**
 * Requires the tensors to tile the data area exactly, like the Rust crate: sorted by offset,
 * each must start where the previous ended (begin < previous end is an overlap — two tensors
 * aliasing the same bytes; begin > previous end is a gap — unexplained bytes, which the crate
 * rejects as InvalidOffset / MetadataIncompleteBuffer), and the last must end at the file end.
 * Exact tiling is what makes a file canonical and catches truncated or spliced files.
 */
function checkTiling(tensors: StTensorInfo[], dataSize: number, fileName: string): void {
  const sorted = tensors.slice().sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous: StTensorInfo | undefined;
  for (const t of sorted) {
    if (t.begin < cursor) {
      throw new SafetensorsError(
        fileName,
        `data_offsets [${t.begin}, ${t.end}] overlap tensor ${JSON.stringify(previous!.name)} ` +
          `[${previous!.begin}, ${previous!.end}]`,
        t.name,
      );
    }
    if (t.begin > cursor) {
      const after = previous === undefined
        ? "the start of the data area"
        : `tensor ${JSON.stringify(previous.name)} (ends at ${cursor})`;
      throw new SafetensorsError(
        fileName,
        `data_offsets [${t.begin}, ${t.end}] leave a ${t.begin - cursor}-byte gap after ${after}; ` +
          `tensors must be contiguous`,
        t.name,
      );
    }
    cursor = t.end;
    previous = t;
  }
  if (cursor !== dataSize) {
    throw new SafetensorsError(
      fileName,
      `tensors cover ${cursor} bytes but the data area is ${dataSize} bytes (trailing garbage or wrong header)`,
    );
  }
}

/**
 * Parses and validates a safetensors header.
 * @param bytes at least the first 8 + N bytes of the file (the whole file is fine too).
 * @param fileSize total size of the file, used to bound the data area.
 * @param fileName used only in error messages.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, fileSize: number, fileName: string): StHeader {
  const headerLen = readHeaderLength(bytes, fileSize, fileName);
  if (bytes.byteLength < 8 + headerLen) {
    throw new SafetensorsError(
      fileName,
      `caller passed ${bytes.byteLength} bytes but the header needs ${8 + headerLen}`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    throw new SafetensorsError(fileName, "header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(fileName, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) {
    const kind = json === null ? "null" : Array.isArray(json) ? "an array" : typeof json;
    throw new SafetensorsError(fileName, `header JSON must be an object, got ${kind}`);
  }

  const dataOffset = 8 + headerLen;
  const dataSize = fileSize - dataOffset;
  const metadata = parseMetadata(json[METADATA_KEY], fileName);
  const list: StTensorInfo[] = [];
  for (const [name, raw] of Object.entries(json)) {
    if (name === METADATA_KEY) continue;
    list.push(parseEntry(name, raw, dataSize, fileName));
  }
  checkTiling(list, dataSize, fileName);

  // Map in file order: deterministic, and sequential reads are friendlier to disks.
  list.sort((a, b) => a.begin - b.begin || a.end - b.end);
  return { tensors: new Map(list.map((t) => [t.name, t])), metadata, dataOffset };
}

// ---------------------------------------------------------------------------------------------
// Float conversions
// ---------------------------------------------------------------------------------------------

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Scratch for reading the two 32-bit words of a double.
const scratchF64 = new Float64Array(1);
const scratchU32 = new Uint32Array(scratchF64.buffer);
const LO = LITTLE_ENDIAN ? 0 : 1;
const HI = LITTLE_ENDIAN ? 1 : 0;

/**
 * Rounds a number to the nearest IEEE binary16 (round-to-nearest-even) and returns its bits.
 * Works from the full double so there is no double rounding through f32. NaN → 0x7E00 (quiet,
 * sign kept); overflow (|x| ≥ 65520) → ±inf.
 */
export function f32ToF16Bits(value: number): number {
  scratchF64[0] = value;
  const hi = scratchU32[HI];
  const lo = scratchU32[LO];
  const sign = (hi >>> 16) & 0x8000;
  const exp = (hi >>> 20) & 0x7ff;
  const mantHi = hi & 0xfffff; // top 20 of the 52 mantissa bits

  if (exp === 0x7ff) return sign | ((mantHi | lo) !== 0 ? 0x7e00 : 0x7c00);
  const e = exp - 1023;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal: keep the top 10 mantissa bits, round on bit 9 of mantHi, sticky below it.
    let bits = ((e + 15) << 10) | (mantHi >>> 10);
    const round = (mantHi >>> 9) & 1;
    const sticky = (mantHi & 0x1ff) | lo;
    // A carry out of the mantissa correctly bumps the exponent (and 0x7BFF+1 is inf).
    if (round && (sticky || (bits & 1))) bits++;
    return sign | bits;
  }
  if (exp === 0) return sign; // f64 subnormals are far below half the smallest f16 subnormal
  // Subnormal f16: value = sig21·2^(e-20) with sig21 the 21-bit significand (implicit 1), plus
  // `lo` below. In units of 2^-24 that is sig21 >> d with d = -4 - e (≥ 11 here).
  const d = -4 - e;
  if (d > 21) return sign; // below 2^-25: rounds to zero (2^-25 itself is a tie → even 0)
  const sig21 = mantHi | 0x100000;
  let bits = sig21 >>> d;
  const round = (sig21 >>> (d - 1)) & 1;
  const sticky = (sig21 & ((1 << (d - 1)) - 1)) | lo;
  if (round && (sticky || (bits & 1))) bits++; // may carry into the smallest normal, correctly
  return sign | bits;
}

/** Exact value of an IEEE binary16 bit pattern. */
export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

let f16Table: Float32Array | undefined;

/** 65536-entry lookup table; bulk decode of GPT-2 sized tensors is then one load per element. */
function f16ToF32Table(): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16BitsToF32(i);
  }
  return f16Table;
}

/** Converts an array of f32 values to binary16 bits (round-to-nearest-even). */
export function f32ArrayToF16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]);
  return out;
}

const scratchF32 = new Float32Array(1);
const scratchF32Bits = new Uint32Array(scratchF32.buffer);

/** Rounds to bfloat16 bits (round-to-nearest-even on the f32 value; NaN stays a quiet NaN). */
export function f32ToBf16Bits(value: number): number {
  scratchF32[0] = value;
  const u = scratchF32Bits[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) & 0x8000) | 0x7fc0;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Exact value of a bfloat16 bit pattern (bf16 is the top half of an f32). */
export function bf16BitsToF32(bits: number): number {
  scratchF32Bits[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** Converts an array of f32 values to bfloat16 bits (round-to-nearest-even). */
export function f32ArrayToBf16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tensor decoding
// ---------------------------------------------------------------------------------------------

/**
 * Returns the tensor's raw bytes as a view into `dataBytes` (the data area, i.e. the file bytes
 * from `dataOffset` on). No copy: callers that keep it past the buffer's lifetime should slice.
 */
export function readTensorRaw(info: StTensorInfo, dataBytes: Uint8Array): Uint8Array {
  if (info.end > dataBytes.byteLength || info.begin > info.end) {
    throw new SafetensorsError(
      "<data area>",
      `data_offsets [${info.begin}, ${info.end}] outside the ${dataBytes.byteLength}-byte buffer`,
      info.name,
    );
  }
  return dataBytes.subarray(info.begin, info.end);
}

/** An ArrayBuffer-backed copy when the view cannot be reinterpreted in place. */
function alignedBuffer(bytes: Uint8Array, alignment: number): { buffer: ArrayBuffer; offset: number } {
  if (bytes.byteOffset % alignment === 0 && bytes.buffer instanceof ArrayBuffer) {
    return { buffer: bytes.buffer, offset: bytes.byteOffset };
  }
  return { buffer: bytes.slice().buffer, offset: 0 };
}

/**
 * Decodes one tensor's bytes (exactly its `end - begin` bytes) to f32. For F32 on a little-endian
 * host with aligned bytes the result is a view sharing memory with `bytes` (no copy); everything
 * else is a fresh array.
 */
export function decodeTensorF32(dtype: StDtype, bytes: Uint8Array, name = "<tensor>"): Float32Array {
  const size = ST_DTYPE_SIZE[dtype];
  if (size === undefined || bytes.byteLength % size !== 0) {
    throw new SafetensorsError(
      "<data area>",
      `${bytes.byteLength} bytes is not a whole number of ${dtype}`,
      name,
    );
  }
  const count = bytes.byteLength / size;
  if (!LITTLE_ENDIAN) return decodeWithDataView(dtype, bytes, count, name);
  switch (dtype) {
    case "F32": {
      const { buffer, offset } = alignedBuffer(bytes, 4);
      return new Float32Array(buffer, offset, count);
    }
    case "F64": {
      const { buffer, offset } = alignedBuffer(bytes, 8);
      return Float32Array.from(new Float64Array(buffer, offset, count));
    }
    case "F16": {
      const { buffer, offset } = alignedBuffer(bytes, 2);
      const src = new Uint16Array(buffer, offset, count);
      const table = f16ToF32Table();
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[src[i]];
      return out;
    }
    case "BF16": {
      const { buffer, offset } = alignedBuffer(bytes, 2);
      const src = new Uint16Array(buffer, offset, count);
      const out = new Float32Array(count);
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) outBits[i] = src[i] << 16;
      return out;
    }
    default:
      throw new SafetensorsError(
        "<data area>",
        `dtype ${dtype} is not a float type; use readTensorRaw for integer/bool tensors`,
        name,
      );
  }
}

/** Portable fallback for big-endian hosts, where typed arrays would read the bytes backwards. */
function decodeWithDataView(dtype: StDtype, bytes: Uint8Array, count: number, name: string): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    switch (dtype) {
      case "F32":
        out[i] = view.getFloat32(i * 4, true);
        break;
      case "F64":
        out[i] = view.getFloat64(i * 8, true);
        break;
      case "F16":
        out[i] = f16BitsToF32(view.getUint16(i * 2, true));
        break;
      case "BF16":
        out[i] = bf16BitsToF32(view.getUint16(i * 2, true));
        break;
      default:
        throw new SafetensorsError("<data area>", `dtype ${dtype} is not a float type`, name);
    }
  }
  return out;
}

/**
 * Reads a float tensor (F32/F16/BF16/F64) from the data area as f32. May share memory with
 * `dataBytes` for aligned F32 tensors; see `decodeTensorF32`.
 */
export function readTensorF32(info: StTensorInfo, dataBytes: Uint8Array): Float32Array {
  return decodeTensorF32(info.dtype, readTensorRaw(info, dataBytes), info.name);
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();

function compareUtf8(a: string, b: string): number {
  // Byte order of UTF-8, like Rust's String Ord; UTF-16 code-unit order differs above U+FFFF.
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/**
 * Serializes tensors to safetensors as chunks: `[prefix+header, tensor bytes...]`. Tensor chunks
 * are views of the caller's data (no copy), so a multi-GB file can be streamed to disk.
 *
 * Order: largest element size first, then by name (UTF-8 byte order). Like the Rust crate's
 * "alignment then name" rule, this keeps every tensor naturally aligned within the data area,
 * and since the header is space-padded so the data area starts at a multiple of 8, typed-array
 * views of the loaded file need no copies. Output is deterministic; byte-identity with the Rust
 * crate (which orders F16 vs BF16 etc. by its enum) is not a goal.
 */
export function serializeSafetensors(
  tensors: StTensorInput[],
  metadata?: Record<string, string>,
): Uint8Array[] {
  const fileName = "<serialize>";
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === METADATA_KEY) {
      throw new SafetensorsError(fileName, `"${METADATA_KEY}" is reserved`, t.name);
    }
    if (seen.has(t.name)) throw new SafetensorsError(fileName, "duplicate tensor name", t.name);
    seen.add(t.name);
    if (!isStDtype(t.dtype)) {
      throw new SafetensorsError(fileName, `unknown dtype ${JSON.stringify(t.dtype)}`, t.name);
    }
    let elements = 1;
    for (const dim of t.shape) {
      if (!isNonNegativeSafeInt(dim)) {
        throw new SafetensorsError(fileName, `shape ${JSON.stringify(t.shape)} has an invalid dim`, t.name);
      }
      elements *= dim;
    }
    const expected = elements * ST_DTYPE_SIZE[t.dtype];
    if (t.data.byteLength !== expected) {
      throw new SafetensorsError(
        fileName,
        `shape ${
          JSON.stringify(t.shape)
        } × ${t.dtype} needs ${expected} bytes, data has ${t.data.byteLength}`,
        t.name,
      );
    }
  }
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new SafetensorsError(fileName, `metadata ${JSON.stringify(k)} is not a string`);
      }
    }
  }

  const ordered = tensors.slice().sort((a, b) =>
    ST_DTYPE_SIZE[b.dtype] - ST_DTYPE_SIZE[a.dtype] || compareUtf8(a.name, b.name)
  );

  // Built by hand rather than JSON.stringify(object): JS objects put integer-like keys
  // ("0", "1") first, which would silently break the chosen order.
  const parts: string[] = [];
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    parts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const t of ordered) {
    const end = offset + t.data.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":${JSON.stringify(t.shape)},` +
        `"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = utf8.encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8; // spaces, as the reference does
  const head = new Uint8Array(8 + padded);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  head.fill(0x20, 8 + json.byteLength);

  const chunks: Uint8Array[] = [head];
  for (const t of ordered) {
    chunks.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return chunks;
}
