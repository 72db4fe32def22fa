// Reports of evaluation runs: the paper's table (Table 4 / Table 1 column names, 95% intervals in
// parentheses) as Markdown and terminal text, the `--json` record, and a self-contained HTML page (inline
// SVG, no network) with the table, per-case distributions of every column, and, when runs differ only in
// the number of sequential edits, the curve of S, ES, PS and NS against it. Runtime-neutral: strings in,
// strings out.
import {
  type CaseResult,
  type Column,
  COUNTERFACT_COLUMNS,
  counterFactCaseValues,
  type CounterFactMetrics,
  isZsreMetrics,
  roundedMeans,
  type RunIdentity,
  type Summary,
  type SummaryRow,
  ZSRE_COLUMNS,
  zsreCaseValues,
} from "./metrics.ts";

/** One run of the table: its identity, summary and cases. */
export interface ReportRun {
  label: string;
  run: RunIdentity;
  summary: Summary;
  cases: readonly CaseResult[];
}

/**
 * The columns of a kind; portability (PT, our extension) only where some summary has it, so runs on datasets
 * without portability prompts (the real CounterFact) get the paper's columns exactly.
 */
const columnsOf = (kind: Summary["kind"], summaries: readonly Summary[] = []): readonly Column[] =>
  kind === "zsre"
    ? ZSRE_COLUMNS
    : COUNTERFACT_COLUMNS.filter((c) => c !== "PT" || summaries.some((s) => s.post.PT || s.pre.PT));
const summariesOf = (runs: readonly { summary: Summary }[]) => runs.map((r) => r.summary);

/** "mean (ci)" with one decimal, as the paper's tables; S has no interval; absent columns are "–". */
export function cell(row: SummaryRow, col: Column): string {
  const s = row[col];
  if (!s || !Number.isFinite(s.mean)) return "–";
  return col === "S" || !Number.isFinite(s.ci95)
    ? s.mean.toFixed(1)
    : `${s.mean.toFixed(1)} (${s.ci95.toFixed(1)})`;
}

/** A run's label: the method, and the sequential count when it is not 1. */
export function runLabel(run: RunIdentity): string {
  const name = { none: "unedited", rome: "ROME", ft: "FT", "ft-l": "FT+L" }[run.method] ?? run.method;
  return run.sequential > 1 ? `${name}, ${run.sequential} sequential` : name;
}

/**
 * Table rows: the unedited model ("pre") once for every distinct pre row (runs over the same model and
 * cases share it), then each run's "post" row. A "none" run contributes only its pre row (its post is the same).
 */
export function tableRows(runs: readonly ReportRun[]): { label: string; n: number; row: SummaryRow }[] {
  const out: { label: string; n: number; row: SummaryRow }[] = [];
  const seenPre = new Set<string>();
  for (const r of runs) {
    const pre = JSON.stringify([r.summary.n, r.summary.pre]);
    if (!seenPre.has(pre)) {
      seenPre.add(pre);
      out.push({
        label: `unedited model (pre), ${r.run.model_hash.slice(0, 8)}`,
        n: r.summary.n,
        row: r.summary.pre,
      });
    }
    if (r.run.method !== "none") out.push({ label: r.label, n: r.summary.n, row: r.summary.post });
  }
  return out;
}

/** The table in Markdown. */
export function markdownTable(runs: readonly ReportRun[]): string {
  if (runs.length === 0) return "(no cases)\n";
  const kind = runs[0].summary.kind;
  const cols = columnsOf(kind, summariesOf(runs));
  const head = `| Editor | ${cols.join(" | ")} | n |`;
  const rule = `|${"---|".repeat(cols.length + 2)}`;
  const lines = tableRows(runs).map((r) =>
    `| ${r.label} | ${cols.map((c) => cell(r.row, c)).join(" | ")} | ${r.n} |`
  );
  return [head, rule, ...lines].join("\n") + "\n";
}

/** The table as aligned plain text for a terminal. */
export function textTable(runs: readonly ReportRun[]): string {
  if (runs.length === 0) return "(no cases)\n";
  const kind = runs[0].summary.kind;
  const cols = columnsOf(kind, summariesOf(runs));
  const rows = tableRows(runs);
  const grid = [
    ["", ...cols, "n"],
    ...rows.map((r) => [r.label, ...cols.map((c) => cell(r.row, c)), String(r.n)]),
  ];
  const widths = grid[0].map((_, j) => Math.max(...grid.map((g) => g[j].length)));
  return grid.map((g) => g.map((v, j) => j === 0 ? v.padEnd(widths[j]) : v.padStart(widths[j])).join("  "))
    .join("\n") +
    "\n";
}

