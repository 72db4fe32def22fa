// Running the command line as a user does: a `deno` subprocess in the repository's root, its exit code and
// output as text, and the lines of stderr that are messages (not Mesa's notes or loading progress). The one
// way tests run cli.ts (tests/kill_test.ts spawns its own, to kill it, with the CLI path from here).
import { join } from "node:path";

export const ROOT = new URL("../..", import.meta.url).pathname;
export const CLI = join(ROOT, "cli.ts");

/**
 * What every child shares with the test process: Deno's own cache (DENO_DIR: compiled modules and npm
 * packages; a child given a temporary XDG_CACHE_HOME would otherwise fetch npm metadata again and say
 * "Download ..." on stderr) and Mesa's shader cache. Only the ROME cache (XDG_CACHE_HOME) is a test's own.
 */
export const SHARED_CACHES: Record<string, string> = await (async () => {
  const info = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
    .output();
  const env: Record<string, string> = {
    NO_COLOR: "1",
    DENO_DIR: JSON.parse(new TextDecoder().decode(info.stdout)).denoDir,
  };
  const home = Deno.env.get("HOME");
  const root = Deno.env.get("XDG_CACHE_HOME") ?? (home ? join(home, ".cache") : undefined);
  if (!Deno.env.get("MESA_SHADER_CACHE_DIR") && root) env.MESA_SHADER_CACHE_DIR = root;
  return env;
})();

/** `deno ARGS...` in the repository's root with the shared caches, NO_COLOR and `env` added. */
export async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { ...SHARED_CACHES, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, out: new TextDecoder().decode(stdout), err: new TextDecoder().decode(stderr) };
}

/** `deno run -A cli.ts ARGS...` (colour off, `env` added): its exit code and output. */
export const cli = (args: string[], env: Record<string, string> = {}) =>
  run(["run", "-A", CLI, ...args], env);

/** stderr without Mesa's notes and the model-loading progress lines of the cases that load a model. */
export function messageLines(err: string): string[] {
  return err.split("\n").filter((l) =>
    l.trim() !== "" && !/mesa|lavapipe/i.test(l) && !/^loading .* \d+\/\d+ \d+%/.test(l)
  );
}
