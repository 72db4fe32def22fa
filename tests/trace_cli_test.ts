// `deno task trace` end to end on tiny random checkpoints (subprocesses): one prompt's --json shape, files
// and figures, --expect/--force, one-line errors; dataset mode's summary, the suggested layer stored per
// model hash, and malformed facts files.
import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { decode as decodePng } from "fast-png";
import { FIGURE_SCALE } from "../cli/figures.ts";
import { readSuggestedLayer } from "../cli/cache.ts";
import { svgSize } from "../tracing/render.ts";
import { cli } from "./lib/cli_process.ts";
import { TINY_CONFIG, writeTinyModel } from "./lib/fixtures.ts";

/** `deno task trace ARGS...`. */
const trace = (args: string[], env: Record<string, string> = {}) => cli(["trace", ...args], env);

const PROMPT = "The Tower is in the city";

/** STEM.png decodes to twice STEM.svg's size (tests/figures_test.ts checks that its text renders). */
async function checkFigurePng(stem: string): Promise<void> {
  const png = decodePng(await Deno.readFile(stem + ".png"));
  const [w, h] = svgSize(await Deno.readTextFile(stem + ".svg"));
  deepStrictEqual([png.width, png.height], [w * FIGURE_SCALE, h * FIGURE_SCALE], stem);
}