/**
 * The `--json` record: {method, n, summary: {S, ES, EM, PS, PM, NS, NM, [PT,] GE, RS}, pre: {...}} with the
 * paper's units (×100, rounded to 2 decimals as summarize.py), plus the 95% half-widths, the mean edit
 * time and the run's settings. zsRE runs use the zsRE columns.
 */
export function jsonRecord(r: ReportRun, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const kind = r.summary.kind;
  const ci = (row: SummaryRow) =>
    Object.fromEntries(
      cols.filter((c) => c !== "S").map((
        c,
      ) => [c, row[c] ? Math.round(row[c]!.ci95 * 100) / 100 : null]),
    );
  const cols = columnsOf(kind, [r.summary]);
  const means = (row: SummaryRow) => {
    const all = roundedMeans(row, kind);
    return Object.fromEntries(cols.map((c) => [c, all[c]]));
  };
  return {
    method: r.run.method,
    n: r.summary.n,
    summary: means(r.summary.post),
    pre: means(r.summary.pre),
    ci95: { summary: ci(r.summary.post), pre: ci(r.summary.pre) },
    dataset: kind,
    sequential: r.run.sequential,
    time: Math.round(r.summary.time.mean * 1000) / 1000,
    model_hash: r.run.model_hash,
    ...extra,
  };
}

// ------------------------------------------------------------------ SVG

export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** tab10, the matplotlib default cycle. */
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function niceStep(span: number, target: number): number {
  const raw = span / target, mag = 10 ** Math.floor(Math.log10(raw)), f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

function ticks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, target);
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + 1e-9 * step; k++) {
    out.push(Number((k * step).toPrecision(12)));
  }
  return out;
}

const tickText = (v: number) => String(Number(v.toPrecision(4)));

/**
 * Overlaid histograms (step outlines) of per-case values, one series per run, over a shared range with
 * `bins` bins; the y axis is the fraction of each series' cases.
 */
export function histogramSvg(
  title: string,
  series: readonly { label: string; values: readonly number[] }[],
  bins = 20,
): string {
  const all = series.flatMap((s) => s.values).filter(Number.isFinite);
  const W = 340, H = 210, left = 44, top = 24, pw = W - left - 12, ph = 120;
  let lo = all.length ? Math.min(...all) : 0, hi = all.length ? Math.max(...all) : 1;
  if (hi - lo < 1e-9) (lo -= 0.5, hi += 0.5);
  const width = (hi - lo) / bins;
  const hist = series.map((s) => {
    const h = new Array(bins).fill(0);
    for (const v of s.values) if (Number.isFinite(v)) h[Math.min(bins - 1, Math.floor((v - lo) / width))]++;
    return h.map((c) => s.values.length ? c / s.values.length : 0);
  });
  const ymax = Math.max(0.05, ...hist.flat());
  const sx = (v: number) => left + (v - lo) / (hi - lo) * pw, sy = (f: number) => top + ph - f / ymax * ph;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${
      H + 14 * series.length
    }" font-family="sans-serif" font-size="10">`,
    `<text x="${left + pw / 2}" y="14" text-anchor="middle" font-size="12">${escapeXml(title)}</text>`,
    `<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`,
  ];
  for (const t of ticks(lo, hi)) {
    out.push(`<line x1="${sx(t)}" y1="${top + ph}" x2="${sx(t)}" y2="${top + ph + 4}" stroke="#333"/>`);
    out.push(`<text x="${sx(t)}" y="${top + ph + 14}" text-anchor="middle">${tickText(t)}</text>`);
  }
  for (const t of ticks(0, ymax, 3)) {
    out.push(`<text x="${left - 4}" y="${sy(t) + 3}" text-anchor="end">${tickText(t)}</text>`);
  }
  out.push(
    `<text x="${left + pw / 2}" y="${
      top + ph + 28
    }" text-anchor="middle">per-case value (fraction of cases per bin)</text>`,
  );
  hist.forEach((h, k) => {
    const pts: string[] = [];
    h.forEach((f, b) => pts.push(`${sx(lo + b * width)},${sy(f)}`, `${sx(lo + (b + 1) * width)},${sy(f)}`));
    const color = COLORS[k % COLORS.length];
    out.push(
      `<polyline fill="${color}" fill-opacity="0.12" stroke="${color}" stroke-width="1.6" points="${sx(lo)},${
        sy(0)
      } ${pts.join(" ")} ${sx(hi)},${sy(0)}">` +
        `<title>${escapeXml(series[k].label)}</title></polyline>`,
    );
    const ly = top + ph + 44 + 14 * k;
    out.push(
      `<line x1="${left}" y1="${ly - 3}" x2="${left + 16}" y2="${
        ly - 3
      }" stroke="${color}" stroke-width="2"/>`,
    );
    out.push(
      `<text x="${left + 22}" y="${ly}">${
        escapeXml(`${series[k].label} (n=${series[k].values.length})`)
      }</text>`,
    );
  });
  out.push(`</svg>`);
  return out.join("\n");
}

