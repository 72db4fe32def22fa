// One prompt's trace records, as `deno task trace --prompt` prints them and the web page draws them: the
// prompt-wide header (tokens, subject range, answer, high and low scores) over a base pass, then one record
// per kind. Shared so that the CLI and the browser produce the same numbers from the same code.
// Runtime-neutral.
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import type { TraceRecord } from "./report.ts";
import { type BasePass, type TraceKind, traceKind } from "./trace.ts";

/** The fields every kind's record of one prompt shares. */
export type TraceHeader = Omit<TraceRecord, "kind" | "window" | "samples" | "noise" | "seconds" | "scores">;

/** The header of a prompt's records from its base pass. */
export function traceHeader(
  tokenizer: Gpt2Tokenizer,
  base: BasePass,
  prompt: string,
  subject: string,
): TraceHeader {
  const [b, e] = base.input.subjectRange;
  return {
    prompt,
    subject,
    tokens: base.input.ids.map((id) => tokenizer.decode([id])),
    subject_range: [b, e],
    answer: tokenizer.decode([base.answerId]),
    answer_id: base.answerId,
    high_score: base.highScore,
    low_score: base.lowScore,
  };
}

export interface KindsTraceOptions {
  window: number;
  maxRows?: number;
  /** Cells done over all kinds (each kind has tokens × layers cells), and the kind being traced. */
  onProgress?: (doneCells: number, totalCells: number, kind: TraceKind) => void;
}

/** One record per kind, in order, over one base pass; `rows` counts the forward rows the cells ran. */
export async function traceRecords(
  base: BasePass,
  header: TraceHeader,
  kinds: readonly TraceKind[],
  opts: KindsTraceOptions,
): Promise<{ records: TraceRecord[]; rows: number; seconds: number }> {
  const perKind = base.T * base.model.config.nLayer;
  const records: TraceRecord[] = [];
  let rows = 0, seconds = 0;
  for (const [k, kind] of kinds.entries()) {
    const r = await traceKind(base, kind, {
      window: opts.window,
      maxRows: opts.maxRows,
      onProgress: (d) => opts.onProgress?.(k * perKind + d, kinds.length * perKind, kind),
    });
    rows += r.rows;
    seconds += r.seconds;
    records.push({
      ...header,
      kind,
      window: opts.window,
      samples: base.settings.samples,
      noise: base.settings.noise,
      seconds: r.seconds,
      scores: r.scores,
    });
  }
  return { records, rows, seconds };
}
