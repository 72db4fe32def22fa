// Pictures of traces: heatmaps in the paper's style (reference §1.7, §1.9) as SVG and ANSI text, the
// severed-path bar chart (§1.8), the AIE line plots with 95% bands (paper Fig. 7), and self-contained HTML
// reports (inline SVG and CSS, a few lines of inline JS for the hover readout; no network). Runtime-neutral:
// every function returns a string; PNGs are these SVGs rasterised by a function the caller hands in
// (`Rasterise`), and writing files is the caller's job.
import { colormap, type ColormapName, normalize, TAB10, toHex } from "./colormap.ts";
import type { TraceKind } from "./trace.ts";

export const KIND_COLORMAP: Readonly<Record<TraceKind, ColormapName>> = {
  hidden: "Purples",
  mlp: "Greens",
  attn: "Reds",
};

/**
 * The typeface the figures name first, and the one a rasteriser must be given: Liberation Serif has the
 * metrics of Times New Roman (the paper's figures), so the layout's text widths hold in either, and resvg
 * draws no text at all unless a font it was given matches the SVG's font-family.
 */
export const FIGURE_FONT = "Liberation Serif";

const FONT = `font-family="${FIGURE_FONT}, Times New Roman, Times, serif"`;

/** SVG text → PNG bytes. tracing/ draws no pixels itself: a runtime edge supplies this (cli/figures.ts). */
export type Rasterise = (svg: string) => Promise<Uint8Array>;

export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A number with at most `digits` significant digits, without trailing zeros. */
export function fmt(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) < 1e-12) return "0";
  return String(Number(v.toPrecision(digits)));
}

/** About `target` round tick values (steps of 1, 2 or 5 × 10^k) inside [lo, hi]. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo) || !Number.isFinite(lo) || !Number.isFinite(hi)) return Number.isFinite(lo) ? [lo] : [];
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) {
    out.push(Number((k * step).toPrecision(12)));
  }
  return out;
}

/** Tick labels with as many decimals as their spacing needs (so neighbours never print alike). */
export function tickLabels(ticks: readonly number[]): string[] {
  if (ticks.length < 2) return ticks.map((t) => fmt(t));
  const step = Math.abs(ticks[1] - ticks[0]);
  const decimals = Math.max(0, Math.min(12, Math.ceil(-Math.log10(step) - 1e-9)));
  return ticks.map((t) => (Math.abs(t) < step * 1e-6 ? 0 : t).toFixed(decimals));
}

/**
 * The layer ticks of the reference (`range(0, n_layers - 6, 5)`). For models with fewer than 12 layers
 * that range holds at most one tick, so there we deliberately label every layer instead.
 */
export function layerTicks(nLayer: number): number[] {
  const ref: number[] = [];
  for (let l = 0; l < nLayer - 6; l += 5) ref.push(l);
  return ref.length >= 2 ? ref : Array.from({ length: nLayer }, (_, l) => l);
}

// ------------------------------------------------------------------ heatmaps

export interface HeatmapSpec {
  /** rows × columns (tokens × layers, or categories × layers). */
  values: readonly (readonly number[])[];
  rowLabels: readonly string[];
  vmin: number;
  vmax: number;
  cmap: ColormapName;
  title: string;
  xlabel: string;
  colorbarTitle: string;
  /** Hover text of a cell. */
  cellTitle?: (row: number, col: number, v: number) => string;
}

/** The auto vmax of pcolor (the data's max), never below vmin. */
export function autoVmax(values: readonly (readonly number[])[], vmin: number): number {
  let m = -Infinity;
  for (const r of values) for (const v of r) if (Number.isFinite(v)) m = Math.max(m, v);
  return Number.isFinite(m) ? Math.max(m, vmin) : vmin;
}

const textWidth = (s: string, px = 11) => Math.ceil(s.length * px * 0.62);

