// The PNG figures (cli/figures.ts): the SVGs of tracing/render.ts rasterised by resvg at twice their size,
// with the shipped font. resvg silently draws no text when no font matches, so the tests decode the PNGs
// and look for ink where every label of the SVG stands, against the same SVG rendered without its text.
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { decode } from "fast-png";
import { FIGURE_SCALE, pngRasteriser } from "../cli/figures.ts";
import { type HeatmapSpec, heatmapSvg, sideBySideSvg, svgSize } from "../tracing/render.ts";
import { traceFiles, type TraceRecord } from "../tracing/report.ts";

const rasterise = pngRasteriser();

const SPEC: HeatmapSpec = {
  values: Array.from({ length: 7 }, (_, i) => Array.from({ length: 6 }, (_, l) => Math.sin(i + l) ** 2)),
  rowLabels: ["The", " city", " of", " Ag*", "adir*", " is", " in"],
  vmin: 0,
  vmax: 1,
  cmap: "Greens",
  title: "Impact of restoring MLP after corrupted input",
  xlabel: "center of interval of 2 restored MLP layers",
  colorbarTitle: "p( Morocco)",
};

interface Image {
  width: number;
  height: number;
  /** RGBA, 8 bits a channel. */
  rgba: Uint8Array;
}

function decodePng(png: Uint8Array): Image {
  const img = decode(png);
  equal(img.depth, 8);
  equal(img.channels, 4);
  return { width: img.width, height: img.height, rgba: img.data as Uint8Array };
}

interface SvgText {
  x: number;
  y: number;
  size: number;
  anchor: string;
  text: string;
}

function svgTexts(svg: string): SvgText[] {
  const re =
    /<text x="([\d.]+)" y="([\d.]+)" font-size="([\d.]+)"(?: text-anchor="(\w+)")?[^>]*>([^<]*)<\/text>/g;
  return [...svg.matchAll(re)].map((m) => ({
    x: Number(m[1]),
    y: Number(m[2]),
    size: Number(m[3]),
    anchor: m[4] ?? "start",
    text: m[5],
  }));
}

/** Pixels inside the box (SVG units) where the two images differ clearly. */
function differing(a: Image, b: Image, box: { x0: number; x1: number; y0: number; y1: number }): number {
  let n = 0;
  const s = FIGURE_SCALE;
  for (let y = Math.max(0, Math.floor(box.y0 * s)); y < Math.min(a.height, Math.ceil(box.y1 * s)); y++) {
    for (let x = Math.max(0, Math.floor(box.x0 * s)); x < Math.min(a.width, Math.ceil(box.x1 * s)); x++) {
      const i = (y * a.width + x) * 4;
      if (Math.max(...[0, 1, 2].map((c) => Math.abs(a.rgba[i + c] - b.rgba[i + c]))) > 64) n++;
    }
  }
  return n;
}

Deno.test("figures: heatmap PNG at 2× the SVG, with ink at every label, tick and title", async () => {
  const svg = heatmapSvg(SPEC);
  const [w, h] = svgSize(svg);
  const full = decodePng(await rasterise(svg));
  const bare = decodePng(await rasterise(svg.replace(/<text[^>]*>[^<]*<\/text>/g, "")));
  deepStrictEqual([full.width, full.height], [w * FIGURE_SCALE, h * FIGURE_SCALE]);
  deepStrictEqual([bare.width, bare.height], [full.width, full.height]);

  const texts = svgTexts(svg);
  // Title, 7 row labels, 6 layer ticks, x label, colour-bar ticks (0, 0.2, …, 1) and its title.
  equal(texts.length, 1 + 7 + 6 + 1 + 6 + 1);
  for (const t of texts) {
    // A generous width for the box (Times-like glyphs average about half the font size).
    const width = Math.max(1, t.text.trim().length) * t.size * 0.62;
    const x0 = t.anchor === "end" ? t.x - width : t.anchor === "middle" ? t.x - width / 2 : t.x;
    const ink = differing(full, bare, { x0, x1: x0 + width, y0: t.y - t.size, y1: t.y + t.size * 0.3 });
    ok(ink >= 20, `${JSON.stringify(t.text)} at (${t.x}, ${t.y}): ${ink} pixels of text`);
  }
  // Without the text, the picture is still drawn (cells, frame, colour bar): the background is not all.
  const centre = ((h / 2) * FIGURE_SCALE * bare.width + (w / 3) * FIGURE_SCALE) * 4;
  ok(bare.rgba[centre] < 250 || bare.rgba[centre + 1] < 250, "a cell in the middle of the plot");
});

Deno.test("figures: side by side, one picture as wide as its parts and the gaps", async () => {
  const a = heatmapSvg(SPEC), b = heatmapSvg({ ...SPEC, cmap: "Reds", title: "Attn" });
  const both = sideBySideSvg([a, b], 24);
  const [wa, ha] = svgSize(a), [wb] = svgSize(b);
  deepStrictEqual(svgSize(both), [wa + 24 + wb, ha]);
  const img = decodePng(await rasterise(both));
  deepStrictEqual([img.width, img.height], [(wa + 24 + wb) * FIGURE_SCALE, ha * FIGURE_SCALE]);
  // The second figure's first row label, shifted right by the first figure and the gap.
  const bare = decodePng(await rasterise(both.replace(/<text[^>]*>[^<]*<\/text>/g, "")));
  const label = svgTexts(b).find((t) => t.text === "The")!;
  const x = wa + 24 + label.x;
  ok(differing(img, bare, { x0: x - 25, x1: x, y0: label.y - 11, y1: label.y + 3 }) >= 20);
});

Deno.test("figures: trace files carry PNGs only when a rasteriser is given", async () => {
  const record: TraceRecord = {
    prompt: "The city of Agadir is in",
    subject: "Agadir",
    tokens: SPEC.rowLabels.map((l) => l.replace("*", "")),
    subject_range: [3, 5],
    answer: " Morocco",
    answer_id: 1,
    high_score: 0.9,
    low_score: 0.1,
    kind: "mlp",
    window: 2,
    samples: 2,
    noise: 0.3,
    seconds: 1,
    scores: SPEC.values.map((r) => [...r]),
  };
  const info = { seed: 1, model_hash: "0", noise_factor: 3, embedding_std: 0.1 };
  const without = await traceFiles([record], info);
  deepStrictEqual([...without.keys()].sort(), ["heatmap_mlp.svg", "report.html", "trace.json"]);
  const withPng = await traceFiles([record], info, rasterise);
  const png = withPng.get("heatmap_mlp.png") as Uint8Array;
  const [w, h] = svgSize(withPng.get("heatmap_mlp.svg") as string);
  const img = decodePng(png);
  deepStrictEqual([img.width, img.height], [w * FIGURE_SCALE, h * FIGURE_SCALE]);
});
