// Every command of the command table answers --help with its own usage (exit code 0), and an unknown flag
// with one error line, exit code 2 (the usage follows it, no stack trace). No command reaches the GPU here.
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { COMMANDS } from "../cli.ts";
import { cli } from "./lib/cli_process.ts";

const names = Object.keys(COMMANDS);

Deno.test("CLI: --help of every command prints that command's usage and exits 0", async () => {
  const results = await Promise.all(names.map((name) => cli([name, "--help"], {})));
  names.forEach((name, i) => {
    const r = results[i];
    equal(r.code, 0, `${name} --help: exit code ${r.code}\n${r.err}`);
    match(r.out, new RegExp(`^deno task ${name.replace("-", "\\-")} `), `${name} --help:\n${r.out}`);
    equal(r.err, "", `${name} --help wrote to stderr:\n${r.err}`);
  });
});

Deno.test("CLI: an unknown flag is one error line and exit code 2 for every command", async () => {
  const results = await Promise.all(names.map((name) => cli([name, "--no-such-flag"], {})));
  names.forEach((name, i) => {
    const r = results[i];
    equal(r.code, 2, `${name} --no-such-flag: exit code ${r.code}\n${r.err}`);
    const lines = r.err.split("\n");
    match(lines[0], /^error: Unknown option '--no-such-flag'/, `${name}:\n${r.err}`);
    deepEqual(lines.filter((l) => l.startsWith("error")).length, 1, `${name}:\n${r.err}`);
    ok(!/^\s+at .*(file:|\.ts:\d|<anonymous>)/m.test(r.err), `${name} printed a stack trace:\n${r.err}`);
    match(
      r.err,
      new RegExp(`\\ndeno task ${name.replace("-", "\\-")} `),
      `${name}: no usage after the error`,
    );
  });
});
