import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { rowChunks } from "../engine/chunks.ts";
import { launchAddPositions, launchGatherRows, scatterAddRows } from "../engine/launch/gather.ts";
import { assertClose, AWKWARD, randInt, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

function refGather(table: Float32Array, C: number, V: number, ids: ArrayLike<number>): Float32Array {
  const out = new Float32Array(ids.length * C);
  for (let k = 0; k < ids.length; k++) {
    if (ids[k] < V) out.set(table.subarray(ids[k] * C, (ids[k] + 1) * C), k * C);
  }
  return out;
}

function refScatter(dy: Float32Array, C: number, V: number, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(V * C);
  for (let k = 0; k < ids.length; k++) {
    if (ids[k] >= V) continue;
    for (let c = 0; c < C; c++) out[ids[k] * C + c] += dy[k * C + c];
  }
  return out;
}

Deno.test("gatherRows: awkward tables, repeated ids, ids >= V give zero rows", async () => {
  for (const V of [1, 17, 257]) {
    for (const C of AWKWARD) {
      const table = randn(V * C, V + C);
      const ids = Uint32Array.from([...randInt(37, V, C), V, V + 1000, 0xffffffff, V - 1, 0]);
      await engine.scopeAsync(async () => {
        const out = launchGatherRows(engine.upload(table, [V, C]), engine.upload(ids, [ids.length], "u32"));
        assertEquals(out.shape, [ids.length, C]);
        // a copy, so exact
        assertEquals(Array.from(await out.read()), Array.from(refGather(table, C, V, ids)), `V${V} C${C}`);
      });
    }
  }
});

Deno.test("gatherRows with a 64 KiB binding limit: table and output in row chunks, ids at chunk edges", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const V = 1000, C = 65; // 260 KB table: 5 chunks, each starting off the 256-byte alignment
    const chunks = rowChunks(small, V, [C * 4], "test");
    if (chunks.length < 4) throw new Error(`expected several chunks, got ${chunks.length}`);
    const edges = chunks.flatMap(([a, b]) => [a, a + 1, b - 1, b, b + 1]);
    const ids = Uint32Array.from([...edges, ...randInt(400, V + 3, 9)]); // some ids >= V, 425+ rows out
    const table = randn(V * C, 1);
    const out = await small.scopeAsync(() =>
      launchGatherRows(small.upload(table, [V, C]), small.upload(ids, [ids.length], "u32")).read()
    );
    assertEquals(Array.from(out), Array.from(refGather(table, C, V, ids)));
    // one table row wider than the binding is refused with a clear error
    small.scope(() => {
      const wide = small.zeros([2, 20000]);
      assertThrows(() => launchGatherRows(wide, small.upload(Uint32Array.of(0), [1], "u32")), /does not fit/);
    });
  } finally {
    small.destroy();
  }
});

Deno.test("gatherRows on a table over this device's real binding limit (GPT-2 wte sized)", async () => {
  const C = 768, V = Math.max(50257, Math.ceil(engine.limits.maxBindingBytes / (C * 4)) + 100);
  // row r, column c holds r + (c % 8) / 8: exact in f32 and different for every row
  const table = new Float32Array(V * C);
  for (let r = 0; r < V; r++) for (let c = 0; c < C; c++) table[r * C + c] = r + (c % 8) / 8;
  const ids = Uint32Array.of(0, V - 1, 31337, Math.floor(V / 2), 40000, V, 7);
  const got = await engine.scopeAsync(() =>
    launchGatherRows(engine.upload(table, [V, C]), engine.upload(ids, [ids.length], "u32")).read()
  );
  assertEquals(Array.from(got), Array.from(refGather(table, C, V, ids)));
});

Deno.test("addPositions vs float64; T <= P checked", async () => {
  for (const [B, T, P, C] of [[1, 1, 1, 1], [3, 17, 20, 63], [2, 65, 65, 17]]) {
    const X = randn(B * T * C, T), W = randn(P * C, P + 1);
    await engine.scopeAsync(async () => {
      const out = launchAddPositions(engine.upload(X, [B, T, C]), engine.upload(W, [P, C]));
      const ref = Float64Array.from(X, (v, i) => v + W[(Math.floor(i / C) % T) * C + (i % C)]);
      assertClose(await out.read(), ref, { atol: 1e-6, rtol: 1e-6 }, `addPositions B${B} T${T} C${C}`);
    });
  }
  engine.scope(() => {
    assertThrows(
      () => launchAddPositions(engine.zeros([1, 5, 3]), engine.zeros([4, 3])),
      /5 positions but wpe has 4/,
    );
    assertThrows(() => launchAddPositions(engine.zeros([1, 2, 3]), engine.zeros([4, 2])), /width/);
  });
});

Deno.test("addPositions with a 64 KiB binding limit: x in row chunks, and wpe[0:T] itself chunked", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    for (const [B, T, P, C] of [[40, 7, 9, 65], [3, 290, 300, 65]]) {
      const X = randn(B * T * C, 3), W = randn(P * C, 4);
      const got = await small.scopeAsync(() =>
        launchAddPositions(small.upload(X, [B, T, C]), small.upload(W, [P, C])).read()
      );
      const ref = Float64Array.from(X, (v, i) => v + W[(Math.floor(i / C) % T) * C + (i % C)]);
      assertClose(got, ref, { atol: 1e-6, rtol: 1e-6 }, `chunked addPositions B${B} T${T}`);
    }
  } finally {
    small.destroy();
  }
});

Deno.test("scatterAddRows (gather gradient) vs float64: repeated ids summed, ids >= V dropped, deterministic", async () => {
  for (const [N, V, C] of [[1, 1, 1], [63, 17, 3], [257, 65, 17], [127, 300, 63]]) {
    const dy = randn(N * C, N + C);
    const ids = randInt(N, V + 2, V); // a few ids >= V
    await engine.scopeAsync(async () => {
      const dyT = engine.upload(dy, [N, C]), idsT = engine.upload(ids, [N], "u32");
      const a = scatterAddRows(dyT, idsT, V), b = scatterAddRows(dyT, idsT, V);
      assertEquals(a.shape, [V, C]);
      const [ga, gb] = await engine.readMany([a, b]);
      assertClose(ga, refScatter(dy, C, V, ids), { atol: 1e-5, rtol: 1e-5 }, `scatter N${N} V${V} C${C}`);
      assertEquals(Array.from(ga), Array.from(gb));
    });
  }
});

Deno.test("scatterAddRows with a 64 KiB binding limit: output rows in chunks", async () => {
  const small = await Engine.create({ maxBindingBytes: 64 * 1024 });
  try {
    const N = 200, V = 600, C = 65;
    const chunks = rowChunks(small, V, [C * 4], "test");
    const edges = chunks.flatMap(([a, b]) => [a, b - 1, b - 1]);
    const ids = Uint32Array.from([...edges, ...randInt(N - edges.length, V, 5)]);
    const dy = randn(N * C, 6);
    const got = await small.scopeAsync(() =>
      scatterAddRows(small.upload(dy, [N, C]), small.upload(ids, [N], "u32"), V).read()
    );
    assertClose(got, refScatter(dy, C, V, ids), { atol: 1e-5, rtol: 1e-5 }, "chunked scatter");
  } finally {
    small.destroy();
  }
});
