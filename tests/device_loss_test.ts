// The device-loss drill: ROME_DRILL_DEVICE_LOSS=N makes the engine destroy its GPU device right after its
// N-th submit and report it as lost (engine/engine.ts setDeviceLossDrill, set by cli.ts). A CLI command that
// loses its device mid-run must say so in one `error:` line on stderr, exit with code 1, print no stack
// trace and not hang. Each run prints what happened (exit code, the error line, seconds).
import { equal, fail, match, ok } from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import { GpuError } from "../engine/device.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
/** A drilled command must have ended by then (a hang is killed and fails the test). */
const TIMEOUT_MS = 60_000;

async function drilled(args: string[], env: Record<string, string>) {
  const t0 = performance.now();
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(TIMEOUT_MS),
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const err = new TextDecoder().decode(stderr);
  const lines = err.split(/[\r\n]+/).filter((l) => l.trim() !== "");
  return { code, out: new TextDecoder().decode(stdout), err, lines, seconds };
}

function checkLoss(what: string, r: Awaited<ReturnType<typeof drilled>>): void {
  const errors = r.lines.filter((l) => l.startsWith("error:"));
  console.log(
    `${what}: exit code ${r.code} after ${r.seconds.toFixed(1)} s; ${errors.length} error line(s): ${
      errors.join(" | ")
    }`,
  );
  ok(r.seconds * 1000 < TIMEOUT_MS, `${what} did not end within ${TIMEOUT_MS / 1000} s`);
  equal(r.code, 1, `${what}: exit code ${r.code}\n${r.err}`);
  equal(errors.length, 1, `${what}: expected one error line\n${r.err}`);
  match(
    errors[0],
    /^error: the GPU device was lost \(destroyed by the ROME_DRILL_DEVICE_LOSS drill after \d+ submits?\)/,
  );
  ok(!/^\s+at /m.test(r.err), `${what}: a stack trace on stderr\n${r.err}`);
  ok(!/panic|uncaught/i.test(r.err), `${what}: a panic or an uncaught error\n${r.err}`);
}

Deno.test("device loss drill: trace losing its device mid-run is one error line, exit code 1", async () => {
  const out = await Deno.makeTempDir({ prefix: "rome-loss-" });
  try {
    // submit 10 falls inside the hidden-state cells (after the base pass and the noise scale)
    const r = await drilled(["trace", "--out", out], { ROME_DRILL_DEVICE_LOSS: "10" });
    checkLoss("trace, loss after submit 10", r);
    equal(r.out, "", "nothing on stdout: the trace did not finish");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("device loss drill: edit losing its device mid-run is one error line, exit code 1", async () => {
  const cache = await Deno.makeTempDir({ prefix: "rome-loss-cache-" });
  try {
    // a fresh cache: the context templates are generated, and submit 20 falls among them
    const r = await drilled(["edit"], { ROME_DRILL_DEVICE_LOSS: "20", XDG_CACHE_HOME: cache });
    checkLoss("edit, loss after submit 20", r);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("device loss drill: a malformed ROME_DRILL_DEVICE_LOSS is a one-line usage error", async () => {
  const r = await drilled(["tokenize", "--text", "x"], { ROME_DRILL_DEVICE_LOSS: "soon" });
  equal(r.code, 2, r.err);
  equal(r.lines.length, 1, r.err);
  match(r.lines[0], /^error: ROME_DRILL_DEVICE_LOSS must be an integer ≥ 1/);
});

Deno.test("device loss: a readback pending when the device goes away settles, it does not hang", async () => {
  if (!Deno.env.get("XDG_RUNTIME_DIR")) {
    Deno.mkdirSync("/tmp/xdg-runtime-rome-webgpu", { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", "/tmp/xdg-runtime-rome-webgpu");
  }
  const e = await Engine.create();
  const t = e.upload(new Float32Array(1 << 16).fill(1), [1 << 16]);
  const pending = e.read(t); // the map is requested before read() returns
  e.destroy();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<"hung">((r) => timer = setTimeout(() => r("hung"), 10_000));
  try {
    const outcome = await Promise.race([pending.then(() => "read", (err) => err), hung]);
    if (outcome === "hung") fail("the readback was still pending 10 s after the device was destroyed");
    // the copy may have finished before the device went away; if not, the read fails with a GpuError
    if (outcome !== "read") ok(outcome instanceof GpuError, `rejected with ${outcome}`);
    console.log(`pending readback on a destroyed device: ${outcome === "read" ? "read" : String(outcome)}`);
  } finally {
    clearTimeout(timer);
  }
});
