// The page end to end in a real browser: Debian's headless Chromium (tests/lib/web_browser.ts) loads it from
// `web/serve.ts`, runs the first known fact's causal trace and the first CounterFact case's ROME edit
// through the form, and every number is compared with what the CLI prints for the same inputs on this
// machine's Deno WebGPU, computed now (the bundled model may have been retrained since any number was
// written down). Also checked: hover values on the heatmaps, and the message a browser without WebGPU gets.
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { EXAMPLE_KNOWN_ID } from "../tracing/facts.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** Debian's package (`apt-get install -y chromium`); a browser is never downloaded. */
const CHROMIUM = "/usr/bin/chromium";
/** Both sides compute in f32 on different software GPUs (SwiftShader in Chromium, lavapipe in Deno). */
const TOLERANCE = 1e-3;

interface TraceRecord {
  kind: string;
  answer: string;
  tokens: string[];
  high_score: number;
  low_score: number;
  scores: number[][];
}
interface Probs {
  prompt: string;
  target_new: number;
  target_true?: number;
}
/** The page's edit (web/session.ts EditRun), as far as the test reads it. */
interface PageEdit {
  pre: { rewrite: Probs };
  post: { rewrite: Probs; paraphrases: Probs[]; neighbours: Probs[] };
}
type CliPair = { prompt: string; post: { target_new: number; target_true: number | null } };
/** `deno task edit --json`, as far as the test reads it. */
interface CliEdit {
  pre: { target_new: number; target_true?: number };
  post: { target_new: number; target_true?: number };
  paraphrases: CliPair[];
  neighbours: CliPair[];
  stats: { source: string; path: string } | null;
}
interface BrowserRun {
  adapter: string;
  trace: { records: TraceRecord[] };
  edit: PageEdit;
  hover: string;
  noWebgpu: { message: string; traceHidden: boolean; editHidden: boolean };
  seconds: Record<string, number>;
}

async function deno(args: string[], what: string): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`${what} failed (exit ${code}):\n${new TextDecoder().decode(stderr).slice(-3000)}`);
  }
  return new TextDecoder().decode(stdout);
}

/** The CLI exactly as its tasks run it, with --json. */
const cli = async (args: string[]) =>
  JSON.parse(
    await deno(
      ["run", "--allow-read", "--allow-write", "--allow-env", "cli.ts", ...args, "--json"],
      `cli.ts ${args[0]}`,
    ),
  );

/** `web/serve.ts --port 0` (what `deno task serve` runs after building) and the address it prints. */
async function startServer(extra: string[]): Promise<{ url: string; stop: () => Promise<void> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-net=127.0.0.1", "web/serve.ts", "--port", "0", ...extra],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/http:\/\/\S+\//.test(text)) {
    const { done, value } = await lines.read();
    if (done) throw new Error(`web/serve.ts exited before listening:\n${text}`);
    text += value;
  }
  const drained = (async () => {
    while (!(await lines.read()).done) { /* nothing more is printed */ }
  })();
  return {
    url: text.match(/http:\/\/\S+\//)![0],
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
      await drained;
    },
  };
}

type Pair = [page: number | undefined | null, cli: number | undefined | null, where: string];

/** Largest |page − CLI|; a number missing on either side fails (a shape mismatch is not "close"). */
function maxDiff(pairs: Pair[]): number {
  let m = 0;
  for (const [a, b, where] of pairs) {
    assert.ok(typeof a === "number" && typeof b === "number", `${where}: page ${a}, CLI ${b}`);
    m = Math.max(m, Math.abs(a - b));
  }
  return m;
}

function tracePairs(page: TraceRecord[], cli: TraceRecord[]): Pair[] {
  assert.deepEqual(page.map((r) => r.kind), cli.map((r) => r.kind), "traced kinds");
  const pairs: Pair[] = [];
  for (const [k, r] of page.entries()) {
    const c = cli[k];
    assert.equal(r.answer, c.answer, `${r.kind}: answer`);
    assert.deepEqual(r.tokens, c.tokens, `${r.kind}: tokens`);
    pairs.push([r.high_score, c.high_score, `${r.kind} high_score`], [
      r.low_score,
      c.low_score,
      `${r.kind} low`,
    ]);
    assert.equal(r.scores.length, c.scores.length, `${r.kind}: token rows`);
    r.scores.forEach((row, t) => {
      assert.equal(row.length, c.scores[t].length, `${r.kind}: layers of token ${t}`);
      row.forEach((v, l) => pairs.push([v, c.scores[t][l], `${r.kind} token ${t} layer ${l}`]));
    });
  }
  return pairs;
}