/** Lines of y against x (log-scaled x when it spans more than a decade), one per series, with 95% bars. */
export function curveSvg(
  title: string,
  xlabel: string,
  series: readonly { label: string; points: readonly { x: number; y: number; ci?: number }[] }[],
): string {
  const W = 420, H = 240, left = 44, top = 24, pw = W - left - 130, ph = 170;
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  // The frame covers the means (and at least 0–100); interval bars are cut at its edges.
  const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite);
  const xlo = Math.min(...xs), xhi = Math.max(...xs);
  const log = xlo > 0 && xhi / xlo > 10;
  const fx = (x: number) => log ? Math.log10(x) : x;
  const [a, b] = [fx(xlo), fx(xhi) > fx(xlo) ? fx(xhi) : fx(xlo) + 1];
  const ylo = Math.min(0, ...ys), yhi = Math.max(100, ...ys);
  const sx = (x: number) => left + (fx(x) - a) / (b - a) * pw;
  const sy = (y: number) => top + ph - (Math.min(yhi, Math.max(ylo, y)) - ylo) / (yhi - ylo) * ph;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="10">`,
    `<text x="${left + pw / 2}" y="14" text-anchor="middle" font-size="12">${escapeXml(title)}</text>`,
    `<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`,
  ];
  for (const x of [...new Set(xs)].sort((p, q) => p - q)) {
    out.push(`<text x="${sx(x)}" y="${top + ph + 14}" text-anchor="middle">${x}</text>`);
  }
  for (const t of ticks(ylo, yhi, 5)) {
    out.push(`<text x="${left - 4}" y="${sy(t) + 3}" text-anchor="end">${tickText(t)}</text>`);
  }
  out.push(
    `<text x="${left + pw / 2}" y="${top + ph + 30}" text-anchor="middle">${escapeXml(xlabel)}${
      log ? " (log scale)" : ""
    }</text>`,
  );
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const pts = [...s.points].sort((p, q) => p.x - q.x).filter((p) => Number.isFinite(p.y));
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${
        pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ")
      }"/>`,
    );
    for (const p of pts) {
      out.push(
        `<circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="2.5" fill="${color}"><title>${
          escapeXml(`${s.label} at ${p.x}: ${p.y.toFixed(1)}`)
        }</title></circle>`,
      );
      if (p.ci && Number.isFinite(p.ci)) {
        out.push(
          `<line x1="${sx(p.x)}" y1="${sy(p.y - p.ci)}" x2="${sx(p.x)}" y2="${
            sy(p.y + p.ci)
          }" stroke="${color}"/>`,
        );
      }
    }
    out.push(
      `<line x1="${left + pw + 10}" y1="${top + 10 + 14 * k}" x2="${left + pw + 26}" y2="${
        top + 10 + 14 * k
      }" stroke="${color}" stroke-width="2"/>`,
    );
    out.push(`<text x="${left + pw + 30}" y="${top + 13 + 14 * k}">${escapeXml(s.label)}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n");
}

// ------------------------------------------------------------------ pages

/** Per-case values of one column (fractions ×100, GE ×100, as the table) for pre or post. */
function caseColumn(cases: readonly CaseResult[], which: "pre" | "post", col: Column): number[] {
  const out: number[] = [];
  for (const c of cases) {
    const m = c[which];
    const v =
      (isZsreMetrics(m) ? zsreCaseValues(m) : counterFactCaseValues(m as CounterFactMetrics)) as Partial<
        Record<Column, number>
      >;
    if (v[col] !== undefined) out.push(v[col]! * 100);
  }
  return out;
}

/** Runs that differ only in `sequential` (same method and settings): the points of the sequential curve. */
export function sequentialCurves(runs: readonly ReportRun[]): { method: string; points: ReportRun[] }[] {
  const byMethod = new Map<string, ReportRun[]>();
  for (const r of runs) {
    if (r.run.method === "none") continue;
    const key = JSON.stringify({ ...r.run, sequential: 0 });
    byMethod.set(key, [...(byMethod.get(key) ?? []), r]);
  }
  return [...byMethod.values()].filter((rs) => new Set(rs.map((r) => r.run.sequential)).size > 1).map((
    rs,
  ) => ({
    method: runLabel({ ...rs[0].run, sequential: 1 }),
    points: [...rs].sort((p, q) => p.run.sequential - q.run.sequential),
  }));
}

/** The Markdown report: settings, the table, and the sequential curve as a table when there is one. */
export function markdownReport(runs: readonly ReportRun[], title: string): string {
  const out = [`# ${title}`, ""];
  if (runs.length > 0) {
    const r0 = runs[0].run;
    out.push(
      `Dataset: ${r0.dataset_kind} (file hash ${r0.dataset_hash}); model ${r0.model_hash}.`,
      r0.dataset_kind === "counterfact"
        ? `Generation tests: ${
          r0.generation.max_out_len
            ? `${r0.generation.max_out_len} tokens per text, top-${r0.generation.top_k} sampling, seed ${r0.generation.seed}; tf-idf ${r0.generation.tfidf}`
            : "skipped"
        }.`
        : "",
      "",
      "Means over cases ×100 (GE: weighted n-gram entropy ×100), 95% interval 1.96·std/√n in parentheses; " +
        "S is the harmonic mean of ES, PS and NS (zsRE: of the three accuracies).",
      "",
      markdownTable(runs),
    );
  }
  for (const c of sequentialCurves(runs)) {
    const kind = c.points[0].summary.kind;
    const cols = columnsOf(kind, summariesOf(c.points));
    out.push(
      `## ${c.method}: edits applied in sequence`,
      "",
      `| edits in sequence | ${cols.join(" | ")} | n |`,
      `|${"---|".repeat(cols.length + 2)}`,
    );
    for (const p of c.points) {
      out.push(
        `| ${p.run.sequential} | ${
          cols.map((col) => cell(p.summary.post, col)).join(" | ")
        } | ${p.summary.n} |`,
      );
    }
    out.push("");
  }
  const time = runs.filter((r) => r.run.method !== "none").map((r) =>
    `${r.label} ${r.summary.time.mean.toFixed(2)} s`
  );
  if (time.length) out.push(`Mean edit time: ${time.join(", ")}.`, "");
  return out.join("\n");
}

