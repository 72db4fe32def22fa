// downloadModel against a local fake hub (Deno.serve on 127.0.0.1): HEAD, GET, Range, and faults.
import assert from "node:assert/strict";
import {
  defaultModelDir,
  downloadModel,
  type DownloadProgress,
  HubError,
  KNOWN_MODELS,
  resolveRepoId,
} from "../engine/hub.ts";
import { PickleCheckpointError, readShardedSafetensors } from "../engine/files.ts";
import { serializeSafetensors, type StTensorInput } from "../engine/safetensors.ts";
import { concat } from "./lib/util.ts";

// ---------------------------------------------------------------------------------------------
// fixture

const REPO = "test-org/tiny-gpt2";
const utf8 = new TextEncoder();

function tensor(name: string, shape: number[], seed: number): StTensorInput {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(seed * 1000 + i);
  return { name, dtype: "F32", shape, data };
}

const TENSORS = [
  tensor("wte.weight", [64, 256], 1), // 64 KiB: several network chunks
  tensor("wpe.weight", [32, 256], 2),
  tensor("h.0.ln_1.weight", [256], 3),
  tensor("h.0.ln_1.bias", [256], 4),
];

/** The files of a small, valid model repo. */
function repoFiles(): Map<string, Uint8Array> {
  return new Map([
    ["config.json", utf8.encode(JSON.stringify({ model_type: "gpt2", n_layer: 1, n_embd: 256 }))],
    ["vocab.json", utf8.encode(JSON.stringify({ "a": 0, "b": 1, "ab": 2 }))],
    ["merges.txt", utf8.encode("#version: 0.2\na b\n")],
    ["tokenizer.json", utf8.encode(JSON.stringify({ version: "1.0", model: { type: "BPE" } }))],
    ["model.safetensors", concat(serializeSafetensors(TENSORS, { format: "pt" }))],
  ]);
}

/** The same repo with sharded weights and no model.safetensors. */
function shardedRepoFiles(): Map<string, Uint8Array> {
  const files = repoFiles();
  files.delete("model.safetensors");
  const shards = [
    ["model-00001-of-00002.safetensors", TENSORS.slice(0, 2)],
    ["model-00002-of-00002.safetensors", TENSORS.slice(2)],
  ] as const;
  const weightMap: Record<string, string> = {};
  for (const [file, ts] of shards) {
    files.set(file, concat(serializeSafetensors([...ts])));
    for (const t of ts) weightMap[t.name] = file;
  }
  files.set(
    "model.safetensors.index.json",
    utf8.encode(JSON.stringify({ metadata: { total_size: 1 }, weight_map: weightMap })),
  );
  return files;
}

interface Seen {
  method: string;
  file: string;
  range: string | null;
  auth: string | null;
}

interface FakeHub {
  endpoint: string;
  files: Map<string, Uint8Array>;
  seen: Seen[];
  /** Cut the next `times` GETs of `file` after `after` body bytes (declared length stays full). */
  cut?: { file: string; after: number; times: number };
  ignoreRange: boolean;
  /** Answer every request with this status (e.g. 401 for a gated repo). */
  status?: number;
  shutdown(): Promise<void>;
}

