// Commands about the model itself: predict, generate, tokenize, download, info.
import { downloadModel, HubError } from "../engine/hub.ts";
import { loadTokenizer } from "../engine/gpt2/folder.ts";
import { generate, nextTokenLogprobs, topK } from "../engine/gpt2/generate.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { intOption, MAX_SEED, MODEL_OPTION, parse, parseCommand, requireText, UsageError } from "./args.ts";
import { loadModel, modelDir, openEngine } from "./open.ts";
import { Progress } from "./progress.ts";

const PREDICT_USAGE = `deno task predict [--model DIR] --prompt TEXT [--top-k K] [--json]
  The most likely next tokens after the prompt, with log-probabilities.`;

export async function cmdPredict(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    prompt: { type: "string" },
    "top-k": { type: "string" },
    json: { type: "boolean" },
  }, PREDICT_USAGE);
  const prompt = requireText(opts, "prompt");
  const k = intOption(opts, "top-k", 10, 1);
  const { model, tokenizer } = await loadModel(opts);
  topKInVocabulary(k, model);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const [lp] = await nextTokenLogprobs(model, [ids]);
  const top = topK(lp, k).map((e) => ({ id: e.id, token: tokenizer.decode([e.id]), logprob: e.logprob }));
  if (opts.json) {
    console.log(JSON.stringify({ prompt, ids, top }));
    return;
  }
  console.log(`prompt: ${JSON.stringify(prompt)} (${ids.length} tokens)`);
  for (const e of top) {
    console.log(
      `${(Math.exp(e.logprob) * 100).toFixed(2).padStart(6)}%  ${e.logprob.toFixed(4).padStart(9)}  ${
        JSON.stringify(e.token)
      } (${e.id})`,
    );
  }
}

/** --top-k beyond the vocabulary would silently mean all of it. */
function topKInVocabulary(k: number, model: Gpt2Model): void {
  const V = model.config.vocabSize;
  if (k > V) {
    throw new UsageError(`--top-k must be an integer from 1 to ${V}, the vocabulary's size (got '${k}')`);
  }
}

const GENERATE_USAGE =
  `deno task generate [--model DIR] --prompt TEXT [--max-tokens N] [--top-k K] [--seed S] [--json]
  Continues the prompt: greedy with --top-k 1, seeded top-k sampling otherwise (default k 5, up to 20
  tokens; it ends at <|endoftext|>).`;

export async function cmdGenerate(args: string[]): Promise<void> {
  const opts = parse(args, {
    ...MODEL_OPTION,
    prompt: { type: "string" },
    "max-tokens": { type: "string" },
    "top-k": { type: "string" },
    seed: { type: "string" },
    json: { type: "boolean" },
  }, GENERATE_USAGE);
  const prompt = requireText(opts, "prompt");
  const maxTokens = intOption(opts, "max-tokens", 20, 1);
  const k = intOption(opts, "top-k", 5, 1);
  const seed = intOption(opts, "seed", 0, 0, MAX_SEED);
  const { model, tokenizer } = await loadModel(opts);
  topKInVocabulary(k, model);
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const ctx = model.config.nPositions;
  if (ids.length >= ctx) {
    throw new UsageError(`--prompt has ${ids.length} tokens; the model's context is ${ctx}`);
  }
  // generation stops at the context: an explicit --max-tokens that cannot fit is refused, not cut short
  if (opts["max-tokens"] !== undefined && ids.length + maxTokens > ctx) {
    throw new UsageError(
      `--max-tokens must be an integer from 1 to ${ctx - ids.length} for this prompt: its ${ids.length} ` +
        `tokens leave room for ${ctx - ids.length} in the model's context of ${ctx} (got '${maxTokens}')`,
    );
  }
  const bar = new Progress("generating", maxTokens, Boolean(opts.json));
  const eos = tokenizer.eosId >= 0 ? tokenizer.eosId : undefined;
  const [out] = await generate(model, [ids], {
    maxTokens,
    topK: k,
    seed,
    stopId: eos,
    onToken: (s) => bar.update(s),
  });
  bar.done();
  const text = tokenizer.decode(out.at(-1) === eos ? out.slice(0, -1) : out);
  if (opts.json) console.log(JSON.stringify({ prompt, ids, generated_ids: out, text: prompt + text }));
  else console.log(prompt + text);
}

