// The four figures issue 15 asks of a real GPU, in one run, each beside its goal, with the adapter's name:
// - matmul 4096³ f32 (goal ≥ 10 TFLOPS on an H200),
// - GPT-2 XL forward, batch 1 × 16 tokens (goal ≤ 30 ms),
// - a causal trace of a 10-token prompt, 3 kinds, 10 samples, on GPT-2 XL shapes (goal ≤ 20 s),
// - a ROME edit on GPT-2 XL shapes with C given (goal ≤ 2 s, the paper's A6000 figure, App. E.5).
// Random weights built in memory (6.2 GB of f32 for XL) and the bundled world's tokenizer (byte-level BPE:
// it encodes any text; its ids are a subset of the model's 50,257), so the run needs no download, no npm
// package and no model folder: only this repository and a Deno binary.
//   deno run -A bench/gpu.ts [--json] [--quick] [--allow-software]
// It refuses a software adapter (llvmpipe/lavapipe, SwiftShader, wgpu's fallback): a missing vendor Vulkan
// driver falls back silently, and those figures would say nothing about the GPU. --quick (GPT-2 small shapes,
// matmul 1024³) with --allow-software is the dry run on a machine without a GPU.
//
// On the device machine (no network; the Deno binary is 95.6 MB raw, over the 64 MiB a run may carry, 30.7 MB
// with xz): here, `mkdir -p .device && xz -6 -c "$(npx -y deno@2.9.6 eval 'console.log(Deno.execPath())')"
// > .device/deno.xz` (with `.device/` in .git/info/exclude), then run with carry [".device"]:
//   xz -dc .device/deno.xz > /tmp/deno && chmod +x /tmp/deno && DENO_DIR=/tmp/dd /tmp/deno run -A \
//     bench/gpu.ts --json > $OUT/gpu.json; cat $OUT/gpu.json
import { parseArgs } from "node:util";
import { getEngine } from "../engine/engine.ts";
import type { Gpt2Config } from "../engine/gpt2/config.ts";
import { loadTokenizer } from "../engine/gpt2/folder.ts";
import { launchMatmul } from "../engine/launch/matmul.ts";
import { defaultHparams } from "../rome/hparams.ts";
import { executeRome } from "../rome/edit.ts";
import { normalizeRequest } from "../rome/request.ts";
import { TRACE_KINDS } from "../tracing/trace.ts";
import { GPT2_SMALL } from "../tests/lib/fixtures.ts";
import { randn } from "../tests/lib/util.ts";
import { randomSecondMoment } from "./edit.ts";
import { timeKinds } from "./trace.ts";
import { bestTimeGpu, isSoftwareAdapter, randomGpt2Model } from "./util.ts";

const { values: opt } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    "allow-software": { type: "boolean", default: false },
  },
});

const engine = await getEngine();
const info = engine.gpu.info;
const adapter = [info.vendor, info.architecture, info.description].filter(Boolean).join(" / ");
if (isSoftwareAdapter(engine) && !opt["allow-software"]) {
  console.error(
    `error: the adapter is a software one (${adapter || "no description"}${
      info.isFallbackAdapter ? ", fallback" : ""
    }): these figures are for a GPU. Is the vendor's Vulkan driver installed? (--allow-software for a dry run)`,
  );
  Deno.exit(1);
}

const XL: Gpt2Config = { ...GPT2_SMALL, nLayer: 48, nEmbd: 1600, nHead: 25, nInner: 6400 };
const config = opt.quick ? GPT2_SMALL : XL;
const shapes = opt.quick ? "GPT-2 small" : "GPT-2 XL";
const rows: { figure: string; measured: number; unit: string; goal: string; met: boolean }[] = [];
const say = (s: string) => opt.json || console.error(s);
say(`adapter: ${adapter}${info.isFallbackAdapter ? " (fallback)" : ""}`);