export function heatmapSvg(spec: HeatmapSpec): string {
  const rows = spec.values.length, cols = spec.values[0]?.length ?? 0;
  const cw = Math.max(8, Math.min(22, Math.floor(520 / Math.max(1, cols)))), ch = 18;
  const left = 12 + Math.max(20, ...spec.rowLabels.map((l) => textWidth(l))), top = 34;
  const pw = cols * cw, ph = rows * ch;
  const cbx = left + pw + 18, cbw = 12;
  const ticks = niceTicks(spec.vmin, spec.vmax), labels = tickLabels(ticks);
  const right = cbx + cbw + 8 + Math.max(24, ...labels.map((t) => textWidth(t, 10)));
  const width = Math.max(right, textWidth(spec.title, 12) + 16, textWidth(spec.xlabel) + 16);
  const height = top + ph + 52;
  // Titles centre on the plot, shifted just enough to stay inside the picture.
  const centre = (w: number) => Math.min(Math.max(left + pw / 2, w / 2 + 6), width - w / 2 - 6);
  const cm = colormap(spec.cmap);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT}>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${centre(textWidth(spec.title, 12))}" y="18" font-size="12" text-anchor="middle">${
      escapeXml(spec.title)
    }</text>`,
  );
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const v = spec.values[i][j];
      const fill = Number.isFinite(v) ? toHex(cm.at(v, spec.vmin, spec.vmax)) : "none";
      const tip = spec.cellTitle?.(i, j, v) ?? `${spec.rowLabels[i]}, layer ${j}: ${v}`;
      out.push(
        `<rect class="cell" x="${left + j * cw}" y="${
          top + i * ch
        }" width="${cw}" height="${ch}" fill="${fill}" data-v="${escapeXml(tip)}"><title>${
          escapeXml(tip)
        }</title></rect>`,
      );
    }
    out.push(
      `<text x="${left - 5}" y="${
        top + i * ch + ch / 2 + 4
      }" font-size="11" text-anchor="end" xml:space="preserve">${escapeXml(spec.rowLabels[i])}</text>`,
    );
  }
  out.push(
    `<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#000" stroke-width="0.8"/>`,
  );
  for (const l of layerTicks(cols)) {
    const x = left + (l + 0.5) * cw;
    out.push(
      `<line x1="${x}" y1="${top + ph}" x2="${x}" y2="${top + ph + 4}" stroke="#000" stroke-width="0.8"/>`,
      `<text x="${x}" y="${top + ph + 16}" font-size="10" text-anchor="middle">${l}</text>`,
    );
  }
  out.push(
    `<text x="${left + pw / 2}" y="${top + ph + 34}" font-size="11" text-anchor="middle">${
      escapeXml(spec.xlabel)
    }</text>`,
  );
  // Colour bar: the colormap is piecewise linear between its nine control points, so a gradient through
  // the LUT's ends and eight inner points renders it exactly.
  const gid = `cb${Math.abs(hashString(spec.title + spec.cmap + spec.vmin + spec.vmax)).toString(36)}`;
  out.push(`<defs><linearGradient id="${gid}" x1="0" y1="1" x2="0" y2="0">`);
  for (let k = 0; k <= 8; k++) out.push(`<stop offset="${k / 8}" stop-color="${toHex(cm.rgb(k / 8))}"/>`);
  out.push(`</linearGradient></defs>`);
  out.push(
    `<rect x="${cbx}" y="${top}" width="${cbw}" height="${ph}" fill="url(#${gid})" stroke="#000" stroke-width="0.6"/>`,
  );
  ticks.forEach((t, k) => {
    const y = top + ph - normalize(t, spec.vmin, spec.vmax) * ph;
    out.push(
      `<line x1="${cbx + cbw}" y1="${y}" x2="${cbx + cbw + 3}" y2="${y}" stroke="#000" stroke-width="0.6"/>`,
      `<text x="${cbx + cbw + 5}" y="${y + 3.5}" font-size="10">${labels[k]}</text>`,
    );
  });
  out.push(
    `<text x="${cbx + cbw / 2}" y="${top + ph + 16}" font-size="11" text-anchor="middle">${
      escapeXml(spec.colorbarTitle)
    }</text>`,
  );
  out.push(`</svg>`);
  return out.join("\n");
}

/** The width and height of a figure of this module (its root element's attributes, in SVG units). */
export function svgSize(svg: string): [number, number] {
  const size = /^<svg [^>]*?width="([\d.]+)" height="([\d.]+)"/.exec(svg);
  if (!size) throw new Error("svgSize: not a figure with a width and height");
  return [Number(size[1]), Number(size[2])];
}

/**
 * Figures of this module side by side in one SVG (top-aligned, `gap` apart), each nested as it is. Their
 * gradient ids differ already (hashed from title and colormap), so nesting needs no renaming.
 */
