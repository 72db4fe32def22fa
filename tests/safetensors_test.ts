import assert from "node:assert/strict";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  f32ToBf16Bits,
  f32ToF16Bits,
  parseSafetensorsHeader,
  readTensorF32,
  readTensorRaw,
  SafetensorsError,
  serializeSafetensors,
  ST_DTYPE_SIZE,
  type StDtype,
  type StTensorInput,
} from "../engine/safetensors.ts";
import {
  assertNotPickle,
  PICKLE_REFUSAL_MESSAGE,
  PickleCheckpointError,
  readSafetensorsFile,
  readShardedSafetensors,
  writeFileAtomic,
  writeSafetensorsFile,
} from "../engine/files.ts";
import { concat } from "./lib/util.ts";

// ---------------------------------------------------------------------------------------------
// helpers

/** A file from a raw header string and a data area of `dataSize` bytes. */
function rawFile(header: string, dataSize = 0, headerLenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.byteLength + dataSize);
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

function fileFor(header: unknown, dataSize: number): Uint8Array {
  return rawFile(JSON.stringify(header), dataSize);
}

const FILE = "bad.safetensors";

function expectError(bytes: Uint8Array, pattern: RegExp, tensor?: string): void {
  assert.throws(
    () => parseSafetensorsHeader(bytes, bytes.byteLength, FILE),
    (e: unknown) => {
      assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${e}`);
      assert.ok(e.message.includes(FILE), `message should name the file: ${e.message}`);
      if (tensor !== undefined) {
        assert.ok(e.message.includes(JSON.stringify(tensor)), `message should name ${tensor}: ${e.message}`);
        assert.equal(e.tensorName, tensor);
      }
      assert.match(e.message, pattern);
      return true;
    },
  );
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16 conversions

Deno.test("f16: hand-checked values", () => {
  const cases: [number, number][] = [
    [1.0, 0x3c00],
    [-2.0, 0xc000],
    [0.5, 0x3800],
    [65504, 0x7bff], // max finite
    [2 ** -24, 0x0001], // smallest subnormal
    [1023 * 2 ** -24, 0x03ff], // largest subnormal
    [2 ** -14, 0x0400], // smallest normal
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [0, 0x0000],
    [-0, 0x8000],
  ];
  for (const [value, bits] of cases) {
    assert.equal(f32ToF16Bits(value), bits, `encode ${value}`);
    assert.equal(f16BitsToF32(bits), value, `decode 0x${bits.toString(16)}`);
  }
  assert.ok(Object.is(f16BitsToF32(0x8000), -0));
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
  assert.ok(Number.isNaN(f16BitsToF32(0xfc01)));
  assert.equal(f32ToF16Bits(NaN) & 0x7fff, 0x7e00);
});

Deno.test("f16: round-to-nearest-even, overflow and underflow", () => {
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00, "tie → even (down)");
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02, "tie → even (up)");
  assert.equal(f32ToF16Bits(1 + 2 ** -11 + 2 ** -40), 0x3c01, "no double rounding through f32");
  assert.equal(f32ToF16Bits(65519), 0x7bff, "below the overflow midpoint");
  assert.equal(f32ToF16Bits(65520), 0x7c00, "overflow midpoint rounds to inf");
  assert.equal(f32ToF16Bits(1e10), 0x7c00);
  assert.equal(f32ToF16Bits(-1e10), 0xfc00);
  assert.equal(f32ToF16Bits(2 ** -25), 0x0000, "half the smallest subnormal ties to 0");
  assert.equal(f32ToF16Bits(2 ** -25 * 1.0001), 0x0001);
  assert.equal(f32ToF16Bits(3 * 2 ** -25), 0x0002, "subnormal tie → even (up)");
  assert.equal(f32ToF16Bits(2 ** -30), 0x0000);
  assert.equal(f32ToF16Bits(-(2 ** -30)), 0x8000);
  assert.equal(f32ToF16Bits(5e-324), 0x0000, "f64 subnormal");
  assert.equal(f32ToF16Bits(2 ** -14 - 2 ** -26), 0x0400, "largest subnormal + carry into normal");
});

Deno.test("f16: exhaustive round trip and midpoints", () => {
  for (let h = 0; h < 0x10000; h++) {
    const v = f16BitsToF32(h);
    if (Number.isNaN(v)) continue;
    assert.equal(f32ToF16Bits(v), h);
    // Midpoint to the next positive finite half must round to the even one of the two.
    if (h < 0x7bff) {
      const mid = (v + f16BitsToF32(h + 1)) / 2;
      assert.equal(f32ToF16Bits(mid), h % 2 === 0 ? h : h + 1, `midpoint after 0x${h.toString(16)}`);
    }
  }
  const arr = f32ArrayToF16([1, -2, 65504]);
  assert.deepEqual([...arr], [0x3c00, 0xc000, 0x7bff]);
});

Deno.test("bf16: hand-checked values and rounding", () => {
  const cases: [number, number][] = [
    [1.0, 0x3f80],
    [-2.0, 0xc000],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [0, 0],
  ];
  for (const [value, bits] of cases) {
    assert.equal(f32ToBf16Bits(value), bits);
    assert.equal(bf16BitsToF32(bits), value);
  }
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80, "tie → even");
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82, "tie → even (up)");
  assert.equal(f32ToBf16Bits(NaN), 0x7fc0);
  assert.ok(Number.isNaN(bf16BitsToF32(0x7fc1)));
  assert.deepEqual([...f32ArrayToBf16([1, -2])], [0x3f80, 0xc000]);
});

// ---------------------------------------------------------------------------------------------
// serializer + parser round trip

function allDtypeTensors(): StTensorInput[] {
  return [
    { name: "f32", dtype: "F32", shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, -0, 1e-30]) },
    { name: "f64", dtype: "F64", shape: [3], data: new Float64Array([1, -2, 0.1]) },
    {
      name: "f16",
      dtype: "F16",
      shape: [7],
      data: new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0xfc00, 0x7e00]),
    },
    { name: "bf16", dtype: "BF16", shape: [4], data: new Uint16Array([0x3f80, 0xc000, 0x7f80, 0x7fc0]) },
    { name: "i64", dtype: "I64", shape: [2], data: new BigInt64Array([-1n, 1n << 40n]) },
    { name: "i32", dtype: "I32", shape: [2], data: new Int32Array([-7, 7]) },
    { name: "i16", dtype: "I16", shape: [1], data: new Int16Array([-300]) },
    { name: "i8", dtype: "I8", shape: [3], data: new Int8Array([-1, 0, 1]) },
    { name: "u8", dtype: "U8", shape: [1, 1, 2], data: new Uint8Array([0, 255]) },
    { name: "bool", dtype: "BOOL", shape: [2], data: new Uint8Array([1, 0]) },
    { name: "scalar", dtype: "F32", shape: [], data: new Float32Array([42]) },
    { name: "empty", dtype: "F32", shape: [0, 5], data: new Float32Array(0) },
  ];
}

Deno.test("serializer output parses, header is space-padded to 8, tensors aligned", () => {
  const tensors = allDtypeTensors();
  const bytes = concat(serializeSafetensors(tensors, { format: "pt", note: "ü" }));
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0);
  const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(headerText, /^\{.*\} *$/);
  const parsed = parseSafetensorsHeader(bytes, bytes.byteLength, "mem");
  assert.equal(parsed.dataOffset, 8 + n);
  assert.deepEqual(parsed.metadata, { format: "pt", note: "ü" });
  assert.equal(parsed.tensors.size, tensors.length);
  const data = bytes.subarray(parsed.dataOffset);
  for (const t of tensors) {
    const info = parsed.tensors.get(t.name)!;
    assert.equal(info.dtype, t.dtype);
    assert.deepEqual(info.shape, t.shape);
    assert.equal(info.begin % ST_DTYPE_SIZE[t.dtype], 0, `${t.name} naturally aligned`);
    assert.deepEqual(readTensorRaw(info, data), bytesOf(t.data));
  }
  // Deterministic order: size desc, then name.
  assert.deepEqual(
    [...parsed.tensors.keys()],
    ["f64", "i64", "empty", "f32", "i32", "scalar", "bf16", "f16", "i16", "bool", "i8", "u8"],
  );
  // Same input, same bytes.
  assert.deepEqual(
    concat(serializeSafetensors(tensors.slice().reverse(), { format: "pt", note: "ü" })),
    bytes,
  );
});

Deno.test("serializer keeps integer-like names in sorted order and rejects bad input", () => {
  const one = (name: string) => ({ name, dtype: "U8" as const, shape: [1], data: new Uint8Array([1]) });
  const bytes = concat(serializeSafetensors([one("b"), one("10"), one("2"), one("a")]));
  const parsed = parseSafetensorsHeader(bytes, bytes.byteLength, "mem");
  assert.deepEqual([...parsed.tensors.keys()], ["10", "2", "a", "b"]);
  assert.throws(() => serializeSafetensors([one("x"), one("x")]), /duplicate/);
  assert.throws(() => serializeSafetensors([one("__metadata__")]), /reserved/);
  assert.throws(
    () => serializeSafetensors([{ name: "w", dtype: "F32", shape: [3], data: new Float32Array(2) }]),
    /"w".*needs 12 bytes, data has 8/,
  );
  const empty = concat(serializeSafetensors([]));
  assert.equal(parseSafetensorsHeader(empty, empty.byteLength, "mem").tensors.size, 0);
});

Deno.test("readTensorF32 converts every float dtype", () => {
  const tensors = allDtypeTensors();
  const bytes = concat(serializeSafetensors(tensors));
  const { tensors: infos, dataOffset } = parseSafetensorsHeader(bytes, bytes.byteLength, "mem");
  const data = bytes.subarray(dataOffset);
  assert.deepEqual([...readTensorF32(infos.get("f32")!, data)], [1, -2, 3.5, 0, -0, Math.fround(1e-30)]);
  assert.deepEqual([...readTensorF32(infos.get("f64")!, data)], [1, -2, Math.fround(0.1)]);
  const f16 = readTensorF32(infos.get("f16")!, data);
  assert.deepEqual([...f16.subarray(0, 6)], [1, -2, 65504, 2 ** -24, Infinity, -Infinity]);
  assert.ok(Number.isNaN(f16[6]));
  const bf16 = readTensorF32(infos.get("bf16")!, data);
  assert.deepEqual([...bf16.subarray(0, 3)], [1, -2, Infinity]);
  assert.ok(Number.isNaN(bf16[3]));
  assert.deepEqual([...readTensorF32(infos.get("scalar")!, data)], [42]);
  assert.equal(readTensorF32(infos.get("empty")!, data).length, 0);
  assert.throws(() => readTensorF32(infos.get("i32")!, data), /"i32".*not a float type/);
});

Deno.test("readTensorF32 handles unaligned data areas", () => {
  const bytes = concat(serializeSafetensors([
    { name: "a", dtype: "F32", shape: [3], data: new Float32Array([1.5, -2.25, 3]) },
    { name: "b", dtype: "F16", shape: [2], data: f32ArrayToF16([0.5, -0.25]) },
    { name: "c", dtype: "F64", shape: [1], data: new Float64Array([-8]) },
  ]));
  for (const shift of [1, 2, 3, 5]) {
    const shifted = new Uint8Array(bytes.byteLength + shift);
    shifted.set(bytes, shift);
    const view = shifted.subarray(shift);
    const { tensors, dataOffset } = parseSafetensorsHeader(view, view.byteLength, "mem");
    const data = view.subarray(dataOffset);
    assert.deepEqual([...readTensorF32(tensors.get("a")!, data)], [1.5, -2.25, 3]);
    assert.deepEqual([...readTensorF32(tensors.get("b")!, data)], [0.5, -0.25]);
    assert.deepEqual([...readTensorF32(tensors.get("c")!, data)], [-8]);
  }
});

// ---------------------------------------------------------------------------------------------
// malformed headers: every failure names the file (and the tensor)

const okEntry = (begin: number, end: number, dtype = "F32", shape = [(end - begin) / 4]) => ({
  dtype,
  shape,
  data_offsets: [begin, end],
});

Deno.test("malformed: file shorter than 8 bytes", () => {
  for (const len of [0, 1, 7]) expectError(new Uint8Array(len), /shorter than the 8-byte/);
});

Deno.test("malformed: header length zero, past end of file, absurdly large", () => {
  expectError(rawFile("{}", 0, 0n), /header length is 0/);
  expectError(rawFile("{}", 0, 3n), /runs past the end of the file/);
  expectError(rawFile("{}", 0, 1n << 62n), /exceeds the 100000000-byte limit/);
  expectError(rawFile("{}", 0, 0xffffffffffffffffn), /exceeds/);
});

Deno.test("malformed: invalid JSON, invalid UTF-8, JSON not an object", () => {
  expectError(rawFile('{"a": '), /not valid JSON/);
  const badUtf8 = rawFile("{}  ");
  badUtf8[10] = 0xff;
  expectError(badUtf8, /not valid UTF-8/);
  expectError(rawFile("[]"), /must be an object, got an array/);
  expectError(rawFile("null"), /must be an object, got null/);
  expectError(rawFile("42"), /must be an object, got number/);
  expectError(rawFile('"x"'), /must be an object, got string/);
});

Deno.test("malformed: entry not an object, unknown dtype", () => {
  expectError(fileFor({ w: [1, 2] }, 0), /entry must be an object/, "w");
  expectError(fileFor({ w: okEntry(0, 4, "F8") }, 4), /unknown dtype "F8"/, "w");
  expectError(fileFor({ w: { shape: [1], data_offsets: [0, 4] } }, 4), /unknown dtype undefined/, "w");
});

Deno.test("malformed: negative / non-integer / non-array shape", () => {
  expectError(fileFor({ w: okEntry(0, 4, "F32", [-1]) }, 4), /shape \[-1\].*non-negative integers/, "w");
  expectError(fileFor({ w: okEntry(0, 4, "F32", [1.5]) }, 4), /non-negative integers/, "w");
  expectError(fileFor({ w: { dtype: "F32", shape: ["1"], data_offsets: [0, 4] } }, 4), /non-negative/, "w");
  expectError(
    fileFor({ w: { dtype: "F32", shape: 1, data_offsets: [0, 4] } }, 4),
    /shape must be an array/,
    "w",
  );
  expectError(
    fileFor({ w: { dtype: "F32", shape: [2 ** 30, 2 ** 30, 2 ** 30], data_offsets: [0, 4] } }, 4),
    /too many elements/,
    "w",
  );
});

Deno.test("malformed: data_offsets shape, range, begin > end", () => {
  expectError(fileFor({ w: { dtype: "F32", shape: [1], data_offsets: [0] } }, 4), /\[begin, end\]/, "w");
  expectError(fileFor({ w: { dtype: "F32", shape: [1], data_offsets: [-4, 0] } }, 4), /non-negative/, "w");
  expectError(fileFor({ w: okEntry(0, 8) }, 4), /run past the end of the 4-byte data area/, "w");
  expectError(fileFor({ w: okEntry(8, 12) }, 4), /run past the end/, "w");
  expectError(
    fileFor({ w: { dtype: "F32", shape: [1], data_offsets: [8, 4] } }, 8),
    /begin > end/,
    "w",
  );
});

Deno.test("malformed: shape × dtype size does not match the byte range", () => {
  expectError(fileFor({ w: okEntry(0, 8, "F32", [3]) }, 8), /= 12 bytes.*span 8 bytes/, "w");
  expectError(fileFor({ w: okEntry(0, 8, "F16", [2]) }, 8), /F16.*= 4 bytes/, "w");
});

Deno.test("malformed: overlapping tensors, gaps, trailing bytes", () => {
  expectError(fileFor({ a: okEntry(0, 8), b: okEntry(4, 12) }, 12), /overlap tensor "a"/, "b");
  expectError(fileFor({ a: okEntry(0, 8), z: okEntry(4, 4, "F32", [0]) }, 8), /overlap tensor "a"/, "z");
  expectError(fileFor({ a: okEntry(0, 4), b: okEntry(8, 12) }, 12), /4-byte gap after tensor "a"/, "b");
  expectError(fileFor({ a: okEntry(4, 8) }, 8), /gap after the start of the data area/, "a");
  expectError(fileFor({ a: okEntry(0, 4) }, 8), /cover 4 bytes but the data area is 8 bytes/);
  // Zero-size tensors at the boundary are fine (the Rust crate accepts them too).
  const ok = fileFor({ a: okEntry(0, 4), z: okEntry(4, 4, "F32", [0]), b: okEntry(4, 8) }, 8);
  assert.equal(parseSafetensorsHeader(ok, ok.byteLength, FILE).tensors.size, 3);
});

Deno.test("malformed: __metadata__ with a non-string value or not an object", () => {
  expectError(fileFor({ __metadata__: { format: "pt", n: 3 } }, 0), /key "n" has a number value/);
  expectError(fileFor({ __metadata__: { x: null } }, 0), /key "x" has a null value/);
  expectError(fileFor({ __metadata__: ["pt"] }, 0), /must be an object of strings/);
  const ok = fileFor({ __metadata__: null }, 0);
  assert.deepEqual(parseSafetensorsHeader(ok, ok.byteLength, FILE).metadata, {});
});

Deno.test("parser needs the whole header in the given bytes", () => {
  const full = concat(
    serializeSafetensors([{ name: "w", dtype: "U8", shape: [1], data: new Uint8Array(1) }]),
  );
  assert.throws(
    () => parseSafetensorsHeader(full.subarray(0, 10), full.byteLength, FILE),
    /bad\.safetensors: caller passed 10 bytes but the header needs/,
  );
  // But the data area need not be present: fileSize bounds it.
  const n = Number(new DataView(full.buffer).getBigUint64(0, true));
  assert.equal(parseSafetensorsHeader(full.subarray(0, 8 + n), full.byteLength, FILE).tensors.size, 1);
});

// ---------------------------------------------------------------------------------------------
// files: reading, writing, atomicity

Deno.test("files: write then read back byte-identical tensors, all dtypes", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/model.safetensors`;
    const tensors = allDtypeTensors();
    await writeSafetensorsFile(path, tensors, { format: "pt" });
    const st = await readSafetensorsFile(path);
    assert.deepEqual(st.metadata, { format: "pt" });
    assert.equal(st.tensors.size, tensors.length);
    for (const t of tensors) {
      assert.deepEqual(st.raw(t.name), bytesOf(t.data), t.name);
      assert.deepEqual(st.tensors.get(t.name)!.shape, t.shape);
    }
    assert.deepEqual([...st.read("f64")], [1, -2, Math.fround(0.1)]);
    assert.deepEqual([...st.read("f16").subarray(0, 4)], [1, -2, 65504, 2 ** -24]);
    assert.equal(st.fileOf("f32"), path);
    assert.throws(() => st.read("nope"), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError);
      assert.match(e.message, /model\.safetensors: tensor "nope": no such tensor/);
      return true;
    });
    // Whole file equals the in-memory serialization.
    assert.deepEqual(await Deno.readFile(path), concat(serializeSafetensors(tensors, { format: "pt" })));
  });
});