// ---- matmul n³ f32: the mean of a few products after a warm-up, one sync per round (bestTimeGpu)
{
  const n = opt.quick ? 1024 : 4096;
  const a = engine.upload(randn(n * n, 1), [n, n]), b = engine.upload(randn(n * n, 2), [n, n]);
  const ms = await bestTimeGpu(engine, opt.quick ? 3 : 10, () => launchMatmul(a, b), 3);
  a.dispose();
  b.dispose();
  const tflops = 2 * n ** 3 / (ms / 1000) / 1e12;
  rows.push({
    figure: `matmul ${n}³ f32`,
    measured: tflops,
    unit: "TFLOPS",
    goal: "≥ 10 (H200)",
    met: tflops >= 10,
  });
}

say(`building ${shapes} with random weights...`);
const model = randomGpt2Model(engine, config);
await engine.sync();

// ---- forward, batch 1 × 16 tokens, logits of every position read back
{
  const ids = [Array.from({ length: 16 }, (_, t) => (t * 7919 + 13) % config.vocabSize)];
  const once = async () => {
    const { logits } = model.forward(ids);
    await logits!.read();
    logits!.dispose();
  };
  await once(); // compiles the pipelines
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await once();
    best = Math.min(best, performance.now() - t0);
  }
  rows.push({
    figure: `${shapes} forward 1 × 16`,
    measured: best,
    unit: "ms",
    goal: "≤ 30",
    met: best <= 30,
  });
}

// ---- causal trace: 10 tokens, 10 samples, hidden + mlp + attn (bench/trace.ts's prompt and settings)
{
  await timeKinds(model, ["hidden"], "batched"); // compiles the pipelines
  const t0 = performance.now();
  await timeKinds(model, TRACE_KINDS, "batched");
  const s = (performance.now() - t0) / 1000;
  rows.push({
    figure: `${shapes} trace, 10 tokens, 3 kinds`,
    measured: s,
    unit: "s",
    goal: "≤ 20",
    met: s <= 20,
  });
}

// ---- ROME edit with C given: k*, v* (the hparams' steps), the rank-one update; fixed context templates
{
  const { hparams } = defaultHparams(config);
  const tokenizer = loadTokenizer(new URL("../data/world", import.meta.url).pathname);
  const request = normalizeRequest({
    prompt: "The official language of {} is",
    subject: "Saint Kitts and Nevis",
    target_new: "Spanish",
  });
  // the reference's templates are "{}" and 10 sampled prefixes; sampling them is not part of the edit's time
  const templates = ["{}", ...Array.from({ length: 10 }, (_, i) => `The city ${i} is known. {}`)];
  const C = engine.scope(() =>
    engine.keep(engine.upload(randomSecondMoment(config.nInner), [config.nInner, config.nInner]))
  );
  const secondMoment = { C, count: 1e6 };
  const edit = () => executeRome(model, tokenizer, request, { hparams, templates, secondMoment });
  // a short edit first compiles the pipelines (each edit changes the random model in place, which is fine here)
  await executeRome(model, tokenizer, request, {
    hparams: { ...hparams, v_num_grad_steps: 2 },
    templates,
    secondMoment,
  });
  const t0 = performance.now();
  const e = await edit();
  const s = (performance.now() - t0) / 1000;
  C.dispose();
  rows.push({
    figure: `${shapes} ROME edit, C given (layer ${hparams.layers[0]}, ${e.forwards} v* forwards)`,
    measured: s,
    unit: "s",
    goal: "≤ 2",
    met: s <= 2,
  });
}
for (const w of model.weights.values()) w.dispose();

if (opt.json) {
  console.log(JSON.stringify({ adapter, fallback: info.isFallbackAdapter, shapes, rows }, null, 1));
} else {
  console.log(`bench/gpu on ${adapter}${opt.quick ? " (--quick: GPT-2 small shapes, matmul 1024³)" : ""}`);
  console.log("figure                                                measured        goal");
  for (const r of rows) {
    const v = r.measured >= 100 ? r.measured.toFixed(0) : r.measured.toPrecision(3);
    console.log(
      `${r.figure.padEnd(52)} ${`${v} ${r.unit}`.padStart(12)}   ${r.goal}${r.met ? "" : "  (not met)"}`,
    );
  }
}