function startHub(files: Map<string, Uint8Array>): FakeHub {
  const hub: FakeHub = {
    endpoint: "",
    files,
    seen: [],
    ignoreRange: false,
    shutdown: () => server.shutdown(),
  };
  const prefix = `/${REPO}/resolve/main/`;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const file = path.startsWith(prefix) ? path.slice(prefix.length) : "";
    const range = req.headers.get("range");
    hub.seen.push({ method: req.method, file, range, auth: req.headers.get("authorization") });
    if (hub.status !== undefined) {
      return new Response("denied", { status: hub.status, headers: { "x-error-code": "GatedRepo" } });
    }
    const data = hub.files.get(file);
    if (data === undefined) return new Response("Entry not found", { status: 404 });
    if (req.method === "HEAD") {
      return new Response(null, { headers: { "content-length": String(data.byteLength) } });
    }
    let start = 0;
    let status = 200;
    const headers: Record<string, string> = { "accept-ranges": "bytes" };
    const m = range?.match(/^bytes=(\d+)-$/);
    if (m && !hub.ignoreRange) {
      start = Number(m[1]);
      if (start >= data.byteLength) {
        return new Response(null, {
          status: 416,
          headers: { "content-range": `bytes */${data.byteLength}` },
        });
      }
      status = 206;
      headers["content-range"] = `bytes ${start}-${data.byteLength - 1}/${data.byteLength}`;
    }
    const body = data.slice(start);
    headers["content-length"] = String(body.byteLength);
    if (hub.cut?.file === file && hub.cut.times > 0) {
      hub.cut.times--;
      const after = hub.cut.after;
      // Sends `after` bytes, then ends early: the server drops the connection mid-body.
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(body.slice(0, after));
          setTimeout(() => c.close(), 20);
        },
      });
      return new Response(stream, { status, headers });
    }
    return new Response(body, { status, headers });
  });
  hub.endpoint = `http://127.0.0.1:${server.addr.port}`;
  return hub;
}

async function withHub(
  files: Map<string, Uint8Array>,
  fn: (hub: FakeHub, dir: string) => Promise<void>,
): Promise<void> {
  const hub = startHub(files);
  const dir = await Deno.makeTempDir({ prefix: "hub_test_" });
  try {
    await fn(hub, dir);
  } finally {
    await hub.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

async function assertSameFiles(dir: string, files: Map<string, Uint8Array>): Promise<void> {
  assert.deepStrictEqual(await listDir(dir), [...files.keys()].sort());
  for (const [name, data] of files) {
    assert.deepStrictEqual(await Deno.readFile(`${dir}/${name}`), data, name);
  }
}

function gets(hub: FakeHub, file: string): Seen[] {
  return hub.seen.filter((s) => s.method === "GET" && s.file === file);
}

// ---------------------------------------------------------------------------------------------
// tests

Deno.test("hub: names resolve to namespaced repo ids and default dirs", () => {
  assert.equal(resolveRepoId("gpt2"), "openai-community/gpt2");
  assert.equal(resolveRepoId("gpt2-xl"), "openai-community/gpt2-xl");
  assert.deepStrictEqual(Object.keys(KNOWN_MODELS), ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]);
  assert.equal(resolveRepoId("someone/model-1.5"), "someone/model-1.5");
  for (const bad of ["bert", "a/b/c", "../x", "a/..", "/x", "a/"]) {
    assert.throws(() => resolveRepoId(bad), (e: unknown) => e instanceof HubError && e.kind === "name", bad);
  }
  assert.equal(defaultModelDir("gpt2"), "models/gpt2");
  assert.equal(defaultModelDir("someone/model"), "models/someone--model");
});

Deno.test("hub: full download reproduces the bytes, reports progress, sends the token", async () => {
  const files = repoFiles();
  await withHub(files, async (hub, dir) => {
    const progress: DownloadProgress[] = [];
    const result = await downloadModel(REPO, {
      dir,
      endpoint: hub.endpoint + "/",
      token: "hf_secret",
      onProgress: (p) => progress.push(p),
    });
    assert.equal(result.dir, dir);
    assert.deepStrictEqual(result.files, [
      "config.json",
      "vocab.json",
      "merges.txt",
      "tokenizer.json",
      "model.safetensors",
    ]);
    await assertSameFiles(dir, files);
    assert.ok(hub.seen.every((s) => s.auth === "Bearer hf_secret"));
    assert.ok(hub.seen.every((s) => s.range === null), "nothing to resume: no Range header");
    const last = progress.filter((p) => p.file === "model.safetensors").at(-1)!;
    const size = files.get("model.safetensors")!.byteLength;
    assert.deepStrictEqual({ done: last.done, total: last.total }, { done: size, total: size });
    assert.ok(progress.every((p) => p.bytesPerSec >= 0 && Number.isFinite(p.bytesPerSec)));
    assert.ok(progress.length < 50, `progress is throttled (${progress.length} calls)`);
  });
});

Deno.test("hub: files already present with the right size are skipped (HEAD only)", async () => {
  const files = repoFiles();
  await withHub(files, async (hub, dir) => {
    await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    hub.seen.length = 0;
    const result = await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    assert.equal(result.files.length, 5);
    assert.deepStrictEqual(hub.seen.filter((s) => s.method !== "HEAD"), []);
    await assertSameFiles(dir, files);

    // A local file with the wrong size is downloaded again (and replaced whole).
    await Deno.writeTextFile(`${dir}/config.json`, "{}");
    hub.seen.length = 0;
    await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    assert.deepStrictEqual(hub.seen.filter((s) => s.method === "GET").map((s) => s.file), ["config.json"]);
    await assertSameFiles(dir, files);
  });
});

Deno.test("hub: an interrupted download resumes with a Range request and ends byte-identical", async () => {
  const files = repoFiles();
  const cutAt = 20_000;
  await withHub(files, async (hub, dir) => {
    hub.cut = { file: "model.safetensors", after: cutAt, times: 1 };
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) =>
        e instanceof HubError && e.kind === "interrupted" && /model\.safetensors/.test(e.message) &&
        /resume/.test(e.message),
    );
    assert.ok(!(await listDir(dir)).includes("model.safetensors"), "no half-written final file");
    assert.equal((await Deno.stat(`${dir}/model.safetensors.part`)).size, cutAt);

    await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    const ranged = gets(hub, "model.safetensors").map((s) => s.range);
    assert.deepStrictEqual(ranged, [null, `bytes=${cutAt}-`]);
    await assertSameFiles(dir, files); // and the .part is gone
  });
});

