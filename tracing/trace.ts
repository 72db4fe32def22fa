// Causal tracing of one prompt (reference §1.3–1.8) on the GPT-2 graph: corrupt the subject's token
// embeddings with Gaussian noise, restore clean states at chosen (token, layer) cells, and measure how much
// of the clean answer's probability comes back.
//
// How it is fast. The reference runs one batched forward of 1 + samples rows per cell (T × layers cells per
// kind). Here:
//   1. One base pass (clean row + corrupted rows) captures the clean states of every (token, layer) and
//      the corrupted residual stream (and, for severed paths, the corrupted MLP/attn outputs) after every
//      layer, plus the answer, high_score and low_score.
//   2. Cells are grouped by the first layer they change. Everything below that layer is exactly the plain
//      corrupted run, so a group starts its forward at that block (`start: {layer, resid}`) from the
//      captured corrupted residual. A cell whose lowest restored state is a block output (hidden kind)
//      starts one block later still, with the clean row written straight into the starting residual.
//   3. Many cells share one forward (rows = cells × samples, chunked to bound memory), the answer's
//      softmax probability is taken on the GPU and only those values are read back: one readback per chunk,
//      recorded while the previous chunk's readback is in flight.
// `traceCellsNaive` is the reference-shaped implementation (one full forward per cell, restoration by copy
// hooks from the clean row): tests check the two agree, the benchmark measures the difference.
//
// Runtime-neutral (no Deno APIs) and a client of the GPT-2 graph and the engine's functional ops only.
// About 600 lines and kept whole: the base pass, the cell plans and the chunk runner are one algorithm that
// shares private state (BasePass's captures, Plan), and the naive reference sits beside it on purpose.
import type { Gpt2Model } from "../engine/gpt2/model.ts";
import type { Hook, Pos } from "../engine/gpt2/hooks.ts";
import { copyRows, selectRows, sliceCols, softmax } from "../engine/ops.ts";
import type { Tensor } from "../engine/tensor.ts";
import { subjectNoise } from "./noise.ts";

export type TraceKind = "hidden" | "mlp" | "attn";
export const TRACE_KINDS: readonly TraceKind[] = ["hidden", "mlp", "attn"];

/** The graph sites tracing restores: block output (hidden), MLP output, attention output. */
export type StateSite = "resid" | "mlp" | "attn";
export const KIND_SITE: Readonly<Record<TraceKind, StateSite>> = {
  hidden: "resid",
  mlp: "mlp",
  attn: "attn",
};

/** The reference's default window of restored MLP / attention layers. */
export const DEFAULT_WINDOW = 10;

/**
 * The window used when none is given. Deliberate difference for shallow models: the reference's 10 layers
 * (chosen for GPT-2 XL's 48) cover every layer of a model with fewer than 12, and then every window is the
 * same and nothing is located; there the window is a third of the depth (2 for the bundled 6-layer model, as
 * the biography pilot traced it). GPT-2 models (12 layers and up) get the reference's 10.
 */
export function defaultWindow(nLayer: number): number {
  return nLayer >= 12 ? DEFAULT_WINDOW : Math.max(1, Math.round(nLayer / 3));
}
/** The reference's default number of corrupted samples per prompt. */
export const DEFAULT_SAMPLES = 10;
/** Seed of the noise draws when none is given (the CLI's --seed default and the page's). */
export const DEFAULT_TRACE_SEED = 1;

/**
 * Layers [lo, hi) restored for a window centred at `layer`, exactly the reference's
 * `range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))` (Python floor division:
 * window 10 gives [L−5, L+4], one lower than the paper's description; odd windows are symmetric).
 */
export function restoredWindow(layer: number, window: number, nLayer: number): [number, number] {
  if (!Number.isInteger(window) || window < 1) {
    throw new RangeError(`window must be an integer ≥ 1 (got ${window})`);
  }
  return [Math.max(0, layer - Math.floor(window / 2)), Math.min(nLayer, layer - Math.floor(-window / 2))];
}

export interface TraceInput {
  /** The prompt's token ids. */
  ids: readonly number[];
  /** Subject tokens [b, e) (findSubjectRange): the corrupted positions. */
  subjectRange: readonly [number, number];
}

