// The Deno edge of the figures: SVG → PNG with resvg (the Rust SVG renderer compiled to wasm, npm
// @resvg/resvg-wasm) at twice the SVG's size, with the typeface the SVGs name (tracing/render.ts
// FIGURE_FONT). The font ships in cli/fonts/ (SIL OFL 1.1, licence beside it) rather than coming from the
// system: resvg draws no text unless a font it was given matches, and a fresh CI machine may have no fonts.
import { FIGURE_FONT, type Rasterise } from "../tracing/render.ts";

/** Pixels per SVG unit of the PNGs: sharp on a slide or a high-density screen. */
export const FIGURE_SCALE = 2;

const FONT_FILE = new URL("./fonts/LiberationSerif-Regular.ttf", import.meta.url);

/** resvg's wasm lies beside its module in the npm package (deno.json's nodeModulesDir puts it on disk). */
function wasmFile(): URL {
  const url = new URL("./index_bg.wasm", import.meta.resolve("@resvg/resvg-wasm"));
  if (url.protocol !== "file:") {
    throw new Error(`resvg's wasm is not on disk (${url}): is nodeModulesDir off?`);
  }
  return url;
}

type ResvgModule = typeof import("@resvg/resvg-wasm");
/** Not a literal in import(): Deno would resolve a literal with the module graph at startup. */
const RESVG = "@resvg/resvg-wasm";

// initWasm may run once per process, so every rasteriser shares one start. The module is imported here, not
// at the top: a command that draws nothing must not make Deno resolve the npm package (with a fresh Deno
// cache that fetches its metadata and prints "Download ..." on stderr).
let started: Promise<{ Resvg: ResvgModule["Resvg"]; font: Uint8Array }> | undefined;

function start() {
  return started ??= (async () => {
    const { initWasm, Resvg }: ResvgModule = await import(RESVG);
    const [wasm, font] = await Promise.all([Deno.readFile(wasmFile()), Deno.readFile(FONT_FILE)]);
    await initWasm(wasm);
    return { Resvg, font };
  })();
}

/**
 * A rasteriser for tracing/report.ts. The wasm (2.4 MB) and the font are read and compiled on the first
 * call, so commands that draw nothing pay nothing.
 */
export function pngRasteriser(scale = FIGURE_SCALE): Rasterise {
  return async (svg) => {
    const { Resvg, font } = await start();
    const resvg = new Resvg(svg, {
      fitTo: { mode: "zoom", value: scale },
      font: { fontBuffers: [font], defaultFontFamily: FIGURE_FONT, serifFamily: FIGURE_FONT },
    });
    try {
      const image = resvg.render();
      try {
        return image.asPng();
      } finally {
        image.free();
      }
    } finally {
      resvg.free();
    }
  };
}
