// ROME's statistics C = E[kkᵀ] on tiny random GPT-2 models: the GPU sum against a float64 host sum, exact
// resumption from a checkpoint, the error for too few tokens, the corpus format, and the reference's .npz
// reader on zips written by hand.
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { NpzError, parseNpy, readNpz, readReferenceMom2 } from "../rome/npz.ts";
import {
  decodeSecondMoment,
  encodeSecondMoment,
  type SecondMomentCheckpoint,
  secondMomentStats,
  solveSecondMoment,
  splitCorpus,
  StatsError,
  StatsInterrupted,
} from "../rome/stats.ts";
import { disposeModel, memoryModel } from "./lib/fixtures.ts";
import { randomGpt2Weights, referenceForward } from "./lib/gpt2_reference.ts";
import { asSource, bitsEqual, CONFIG, randomDocs, statsOf } from "./lib/rome_setup.ts";
import { assertClose, concat, testEngine } from "./lib/util.ts";

const engine = await testEngine();

// ------------------------------------------------------------------ statistics C

Deno.test("stats: GPU Σ k kᵀ equals a float64 host sum over the same tokens (cut at n_positions)", async () => {
  const c: Gpt2Config = { ...CONFIG, nPositions: 24 };
  const W = randomGpt2Weights(c, 21);
  const m = memoryModel(engine, c, W);
  const layer = 1;
  const docs = randomDocs(9, 5, c.vocabSize, 40); // some longer than 24 tokens
  try {
    const s = await secondMomentStats(m, layer, asSource(docs), { groupSize: 4, maxBatchTokens: 48 });
    const got = await s.mom2.read();
    s.mom2.dispose();
    const f = c.nInner, want = new Float64Array(f * f);
    let tokens = 0;
    for (const d of docs) {
      const ids = d.slice(0, c.nPositions);
      tokens += ids.length;
      referenceForward(c, W, ids, {
        patch: (site, l, _t, k) => {
          if (site !== "mlpKey" || l !== layer) return;
          for (let i = 0; i < f; i++) for (let j = 0; j < f; j++) want[i * f + j] += k[i] * k[j];
        },
      });
    }
    equal(s.count, tokens);
    equal(s.documents, docs.length);
    const scale = want.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
    assertClose(got, want, { atol: 2e-5 * scale, rtol: 1e-4 }, "Σ k kᵀ");
  } finally {
    disposeModel(m);
  }
});

Deno.test("stats: a run stopped after a group and resumed from its checkpoint gives the same sums, bit for bit", async () => {
  const m = memoryModel(engine, CONFIG, randomGpt2Weights(CONFIG, 22));
  const docs = randomDocs(14, 6, CONFIG.vocabSize, 30);
  const opts = { groupSize: 3, maxBatchTokens: 64 };
  try {
    const full = await secondMomentStats(m, 2, asSource(docs), opts);
    const fullSum = await full.mom2.read();
    full.mom2.dispose();

    let saved: SecondMomentCheckpoint | undefined;
    const ac = new AbortController();
    await rejects(
      secondMomentStats(m, 2, asSource(docs), {
        ...opts,
        signal: ac.signal,
        onProgress: (d) => d >= 6 && ac.abort(),
        checkpoint: { due: () => false, save: (s) => Promise.resolve(void (saved = s)) },
      }),
      (e: Error) => e instanceof StatsInterrupted && e.cursor === 6,
    );
    ok(saved && saved.cursor === 6 && saved.count > 0);
    // the checkpoint survives its file format
    const bytes = concat(encodeSecondMoment(saved.mom2, saved.count, {
      model_hash: m.hash,
      layer: 2,
      corpus_hash: "test",
      samples: docs.length,
      cursor: saved.cursor,
      source: "memory",
    }));
    const back = decodeSecondMoment(bytes, "checkpoint");
    equal(back.info.cursor, 6);
    const resumed = await secondMomentStats(m, 2, asSource(docs), {
      ...opts,
      resume: { mom2: back.mom2, count: back.count, cursor: back.info.cursor! },
    });
    const resumedSum = await resumed.mom2.read() as Float32Array;
    resumed.mom2.dispose();
    equal(resumed.count, full.count);
    ok(bitsEqual(resumedSum, fullSum as Float32Array), "resumed Σ k kᵀ differs from the uninterrupted run");
  } finally {
    disposeModel(m);
  }
});

Deno.test("stats: fewer tokens than d_ff give a singular C and an error saying how many more are needed", async () => {
  const m = memoryModel(engine, CONFIG, randomGpt2Weights(CONFIG, 23));
  const docs = randomDocs(3, 7, CONFIG.vocabSize, 10);
  try {
    const { C, count } = await statsOf(m, 0, docs);
    ok(count < CONFIG.nInner);
    const k = engine.upload(new Float32Array(CONFIG.nInner).fill(1), [CONFIG.nInner]);
    await rejects(
      solveSecondMoment(C, k, count, { layer: 0 }),
      (e: Error) =>
        e instanceof StatsError && e.message.includes(`at least ${CONFIG.nInner - count} more tokens`),
    );
    // damping makes it solvable
    const x = await solveSecondMoment(C, k, count, { damping: 1e-2 });
    ok((await x.read()).every(Number.isFinite));
    for (const t of [C, k, x]) t.dispose();
  } finally {
    disposeModel(m);
  }
});