Deno.test("files: malformed file on disk reports its path; truncated file is caught", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/short.safetensors`;
    await Deno.writeFile(path, new Uint8Array([1, 2, 3]));
    await assert.rejects(readSafetensorsFile(path), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError);
      assert.ok(e.message.includes(path));
      assert.match(e.message, /shorter than the 8-byte/);
      return true;
    });
    const good = concat(
      serializeSafetensors([{ name: "w", dtype: "F32", shape: [4], data: new Float32Array(4) }]),
    );
    const cut = `${dir}/cut.safetensors`;
    await Deno.writeFile(cut, good.subarray(0, good.byteLength - 1));
    await assert.rejects(readSafetensorsFile(cut), /cut\.safetensors: tensor "w": .*run past the end/);
  });
});

Deno.test("files: a file replaced after its header was read is detected", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/m.safetensors`;
    const w = (
      v: number,
    ) => [{ name: "w", dtype: "F32" as StDtype, shape: [2], data: new Float32Array([v, v]) }];
    await writeSafetensorsFile(path, w(1));
    const st = await readSafetensorsFile(path);
    assert.deepEqual([...st.read("w")], [1, 1]);
    await writeSafetensorsFile(path, w(2));
    assert.throws(() => st.read("w"), /changed on disk/);
    assert.deepEqual([...(await readSafetensorsFile(path)).read("w")], [2, 2]);
  });
});