export function sideBySideSvg(svgs: readonly string[], gap = 24): string {
  const parts: string[] = [];
  let x = 0, height = 0;
  for (const svg of svgs) {
    const [w, h] = svgSize(svg);
    if (parts.length) x += gap;
    parts.push(svg.replace(/^<svg /, `<svg x="${x}" y="0" `));
    x += w;
    height = Math.max(height, h);
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${x}" height="${height}" viewBox="0 0 ${x} ${height}" ${FONT}>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...parts,
    `</svg>`,
  ].join("\n");
}

function hashString(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

// ------------------------------------------------------------------ terminal

/** ANSI 24-bit background blocks per cell (or a character ramp without colour), with labels and layers. */
export function ansiHeatmap(spec: HeatmapSpec, opts: { color: boolean; labelWidth?: number }): string {
  const cols = spec.values[0]?.length ?? 0;
  const lw = opts.labelWidth ?? Math.min(18, Math.max(6, ...spec.rowLabels.map((l) => l.length)));
  const cm = colormap(spec.cmap);
  const RAMP = " .:-=+*#%@";
  const lines: string[] = [];
  let header = " ".repeat(lw + 1);
  const marks = Array.from({ length: cols }, (_, l) => l).filter((l) => cols < 12 || l % 5 === 0);
  for (const l of marks) {
    if (header.length <= lw + 1 + 2 * l) header = header.padEnd(lw + 1 + 2 * l) + String(l);
  }
  lines.push(header);
  spec.values.forEach((row, i) => {
    const label = spec.rowLabels[i].length > lw
      ? spec.rowLabels[i].slice(0, lw - 1) + "…"
      : spec.rowLabels[i];
    let line = label.padStart(lw) + " ";
    for (const v of row) {
      const u = normalize(v, spec.vmin, spec.vmax);
      if (opts.color) {
        const [r, g, b] = Number.isFinite(v) ? cm.rgb(u) : [0, 0, 0];
        line += `\x1b[48;2;${r};${g};${b}m  `;
      } else {
        const k = Number.isFinite(v)
          ? Math.max(0, Math.min(RAMP.length - 1, Math.floor(u * RAMP.length)))
          : 0;
        line += RAMP[k].repeat(2);
      }
    }
    lines.push(line + (opts.color ? "\x1b[0m" : ""));
  });
  let bar = "";
  for (let k = 0; k < 16; k++) {
    const u = (k + 0.5) / 16;
    if (opts.color) {
      const [r, g, b] = cm.rgb(u);
      bar += `\x1b[48;2;${r};${g};${b}m `;
    } else bar += RAMP[Math.min(RAMP.length - 1, Math.floor(u * RAMP.length))];
  }
  lines.push(
    `${" ".repeat(lw + 1)}${spec.colorbarTitle}: ${fmt(spec.vmin)} ${bar}${opts.color ? "\x1b[0m" : ""} ${
      fmt(spec.vmax)
    }`,
  );
  return lines.join("\n");
}

// ------------------------------------------------------------------ charts

export interface Series {
  label: string;
  color: string;
  values: readonly number[];
  /** Optional band (lower, upper) drawn behind the line. */
  lo?: readonly number[];
  hi?: readonly number[];
}

interface Frame {
  x0: number;
  y0: number;
  w: number;
  h: number;
  ymin: number;
  ymax: number;
  n: number;
}

function yRange(series: readonly Series[], floor0: boolean): [number, number] {
  let lo = floor0 ? 0 : Infinity, hi = -Infinity;
  for (const s of series) {
    for (const arr of [s.values, s.lo ?? [], s.hi ?? []]) {
      for (const v of arr) {
        if (Number.isFinite(v)) (lo = Math.min(lo, v), hi = Math.max(hi, v));
      }
    }
  }
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi <= lo) hi = lo + (Math.abs(lo) || 1) * 0.1;
  const pad = (hi - lo) * 0.05;
  return [floor0 && lo >= 0 ? 0 : lo - pad, hi + pad];
}