/** The self-contained HTML page: the table, per-case distributions per column, and sequential curves. */
export function htmlReport(runs: readonly ReportRun[], title: string): string {
  const kind = runs[0]?.summary.kind ?? "counterfact";
  const cols = columnsOf(kind, summariesOf(runs)).filter((c) => c !== "S");
  const figures: string[] = [];
  for (const col of cols) {
    const series = [
      { label: "unedited (pre)", values: runs.length ? caseColumn(runs[0].cases, "pre", col) : [] },
      ...runs.filter((r) => r.run.method !== "none").map((r) => ({
        label: r.label,
        values: caseColumn(r.cases, "post", col),
      })),
    ];
    if (series.some((s) => s.values.length > 0)) figures.push(histogramSvg(col, series));
  }
  for (const c of sequentialCurves(runs)) {
    const parts: Column[] = kind === "zsre"
      ? ["S", "Efficacy", "Paraphrase", "Specificity"]
      : ["S", "ES", "PS", "NS"];
    figures.push(curveSvg(
      `${c.method}: after N edits in sequence`,
      "edits in sequence (N)",
      parts.map((p) => ({
        label: p,
        points: c.points.map((r) => ({
          x: r.run.sequential,
          y: r.summary.post[p]?.mean ?? NaN,
          ci: r.summary.post[p]?.ci95,
        })),
      })),
    ));
  }
  const rows = tableRows(runs);
  const allCols = columnsOf(kind, summariesOf(runs));
  const table =
    `<table class="t"><tr><th>Editor</th>${allCols.map((c) => `<th>${c}</th>`).join("")}<th>n</th></tr>` +
    rows.map((r) =>
      `<tr><td>${escapeXml(r.label)}</td>${
        allCols.map((c) => `<td>${escapeXml(cell(r.row, c))}</td>`).join("")
      }<td>${r.n}</td></tr>`
    ).join("") +
    `</table>`;
  const data = runs.map((r) => ({ label: r.label, run: r.run, summary: r.summary }));
  const json = JSON.stringify(data).replace(/</g, "\\u003c");
  const md = markdownReport(runs, title).split("\n").filter((l) =>
    !l.startsWith("|") && !l.startsWith("#") && l.trim() !== ""
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeXml(title)}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#111;max-width:1200px}
table.t{border-collapse:collapse;margin:12px 0}table.t td,table.t th{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.t td:first-child,table.t th:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:12px}
p{margin:4px 0;font-size:13px}
</style></head><body>
<h1 style="font-size:20px">${escapeXml(title)}</h1>
${md.map((l) => `<p>${escapeXml(l)}</p>`).join("\n")}
${table}
<h2 style="font-size:16px">Per-case distributions</h2>
<div class="figs">${figures.join("\n")}</div>
<script type="application/json" id="data">${json}</script>
</body></html>
`;
}