Deno.test("atomic write: a throwing chunk source leaves the old file and no temp file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/out.bin`;
    await writeFileAtomic(path, [new TextEncoder().encode("old contents")]);
    function* failing(): Generator<Uint8Array> {
      yield new Uint8Array(1024).fill(7);
      throw new Error("boom midway");
    }
    await assert.rejects(writeFileAtomic(path, failing()), /boom midway/);
    async function* failingAsync(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(10);
      await Promise.resolve();
      throw new Error("async boom");
    }
    await assert.rejects(writeFileAtomic(path, failingAsync()), /async boom/);
    assert.equal(await Deno.readTextFile(path), "old contents");
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["out.bin"]);
    // And a successful write replaces it.
    await writeFileAtomic(path, [new TextEncoder().encode("new "), new TextEncoder().encode("contents")]);
    assert.equal(await Deno.readTextFile(path), "new contents");
  });
});

// ---------------------------------------------------------------------------------------------
// sharded checkpoints

async function writeSharded(dir: string): Promise<void> {
  await writeSafetensorsFile(`${dir}/model-00001-of-00002.safetensors`, [
    { name: "wte", dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    { name: "ln.b", dtype: "F16", shape: [2], data: f32ArrayToF16([0.5, -1]) },
  ]);
  await writeSafetensorsFile(`${dir}/model-00002-of-00002.safetensors`, [
    { name: "h.0.w", dtype: "BF16", shape: [3], data: f32ArrayToBf16([1, 2, -3]) },
  ]);
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({
      metadata: { total_size: 30 },
      weight_map: {
        "wte": "model-00001-of-00002.safetensors",
        "ln.b": "model-00001-of-00002.safetensors",
        "h.0.w": "model-00002-of-00002.safetensors",
      },
    }),
  );
}