Deno.test("corpus: documents are separated by lines holding only <|endoftext|>", () => {
  deepEqual(splitCorpus("a b\nc\n<|endoftext|>\n\n<|endoftext|>\nd <|endoftext|> e\n<|endoftext|>\r\nf"), [
    "a b\nc",
    "d <|endoftext|> e",
    "f",
  ]);
});

// ------------------------------------------------------------------ .npz

function npy(descr: string, shape: number[], bytes: Uint8Array, fortran = false): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': ${fortran ? "True" : "False"}, 'shape': (${
    shape.join(", ")
  }${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(head.buffer).setUint16(8, header.length, true);
  head.set(new TextEncoder().encode(header), 10);
  return concat([head, bytes]);
}

function crc32(b: Uint8Array): number {
  let c = ~0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

async function deflateRaw(b: Uint8Array): Promise<Uint8Array> {
  const s = new Blob([b.slice()]).stream().pipeThrough(new CompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/** A zip written by hand: stored or deflated entries; `zip64Local` mimics numpy's force_zip64 local headers. */
async function zip(entries: { name: string; data: Uint8Array; deflate: boolean; zip64Local?: boolean }[]) {
  const parts: Uint8Array[] = [], central: Uint8Array[] = [];
  let off = 0;
  for (const e of entries) {
    const body = e.deflate ? await deflateRaw(e.data) : e.data;
    const name = new TextEncoder().encode(e.name);
    const extra = e.zip64Local ? new Uint8Array(20) : new Uint8Array(0);
    if (e.zip64Local) {
      const x = new DataView(extra.buffer);
      x.setUint16(0, 1, true);
      x.setUint16(2, 16, true);
      x.setBigUint64(4, BigInt(e.data.byteLength), true);
      x.setBigUint64(12, BigInt(body.byteLength), true);
    }
    const local = new Uint8Array(30 + name.length + extra.length), lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, e.zip64Local ? 45 : 20, true);
    lv.setUint16(8, e.deflate ? 8 : 0, true);
    lv.setUint32(14, crc32(e.data), true);
    lv.setUint32(18, e.zip64Local ? 0xffffffff : body.byteLength, true);
    lv.setUint32(22, e.zip64Local ? 0xffffffff : e.data.byteLength, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, extra.length, true);
    local.set(name, 30);
    local.set(extra, 30 + name.length);
    const cd = new Uint8Array(46 + name.length), cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(10, e.deflate ? 8 : 0, true);
    cv.setUint32(16, crc32(e.data), true);
    cv.setUint32(20, body.byteLength, true);
    cv.setUint32(24, e.data.byteLength, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, off, true);
    cd.set(name, 46);
    parts.push(local, body);
    central.push(cd);
    off += local.byteLength + body.byteLength;
  }
  const cdBytes = concat(central);
  const end = new Uint8Array(22), ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdBytes.byteLength, true);
  ev.setUint32(16, off, true);
  return concat([...parts, cdBytes, end]);
}

Deno.test("npz: the reference's mom2.mom2 / mom2.count from stored and deflated zips, <f4/<f8/<i8, Fortran order", async () => {
  const n = 5;
  const C = new Float32Array(n * n).map((_, i) => Math.sin(i) * 3);
  const asBytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  for (const deflate of [false, true]) {
    for (const f8 of [false, true]) {
      const mom2 = f8 ? npy("<f8", [n, n], asBytes(Float64Array.from(C))) : npy("<f4", [n, n], asBytes(C));
      const count = npy("<i8", [], asBytes(BigInt64Array.of(123456789n)));
      const ctor = npy("<f4", [1], asBytes(Float32Array.of(0))); // another key, ignored
      const file = await zip([
        { name: "mom2.constructor.npy", data: ctor, deflate },
        { name: "mom2.mom2.npy", data: mom2, deflate, zip64Local: true },
        { name: "mom2.count.npy", data: count, deflate },
      ]);
      const r = await readReferenceMom2(file, "stats.npz");
      equal(r.dff, n);
      equal(r.count, 123456789);
      deepEqual(Array.from(r.mom2), Array.from(f8 ? Float32Array.from(Float64Array.from(C)) : C));
    }
  }
  // Fortran order: the file holds the column-major bytes; the reader returns row-major values
  const colMajor = Float64Array.of(1, 4, 2, 5, 3, 6); // the 2×3 matrix [[1,2,3],[4,5,6]]
  const arr = parseNpy(npy("<f8", [2, 3], asBytes(colMajor), true), "f.npy");
  deepEqual(Array.from(arr.data), [1, 2, 3, 4, 5, 6]);
  const bad = await zip([{
    name: "mom2.mom2.npy",
    data: npy("<f4", [2, 3], asBytes(new Float32Array(6))),
    deflate: false,
  }]);
  await rejects(
    readNpz(bad, "x.npz", ["mom2.count"]),
    (e: Error) => e instanceof NpzError && /no array 'mom2.count'/.test(e.message),
  );
  await rejects(
    readNpz(new Uint8Array(40), "y.npz"),
    (e: Error) => e instanceof NpzError && /not a zip/.test(e.message),
  );
  throws(() => parseNpy(npy(">f4", [1], new Uint8Array(4)), "b.npy"), /not supported/);
});
