// Average indirect effects over many traced prompts (reference §1.9, `average_causal_effects.ipynb`):
// each prompt's [tokens × layers] scores are split into six token categories, rows are pooled per category
// over all prompts (a plain mean over rows, not a per-prompt mean first), and the effect is the pooled mean
// minus the mean low_score, clipped at 0. Runtime-neutral.

/** The six rows of the summary heatmap, in the notebook's order. */
export const TOKEN_CATEGORIES = [
  "First subject token",
  "Middle subject tokens",
  "Last subject token",
  "First subsequent token",
  "Further tokens",
  "Last token",
] as const;

/** Index of "Last subject token" (where the MLP effect picks the edit layer). */
export const LAST_SUBJECT = 2;

/** What one traced prompt contributes. */
export interface TracedCase {
  /** [T][nLayer] raw p(answer) per restored cell. */
  scores: readonly (readonly number[])[];
  lowScore: number;
  highScore: number;
  subjectRange: readonly [number, number];
}

/**
 * The token rows of each category for a prompt of T tokens with subject [b, e): first subject b; middle
 * b+1 .. e−2; last subject e−1; first subsequent e; further e+1 .. T−2; last T−1. As in the notebook, a
 * one-token subject puts the same row in "first" and "last subject", and a subject followed by a single
 * token puts it in "first subsequent" and "last". The notebook would fail on a subject that ends the prompt
 * (row e does not exist); we leave that category empty instead.
 */
export function categoryRows(T: number, subjectRange: readonly [number, number]): number[][] {
  const [firstE, firstA] = subjectRange;
  const lastE = firstA - 1, lastA = T - 1;
  const span = (a: number, b: number) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);
  const rows = [[firstE], span(firstE + 1, lastE), [lastE], [firstA], span(firstA + 1, lastA), [lastA]];
  return rows.map((r) => r.filter((t) => t >= 0 && t < T));
}

export interface AieSummary {
  /** Prompts aggregated. */
  n: number;
  nLayer: number;
  /** Pooled mean score per category and layer, [6][nLayer] (NaN for a category with no rows). */
  avg: number[][];
  /** Population std (numpy's default) of the pooled rows, [6][nLayer]. */
  std: number[][];
  /** Rows pooled per category. */
  rows: number[];
  lowScore: number;
  highScore: number;
  /** clip(avg − mean low_score, 0), [6][nLayer]. */
  aie: number[][];
  /** Average total effect: mean high_score − mean low_score. */
  ate: number;
}

/** The notebook's `read_knowlege` + clip for one kind's cases. */
export function averageIndirectEffect(cases: readonly TracedCase[]): AieSummary {
  if (cases.length === 0) throw new RangeError("average indirect effect: no traced cases");
  const nLayer = cases[0].scores[0]?.length ?? 0;
  const pooled: (readonly number[])[][] = TOKEN_CATEGORIES.map(() => []);
  let low = 0, high = 0;
  for (const c of cases) {
    if (c.scores.some((r) => r.length !== nLayer)) {
      throw new RangeError(`average indirect effect: cases have different layer counts`);
    }
    categoryRows(c.scores.length, c.subjectRange).forEach((rows, k) => {
      for (const t of rows) pooled[k].push(c.scores[t]);
    });
    low += c.lowScore;
    high += c.highScore;
  }
  low /= cases.length;
  high /= cases.length;
  const avg = pooled.map((rows) =>
    Array.from({ length: nLayer }, (_, l) => rows.reduce((a, r) => a + r[l], 0) / rows.length)
  );
  const std = pooled.map((rows, k) =>
    Array.from(
      { length: nLayer },
      (_, l) => Math.sqrt(rows.reduce((a, r) => a + (r[l] - avg[k][l]) ** 2, 0) / rows.length),
    )
  );
  return {
    n: cases.length,
    nLayer,
    avg,
    std,
    rows: pooled.map((r) => r.length),
    lowScore: low,
    highScore: high,
    aie: avg.map((row) => row.map((v) => Number.isNaN(v) ? NaN : Math.max(0, v - low))),
    ate: high - low,
  };
}

/** The line plots' band (paper Fig. 7): (avg − low) ± 1.96·std/√n per category, n = number of prompts. */
export function effectBand(s: AieSummary): { mid: number[][]; lo: number[][]; hi: number[][] } {
  const mid = s.avg.map((row) => row.map((v) => v - s.lowScore));
  const half = s.std.map((row) => row.map((v) => 1.96 * v / Math.sqrt(s.n)));
  return {
    mid,
    lo: mid.map((row, k) => row.map((v, l) => v - half[k][l])),
    hi: mid.map((row, k) => row.map((v, l) => v + half[k][l])),
  };
}

/** Index of the largest finite value (the first on ties); −1 if there is none. */
export function argmax(xs: readonly number[]): number {
  let best = -1;
  xs.forEach((v, i) => {
    if (Number.isFinite(v) && (best < 0 || v > xs[best])) best = i;
  });
  return best;
}

/** The layer whose MLP window has the largest AIE at the last subject token: where ROME edits. */
export function suggestedEditLayer(mlp: AieSummary): number {
  const l = argmax(mlp.aie[LAST_SUBJECT]);
  if (l < 0) throw new RangeError("suggested layer: no last-subject-token effects");
  return l;
}
