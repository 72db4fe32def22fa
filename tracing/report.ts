// What a trace run leaves behind, as named files (contents only: the caller writes them). Single prompt:
// trace.json, heatmap_<kind>.svg/.png, report.html. Severed paths: severed.json/.svg, report.html. Dataset:
// summary.json, aie_<kind>.svg/.png, aie_heatmaps.svg/.png (the kinds side by side), aie_lines.svg,
// report.html. Runtime-neutral: the PNGs are the SVGs rasterised by the caller's `Rasterise`, and are left
// out when none is given.
import { type AieSummary, effectBand, TOKEN_CATEGORIES } from "./aggregate.ts";
import {
  ansiHeatmap,
  autoVmax,
  CATEGORY_COLORS,
  fmt,
  groupedBarsSvg,
  type HeatmapSpec,
  heatmapSvg,
  htmlPage,
  KIND_COLORMAP,
  linePanelsSvg,
  type Rasterise,
  type Series,
  SEVERED_COLORS,
  sideBySideSvg,
} from "./render.ts";
import type { TraceKind } from "./trace.ts";

/** One kind's trace of one prompt: the `--json` object (and an element of trace.json). */
export interface TraceRecord {
  prompt: string;
  subject: string;
  tokens: string[];
  subject_range: [number, number];
  answer: string;
  answer_id: number;
  high_score: number;
  low_score: number;
  kind: TraceKind;
  window: number;
  samples: number;
  noise: number;
  seconds: number;
  scores: number[][];
}

/** Run-wide facts stored beside the records in trace.json. */
export interface TraceRunInfo {
  seed: number;
  model_hash: string;
  /** The noise factor when ν = factor · σ_t (null for an absolute --noise). */
  noise_factor: number | null;
  /** σ_t (null for an absolute --noise). */
  embedding_std: number | null;
}

export type OutputFiles = Map<string, string | Uint8Array>;

const KIND_NAME: Record<TraceKind, string> = { hidden: "state", mlp: "MLP", attn: "Attn" };

/** A token as a label: visible whitespace escapes, a star on corrupted (subject) tokens. */
export function tokenLabel(token: string, subject: boolean): string {
  return token.replace(/\n/g, "\\n").replace(/\t/g, "\\t") + (subject ? "*" : "");
}

/** The paper's single-prompt heatmap (§1.7): vmin = low_score, vmax = the data's max. */
export function traceHeatmapSpec(r: TraceRecord): HeatmapSpec {
  const [b, e] = r.subject_range;
  const labels = r.tokens.map((t, i) => tokenLabel(t, i >= b && i < e));
  return {
    values: r.scores,
    rowLabels: labels,
    vmin: r.low_score,
    vmax: autoVmax(r.scores, r.low_score),
    cmap: KIND_COLORMAP[r.kind],
    title: `Impact of restoring ${KIND_NAME[r.kind]} after corrupted input`,
    xlabel: r.kind === "hidden"
      ? "single restored layer within GPT"
      : `center of interval of ${r.window} restored ${KIND_NAME[r.kind]} layers`,
    colorbarTitle: `p(${r.answer.trim()})`,
    cellTitle: (i, l, v) =>
      `${JSON.stringify(r.tokens[i])} (token ${i}), layer ${l}: p = ${v.toPrecision(6)}`,
  };
}

export function traceAnsi(r: TraceRecord, color: boolean): string {
  // Quoted labels in the terminal, where leading spaces would otherwise vanish into the padding.
  const [b, e] = r.subject_range;
  const spec = {
    ...traceHeatmapSpec(r),
    rowLabels: r.tokens.map((t, i) => JSON.stringify(t) + (i >= b && i < e ? "*" : "")),
  };
  const head =
    `${r.kind}: p(${JSON.stringify(r.answer)}) low ${fmt(r.low_score, 4)}, high ${fmt(r.high_score, 4)}` +
    (r.kind === "hidden" ? "" : `, window ${r.window}`) + ` (${r.seconds.toFixed(1)} s)`;
  return head + "\n" + ansiHeatmap(spec, { color });
}

const settingsFacts = (r: TraceRecord, info: TraceRunInfo): [string, string][] => [
  ["prompt", JSON.stringify(r.prompt)],
  ["subject", `${JSON.stringify(r.subject)} (tokens ${r.subject_range[0]}..${r.subject_range[1] - 1})`],
  ["answer", `${JSON.stringify(r.answer)} (id ${r.answer_id})`],
  ["p(answer)", `clean ${fmt(r.high_score, 4)}, corrupted ${fmt(r.low_score, 4)}`],
  [
    "noise",
    `${fmt(r.noise, 4)}${
      info.noise_factor !== null ? ` = ${info.noise_factor} × σ_t (σ_t = ${fmt(info.embedding_std!, 4)})` : ""
    }` +
    `, ${r.samples} samples, seed ${info.seed}`,
  ],
  ["model", info.model_hash],
];

