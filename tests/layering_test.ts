// The house's one rule, checked: each layer imports only the layers below it (README, Layout), the science
// layers reach the ops through engine/ops.ts alone, and the modules a browser bundles use no Deno API.
// Reads the sources as text: relative import specifiers (static, dynamic and type-only) and `Deno.` uses.
import { equal } from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { ROOT } from "./lib/cli_process.ts";

/** Layers from the bottom up; a file may import its own layer and those below. */
const LAYERS: [prefix: string, rank: number][] = [
  ["kernels/", 0],
  ["engine/", 1],
  ["rome/", 2],
  ["tracing/", 2],
  ["eval/", 3],
  ["web/", 4],
  ["cli/", 5],
  ["cli.ts", 5],
];

/** Modules a browser bundles (web/app.ts and what it imports): no Deno API. */
const RUNTIME_NEUTRAL = [
  "kernels/",
  "tracing/",
  "rome/",
  "eval/",
  "web/app.ts",
  "web/session.ts",
  "web/load.ts",
];

/** engine/ internals that a science layer must reach through engine/ops.ts instead. */
const BEHIND_OPS = ["engine/launch/", "kernels/"];

const rankOf = (file: string) => LAYERS.find(([p]) => file === p || file.startsWith(p))?.[1];

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(ROOT, dir))) {
    const rel = join(dir, e.name);
    if (e.isDirectory) out.push(...sources(rel));
    else if (e.name.endsWith(".ts")) out.push(rel);
  }
  return out;
}

const IMPORT =
  /(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*"(\.{1,2}\/[^"]+)"|\bimport\(\s*"(\.{1,2}\/[^"]+)"\s*\)/g;

function importsOf(file: string): string[] {
  const text = Deno.readTextFileSync(join(ROOT, file));
  return [...text.matchAll(IMPORT)].map((m) => relative(ROOT, resolve(ROOT, dirname(file), m[1] ?? m[2])));
}

const FILES = ["cli.ts", ...["cli", "web", "eval", "rome", "tracing", "engine", "kernels"].flatMap(sources)]
  .filter((f) => !f.startsWith("web/dist/"));

Deno.test("layering: every import runs downward (cli → web/eval → rome|tracing → engine → kernels)", () => {
  const upward: string[] = [];
  for (const file of FILES) {
    const r = rankOf(file)!;
    for (const dep of importsOf(file)) {
      const d = rankOf(dep);
      if (d !== undefined && d > r) upward.push(`${file} imports ${dep}`);
    }
  }
  equal(upward.join("\n"), "");
});

Deno.test("layering: tracing/, rome/, eval/ and web/ reach the ops through engine/ops.ts only", () => {
  const around: string[] = [];
  for (const file of FILES.filter((f) => /^(tracing|rome|eval|web)\//.test(f))) {
    for (const dep of importsOf(file)) {
      if (BEHIND_OPS.some((p) => dep.startsWith(p))) around.push(`${file} imports ${dep}`);
    }
  }
  equal(around.join("\n"), "");
});

Deno.test("layering: kernels/ and the science layers use no Deno API (the page bundles them)", () => {
  const uses: string[] = [];
  for (const file of FILES.filter((f) => RUNTIME_NEUTRAL.some((p) => f === p || f.startsWith(p)))) {
    const code = Deno.readTextFileSync(join(ROOT, file)).split("\n").filter((l) => !/^\s*(\/\/|\*)/.test(l));
    code.forEach((l, i) => {
      if (/\bDeno\./.test(l)) uses.push(`${file}:${i + 1}`);
    });
  }
  equal(uses.join("\n"), "");
});
