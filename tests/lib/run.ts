// `deno task test`: sets up what the tests need, then runs `deno test` on tests/ (or the paths given).
//
// 1. Setup. The GPU tests need a WebGPU adapter (on a machine without a GPU: Mesa's software Vulkan,
//    lavapipe; without it wgpu falls back to a GL adapter about 4× slower) and the browser test needs
//    Debian's Chromium. Missing ones are installed from Debian's packages when running as root with
//    apt-get (as on CI runners and fresh containers); otherwise this says exactly what to install. Nothing
//    is skipped silently: without Chromium the browser test fails with the install command, unless
//    ROME_SKIP_BROWSER_TEST=1 asks for it to be skipped, which the summary then says.
// 2. The tests run on the main thread. `deno test` runs each test module on a worker thread; when a
//    thread that used Deno's WebGPU is torn down, the process later dies at exit about one run in 7-15,
//    with a glibc heap message ("corrupted size vs. prev_size in fastbins", "double free or corruption")
//    or a segfault in an exit handler, after every test passed. Plain WebGPU calls reproduce it without
//    any code of ours, in `deno test` and in `deno run` with a Web Worker; on the main thread of `deno
//    run` it never happened (0 of 220 runs). `bench/webgpu_exit_repro.ts` reproduces it. So this file is the test runner:
//    it imports the *_test.ts modules in order into one process, collects their `Deno.test`
//    registrations and runs them, printing Deno's own summary line. `deno test FILE` still runs any one
//    file the usual way.
import { join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { hasVulkanDriver, quietMesa } from "../../engine/host.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";

function say(line: string): void {
  console.error(`[test] ${line}`);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Deno.CommandOutput> {
  return await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
}

/** Installs Debian packages as root; returns an error text, or undefined on success. */
async function aptInstall(packages: string[]): Promise<string | undefined> {
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  say(`installing ${packages.join(", ")} from Debian's packages (once; a minute or two)`);
  const update = await run("apt-get", ["update", "-qq"], env);
  if (!update.success) return new TextDecoder().decode(update.stderr).trim().split("\n").slice(-3).join(" ");
  const install = await run("apt-get", ["install", "-y", "-qq", ...packages], env);
  if (!install.success) {
    return new TextDecoder().decode(install.stderr).trim().split("\n").slice(-3).join(" ");
  }
  return undefined;
}

/** What the suite needs and is missing, installed where we may; returns notes for the summary. */
async function setUp(): Promise<string[]> {
  const notes: string[] = [];
  if (Deno.build.os !== "linux") return notes; // Metal / DX12 adapters need nothing from us
  const wanted: { pkg: string; why: string }[] = [];
  if (!hasVulkanDriver()) {
    wanted.push({ pkg: "mesa-vulkan-drivers", why: "Mesa's software Vulkan (lavapipe), ~4× faster than GL" });
  }
  const skipBrowser = Deno.env.get("ROME_SKIP_BROWSER_TEST") === "1";
  if (!skipBrowser && !exists(CHROMIUM)) wanted.push({ pkg: "chromium", why: "the browser test" });
  if (skipBrowser) notes.push("browser test skipped (ROME_SKIP_BROWSER_TEST=1)");
  if (wanted.length === 0) return notes;

  const root = Deno.uid() === 0;
  const apt = exists("/usr/bin/apt-get");
  const command = `apt-get install -y ${wanted.map((w) => w.pkg).join(" ")}`;
  if (root && apt) {
    const err = await aptInstall(wanted.map((w) => w.pkg));
    if (err === undefined) return notes;
    say(`could not install (${err}); install by hand: ${command}`);
  } else {
    for (const w of wanted) say(`missing ${w.pkg}: ${w.why}`);
    say(
      `install with: ${root ? "" : "sudo "}${
        apt ? command : `your system's ${wanted.map((w) => w.pkg).join(", ")}`
      }`,
    );
  }
  if (wanted.some((w) => w.pkg === "mesa-vulkan-drivers")) {
    notes.push("GPU tests ran without lavapipe (a GL or other adapter)");
  }
  return notes;
}

// ------------------------------------------------------------------ the runner

interface Registered {
  name: string;
  fn: (t: unknown) => void | Promise<void>;
  ignore: boolean;
  only: boolean;
}

type TestFn = (t: unknown) => void | Promise<void>;

/** Deno.test's overloads: (name, fn), (name, options, fn), (options), (options, fn), (fn). */
function registration(a: unknown, b?: unknown, c?: unknown): Registered {
  let def: Record<string, unknown>;
  if (typeof a === "string") {
    def = typeof b === "function" ? { name: a, fn: b } : { ...(b as object), name: a, fn: c };
  } else if (typeof a === "function") def = { name: a.name, fn: a };
  else def = typeof b === "function" ? { ...(a as object), fn: b } : { ...(a as object) };
  if (typeof def.fn !== "function" || !def.name) {
    throw new Error("Deno.test: a test needs a name and a function");
  }
  return {
    name: String(def.name),
    fn: def.fn as TestFn,
    ignore: Boolean(def.ignore),
    only: Boolean(def.only),
  };
}

/** The *_test.ts files under the given paths, in path order as `deno test` runs them. */
function testFiles(paths: string[]): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    const info = Deno.statSync(p);
    if (info.isDirectory) {
      for (const e of [...Deno.readDirSync(p)].sort((x, y) => (x.name < y.name ? -1 : 1))) {
        if (e.isDirectory || /[._]test\.[jt]sx?$/.test(e.name)) walk(join(p, e.name));
      }
    } else out.push(p);
  };
  for (const p of paths) walk(p);
  return out;
}

const enc = new TextEncoder();
const write = (s: string) => Deno.stdout.writeSync(enc.encode(s));

function ms(t: number): string {
  return t < 1000 ? `${Math.round(t)}ms` : `${(t / 1000).toFixed(0)}s`;
}

function errorText(e: unknown): string {
  return e instanceof Error ? (e.stack ?? `${e.name}: ${e.message}`) : String(e);
}

/** Runs the tests; Deno's own summary line ("ok | N passed | M failed") is the last line printed. */
async function runTests(paths: string[], filter: string | undefined): Promise<number> {
  const t0 = performance.now();
  const failures: { name: string; file: string; error: string }[] = [];
  let passed = 0, ignored = 0, filtered = 0;
  // An error nobody awaited fails the test that is running (deno test fails the module for it).
  let stray: unknown[] = [];
  globalThis.addEventListener("unhandledrejection", (ev) => {
    ev.preventDefault();
    stray.push(ev.reason);
  });
  globalThis.addEventListener("error", (ev) => {
    ev.preventDefault();
    stray.push(ev.error);
  });
  const realTest = Deno.test;
  for (const file of testFiles(paths)) {
    const tests: Registered[] = [];
    // deno-lint-ignore no-explicit-any
    (Deno as any).test = (a: unknown, b?: unknown, c?: unknown) => void tests.push(registration(a, b, c));
    const rel = "./" + relative(ROOT, resolve(ROOT, file));
    try {
      await import(pathToFileURL(resolve(ROOT, file)).href);
    } catch (e) {
      failures.push({ name: `(loading ${rel})`, file: rel, error: errorText(e) });
      write(`${rel} => failed to load\n`);
      continue;
    } finally {
      // deno-lint-ignore no-explicit-any
      (Deno as any).test = realTest;
    }
    const selected = tests.filter((t) => filter === undefined || t.name.includes(filter));
    filtered += tests.length - selected.length;
    if (selected.length === 0) continue;
    write(`running ${selected.length} test${selected.length === 1 ? "" : "s"} from ${rel}\n`);
    for (const t of selected) {
      if (t.ignore) {
        ignored++;
        write(`${t.name} ... ignored (0ms)\n`);
        continue;
      }
      write(`${t.name} ...`);
      const start = performance.now();
      stray = [];
      let error: unknown;
      try {
        await t.fn({ name: t.name, origin: pathToFileURL(resolve(ROOT, file)).href });
        // let rejections raised during the test surface before it is called passed
        await new Promise((r) => setTimeout(r, 0));
      } catch (e) {
        error = e;
      }
      if (error === undefined && stray.length > 0) error = stray[0];
      const took = ms(performance.now() - start);
      if (error === undefined) {
        passed++;
        write(` ok (${took})\n`);
      } else {
        failures.push({ name: t.name, file: rel, error: errorText(error) });
        write(` FAILED (${took})\n`);
      }
    }
  }
  if (failures.length > 0) {
    write("\n ERRORS \n\n");
    for (const f of failures) write(`${f.name} => ${f.file}\nerror: ${f.error}\n\n`);
    write(" FAILURES \n\n");
    for (const f of failures) write(`${f.name} => ${f.file}\n`);
    write("\n");
  }
  const extra = (ignored ? ` | ${ignored} ignored` : "") + (filtered ? ` | ${filtered} filtered out` : "");
  write(
    `${failures.length === 0 ? "ok" : "FAILED"} | ${passed} passed | ${failures.length} failed${extra} ` +
      `(${ms(performance.now() - t0)})\n`,
  );
  return failures.length === 0 ? 0 : 1;
}

const USAGE = `deno task test [--filter TEXT] [PATH...]
  Installs what the tests need when it is missing (see tests/lib/run.ts), then runs the *_test.ts files
  under PATH (default tests/) in one process on the main thread. One file the usual way: deno test FILE.`;

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { filter: { type: "string" }, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(USAGE);
    return 0;
  }
  const paths = parsed.positionals.length > 0 ? parsed.positionals : [join(ROOT, "tests")];
  for (const p of paths) {
    if (!exists(p)) {
      console.error(`error: no such test path: ${p}`);
      return 2;
    }
  }
  const notes = await setUp();
  quietMesa();
  // Type-check first, as `deno test` does (a dynamic import is not checked by `deno run --check`).
  const check = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", ...testFiles(paths)],
    cwd: ROOT,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!check.success) {
    write("FAILED | 0 passed | 1 failed (type check)\n");
    return 1;
  }
  const code = await runTests(paths, parsed.values.filter);
  for (const n of notes) say(n);
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