function editPairs(page: PageEdit, cli: CliEdit): Pair[] {
  const post = page.post;
  const pairs: Pair[] = [
    [post.rewrite.target_new, cli.post.target_new, "rewrite P(new)"],
    [post.rewrite.target_true, cli.post.target_true, "rewrite P(true)"],
    [page.pre.rewrite.target_new, cli.pre.target_new, "unedited rewrite P(new)"],
  ];
  for (
    const [name, mine, theirs] of [
      ["paraphrase", post.paraphrases, cli.paraphrases],
      ["neighbour", post.neighbours, cli.neighbours],
    ] as const
  ) {
    assert.equal(mine.length, theirs.length, `${name} count`);
    mine.forEach((p, i) => {
      assert.equal(p.prompt, theirs[i].prompt, `${name} ${i} prompt`);
      pairs.push([p.target_new, theirs[i].post.target_new, `${name} ${i} P(new)`]);
      pairs.push([p.target_true, theirs[i].post.target_true, `${name} ${i} P(true)`]);
    });
  }
  return pairs;
}

Deno.test("web: the page in headless Chromium traces and edits with the CLI's numbers (within 1e-3)", async () => {
  try {
    Deno.statSync(CHROMIUM);
  } catch {
    throw new Error(
      `Chromium is not installed (${CHROMIUM}): install it with \`apt-get install -y chromium\` ` +
        "(.ci/run does); the browser test cannot run without it",
    );
  }
  const t0 = performance.now();
  const at = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;

  // The inputs: the example fact (the page's and the CLI's default trace) and the first CounterFact case.
  const facts = JSON.parse(await Deno.readTextFile(join(ROOT, "data/world/known_facts.json")));
  const { prompt, subject } = facts.find((f: { known_id: number }) => f.known_id === EXAMPLE_KNOWN_ID);
  const cases = JSON.parse(await Deno.readTextFile(join(ROOT, "data/world/counterfact.json")));
  const caseId = String(cases[0].case_id);

  await deno(["task", "web-build"], "deno task web-build");
  const tmp = await Deno.makeTempDir();
  const cliTrace: TraceRecord[] = await cli([
    "trace",
    "--prompt",
    prompt,
    "--subject",
    subject,
    "--out",
    tmp,
  ]);
  const cliEdit: CliEdit = await cli(["edit", "--case", caseId]);
  console.log(`  bundle, CLI trace and edit: ${at()}`);

  // The page gets the statistics C the CLI used: shipped in the model folder, else served from the CLI's cache.
  const server = await startServer(
    cliEdit.stats && cliEdit.stats.source !== "shipped" ? ["--stats", cliEdit.stats.path] : [],
  );
  let page: BrowserRun;
  try {
    // ROME_WEB_SCREENSHOT=web/screenshot.png refreshes the README's picture.
    const shot = Deno.env.get("ROME_WEB_SCREENSHOT") ?? join(tmp, "page.png");
    page = JSON.parse(
      await deno(
        ["run", "-A", "tests/lib/web_browser.ts", CHROMIUM, server.url, prompt, subject, caseId, shot],
        "Chromium",
      ),
    );
    const s = page.seconds;
    console.log(
      `  Chromium (${page.adapter}): loaded ${s.load.toFixed(0)} s, trace ${
        (s.trace - s.load).toFixed(0)
      } s, ` +
        `edit ${(s.edit - s.trace).toFixed(0)} s; screenshot ${shot}; total ${at()}`,
    );
  } finally {
    await server.stop();
  }

  const trace = tracePairs(page.trace.records, cliTrace);
  const traceDiff = maxDiff(trace);
  console.log(`  trace: ${trace.length} numbers, max |page − CLI| = ${traceDiff.toExponential(2)}`);
  assert.ok(traceDiff <= TOLERANCE, `trace scores differ from the CLI's by up to ${traceDiff}`);

  const edit = editPairs(page.edit, cliEdit);
  const editDiff = maxDiff(edit);
  console.log(`  edit: ${edit.length} probabilities, max |page − CLI| = ${editDiff.toExponential(2)}`);
  assert.ok(editDiff <= TOLERANCE, `post-edit probabilities differ from the CLI's by up to ${editDiff}`);

  assert.match(page.hover, /layer 0: p = [0-9.e-]+/, "hovering a cell shows its value");
  assert.match(page.noWebgpu.message, /no WebGPU/, "the message without WebGPU");
  assert.ok(page.noWebgpu.traceHidden && page.noWebgpu.editHidden, "no forms without WebGPU");
});
