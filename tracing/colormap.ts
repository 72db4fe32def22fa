// matplotlib's sequential colormaps used by the paper's figures (Purples for hidden states, Greens for MLP,
// Reds for attention), rebuilt from their published control points: the nine ColorBrewer classes that
// matplotlib's `_cm.py` lists (as fractions of 255), interpolated the way `LinearSegmentedColormap`
// builds its 256-entry lookup table, and indexed the way `Colormap.__call__` indexes it. Runtime-neutral.

export type ColormapName = "Purples" | "Greens" | "Reds";

/** ColorBrewer 9-class sequential schemes (Cynthia Brewer), light to dark. */
const CONTROL_POINTS: Readonly<Record<ColormapName, readonly string[]>> = {
  Purples: [
    "#fcfbfd",
    "#efedf5",
    "#dadaeb",
    "#bcbddc",
    "#9e9ac8",
    "#807dba",
    "#6a51a3",
    "#54278f",
    "#3f007d",
  ],
  Greens: ["#f7fcf5", "#e5f5e0", "#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b"],
  Reds: ["#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d"],
};

/** matplotlib's `tab10` (the line plots' category colours). */
export const TAB10 = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
] as const;

export type Rgb = readonly [number, number, number];

export function parseHex(hex: string): Rgb {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
  if (!m) throw new RangeError(`not a #rrggbb colour: ${hex}`);
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
}

export function toHex([r, g, b]: Rgb): string {
  return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
}

/** matplotlib's default lookup-table size (`rcParams["image.lut"]`). */
export const LUT_SIZE = 256;

export class Colormap {
  /** LUT_SIZE rows of r, g, b in [0, 1]. */
  readonly lut: Float64Array;

  constructor(readonly name: ColormapName) {
    const pts = CONTROL_POINTS[name].map(parseHex);
    const n = pts.length, N = LUT_SIZE;
    this.lut = new Float64Array(N * 3);
    // `_create_lookup_table`: entries at x = i/(N−1) interpolate linearly between the control points,
    // which `from_list` places at x = k/(n−1).
    for (let i = 0; i < N; i++) {
      const x = i / (N - 1) * (n - 1);
      const k = Math.min(n - 2, Math.floor(x));
      const f = x - k;
      for (let ch = 0; ch < 3; ch++) {
        this.lut[i * 3 + ch] = (pts[k][ch] + f * (pts[k + 1][ch] - pts[k][ch])) / 255;
      }
    }
  }

  /**
   * The colour of a normalised value: index floor(v·N) (v = 1 maps to the last entry); below 0 takes the
   * "under" colour and above 1 the "over" colour, which default to the first and last entries.
   */
  rgb(v: number): Rgb {
    const N = LUT_SIZE;
    let i = v >= 1 ? N - 1 : v < 0 ? 0 : Math.floor(v * N);
    if (Number.isNaN(v)) i = 0;
    return [0, 1, 2].map((ch) => Math.round(this.lut[i * 3 + ch] * 255)) as unknown as Rgb;
  }

  /** Colour of `value` under matplotlib's Normalize(vmin, vmax) (all values map to 0 when vmin = vmax). */
  at(value: number, vmin: number, vmax: number): Rgb {
    return this.rgb(normalize(value, vmin, vmax));
  }
}

export function normalize(value: number, vmin: number, vmax: number): number {
  return vmax > vmin ? (value - vmin) / (vmax - vmin) : 0;
}

const cache = new Map<ColormapName, Colormap>();
export function colormap(name: ColormapName): Colormap {
  return cache.get(name) ?? cache.set(name, new Colormap(name)).get(name)!;
}
