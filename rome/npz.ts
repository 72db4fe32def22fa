// A small reader for NumPy .npz files (a zip of .npy arrays), enough for the reference's precomputed
// statistics (`…_float32_mom2_100000.npz`: keys `mom2.mom2`, `mom2.count`, §2.5). Zip entries may be
// stored or deflated (np.savez / np.savez_compressed), with zip64 extensions (numpy writes them);
// arrays may be <f4, <f8 or little-endian integers, C or Fortran order. Runtime-neutral: inflation uses
// the web-standard DecompressionStream("deflate-raw").
import { InputError } from "../engine/errors.ts";

export class NpzError extends InputError {
  override name = "NpzError";
}

export interface NpyArray {
  /** NumPy dtype string, e.g. "<f4". */
  dtype: string;
  shape: number[];
  /** Values in C (row-major) order whatever the file's order; float32 for <f4, float64 otherwise. */
  data: Float32Array | Float64Array;
}

interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

const u16 = (v: DataView, o: number) => v.getUint16(o, true);
const u32 = (v: DataView, o: number) => v.getUint32(o, true);
function u64(v: DataView, o: number, what: string, file: string): number {
  const x = v.getBigUint64(o, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new NpzError(`${file}: ${what} ${x} is too large`);
  return Number(x);
}

/** The central directory of a zip archive. */
function zipEntries(bytes: Uint8Array, file: string): ZipEntry[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.byteLength - 22; i >= Math.max(0, bytes.byteLength - 22 - 65535); i--) {
    if (u32(v, i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new NpzError(`${file}: not a zip archive (no end-of-central-directory record)`);
  let entries = u16(v, eocd + 10);
  let cdOffset = u32(v, eocd + 16);
  if (entries === 0xffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || u32(v, loc) !== 0x07064b50) throw new NpzError(`${file}: zip64 locator missing`);
    const z = u64(v, loc + 8, "zip64 record offset", file);
    if (z + 56 > bytes.byteLength || u32(v, z) !== 0x06064b50) {
      throw new NpzError(`${file}: bad zip64 record`);
    }
    entries = u64(v, z + 32, "entry count", file);
    cdOffset = u64(v, z + 48, "central directory offset", file);
  }
  const out: ZipEntry[] = [];
  let p = cdOffset;
  for (let n = 0; n < entries; n++) {
    if (p + 46 > bytes.byteLength || u32(v, p) !== 0x02014b50) {
      throw new NpzError(`${file}: central directory entry ${n} is corrupt`);
    }
    const flags = u16(v, p + 8);
    if (flags & 1) throw new NpzError(`${file}: encrypted zip entries are not supported`);
    const nameLen = u16(v, p + 28), extraLen = u16(v, p + 30), commentLen = u16(v, p + 32);
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
    let compressedSize = u32(v, p + 20), size = u32(v, p + 24), localOffset = u32(v, p + 42);
    // zip64 extra field: the 8-byte values, in this order, of the fields that hold 0xffffffff
    for (let e = p + 46 + nameLen; e + 4 <= p + 46 + nameLen + extraLen;) {
      const id = u16(v, e), len = u16(v, e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff) (size = u64(v, q, "size", file), q += 8);
        if (compressedSize === 0xffffffff) (compressedSize = u64(v, q, "size", file), q += 8);
        if (localOffset === 0xffffffff) localOffset = u64(v, q, "offset", file);
      }
      e += 4 + len;
    }
    out.push({ name, method: u16(v, p + 10), compressedSize, size, localOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}

async function entryBytes(bytes: Uint8Array, e: ZipEntry, file: string): Promise<Uint8Array> {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (e.localOffset + 30 > bytes.byteLength || u32(v, e.localOffset) !== 0x04034b50) {
    throw new NpzError(`${file}: local header of '${e.name}' is corrupt`);
  }
  const start = e.localOffset + 30 + u16(v, e.localOffset + 26) + u16(v, e.localOffset + 28);
  if (start + e.compressedSize > bytes.byteLength) throw new NpzError(`${file}: '${e.name}' is truncated`);
  const raw = bytes.subarray(start, start + e.compressedSize);
  let out: Uint8Array;
  if (e.method === 0) out = raw;
  else if (e.method === 8) {
    try {
      const stream = new Blob([raw.slice()]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
      out = new Uint8Array(await new Response(stream).arrayBuffer());
    } catch (err) {
      throw new NpzError(`${file}: '${e.name}' does not inflate (${(err as Error).message})`);
    }
  } else {throw new NpzError(
      `${file}: '${e.name}' uses zip compression method ${e.method} (only stored and deflate)`,
    );}
  if (out.byteLength !== e.size) {
    throw new NpzError(`${file}: '${e.name}' has ${out.byteLength} bytes, the directory says ${e.size}`);
  }
  return out;
}

const NPY_TYPES: Record<string, { bytes: number; read: (v: DataView, o: number) => number }> = {
  f4: { bytes: 4, read: (v, o) => v.getFloat32(o, true) },
  f8: { bytes: 8, read: (v, o) => v.getFloat64(o, true) },
  i4: { bytes: 4, read: (v, o) => v.getInt32(o, true) },
  u4: { bytes: 4, read: (v, o) => v.getUint32(o, true) },
  i8: { bytes: 8, read: (v, o) => Number(v.getBigInt64(o, true)) },
  u8: { bytes: 8, read: (v, o) => Number(v.getBigUint64(o, true)) },
};

/** Parses one .npy file (format versions 1–3). */
export function parseNpy(bytes: Uint8Array, name: string): NpyArray {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.byteLength < 10 || magic.some((b, i) => bytes[i] !== b)) {
    throw new NpzError(`${name}: not a .npy array`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [hlen, hstart] = major === 1 ? [u16(v, 8), 10] : [u32(v, 8), 12];
  const header = new TextDecoder().decode(bytes.subarray(hstart, hstart + hlen));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new NpzError(`${name}: unreadable .npy header ${JSON.stringify(header.trim())}`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new NpzError(`${name}: bad shape (${shapeText})`);
  }
  const endian = descr[0], kind = descr.slice(1);
  const t = NPY_TYPES[kind];
  if (!t || !(endian === "<" || endian === "|" || endian === "=")) {
    throw new NpzError(`${name}: dtype '${descr}' is not supported (little-endian f4, f8 and integers)`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  const off = hstart + hlen;
  if (off + n * t.bytes > bytes.byteLength) throw new NpzError(`${name}: data is truncated`);
  if (kind === "f4" && (fortran === "False" || shape.length < 2)) {
    return { dtype: descr, shape, data: new Float32Array(bytes.slice(off, off + 4 * n).buffer) };
  }
  const data = kind === "f4" ? new Float32Array(n) : new Float64Array(n);
  // Fortran order: the file holds the transpose's C order; index (i0, i1, ...) lives at Σ i_k·Π_{j<k} d_j
  const cStride = shape.map((_, k) => shape.slice(k + 1).reduce((a, b) => a * b, 1));
  const fStride = shape.map((_, k) => shape.slice(0, k).reduce((a, b) => a * b, 1));
  for (let i = 0; i < n; i++) {
    let src = i;
    if (fortran === "True" && shape.length > 1) {
      src = 0;
      for (let k = 0; k < shape.length; k++) src += (Math.floor(i / cStride[k]) % shape[k]) * fStride[k];
    }
    data[i] = t.read(v, off + src * t.bytes);
  }
  return { dtype: descr, shape, data };
}

/** The arrays of an .npz archive (only `keys` when given; each key is the entry name without ".npy"). */
export async function readNpz(
  bytes: Uint8Array,
  file: string,
  keys?: readonly string[],
): Promise<Map<string, NpyArray>> {
  const entries = zipEntries(bytes, file);
  const out = new Map<string, NpyArray>();
  for (const e of entries) {
    const key = e.name.endsWith(".npy") ? e.name.slice(0, -4) : e.name;
    if (keys && !keys.includes(key)) continue;
    out.set(key, parseNpy(await entryBytes(bytes, e, file), `${file}:${e.name}`));
  }
  for (const k of keys ?? []) {
    if (!out.has(k)) {
      throw new NpzError(
        `${file}: no array '${k}' (has ${entries.map((e) => e.name.replace(/\.npy$/, "")).join(", ")})`,
      );
    }
  }
  return out;
}

/** The reference's statistics file: Σ k kᵀ (`mom2.mom2`, [d_ff, d_ff]) and the token count (`mom2.count`). */
export async function readReferenceMom2(
  bytes: Uint8Array,
  file: string,
): Promise<{ mom2: Float32Array; dff: number; count: number }> {
  const arrays = await readNpz(bytes, file, ["mom2.mom2", "mom2.count"]);
  const m = arrays.get("mom2.mom2")!, c = arrays.get("mom2.count")!;
  if (m.shape.length !== 2 || m.shape[0] !== m.shape[1]) {
    throw new NpzError(`${file}: mom2.mom2 has shape (${m.shape}), expected a square matrix`);
  }
  if (c.data.length !== 1 || !(c.data[0] > 0)) {
    throw new NpzError(`${file}: mom2.count must be one positive number`);
  }
  const mom2 = m.data instanceof Float32Array ? m.data : Float32Array.from(m.data);
  return { mom2, dff: m.shape[0], count: c.data[0] };
}