Deno.test("sharded: index + two shards merge into one view", async () => {
  await withTempDir(async (dir) => {
    await writeSharded(dir);
    const st = await readShardedSafetensors(dir);
    assert.deepEqual([...st.tensors.keys()].sort(), ["h.0.w", "ln.b", "wte"]);
    assert.deepEqual([...st.read("wte")], [1, 2, 3, 4]);
    assert.deepEqual([...st.read("ln.b")], [0.5, -1]);
    assert.deepEqual([...st.read("h.0.w")], [1, 2, -3]);
    assert.equal(st.raw("h.0.w").byteLength, 6);
    assert.equal(st.fileOf("h.0.w"), `${dir}/model-00002-of-00002.safetensors`);
    assert.deepEqual(st.metadata, { total_size: "30" });
    assert.throws(() => st.read("missing"), /index\.json: tensor "missing": no such tensor/);
  });
});

Deno.test("sharded: missing shard, wrong shard, unlisted tensor, path escape", async () => {
  await withTempDir(async (dir) => {
    await writeSharded(dir);
    const index = `${dir}/model.safetensors.index.json`;
    const original = await Deno.readTextFile(index);

    await Deno.remove(`${dir}/model-00002-of-00002.safetensors`);
    await assert.rejects(readShardedSafetensors(dir), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError);
      assert.match(e.message, /shard "model-00002-of-00002\.safetensors" listed in the index is missing/);
      assert.ok(e.message.includes(index));
      return true;
    });
    await writeSharded(dir);

    const edit = async (fn: (m: Record<string, string>) => void) => {
      const j = JSON.parse(original);
      fn(j.weight_map);
      await Deno.writeTextFile(index, JSON.stringify(j));
    };
    await edit((m) => m["wte"] = "model-00002-of-00002.safetensors");
    await assert.rejects(
      readShardedSafetensors(dir),
      /tensor "wte": index says it is in shard .*which lacks it/,
    );
    await edit((m) => delete m["ln.b"]);
    await assert.rejects(readShardedSafetensors(dir), /tensor "ln\.b": tensor is not mapped to this shard/);
    await edit((m) => m["wte"] = "../model-00001-of-00002.safetensors");
    await assert.rejects(
      readShardedSafetensors(dir),
      /tensor "wte": .*must be a file name in the same directory/,
    );
    await Deno.writeTextFile(index, "{not json");
    await assert.rejects(readShardedSafetensors(dir), /index is not valid JSON/);
    await Deno.writeTextFile(index, "{}");
    await assert.rejects(readShardedSafetensors(dir), /no "weight_map" object/);
  });
});

