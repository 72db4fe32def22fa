import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { bucketSize } from "../engine/pool.ts";
import { randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

Deno.test("upload and readback round-trip every dtype", async () => {
  const f = randn(1001, 1);
  const u = Uint32Array.from({ length: 77 }, (_, i) => i * 7919);
  const i32 = Int32Array.from({ length: 5 }, (_, i) => -i * 1000);
  const h = new Float16Array([1, -2, 0.5, 65504, 3]);
  const ts = [
    engine.upload(f, [7, 143]),
    engine.upload(u, [77]),
    engine.upload(i32, [5]),
    engine.upload(new Uint16Array(h.buffer), [5], "f16"),
  ];
  const [rf, ru, ri, rh] = await engine.readMany(ts);
  assertEquals(Array.from(rf), Array.from(f));
  assertEquals(Array.from(ru), Array.from(u));
  assertEquals(Array.from(ri), Array.from(i32));
  assertEquals(Array.from(rh), [1, -2, 0.5, 65504, 3]);
  ts.forEach((t) => t.dispose());
});

Deno.test("zeros clears a recycled buffer in stream order", async () => {
  const a = engine.upload(randn(300, 2), [300]);
  a.dispose();
  const z = engine.zeros([300]);
  assertEquals(Array.from(await z.read()).every((v) => v === 0), true);
  z.dispose();
});

Deno.test("scope disposes temporaries and keeps returned tensors", () => {
  let inner!: ReturnType<typeof engine.empty>;
  const kept = engine.scope(() => {
    inner = engine.empty([4]);
    return engine.empty([8]);
  });
  assertEquals(inner.disposed, true);
  assertEquals(kept.disposed, false);
  assertThrows(() => inner.buffer, /disposed/);
  kept.dispose();
});

Deno.test("steady state: repeated allocations are pool hits, no new GPU buffers", () => {
  const step = () => engine.scope(() => [engine.empty([1000]), engine.empty([64, 64]), engine.empty([3])]);
  step().forEach((t) => t.dispose());
  const before = engine.stats.buffersCreated;
  const hits = engine.stats.poolHits;
  for (let i = 0; i < 10; i++) step().forEach((t) => t.dispose());
  assertEquals(engine.stats.buffersCreated, before);
  assertEquals(engine.stats.poolHits - hits, 30);
});

Deno.test("pool buckets: at most 25% slack, powers of two exact", () => {
  for (const n of [1, 255, 256, 257, 1000, 4096, 5000, 123457, 154389504]) {
    const b = bucketSize(n);
    assertEquals(b >= n, true);
    if (n > 256) assertEquals(b / n <= 1.25 + 1e-9, true, `bucket ${b} for ${n}`);
  }
  assertEquals(bucketSize(4096), 4096);
});

Deno.test("a GPU validation error surfaces as an exception, not console noise", async () => {
  const e = await Engine.create();
  const t = e.empty([16]);
  // a copy past the end of the buffer is a validation error raised asynchronously by the device
  e.copy(t.buffer, 0, t.buffer, t.buffer.size - 4, 64);
  let caught: unknown;
  try {
    await e.sync();
    await e.sync();
  } catch (err) {
    caught = err;
  }
  assertEquals(
    caught instanceof Error && /WebGPU|validation|copy/i.test(caught.message),
    true,
    String(caught),
  );
});