const TOKENIZE_USAGE = `deno task tokenize [--model DIR] --text TEXT [--json]
  GPT-2 BPE tokens of the text (only the model folder's tokenizer files are read).`;

export function cmdTokenize(args: string[]): Promise<void> {
  const opts = parse(
    args,
    { ...MODEL_OPTION, text: { type: "string" }, json: { type: "boolean" } },
    TOKENIZE_USAGE,
  );
  const text = opts.text;
  if (typeof text !== "string") throw new UsageError("--text TEXT is required");
  const tokenizer = loadTokenizer(modelDir(opts));
  const ids = tokenizer.encode(text);
  const tokens = ids.map((id) => tokenizer.decode([id]));
  if (opts.json) console.log(JSON.stringify({ ids, tokens }));
  else {ids.forEach((id, i) =>
      console.log(`${String(i).padStart(4)}  ${String(id).padStart(6)}  ${JSON.stringify(tokens[i])}`)
    );}
  return Promise.resolve();
}

const DOWNLOAD_USAGE =
  `deno task download gpt2|gpt2-medium|gpt2-large|gpt2-xl|OWNER/NAME [--dir DIR] [--revision REV]
  Fetches a model folder (config, tokenizer, safetensors weights) from the Hugging Face hub; resumable.
  Uses $HF_ENDPOINT and $HF_TOKEN when set.`;

export async function cmdDownload(args: string[]): Promise<void> {
  const { values, positionals } = parseCommand(
    args,
    { dir: { type: "string" }, revision: { type: "string" } },
    DOWNLOAD_USAGE,
    true,
  );
  if (positionals.length !== 1) throw new UsageError(`name exactly one model\n\n${DOWNLOAD_USAGE}`);
  let bar: Progress | undefined;
  let current = "";
  const res = await downloadModel(positionals[0], {
    dir: values.dir as string | undefined,
    revision: values.revision as string | undefined,
    endpoint: Deno.env.get("HF_ENDPOINT") || undefined,
    token: Deno.env.get("HF_TOKEN") || undefined,
    onProgress: (p) => {
      if (p.file !== current) {
        bar?.done();
        current = p.file;
        bar = new Progress(p.file, p.total ?? 0);
      }
      bar!.update(p.done, `${(p.bytesPerSec / 2 ** 20).toFixed(1)} MiB/s`);
    },
  }).catch((e) => {
    // a name that is no model is the caller's mistake; network and server errors are not
    if (e instanceof HubError && e.kind === "name") throw new UsageError(e.message);
    throw e;
  });
  bar?.done();
  console.log(`downloaded ${res.files.length} files to ${res.dir}`);
}

const INFO_USAGE = `deno task info [--json]
  Prints the WebGPU adapter, its limits and features as this engine sees them.`;

export async function cmdInfo(args: string[]): Promise<void> {
  const opts = parse(args, { json: { type: "boolean" } }, INFO_USAGE);
  const engine = await openEngine();
  const info = engine.gpu.info;
  if (opts.json) {
    console.log(JSON.stringify(info, null, 2));
    return;
  }
  console.log(
    `adapter     ${info.description} (vendor ${info.vendor}${
      info.architecture ? ", " + info.architecture : ""
    })`,
  );
  console.log(`software    ${info.isFallbackAdapter ? "yes (fallback / CPU adapter)" : "no"}`);
  console.log(`features    ${info.features.join(", ")}`);
  const l = engine.limits;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(
    `binding     ${mib(l.maxBindingBytes)} per storage binding, buffers up to ${mib(l.maxBufferSize)}`,
  );
  console.log(
    `workgroups  ${l.maxInvocations} invocations, ${l.workgroupStorage} B shared, ${l.maxWorkgroupsPerDim}/dim`,
  );
  console.log(`alignment   storage ${l.storageOffsetAlignment} B, uniform ${l.uniformOffsetAlignment} B`);
}