function axes(f: Frame, out: string[], xlabel: string, ylabel: string, title: string): void {
  const sy = (v: number) => f.y0 + f.h - (v - f.ymin) / (f.ymax - f.ymin) * f.h;
  out.push(
    `<rect x="${f.x0}" y="${f.y0}" width="${f.w}" height="${f.h}" fill="none" stroke="#000" stroke-width="0.8"/>`,
  );
  const yt = niceTicks(f.ymin, f.ymax), yl = tickLabels(yt);
  yt.forEach((t, k) => {
    out.push(
      `<line x1="${f.x0 - 4}" y1="${sy(t)}" x2="${f.x0}" y2="${sy(t)}" stroke="#000" stroke-width="0.8"/>`,
      `<text x="${f.x0 - 6}" y="${sy(t) + 3.5}" font-size="10" text-anchor="end">${yl[k]}</text>`,
    );
  });
  const step = f.n > 24 ? 10 : f.n > 10 ? 5 : 1;
  for (let l = 0; l < f.n; l += step) {
    const x = f.x0 + (l + 0.5) / f.n * f.w;
    out.push(
      `<line x1="${x}" y1="${f.y0 + f.h}" x2="${x}" y2="${
        f.y0 + f.h + 4
      }" stroke="#000" stroke-width="0.8"/>`,
      `<text x="${x}" y="${f.y0 + f.h + 15}" font-size="10" text-anchor="middle">${l}</text>`,
    );
  }
  out.push(
    `<text x="${f.x0 + f.w / 2}" y="${f.y0 + f.h + 32}" font-size="11" text-anchor="middle">${
      escapeXml(xlabel)
    }</text>`,
    `<text transform="translate(${f.x0 - 42} ${
      f.y0 + f.h / 2
    }) rotate(-90)" font-size="11" text-anchor="middle">${escapeXml(ylabel)}</text>`,
    `<text x="${f.x0 + f.w / 2}" y="${f.y0 - 8}" font-size="12" text-anchor="middle">${
      escapeXml(title)
    }</text>`,
  );
}

function legend(series: readonly Series[], x: number, y: number, out: string[]): void {
  series.forEach((s, i) => {
    out.push(
      `<rect x="${x}" y="${y + i * 14 - 8}" width="14" height="8" fill="${s.color}"/>`,
      `<text x="${x + 18}" y="${y + i * 14}" font-size="10">${escapeXml(s.label)}</text>`,
    );
  });
}

/** Line panels side by side (paper Fig. 7), each series with its shaded band. */
export function linePanelsSvg(
  panels: readonly { title: string; series: readonly Series[] }[],
  opts: { xlabel: string; ylabel: string },
): string {
  const pw = 300, ph = 200, gap = 70, left = 60, top = 30;
  const legendH = 14 * Math.max(...panels.map((p) => p.series.length)) + 10;
  const width = left + panels.length * (pw + gap), height = top + ph + 50 + legendH;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT}>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
  ];
  const [ymin, ymax] = yRange(panels.flatMap((p) => p.series), false);
  panels.forEach((p, k) => {
    const n = p.series[0]?.values.length ?? 0;
    const f: Frame = { x0: left + k * (pw + gap), y0: top, w: pw, h: ph, ymin, ymax, n };
    const sx = (l: number) => f.x0 + (l + 0.5) / n * f.w;
    const sy = (v: number) => f.y0 + f.h - (v - ymin) / (ymax - ymin) * f.h;
    for (const s of p.series) {
      const pts = s.values.map((v, l) => [l, v] as const).filter(([, v]) => Number.isFinite(v));
      if (s.lo && s.hi) {
        const upper = pts.map(([l]) => `${sx(l)},${sy(s.hi![l])}`);
        const lower = pts.map(([l]) => `${sx(l)},${sy(s.lo![l])}`).reverse();
        out.push(
          `<polygon points="${
            [...upper, ...lower].join(" ")
          }" fill="${s.color}" fill-opacity="0.3" stroke="none"/>`,
        );
      }
      out.push(
        `<polyline points="${
          pts.map(([l, v]) => `${sx(l)},${sy(v)}`).join(" ")
        }" fill="none" stroke="${s.color}" stroke-width="1.5"/>`,
      );
    }
    axes(f, out, opts.xlabel, k === 0 ? opts.ylabel : "", p.title);
    if (k === 0) legend(p.series, f.x0, top + ph + 50, out);
  });
  out.push(`</svg>`);
  return out.join("\n");
}

