// What the page computes, without the page: the model and its side files loaded over HTTP, a causal trace of
// one prompt, a ROME edit with its before/after measurements, and reverting edits. Every number comes from
// the same tracing/ and rome/ functions `deno task trace` and `deno task edit` call, with the CLI's defaults
// (the e2e test, tests/web_test.ts, holds the two to 1e-3). No DOM and no Deno APIs: app.ts draws.
import { type Engine, getEngine } from "../engine/engine.ts";
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import { findSubjectRange, type Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { parseCounterFact } from "../eval/datasets.ts";
import { type CounterFactCase, counterFactEdit } from "../rome/cases.ts";
import { executeRome, type RomeVariant } from "../rome/edit.ts";
import {
  DEFAULT_GENERATION_TOKENS,
  evaluateRequest,
  type Evaluation,
  type EvaluationPrompts,
} from "../rome/evaluate.ts";
import { defaultHparams, type RomeHparams } from "../rome/hparams.ts";
import { xorMatrix } from "../rome/patch.ts";
import { normalizeRequest, type RequestInput, type RomeRequest } from "../rome/request.ts";
import { DEFAULT_VARIANT, type SecondMoment, setUpRome } from "../rome/setup.ts";
import { decodeSecondMoment, shippedStatsFile, statsFitModel, uploadSecondMoment } from "../rome/stats.ts";
import { DEFAULT_TEMPLATE_SEED, generateContextTemplates } from "../rome/templates.ts";
import { type KnownFact, parseKnownFacts, parseSubjects } from "../tracing/facts.ts";
import { DEFAULT_NOISE, noiseScale, parseNoiseSpec, subjectEmbeddingStd } from "../tracing/noise.ts";
import { traceHeader, traceRecords } from "../tracing/prompt.ts";
import type { TraceRecord } from "../tracing/report.ts";
import {
  BasePass,
  DEFAULT_SAMPLES,
  DEFAULT_TRACE_SEED,
  defaultWindow,
  TRACE_KINDS,
  type TraceKind,
} from "../tracing/trace.ts";
import { fetchBytes, fetchJson, loadRemoteModel, MissingFileError } from "./load.ts";
import { InputError } from "../engine/errors.ts";

/** Where the server (web/serve.ts) puts the model folder and the facts world's files. */
export const MODEL_URL = "model/";
export const KNOWN_FACTS_URL = "data/known_facts.json";
export const COUNTERFACT_URL = "data/counterfact.json";

/** The CLI's default `--variant` (its other defaults are imported from tracing/ and rome/ too). */
const VARIANT: RomeVariant = DEFAULT_VARIANT;

export type LoadStage = "weights" | "gpu" | "facts" | "noise";
export type LoadProgress = (stage: LoadStage, done: number, total: number) => void;

/** Statistics C could not be had: the message says which file and how to make it. */
export class StatsMissingError extends InputError {
  override name = "StatsMissingError";
}

export interface EditRun {
  request: RomeRequest;
  caseId?: number;
  layer: number;
  variant: RomeVariant;
  hparams: string;
  pre: Evaluation;
  post: Evaluation;
  templates: string[];
  deltaNorm: number;
  v0Norm: number;
  losses: number[];
  statsCount: number;
  seconds: { k: number; v: number; update: number; total: number };
}

export interface TraceRun {
  records: TraceRecord[];
  /** ν, from the CLI's default noise spec (DEFAULT_NOISE, a multiple of σ_t). */
  noiseSpec: string;
  noise: number;
  std: number;
  /** Whether the traced model carried edits. */
  edited: boolean;
  seconds: number;
}

/** The loaded page state: a model (edited in place by `edit`, restored by `revert`) and its side files. */
export class Session {
  readonly #edits: { matrix: string; xor: Uint32Array }[] = [];
  #templates: Promise<string[]> | undefined;
  readonly #stats = new Map<number, Promise<SecondMoment>>();

  private constructor(
    readonly engine: Engine,
    readonly model: Gpt2Model,
    readonly tokenizer: Gpt2Tokenizer,
    readonly hparams: RomeHparams,
    readonly hparamsSource: string,
    /** known_1000-format facts: the trace examples. */
    readonly facts: KnownFact[],
    /** CounterFact records: the edit examples. */
    readonly cases: CounterFactCase[],
    /** σ_t over the facts' subjects (the CLI's default subject list for '3x'). */
    readonly embeddingStd: number,
  ) {}

  static async load(onProgress: LoadProgress = () => {}): Promise<Session> {
    const engine = await getEngine();
    const { model, tokenizer } = await loadRemoteModel(engine, MODEL_URL, {
      onBytes: (got, total) => onProgress("weights", got, total),
      onTensor: (done, total) => onProgress("gpu", done, total),
    });
    onProgress("facts", 0, 2);
    const factsJson = await fetchJson(KNOWN_FACTS_URL);
    const facts = parseKnownFacts(factsJson, KNOWN_FACTS_URL);
    const cases = parseCounterFact(await fetchJson(COUNTERFACT_URL), COUNTERFACT_URL);
    onProgress("facts", 2, 2);
    onProgress("noise", 0, 1);
    const std = await subjectEmbeddingStd(model, tokenizer, parseSubjects(factsJson, KNOWN_FACTS_URL));
    onProgress("noise", 1, 1);
    const { hparams, source } = defaultHparams(model.config);
    return new Session(engine, model, tokenizer, hparams, source, facts, cases, std.std);
  }

  /** The layer ROME edits: the hparams' first, as `deno task edit` without --layer. */
  get editLayer(): number {
    return this.hparams.layers[0];
  }

  get editCount(): number {
    return this.#edits.length;
  }

  /** Causal tracing of one prompt, every kind, with the CLI's default samples, window, noise and seed. */
  async trace(
    prompt: string,
    subject: string,
    onProgress?: (done: number, total: number, kind: TraceKind) => void,
  ): Promise<TraceRun> {
    const t0 = performance.now();
    if (!prompt.includes(subject)) {
      throw new Error(`the subject ${JSON.stringify(subject)} does not occur in the prompt`);
    }
    const ids = this.tokenizer.encode(prompt);
    if (ids.length === 0) throw new Error("the prompt encodes to no tokens");
    const subjectRange = findSubjectRange(this.tokenizer, prompt, subject);
    const noise = await noiseScale(parseNoiseSpec(DEFAULT_NOISE), () => Promise.resolve(this.embeddingStd));
    const base = await BasePass.run(this.model, { ids, subjectRange }, {
      samples: DEFAULT_SAMPLES,
      noise,
      seed: DEFAULT_TRACE_SEED,
    });
    try {
      const header = traceHeader(this.tokenizer, base, prompt, subject);
      const { records } = await traceRecords(base, header, TRACE_KINDS, {
        window: defaultWindow(this.model.config.nLayer),
        onProgress,
      });
      return {
        records,
        noiseSpec: DEFAULT_NOISE,
        noise,
        std: this.embeddingStd,
        edited: this.#edits.length > 0,
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      base.dispose();
    }
  }

  /** A CounterFact record's request and prompts, as `deno task edit --case ID`. */
  caseEdit(caseId: number): { input: RequestInput; caseId: number; prompts: EvaluationPrompts } {
    const r = this.cases.find((c) => c.case_id === caseId);
    if (!r) throw new Error(`${COUNTERFACT_URL} has no case_id ${caseId}`);
    return counterFactEdit(r);
  }

  /**
   * One ROME edit on the current model (stacked on earlier ones until `revert`), measured before and after
   * on the rewrite prompt and `prompts`. Statistics and context templates belong to the unedited model,
   * as the CLI keys them by the base model's hash.
   */
  async edit(
    input: RequestInput,
    prompts: EvaluationPrompts,
    caseId: number | undefined,
    onStage: (stage: "stats" | "pre" | "templates" | "k" | "v" | "update" | "post", step?: number) => void,
  ): Promise<EditRun> {
    const t0 = performance.now();
    const request = normalizeRequest(input);
    const hp = this.hparams;
    // C first: a folder without statistics fails at once, not after the measurements
    onStage("stats");
    const { layer, variant, secondMoment: stats } = await setUpRome(
      this.model,
      { hparams: hp, layer: this.editLayer, variant: VARIANT },
      { load: (layer) => this.#secondMoment(layer) },
    );
    onStage("pre");
    const opts = { generationTokens: DEFAULT_GENERATION_TOKENS };
    const pre = await evaluateRequest(this.model, this.tokenizer, request, prompts, opts);
    onStage("templates");
    this.#templates ??= generateContextTemplates(
      this.model,
      this.tokenizer,
      hp.context_template_length_params,
      DEFAULT_TEMPLATE_SEED,
    );
    const templates = await this.#templates;
    const edit = await executeRome(this.model, this.tokenizer, request, {
      hparams: hp,
      layer,
      variant,
      templates,
      secondMoment: stats,
      onStage: (s) => onStage(s),
      onValueStep: (step) => onStage("v", step + 1),
    });
    this.#edits.push({ matrix: edit.matrix, xor: edit.xor });
    onStage("post");
    const post = await evaluateRequest(this.model, this.tokenizer, request, prompts, opts);
    return {
      request,
      caseId,
      layer,
      variant,
      hparams: this.hparamsSource,
      pre,
      post,
      templates: [...templates],
      deltaNorm: edit.deltaNorm,
      v0Norm: edit.v0Norm,
      losses: edit.losses,
      statsCount: stats?.count ?? 0,
      seconds: { ...edit.seconds, total: (performance.now() - t0) / 1000 },
    };
  }

  /** Undoes every edit, newest first, bit for bit (the XOR of each edit's words). */
  async revert(): Promise<void> {
    while (this.#edits.length > 0) {
      const { matrix, xor } = this.#edits.at(-1)!;
      await xorMatrix(this.model, matrix, xor);
      this.#edits.pop();
    }
  }

  /** C at `layer` from the model folder's shipped statistics (the only source a page has), kept on the GPU. */
  #secondMoment(layer: number): Promise<SecondMoment> {
    let p = this.#stats.get(layer);
    if (!p) {
      p = this.#loadSecondMoment(layer);
      this.#stats.set(layer, p);
      p.catch(() => this.#stats.delete(layer)); // a missing file may be added while the page is open
    }
    return p;
  }

  async #loadSecondMoment(layer: number): Promise<SecondMoment> {
    const file = shippedStatsFile(layer);
    const url = MODEL_URL + file;
    let bytes: Uint8Array;
    try {
      bytes = await fetchBytes(url);
    } catch (e) {
      if (!(e instanceof MissingFileError)) throw e;
      throw new StatsMissingError(
        `ROME needs the statistics C of layer ${layer}, and the model folder has no ${file}. Make it with ` +
          `\`deno task stats --layer ${layer} --out <model>/${file}\` (about 4 minutes on a CPU), or serve ` +
          `a computed one with \`deno task serve --stats FILE\`.`,
      );
    }
    const { mom2, count, info } = decodeSecondMoment(bytes, url);
    if (!statsFitModel(info, layer, this.model.hash)) {
      throw new StatsMissingError(
        `${url} holds statistics of layer ${info.layer} of model ${info.model_hash}, not layer ${layer} of ` +
          `this model (${this.model.hash}); recompute them with \`deno task stats --layer ${layer}\``,
      );
    }
    return { C: await uploadSecondMoment(this.model, mom2, count, url), count };
  }
}