/** An SVG figure and, when there is a rasteriser, its PNG. */
async function setFigure(
  files: OutputFiles,
  stem: string,
  svg: string,
  rasterise?: Rasterise,
): Promise<void> {
  files.set(`${stem}.svg`, svg);
  if (rasterise) files.set(`${stem}.png`, await rasterise(svg));
}

/** trace.json (the record, or an array for several kinds, plus run info), heatmaps, report.html. */
export async function traceFiles(
  records: readonly TraceRecord[],
  info: TraceRunInfo,
  rasterise?: Rasterise,
): Promise<OutputFiles> {
  const files: OutputFiles = new Map();
  const withInfo = records.map((r) => ({ ...r, ...info }));
  files.set("trace.json", JSON.stringify(withInfo.length === 1 ? withInfo[0] : withInfo) + "\n");
  const figures: { caption: string; svg: string }[] = [];
  for (const r of records) {
    const svg = heatmapSvg(traceHeatmapSpec(r));
    await setFigure(files, `heatmap_${r.kind}`, svg, rasterise);
    figures.push({ caption: `${r.kind}${r.kind === "hidden" ? "" : `, window ${r.window}`}`, svg });
  }
  const r0 = records[0];
  files.set(
    "report.html",
    htmlPage({
      title: `Causal trace: ${r0.prompt}`,
      facts: settingsFacts(r0, info),
      figures,
      data: withInfo,
    }),
  );
  return files;
}

// ------------------------------------------------------------------ severed paths

export interface SeveredRecord {
  prompt: string;
  subject: string;
  tokens: string[];
  subject_range: [number, number];
  /** The restored token (last subject token). */
  token: number;
  answer: string;
  answer_id: number;
  high_score: number;
  low_score: number;
  samples: number;
  noise: number;
  seconds: number;
  /** p(answer) − low_score per restored layer. */
  ordinary: number[];
  attn_severed?: number[];
  mlp_severed?: number[];
}

function severedSeries(r: SeveredRecord): Series[] {
  const s: Series[] = [{
    label: "Effect of single state on P",
    color: SEVERED_COLORS.ordinary,
    values: r.ordinary,
  }];
  if (r.attn_severed) {
    s.push({ label: "Effect with Attn severed", color: SEVERED_COLORS.attn, values: r.attn_severed });
  }
  if (r.mlp_severed) {
    s.push({ label: "Effect with MLP severed", color: SEVERED_COLORS.mlp, values: r.mlp_severed });
  }
  return s;
}

export function severedSvg(r: SeveredRecord): string {
  return groupedBarsSvg(severedSeries(r), {
    title: "Causal effect of states at the early site with Attn or MLP modules severed",
    xlabel: "Layer at which the single hidden state is restored",
    ylabel: "Indirect effect on p(answer)",
  });
}

/** A table: one line per layer with each curve's value. */
export function severedText(r: SeveredRecord): string {
  const s = severedSeries(r);
  const lines = [`layer  ${s.map((x) => x.label.replace("Effect ", "").padStart(22)).join(" ")}`];
  r.ordinary.forEach((_, l) => {
    lines.push(`${String(l).padStart(5)}  ${s.map((x) => x.values[l].toFixed(5).padStart(22)).join(" ")}`);
  });
  return lines.join("\n");
}

export function severedFiles(r: SeveredRecord, info: TraceRunInfo): OutputFiles {
  const files: OutputFiles = new Map();
  const svg = severedSvg(r);
  files.set("severed.json", JSON.stringify({ ...r, ...info }) + "\n");
  files.set("severed.svg", svg);
  const asTrace = { ...r, kind: "hidden" as const, window: 1, scores: [] };
  files.set(
    "report.html",
    htmlPage({
      title: `Severed paths: ${r.prompt}`,
      facts: [
        ...settingsFacts(asTrace, info),
        ["restored token", `${JSON.stringify(r.tokens[r.token])} (token ${r.token}, the last subject token)`],
      ],
      figures: [{ caption: "effects minus low_score", svg }],
      data: { ...r, ...info },
    }),
  );
  return files;
}

// ------------------------------------------------------------------ dataset

const AIE_TITLE: Record<TraceKind, string> = { hidden: "h_i^(l)", mlp: "MLP", attn: "Attn" };

/** The summary heatmap (§1.9): vmin 0, vmax shared (the hidden kind's max), colour bar "AIE". */
export function aieHeatmapSpec(kind: TraceKind, s: AieSummary, vmax: number, window: number): HeatmapSpec {
  return {
    values: s.aie,
    rowLabels: [...TOKEN_CATEGORIES],
    vmin: 0,
    vmax,
    cmap: KIND_COLORMAP[kind],
    title: `Avg Indirect Effect of ${AIE_TITLE[kind]} over ${s.n} prompts`,
    xlabel: kind === "hidden"
      ? "single patched layer within GPT"
      : `center of interval of ${window} patched ${kind} layers`,
    colorbarTitle: "AIE",
    cellTitle: (i, l, v) =>
      `${TOKEN_CATEGORIES[i]}, layer ${l}: AIE = ${v.toPrecision(6)} (${s.rows[i]} rows)`,
  };
}