/** Grouped bars per layer (the severed-path figure: width 0.3, offsets −0.3 / 0 / +0.3 for three series). */
export function groupedBarsSvg(
  series: readonly Series[],
  opts: { title: string; xlabel: string; ylabel: string },
): string {
  const n = series[0]?.values.length ?? 0;
  const pw = Math.max(320, n * 18), ph = 220, left = 64, top = 30;
  const legendH = 14 * series.length + 10;
  const width = Math.max(left + pw + 20, textWidth(opts.title, 12) + 20), height = top + ph + 50 + legendH;
  const [ymin, ymax] = yRange(series, true);
  const f: Frame = { x0: left, y0: top, w: pw, h: ph, ymin, ymax, n };
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT}>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
  ];
  const unit = pw / n, bw = 0.3 * unit;
  const sy = (v: number) => top + ph - (v - ymin) / (ymax - ymin) * ph;
  series.forEach((s, k) => {
    const off = (k - (series.length - 1) / 2) * 0.3;
    s.values.forEach((v, l) => {
      if (!Number.isFinite(v)) return;
      const x = left + (l + 0.5 + off) * unit - bw / 2;
      const y = Math.min(sy(v), sy(0)), h = Math.abs(sy(v) - sy(0));
      out.push(
        `<rect x="${x}" y="${y}" width="${bw}" height="${h}" fill="${s.color}"><title>${
          escapeXml(`${s.label}, layer ${l}: ${v}`)
        }</title></rect>`,
      );
    });
  });
  axes(f, out, opts.xlabel, opts.ylabel, "");
  const titleX = Math.min(
    Math.max(left + pw / 2, textWidth(opts.title, 12) / 2 + 8),
    width - textWidth(opts.title, 12) / 2 - 8,
  );
  out.push(
    `<text x="${titleX}" y="${top - 8}" font-size="12" text-anchor="middle">${escapeXml(opts.title)}</text>`,
  );
  legend(series, left, top + ph + 50, out);
  out.push(`</svg>`);
  return out.join("\n");
}

/** Category colours of the line plots: tab10 in the notebook's order [0, 1, 2, 4, 5, 3]. */
export const CATEGORY_COLORS = [0, 1, 2, 4, 5, 3].map((i) => TAB10[i]);

/** The severed-path figure's colours: ordinary, attn severed, MLP severed. */
export const SEVERED_COLORS = { ordinary: "#7261ab", attn: "#f3201b", mlp: "#20b020" } as const;

// ------------------------------------------------------------------ HTML

/**
 * One self-contained page: a header, the figures (inline SVG) side by side, and the data as JSON. Hovering a
 * cell shows its exact value in a readout line (and as the cell's tooltip).
 */
export function htmlPage(opts: {
  title: string;
  /** Lines of the header, as [label, value] pairs. */
  facts: readonly (readonly [string, string])[];
  figures: readonly { caption: string; svg: string }[];
  data: unknown;
}): string {
  const rows = opts.facts.map(([k, v]) => `<tr><th>${escapeXml(k)}</th><td>${escapeXml(v)}</td></tr>`).join(
    "\n",
  );
  const figs = opts.figures.map((f) =>
    `<figure>${f.svg}<figcaption>${escapeXml(f.caption)}</figcaption></figure>`
  )
    .join("\n");
  const json = JSON.stringify(opts.data).replace(/</g, "\\u003c");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeXml(opts.title)}</title>
<style>
body{font-family:"Times New Roman",Times,serif;margin:24px;color:#111}
table{border-collapse:collapse;margin-bottom:12px}th{text-align:left;padding:2px 12px 2px 0;font-weight:600}td{padding:2px 0}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}figure{margin:0}figcaption{font-size:13px;color:#444}
rect.cell:hover{stroke:#000;stroke-width:1.5}#readout{font-family:monospace;min-height:1.4em;margin:8px 0}
</style></head><body>
<h1 style="font-size:20px">${escapeXml(opts.title)}</h1>
<table>${rows}</table>
<div id="readout">hover a cell for its exact value</div>
<div class="figs">${figs}</div>
<script type="application/json" id="data">${json}</script>
<script>
document.addEventListener("mouseover", (e) => {
  const v = e.target && e.target.getAttribute && e.target.getAttribute("data-v");
  if (v) document.getElementById("readout").textContent = v;
});
</script>
</body></html>
`;
}
