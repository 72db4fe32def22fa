// rome-webgpu command line: argument parsing, files and terminal output. Everything below this file
// (engine/, kernels/, and later tracing/, rome/, eval/) is runtime-neutral and also runs in a browser.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { getEngine } from "./engine/engine.ts";
import { add, scale } from "./engine/ops/elementwise.ts";

/** A mistake in how the command was called: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

function parse(args: string[], options: Options, usage: string): Record<string, unknown> {
  try {
    const { values } = parseArgs({ args, options: { ...options, help: { type: "boolean", short: "h" } }, strict: true });
    if (values.help) {
      console.log(usage);
      Deno.exit(0);
    }
    return values as Record<string, unknown>;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${(e as Error).message}\n\n${usage}`);
  }
}

// ------------------------------------------------------------------ info

const INFO_USAGE = `deno task info [--json]
  Prints the WebGPU adapter, its limits and features as this engine sees them.`;

async function cmdInfo(args: string[]): Promise<void> {
  const opts = parse(args, { json: { type: "boolean" } }, INFO_USAGE);
  const engine = await getEngine();
  const info = engine.gpu.info;
  if (opts.json) {
    console.log(JSON.stringify(info, null, 2));
    return;
  }
  console.log(`adapter     ${info.description} (vendor ${info.vendor}${info.architecture ? ", " + info.architecture : ""})`);
  console.log(`software    ${info.isFallbackAdapter ? "yes (fallback / CPU adapter)" : "no"}`);
  console.log(`features    ${info.features.join(", ")}`);
  const l = engine.limits;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(`binding     ${mib(l.maxBindingBytes)} per storage binding, buffers up to ${mib(l.maxBufferSize)}`);
  console.log(`workgroups  ${l.maxInvocations} invocations, ${l.workgroupStorage} B shared, ${l.maxWorkgroupsPerDim}/dim`);
  console.log(`alignment   storage ${l.storageOffsetAlignment} B, uniform ${l.uniformOffsetAlignment} B`);
}

// ------------------------------------------------------------------ smoke (stand-in for trace until it lands)

async function smokeTest(): Promise<void> {
  const engine = await getEngine();
  const n = 1 << 16;
  const a = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  const b = Float32Array.from({ length: n }, (_, i) => Math.cos(i));
  const t0 = performance.now();
  const got = await engine.scopeAsync(async () => {
    const x = engine.upload(a, [n]), y = engine.upload(b, [n]);
    return await engine.read(scale(add(x, y), 2));
  });
  let maxErr = 0;
  for (let i = 0; i < n; i++) maxErr = Math.max(maxErr, Math.abs(got[i] - 2 * (a[i] + b[i])));
  const ok = maxErr < 1e-5;
  console.log(`smoke test  ${ok ? "ok" : "FAILED"}: 2·(a+b) over ${n} values, max error ${maxErr.toExponential(2)}, ` +
    `${(performance.now() - t0).toFixed(0)} ms`);
  if (!ok) Deno.exit(1);
}

async function cmdTrace(args: string[]): Promise<void> {
  parse(args, {}, "deno task trace — causal tracing lands with its own issue; for now it checks the GPU.");
  await cmdInfo([]);
  await smokeTest();
}

// ------------------------------------------------------------------ main

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  info: cmdInfo,
  trace: cmdTrace,
};

const USAGE = `usage: deno task <command> [options]   (or: deno run -A cli.ts <command> ...)
commands: ${Object.keys(COMMANDS).join(", ")}
Each command takes --help.`;

/** Mesa's Vulkan loader complains on stderr when XDG_RUNTIME_DIR is unset; give it a private one. */
export function quietMesa(): void {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  try {
    const dir = "/tmp/xdg-runtime-rome-webgpu";
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch { /* only cosmetics */ }
}

export async function main(argv: string[]): Promise<number> {
  quietMesa();
  const [cmd, ...rest] = argv;
  const run = cmd ? COMMANDS[cmd] : undefined;
  if (!run) {
    console.error(cmd ? `unknown command '${cmd}'\n${USAGE}` : USAGE);
    return 2;
  }
  try {
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    if (Deno.env.get("ROME_DEBUG")) console.error(err.stack);
    console.error(`error: ${err.message}`);
    return err instanceof UsageError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