/** The vmax the notebook shares across kinds: the hidden kind's AIE max (else the first kind's). */
export function sharedAieVmax(kinds: Partial<Record<TraceKind, AieSummary>>): number {
  const ref = kinds.hidden ?? Object.values(kinds)[0];
  return ref ? autoVmax(ref.aie, 0) : 0;
}

export function aieLinesSvg(kinds: Partial<Record<TraceKind, AieSummary>>, window: number): string {
  const titles: Record<TraceKind, string> = {
    hidden: "single hidden vector",
    mlp: `run of ${window} MLP lookups`,
    attn: `run of ${window} Attn modules`,
  };
  const panels = (Object.entries(kinds) as [TraceKind, AieSummary][]).map(([kind, s]) => {
    const band = effectBand(s);
    return {
      title: titles[kind],
      series: TOKEN_CATEGORIES.map((label, k) => ({
        label,
        color: CATEGORY_COLORS[k],
        values: band.mid[k],
        lo: band.lo[k],
        hi: band.hi[k],
      })),
    };
  });
  return linePanelsSvg(panels, { xlabel: "Layer number", ylabel: "Average indirect effect" });
}

export interface FactsSummaryRecord {
  facts_file: string;
  model_hash: string;
  n: number;
  facts: number;
  skipped: number;
  samples: number;
  noise: number;
  window: number;
  seed: number;
  seconds: number;
  suggested_layer: number | null;
  /** Per kind: AIE [6][nLayer] by category name, ATE, mean low/high. */
  kinds: Partial<
    Record<TraceKind, { aie: Record<string, number[]>; ate: number; low_score: number; high_score: number }>
  >;
}

export function factsSummaryRecord(
  kinds: Partial<Record<TraceKind, AieSummary>>,
  meta: Omit<FactsSummaryRecord, "kinds">,
): FactsSummaryRecord {
  const out: FactsSummaryRecord = { ...meta, kinds: {} };
  for (const [kind, s] of Object.entries(kinds) as [TraceKind, AieSummary][]) {
    out.kinds[kind] = {
      aie: Object.fromEntries(TOKEN_CATEGORIES.map((c, k) => [c, s.aie[k]])),
      ate: s.ate,
      low_score: s.lowScore,
      high_score: s.highScore,
    };
  }
  return out;
}

export async function factsFiles(
  kinds: Partial<Record<TraceKind, AieSummary>>,
  record: FactsSummaryRecord,
  rasterise?: Rasterise,
): Promise<OutputFiles> {
  const files: OutputFiles = new Map();
  files.set("summary.json", JSON.stringify(record) + "\n");
  const vmax = sharedAieVmax(kinds);
  const figures: { caption: string; svg: string }[] = [];
  for (const [kind, s] of Object.entries(kinds) as [TraceKind, AieSummary][]) {
    const svg = heatmapSvg(aieHeatmapSpec(kind, s, vmax, record.window));
    await setFigure(files, `aie_${kind}`, svg, rasterise);
    figures.push({ caption: `${kind}: ATE ${fmt(s.ate, 4)}`, svg });
  }
  // One picture of all kinds, as the paper (and the README) shows them.
  if (figures.length > 1) {
    await setFigure(files, "aie_heatmaps", sideBySideSvg(figures.map((f) => f.svg)), rasterise);
  }
  const lines = aieLinesSvg(kinds, record.window);
  files.set("aie_lines.svg", lines);
  figures.push({ caption: "AIE by layer with 95% intervals (1.96·std/√n)", svg: lines });
  files.set(
    "report.html",
    htmlPage({
      title: `Average indirect effects over ${record.n} facts`,
      facts: [
        [
          "facts",
          `${record.facts_file}: ${record.n} of ${record.facts} predicted correctly (${record.skipped} skipped)`,
        ],
        [
          "noise",
          `${fmt(record.noise, 4)}, ${record.samples} samples, seed ${record.seed}, window ${record.window}`,
        ],
        [
          "suggested edit layer",
          record.suggested_layer === null ? "n/a (no mlp trace)" : String(record.suggested_layer),
        ],
        ["model", record.model_hash],
      ],
      figures,
      data: record,
    }),
  );
  return files;
}

/** Terminal summary: per kind the AIE heatmap and the best layer of each category. */
export function factsAnsi(
  kinds: Partial<Record<TraceKind, AieSummary>>,
  window: number,
  color: boolean,
): string {
  const vmax = sharedAieVmax(kinds);
  const out: string[] = [];
  for (const [kind, s] of Object.entries(kinds) as [TraceKind, AieSummary][]) {
    out.push(
      `${kind}: ATE ${fmt(s.ate, 4)} (mean high ${fmt(s.highScore, 4)}, low ${fmt(s.lowScore, 4)}), n ${s.n}`,
    );
    out.push(ansiHeatmap(aieHeatmapSpec(kind, s, vmax, window), { color, labelWidth: 22 }));
  }
  return out.join("\n");
}