Deno.test("hub: a server that ignores Range still ends with the right bytes", async () => {
  const files = repoFiles();
  await withHub(files, async (hub, dir) => {
    hub.cut = { file: "model.safetensors", after: 30_000, times: 1 };
    await assert.rejects(downloadModel(REPO, { dir, endpoint: hub.endpoint }), HubError);
    hub.ignoreRange = true;
    await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    assert.deepStrictEqual(gets(hub, "model.safetensors").map((s) => s.range), [null, "bytes=30000-"]);
    await assertSameFiles(dir, files);
  });
});

Deno.test("hub: a complete .part (server answers 416) is verified and renamed", async () => {
  const files = repoFiles();
  await withHub(files, async (hub, dir) => {
    await Deno.writeFile(`${dir}/model.safetensors.part`, files.get("model.safetensors")!);
    await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    const size = files.get("model.safetensors")!.byteLength;
    assert.deepStrictEqual(gets(hub, "model.safetensors").map((s) => s.range), [`bytes=${size}-`]);
    await assertSameFiles(dir, files);
  });
});

Deno.test("hub: sharded checkpoint via model.safetensors.index.json", async () => {
  const files = shardedRepoFiles();
  await withHub(files, async (hub, dir) => {
    const result = await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    assert.deepStrictEqual(result.files, [
      "config.json",
      "vocab.json",
      "merges.txt",
      "tokenizer.json",
      "model.safetensors.index.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
    ]);
    assert.equal(gets(hub, "model.safetensors").length, 1); // tried first, 404
    await assertSameFiles(dir, files);
    const source = await readShardedSafetensors(dir);
    assert.deepStrictEqual([...source.tensors.keys()].sort(), TENSORS.map((t) => t.name).sort());
    assert.deepStrictEqual(source.read("h.0.ln_1.bias"), TENSORS[3].data);
  });
});