export interface TraceSettings {
  /** Corrupted rows per cell (the reference's 10). */
  samples: number;
  /** ν, the absolute noise scale (factor · σ_t already applied). */
  noise: number;
  seed: number;
}

/** One state to restore (clean value) or freeze (plain corrupted value) at every corrupted row. */
export interface StateRef {
  site: StateSite;
  layer: number;
  token: number;
}

/** One measurement: the corrupted run with some states restored and optionally some frozen. */
export interface TraceCell {
  restore: readonly StateRef[];
  /** Set to the plain corrupted run's values (severed paths). Restoration wins where both name a state. */
  freeze?: readonly StateRef[];
}

const key = (site: StateSite, layer: number) => `${site}.${layer}`;

/**
 * The clean + plain corrupted pass every cell of a prompt builds on. Holds GPU tensors: dispose it.
 */
export class BasePass {
  #clean: Map<string, Tensor>;
  #corrupted: Map<string, Tensor>;

  private constructor(
    readonly model: Gpt2Model,
    readonly input: TraceInput,
    readonly settings: TraceSettings,
    /** [samples · subjectTokens, d], sample-major. */
    readonly noise: Tensor,
    clean: Map<string, Tensor>,
    corrupted: Map<string, Tensor>,
    /** The clean run's top-1 next token: the traced answer. */
    readonly answerId: number,
    /** p(answer) in the clean run. */
    readonly highScore: number,
    /** p(answer) averaged over the corrupted samples, nothing restored. */
    readonly lowScore: number,
  ) {
    this.#clean = clean;
    this.#corrupted = corrupted;
  }

  get T(): number {
    return this.input.ids.length;
  }

  /**
   * Runs the base pass: one forward of 1 + samples rows (row 0 clean, the others with noise on the
   * subject embeddings), capturing clean states of resid/mlp/attn at every (token, layer) and the
   * corrupted states of `corruptedSites` (always including resid) for every sample.
   */
  static async run(
    model: Gpt2Model,
    input: TraceInput,
    settings: TraceSettings,
    opts: { corruptedSites?: readonly StateSite[] } = {},
  ): Promise<BasePass> {
    checkInput(model, input, settings);
    const e = model.engine, c = model.config;
    const T = input.ids.length, S = settings.samples;
    const [b, end] = input.subjectRange;
    const noise = subjectNoise(model, S, end - b, settings.noise, settings.seed);
    const cleanAt: Pos[] = Array.from({ length: T }, (_, t) => [0, t] as const);
    const corruptAt: Pos[] = [];
    for (let s = 1; s <= S; s++) for (let t = 0; t < T; t++) corruptAt.push([s, t]);
    const corruptedSites = new Set<StateSite>(["resid", ...(opts.corruptedSites ?? [])]);
    const hooks: Hook[] = [noiseHook(noise, 1, S, b, end)];
    for (let l = 0; l < c.nLayer; l++) {
      for (const site of ["resid", "mlp", "attn"] as const) {
        hooks.push({ site, layer: l, kind: "read", name: "clean." + key(site, l), at: cleanAt });
        if (corruptedSites.has(site)) {
          hooks.push({ site, layer: l, kind: "read", name: "corrupted." + key(site, l), at: corruptAt });
        }
      }
    }
    let captures: Map<string, Tensor> | undefined;
    try {
      const probs = await e.scopeAsync(async () => {
        const r = model.forward(Array.from({ length: S + 1 }, () => input.ids), { hooks, logits: "last" });
        captures = r.captures;
        return await e.read(softmax(r.logits!));
      });
      const V = c.vocabSize;
      let answerId = 0;
      for (let v = 1; v < V; v++) if (probs[v] > probs[answerId]) answerId = v;
      let low = 0;
      for (let s = 1; s <= S; s++) low += probs[s * V + answerId];
      const clean = new Map<string, Tensor>(), corrupted = new Map<string, Tensor>();
      for (const [name, t] of captures!) {
        if (name.startsWith("clean.")) clean.set(name.slice(6), t);
        else corrupted.set(name.slice(10), t);
      }
      return new BasePass(
        model,
        input,
        settings,
        noise,
        clean,
        corrupted,
        answerId,
        probs[answerId],
        low / S,
      );
    } catch (err) {
      noise.dispose();
      for (const t of captures?.values() ?? []) t.dispose();
      throw err;
    }
  }

