// Running the command line as a user does: a `deno` subprocess in the repository's root, its exit code and
// output as text, and the lines of stderr that are messages (not Mesa's notes or loading progress). The one
// way tests run cli.ts (tests/kill_test.ts spawns its own, to kill it, with the CLI path from here).
import { join } from "node:path";

export const ROOT = new URL("../..", import.meta.url).pathname;
export const CLI = join(ROOT, "cli.ts");

/** `deno ARGS...` in the repository's root with NO_COLOR and `env` added. */
export async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
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