Deno.test("hub: index shard names must be plain file names", async () => {
  const files = shardedRepoFiles();
  files.set(
    "model.safetensors.index.json",
    utf8.encode(JSON.stringify({ weight_map: { "wte.weight": "../../evil.safetensors" } })),
  );
  await withHub(files, async (hub, dir) => {
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) => e instanceof HubError && /evil\.safetensors.*plain/.test(e.message),
    );
    assert.ok(hub.seen.every((s) => !s.file.includes("evil")));
  });
});

Deno.test("hub: a repo with only pytorch_model.bin is refused, and the pickle never fetched", async () => {
  const files = repoFiles();
  files.delete("model.safetensors");
  files.set("pytorch_model.bin", new Uint8Array([0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e]));
  await withHub(files, async (hub, dir) => {
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) =>
        e instanceof PickleCheckpointError && /pytorch_model\.bin/.test(e.message) &&
        /arbitrary code/.test(e.message) && /safetensors/.test(e.message),
    );
    assert.deepStrictEqual(gets(hub, "pytorch_model.bin"), []);
    assert.ok(!(await listDir(dir)).some((f) => f.startsWith("pytorch_model")));
  });
});

Deno.test("hub: a truncated safetensors body with a matching length fails header validation", async () => {
  const files = repoFiles();
  const full = files.get("model.safetensors")!;
  files.set("model.safetensors", full.slice(0, full.byteLength - 4096)); // the server lies
  await withHub(files, async (hub, dir) => {
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) =>
        e instanceof HubError && e.kind === "invalid" && /model\.safetensors/.test(e.message) &&
        /corrupt or truncated/.test(e.message),
    );
    const left = await listDir(dir);
    assert.ok(!left.includes("model.safetensors") && !left.includes("model.safetensors.part"), `${left}`);
  });
});

Deno.test("hub: 404 on config.json names the file and the repo", async () => {
  const files = repoFiles();
  files.delete("config.json");
  await withHub(files, async (hub, dir) => {
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) =>
        e instanceof HubError && e.kind === "not-found" && e.status === 404 &&
        e.message.includes("config.json") && e.message.includes(REPO),
    );
    assert.deepStrictEqual(await listDir(dir), []);
  });
});

Deno.test("hub: tokenizer.json is optional", async () => {
  const files = repoFiles();
  files.delete("tokenizer.json");
  await withHub(files, async (hub, dir) => {
    const result = await downloadModel(REPO, { dir, endpoint: hub.endpoint });
    assert.ok(!result.files.includes("tokenizer.json"));
    await assertSameFiles(dir, files);
  });
});

Deno.test("hub: 401 says the repo may be gated and suggests HF_TOKEN", async () => {
  await withHub(repoFiles(), async (hub, dir) => {
    hub.status = 401;
    await assert.rejects(
      downloadModel(REPO, { dir, endpoint: hub.endpoint }),
      (e: unknown) =>
        e instanceof HubError && e.kind === "auth" && e.status === 401 && /gated/.test(e.message) &&
        /HF_TOKEN/.test(e.message),
    );
  });
});

Deno.test("hub: an unreachable endpoint gives the offline message", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const dir = await Deno.makeTempDir({ prefix: "hub_test_" });
  try {
    for (const endpoint of ["http://127.0.0.1:1", `http://127.0.0.1:${closedPort}`]) {
      await assert.rejects(
        downloadModel("gpt2", { dir, endpoint }),
        (e: unknown) =>
          e instanceof HubError && e.kind === "offline" && /offline/.test(e.message) &&
          /copy a Hugging Face model folder/.test(e.message) && /config\.json/.test(e.message) &&
          /model\.safetensors/.test(e.message),
        endpoint,
      );
    }
    assert.deepStrictEqual(await listDir(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hub: an aborted signal stops the download", async () => {
  await withHub(repoFiles(), async (hub, dir) => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(downloadModel(REPO, { dir, endpoint: hub.endpoint, signal: ac.signal }));
    assert.deepStrictEqual(hub.seen, []);
  });
});