  /** Clean states [T, d] of a site at a layer. */
  cleanState(site: StateSite, layer: number): Tensor {
    const t = this.#clean.get(key(site, layer));
    if (!t) throw new Error(`base pass: no clean ${site} states at layer ${layer}`);
    return t;
  }

  /** Plain corrupted states [samples · T, d] (sample-major) of a site at a layer. */
  corruptedState(site: StateSite, layer: number): Tensor {
    const t = this.#corrupted.get(key(site, layer));
    if (!t) {
      throw new Error(`base pass: corrupted ${site} states were not captured (run it with corruptedSites)`);
    }
    return t;
  }

  dispose(): void {
    this.noise.dispose();
    for (const t of this.#clean.values()) t.dispose();
    for (const t of this.#corrupted.values()) t.dispose();
    this.#clean.clear();
    this.#corrupted.clear();
  }
}

function checkInput(model: Gpt2Model, input: TraceInput, s: TraceSettings): void {
  const T = input.ids.length;
  if (T === 0) throw new RangeError("trace: the prompt has no tokens");
  if (T > model.config.nPositions) {
    throw new RangeError(
      `trace: the prompt has ${T} tokens; the model's context is ${model.config.nPositions}`,
    );
  }
  const [b, e] = input.subjectRange;
  if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e <= b || e > T) {
    throw new RangeError(
      `trace: subject range [${b}, ${e}) is not a non-empty range of the ${T} prompt tokens`,
    );
  }
  if (!Number.isInteger(s.samples) || s.samples < 1) {
    throw new RangeError(`trace: samples must be an integer ≥ 1 (got ${s.samples})`);
  }
  if (!Number.isFinite(s.noise) || s.noise < 0) {
    throw new RangeError(`trace: noise must be ≥ 0 (got ${s.noise})`);
  }
}

/** Adds the noise rows to the subject embeddings of rows firstRow .. firstRow + samples·copies − 1. */
function noiseHook(value: Tensor, firstRow: number, rows: number, b: number, e: number): Hook {
  const at: Pos[] = [];
  for (let r = 0; r < rows; r++) for (let t = b; t < e; t++) at.push([firstRow + r, t]);
  return { site: "embed", layer: 0, kind: "add", at, value };
}

// ------------------------------------------------------------------ cells of each kind

/** The reference's cells for a kind, token-major: cell t·nLayer + L restores token t at layer L (or its window). */
export function kindCells(kind: TraceKind, T: number, nLayer: number, window: number): TraceCell[] {
  const site = KIND_SITE[kind];
  const cells: TraceCell[] = [];
  for (let t = 0; t < T; t++) {
    for (let L = 0; L < nLayer; L++) {
      if (kind === "hidden") cells.push({ restore: [{ site, layer: L, token: t }] });
      else {
        const [lo, hi] = restoredWindow(L, window, nLayer);
        const restore: StateRef[] = [];
        for (let l = lo; l < hi; l++) restore.push({ site, layer: l, token: t });
        cells.push({ restore });
      }
    }
  }
  return cells;
}

/**
 * Severed-path cells (paper Fig. 3): restore the block output at `token`, layer L, for every L, while
 * freezing the MLP (or attention) output at that token at every layer to its plain corrupted value.
 */
export function severedCells(token: number, nLayer: number, sever: "mlp" | "attn" | null): TraceCell[] {
  return Array.from({ length: nLayer }, (_, L) => ({
    restore: [{ site: "resid" as const, layer: L, token }],
    freeze: sever ? Array.from({ length: nLayer }, (_, l) => ({ site: sever, layer: l, token })) : undefined,
  }));
}

// ------------------------------------------------------------------ batched evaluation

export interface CellScores {
  /** p(answer) averaged over the samples, one per cell. */
  scores: Float64Array;
  /** Forward rows run (cells × samples). */
  rows: number;
  forwards: number;
}

export interface TraceCellsOptions {
  /** Most rows in one forward (default: from a memory budget, `defaultMaxRows`). */
  maxRows?: number;
  /** Called after each chunk is read back, with the number of cells done. */
  onProgress?: (doneCells: number) => void;
}

/**
 * Rows per forward that keep one chunk under `budgetBytes`. The graph keeps every intermediate of a forward
 * until it returns, so the estimate is per row: T tokens × layers × (the block's intermediates) plus the
 * logits and their softmax over the vocabulary.
 */
export function defaultMaxRows(model: Gpt2Model, T: number, budgetBytes = 512 * 2 ** 20): number {
  const c = model.config;
  const perTokenLayer = 16 * c.nEmbd + 2 * c.nInner + c.nHead * T;
  const perRow = 4 * (T * c.nLayer * perTokenLayer + 4 * T * c.nEmbd + 3 * c.vocabSize);
  return Math.max(1, Math.floor(budgetBytes / perRow));
}

interface Plan {
  /** The block the forward starts at. */
  start: number;
  /** Restored block outputs at layer start − 1 written into the starting residual. */
  atStart: StateRef[];
  /** The states set by hooks (layer ≥ start). */
  restore: StateRef[];
  freeze: StateRef[];
}

function planCell(cell: TraceCell, nLayer: number): Plan {
  for (const r of [...cell.restore, ...(cell.freeze ?? [])]) {
    if (!Number.isInteger(r.layer) || r.layer < 0 || r.layer >= nLayer) {
      throw new RangeError(`trace cell: layer ${r.layer} outside 0..${nLayer - 1}`);
    }
  }
  if (cell.restore.length === 0) return { start: nLayer, atStart: [], restore: [], freeze: [] };
  const L0 = Math.min(...cell.restore.map((r) => r.layer));
  // Below L0 the run is the plain corrupted run, so freezing states there to their corrupted values changes
  // nothing. If everything changed at L0 is a block output, block L0 itself is also unchanged (its MLP and
  // attention run before the output is overwritten): start after it with the clean rows in the residual.
  const atL0 = cell.restore.filter((r) => r.layer === L0);
  const start = atL0.every((r) => r.site === "resid") ? L0 + 1 : L0;
  return {
    start,
    atStart: start === L0 + 1 ? atL0 : [],
    restore: cell.restore.filter((r) => r.layer >= start),
    freeze: (cell.freeze ?? []).filter((r) => r.layer >= start),
  };
}

/**
 * Scores the cells with batched forwards that start at each group's first changed block. Row c·S + s of
 * a chunk is cell c with noise sample s.
 */
export async function traceCells(
  base: BasePass,
  cells: readonly TraceCell[],
  opts: TraceCellsOptions = {},
): Promise<CellScores> {
  const model = base.model, e = model.engine, c = model.config;
  const T = base.T, S = base.settings.samples;
  for (const cell of cells) checkTokens(cell, T);
  const plans = cells.map((cell) => planCell(cell, c.nLayer));
  const maxRows = opts.maxRows ?? defaultMaxRows(model, T);
  const perChunk = Math.max(1, Math.floor(maxRows / S));
  const groups = new Map<number, number[]>();
  plans.forEach((p, i) => {
    const g = groups.get(p.start);
    if (g) g.push(i);
    else groups.set(p.start, [i]);
  });
  const chunks: { start: number; cells: number[] }[] = [];
  for (const [start, idx] of [...groups].sort((a, b) => a[0] - b[0])) {
    for (let i = 0; i < idx.length; i += perChunk) chunks.push({ start, cells: idx.slice(i, i + perChunk) });
  }

  const scores = new Float64Array(cells.length);
  let done = 0, rows = 0;
  let pending: Promise<void> | undefined;
  try {
    for (const chunk of chunks) {
      const probs = e.scope(() => runChunk(base, chunk.start, chunk.cells.map((i) => plans[i])));
      rows += chunk.cells.length * S;
      const read = e.read(probs).then((p) => {
        chunk.cells.forEach((cellIndex, k) => {
          let sum = 0;
          for (let s = 0; s < S; s++) sum += p[k * S + s];
          scores[cellIndex] = sum / S;
        });
        done += chunk.cells.length;
        opts.onProgress?.(done);
      }).finally(() => probs.dispose());
      // Record the next chunk while this one runs: wait only for the previous readback.
      const previous = pending;
      pending = read;
      await previous;
    }
    await pending;
  } finally {
    pending?.catch(() => {});
  }
  return { scores, rows, forwards: chunks.length };
}

function checkTokens(cell: TraceCell, T: number): void {
  for (const r of [...cell.restore, ...(cell.freeze ?? [])]) {
    if (!Number.isInteger(r.token) || r.token < 0 || r.token >= T) {
      throw new RangeError(`trace cell: token ${r.token} outside the prompt's ${T} tokens`);
    }
  }
}

/** One chunk's forward; returns p(answer) per row, [cells · S, 1]. */
function runChunk(base: BasePass, start: number, plans: Plan[]): Tensor {
  const model = base.model, e = model.engine, d = model.config.nEmbd;
  const { ids, subjectRange: [b, end] } = base.input;
  const T = ids.length, S = base.settings.samples, C = plans.length, B = C * S;
  const u32 = (xs: number[]) => e.upload(Uint32Array.from(xs), [xs.length], "u32");
  const hooks: Hook[] = [];
  let startState: { layer: number; resid: Tensor } | undefined;
  if (start > 0) {
    const resid = e.empty([B * T, d]);
    const corrupted = base.corruptedState("resid", start - 1);
    for (let k = 0; k < C; k++) {
      copyRows(corrupted, null, resid, Array.from({ length: S * T }, (_, i) => k * S * T + i));
    }
    const src: number[] = [], dst: number[] = [];
    plans.forEach((p, k) => {
      for (const r of p.atStart) {
        for (let s = 0; s < S; s++) (src.push(r.token), dst.push((k * S + s) * T + r.token));
      }
    });
    if (src.length > 0) copyRows(base.cleanState("resid", start - 1), u32(src), resid, u32(dst));
    startState = { layer: start, resid };
  } else {
    // Starting at the embeddings: the noise rows of sample s go to every cell's row k·S + s.
    const n = end - b, rows: number[] = [];
    for (let k = 0; k < C; k++) for (let s = 0; s < S; s++) for (let j = 0; j < n; j++) rows.push(s * n + j);
    hooks.push(noiseHook(selectRows(base.noise, u32(rows)), 0, B, b, end));
  }
  // Freezes first, restorations after, so a restored state wins where both name it.
  for (const what of ["freeze", "restore"] as const) {
    const bySite = new Map<string, { site: StateRef["site"]; layer: number; at: Pos[]; src: number[] }>();
    plans.forEach((p, k) => {
      for (const r of p[what]) {
        const g = bySite.get(key(r.site, r.layer)) ??
          bySite.set(key(r.site, r.layer), { site: r.site, layer: r.layer, at: [], src: [] }).get(
            key(r.site, r.layer),
          )!;
        for (let s = 0; s < S; s++) {
          g.at.push([k * S + s, r.token]);
          g.src.push(what === "restore" ? r.token : s * T + r.token);
        }
      }
    });
    for (const g of [...bySite.values()].sort((x, y) => x.layer - y.layer)) {
      const table = what === "restore"
        ? base.cleanState(g.site, g.layer)
        : base.corruptedState(g.site, g.layer);
      hooks.push({
        site: g.site,
        layer: g.layer,
        kind: "set",
        at: g.at,
        value: selectRows(table, u32(g.src)),
      });
    }
  }
  const { logits } = model.forward(Array.from({ length: B }, () => ids), {
    hooks,
    logits: "last",
    start: startState,
  });
  return sliceCols(softmax(logits!), base.answerId, base.answerId + 1);
}

/**
 * The reference's shape, for checking and benchmarking: one full forward per cell over 1 + samples rows
 * (row 0 clean), restoring by copying the clean row's states into the corrupted rows in flight, and one
 * readback per cell. Frozen states take the base pass's corrupted values (the same noise).
 */
export async function traceCellsNaive(
  base: BasePass,
  cells: readonly TraceCell[],
  opts: Pick<TraceCellsOptions, "onProgress"> = {},
): Promise<CellScores> {
  const model = base.model, e = model.engine;
  const { ids, subjectRange: [b, end] } = base.input;
  const T = ids.length, S = base.settings.samples;
  const scores = new Float64Array(cells.length);
  for (let i = 0; i < cells.length; i++) {
    const cell = cells[i];
    checkTokens(cell, T);
    const p = await e.scopeAsync(async () => {
      const hooks: Hook[] = [noiseHook(base.noise, 1, S, b, end)];
      for (const r of cell.freeze ?? []) {
        const src = Array.from({ length: S }, (_, s) => s * T + r.token);
        hooks.push({
          site: r.site,
          layer: r.layer,
          kind: "set",
          at: src.map((_, s) => [s + 1, r.token] as const),
          value: selectRows(
            base.corruptedState(r.site, r.layer),
            e.upload(Uint32Array.from(src), [S], "u32"),
          ),
        });
      }
      for (const r of cell.restore) {
        hooks.push({
          site: r.site,
          layer: r.layer,
          kind: "copy",
          from: Array.from({ length: S }, () => [0, r.token] as const),
          to: Array.from({ length: S }, (_, s) => [s + 1, r.token] as const),
        });
      }
      const { logits } = model.forward(Array.from({ length: S + 1 }, () => ids), { hooks, logits: "last" });
      return await e.read(sliceCols(softmax(logits!), base.answerId, base.answerId + 1));
    });
    let sum = 0;
    for (let s = 1; s <= S; s++) sum += p[s];
    scores[i] = sum / S;
    opts.onProgress?.(i + 1);
  }
  return { scores, rows: cells.length * (S + 1), forwards: cells.length };
}

// ------------------------------------------------------------------ whole traces

export interface KindTrace {
  kind: TraceKind;
  window: number;
  /** p(answer) with the cell restored, [T][nLayer] (raw probabilities, not minus low_score). */
  scores: number[][];
  rows: number;
  forwards: number;
  seconds: number;
}

export interface TraceKindOptions extends TraceCellsOptions {
  window?: number;
  /** "naive" = the reference-shaped one-forward-per-cell evaluation (for checks and benchmarks). */
  strategy?: "batched" | "naive";
}

/** The [tokens × layers] heatmap of one kind over an existing base pass. */
export async function traceKind(
  base: BasePass,
  kind: TraceKind,
  opts: TraceKindOptions = {},
): Promise<KindTrace> {
  const nLayer = base.model.config.nLayer, T = base.T;
  const window = opts.window ?? defaultWindow(nLayer);
  const cells = kindCells(kind, T, nLayer, window);
  const t0 = performance.now();
  const r = opts.strategy === "naive"
    ? await traceCellsNaive(base, cells, opts)
    : await traceCells(base, cells, opts);
  const scores = Array.from(
    { length: T },
    (_, t) => Array.from(r.scores.subarray(t * nLayer, (t + 1) * nLayer)),
  );
  return {
    kind,
    window,
    scores,
    rows: r.rows,
    forwards: r.forwards,
    seconds: (performance.now() - t0) / 1000,
  };
}

export interface SeveredTrace {
  /** The restored token (the last subject token). */
  token: number;
  /** p(answer) − low_score per restored layer: the plain restoration and each severed variant. */
  ordinary: number[];
  attn?: number[];
  mlp?: number[];
  rows: number;
  seconds: number;
}

/**
 * Severed paths (paper Fig. 3, reference §1.8): restore the block output at the last subject token at each
 * layer, plainly and with every MLP (or attention) output at that token frozen to its corrupted value.
 * The reference's pass 2 redraws its noise (a second RandomState draw), so its frozen values come from
 * other noise than the run they are written into; we freeze to the values of the same samples (the base
 * pass), which makes freezing below the restored layer an exact no-op. Effects are minus low_score, as the
 * notebook plots them.
 */
export async function severedTrace(
  base: BasePass,
  sever: readonly ("mlp" | "attn")[] = ["attn", "mlp"],
  opts: Omit<TraceKindOptions, "window"> = {},
): Promise<SeveredTrace> {
  const nLayer = base.model.config.nLayer;
  const token = base.input.subjectRange[1] - 1;
  const variants: ("mlp" | "attn" | null)[] = [null, ...sever];
  const cells = variants.flatMap((v) => severedCells(token, nLayer, v));
  const t0 = performance.now();
  const run = opts.strategy === "naive" ? traceCellsNaive : traceCells;
  const r = await run(base, cells, opts);
  const curve = (i: number) =>
    Array.from(r.scores.subarray(i * nLayer, (i + 1) * nLayer), (p) => p - base.lowScore);
  const out: SeveredTrace = {
    token,
    ordinary: curve(0),
    rows: r.rows,
    seconds: (performance.now() - t0) / 1000,
  };
  sever.forEach((v, i) => out[v] = curve(i + 1));
  return out;
}