Deno.test("sharded: falls back to model.safetensors; empty dir is a clear error", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(
      readShardedSafetensors(dir),
      /no model\.safetensors or model\.safetensors\.index\.json/,
    );
    await writeSafetensorsFile(`${dir}/model.safetensors`, [
      { name: "w", dtype: "F32", shape: [1], data: new Float32Array([9]) },
    ]);
    const st = await readShardedSafetensors(dir);
    assert.deepEqual([...st.read("w")], [9]);
  });
});

// ---------------------------------------------------------------------------------------------
// pickle refusal

Deno.test("pickle checkpoints are refused with a how-to-convert message", async () => {
  assert.match(PICKLE_REFUSAL_MESSAGE, /pickle/);
  assert.match(PICKLE_REFUSAL_MESSAGE, /arbitrary code/);
  assert.match(PICKLE_REFUSAL_MESSAGE, /safe_serialization=True/);
  await withTempDir(async (dir) => {
    const bin = `${dir}/pytorch_model.bin`;
    await Deno.writeFile(bin, new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0, 0]));
    const check = (e: unknown) => {
      assert.ok(e instanceof PickleCheckpointError);
      assert.match(e.message, /arbitrary code/);
      assert.ok(e.message.includes(`from_pretrained('${dir}')`), e.message);
      return true;
    };
    assert.throws(() => assertNotPickle(dir), check);
    assert.throws(() => assertNotPickle(bin), check);
    await assert.rejects(readShardedSafetensors(dir), check);
    // Sniffed by content even under a safetensors name.
    const disguised = `${dir}/model.safetensors`;
    await Deno.writeFile(disguised, new Uint8Array([0x80, 0x02, 0x7d, 0x71, 0, 0, 0, 0, 0]));
    await assert.rejects(readSafetensorsFile(disguised), PickleCheckpointError);
    // With real safetensors next to it, the directory is fine.
    await writeSafetensorsFile(disguised, [{ name: "w", dtype: "U8", shape: [1], data: new Uint8Array(1) }]);
    assertNotPickle(dir);
  });
});