Deno.test("CLI: --json shape, files written; --expect refuses a wrong answer unless --force; bad input is one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinyModel(join(dir, "m"), { seed: 4 });
    const out = join(dir, "out");
    const common = ["--model", join(dir, "m"), "--prompt", PROMPT, "--subject", "Tower", "--samples", "2"];
    const r = await trace([...common, "--kind", "all", "--json", "--out", out]);
    equal(r.code, 0, r.err);
    const all = JSON.parse(r.out);
    equal(all.length, 3);
    const keys = [
      "prompt",
      "subject",
      "tokens",
      "subject_range",
      "answer",
      "answer_id",
      "high_score",
      "low_score",
      "kind",
      "window",
      "samples",
      "noise",
      "seconds",
      "scores",
    ];
    all.forEach((rec: Record<string, unknown>, i: number) => {
      deepStrictEqual(Object.keys(rec).sort(), [...keys].sort());
      equal(rec.kind, ["hidden", "mlp", "attn"][i]);
      const tokens = rec.tokens as string[], scores = rec.scores as number[][];
      equal(tokens.join(""), PROMPT);
      equal(scores.length, tokens.length);
      ok(scores.every((row) => row.length === TINY_CONFIG.nLayer && row.every((v) => v >= 0 && v <= 1)));
      equal(tokens.slice(...(rec.subject_range as [number, number])).join("").trim(), "Tower");
      equal(rec.samples, 2);
    });
    const saved = JSON.parse(await Deno.readTextFile(join(out, "trace.json")));
    equal(saved.length, 3);
    equal(typeof saved[0].model_hash, "string");
    await checkFigurePng(join(out, "heatmap_mlp"));
    ok((await Deno.readTextFile(join(out, "report.html"))).includes("<svg"));
    ok(!r.err.includes("\x1b["), "no escape codes on a pipe");

    const answer = all[0].answer as string;
    const refused = await trace([...common, "--kind", "hidden", "--expect", answer + "zz", "--out", out]);
    equal(refused.code, 1);
    match(refused.err, /^error: the model's top-1 answer is .*--force/m);
    equal(refused.err.trim().split("\n").filter((l) => l.startsWith("error")).length, 1);
    const forced = await trace([
      ...common,
      "--kind",
      "hidden",
      "--expect",
      answer + "zz",
      "--force",
      "--json",
      "--out",
      out,
    ]);
    equal(forced.code, 0, forced.err);
    const accepted = await trace([
      ...common,
      "--kind",
      "hidden",
      "--expect",
      ` ${answer.trim()} `,
      "--json",
      "--out",
      out,
    ]);
    equal(accepted.code, 0, accepted.err);

    const badSubject = await trace([...common.slice(0, 4), "--subject", "Paris"]);
    equal(badSubject.code, 2);
    match(badSubject.err, /^error: --subject "Paris" does not occur in --prompt/);
    const badNoise = await trace([...common, "--noise", "lots"]);
    equal(badNoise.code, 2);
    match(badNoise.err, /^error: --noise must be/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI dataset mode: summary JSON, the suggested layer stored per model hash, malformed facts file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeTinyModel(join(dir, "m"), { seed: 4 });
    const env = { XDG_CACHE_HOME: join(dir, "cache") };
    // Facts whose attribute is what the model answers (from a single-prompt run), plus one it gets wrong.
    const prompts = [[PROMPT, "Tower"], ["Rome is the capital of", "Rome"]];
    const facts = [];
    for (const [i, [prompt, subject]] of prompts.entries()) {
      const r = await trace([
        "--model",
        join(dir, "m"),
        "--prompt",
        prompt,
        "--subject",
        subject,
        "--kind",
        "hidden",
        "--samples",
        "1",
        "--json",
        "--out",
        join(dir, "o"),
      ]);
      equal(r.code, 0, r.err);
      const answer = JSON.parse(r.out).answer as string;
      ok(answer.trim() !== "", `test prompt needs a visible answer, got ${JSON.stringify(answer)}`);
      facts.push({ known_id: i, subject, prompt, attribute: answer.trim(), relation_id: "P0" });
    }
    facts.push({
      known_id: 7,
      subject: "Rome",
      prompt: "Rome is the capital of",
      attribute: "nothing-like-this",
    });
    const file = join(dir, "facts.json");
    await Deno.writeTextFile(file, JSON.stringify(facts));
    const out = join(dir, "facts-out");
    const args = ["--model", join(dir, "m"), "--facts", file, "--samples", "2", "--out", out];
    const r = await trace([...args, "--json"], env);
    equal(r.code, 0, r.err);
    const s = JSON.parse(r.out);
    equal(s.n, 2);
    equal(s.facts, 3);
    equal(s.skipped, 1);
    ok(Number.isInteger(s.suggested_layer));
    for (const kind of ["hidden", "mlp", "attn"]) {
      deepStrictEqual(Object.keys(s.kinds[kind].aie).length, 6);
      ok(
        Object.values(s.kinds[kind].aie as Record<string, number[]>).every((a) =>
          a.length === TINY_CONFIG.nLayer
        ),
      );
      equal(typeof s.kinds[kind].ate, "number");
    }
    ok(typeof s.seconds === "number");
    for (
      const f of [
        "summary.json",
        "aie_hidden.svg",
        "aie_mlp.png",
        "aie_heatmaps.png",
        "aie_lines.svg",
        "report.html",
        "cases/0_mlp.json",
      ]
    ) {
      ok((await Deno.stat(join(out, f))).isFile, f);
    }
    await checkFigurePng(join(out, "aie_heatmaps"));
    const layer = await trace([...args, "--suggest-layer"], env);
    equal(layer.code, 0, layer.err);
    equal(layer.out.trim(), String(s.suggested_layer));
    const prev = Deno.env.get("XDG_CACHE_HOME");
    Deno.env.set("XDG_CACHE_HOME", env.XDG_CACHE_HOME);
    try {
      const hash = JSON.parse(await Deno.readTextFile(join(out, "summary.json"))).model_hash;
      const stored = await readSuggestedLayer(hash);
      equal(stored?.layer, s.suggested_layer);
      equal(stored?.n, 2);
      equal(await readSuggestedLayer("0000000000000000"), undefined);
    } finally {
      if (prev === undefined) Deno.env.delete("XDG_CACHE_HOME");
      else Deno.env.set("XDG_CACHE_HOME", prev);
    }

    await Deno.writeTextFile(
      file,
      JSON.stringify([{ known_id: 1, subject: "Rome", prompt: "Paris is", attribute: "x" }]),
    );
    const bad = await trace(["--model", join(dir, "m"), "--facts", file]);
    equal(bad.code, 2);
    equal(bad.err.trim().split("\n").length, 1, bad.err);
    match(bad.err, /^error: .*facts\.json: record 0 \(known_id 1\): subject "Rome" does not occur/);
    const missing = await trace(["--model", join(dir, "m"), "--facts", join(dir, "nope.json")]);
    equal(missing.code, 2);
    match(missing.err, /^error: facts file '.*nope\.json' not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
