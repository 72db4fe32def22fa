// Progress on stderr and durations as people read them.

/**
 * A progress bar on stderr: redrawn in place on a terminal, a plain line every 10% otherwise (CI logs).
 * Call `update` after each awaited GPU chunk: the event loop is blocked while the GPU works, so timers
 * would not fire.
 */
export class Progress {
  /** Whether a bar was last drawn on the terminal without its line ended (an error then starts a new line). */
  static #midLine = false;
  #start = performance.now();
  #lastDraw = 0;
  #lastDecile = -1;
  #tty = Deno.stderr.isTerminal();
  #enc = new TextEncoder();

  constructor(readonly label: string, public total: number, readonly quiet = false) {}

  update(done: number, extra = ""): void {
    if (this.quiet) return;
    const now = performance.now();
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (now - this.#start) / 1000;
    const eta = frac > 0 && frac < 1 ? elapsed * (1 - frac) / frac : 0;
    const text = `${this.label} ${done}/${this.total} ${(frac * 100).toFixed(0)}%` +
      `${extra ? " " + extra : ""} ${fmtSeconds(elapsed)}${eta > 0 ? ` eta ${fmtSeconds(eta)}` : ""}`;
    if (this.#tty) {
      if (now - this.#lastDraw < 80 && done < this.total) return;
      this.#lastDraw = now;
      const width = 24, fill = Math.round(frac * width);
      const bar = "█".repeat(fill) + "░".repeat(width - fill);
      Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[K${bar} ${text}`));
      Progress.#midLine = true;
    } else {
      const decile = Math.floor(frac * 10);
      if (decile === this.#lastDecile) return;
      this.#lastDecile = decile;
      Deno.stderr.writeSync(this.#enc.encode(text + "\n"));
    }
  }

  done(extra = ""): void {
    this.update(this.total, extra);
    if (this.#tty && !this.quiet) Deno.stderr.writeSync(this.#enc.encode("\n"));
    Progress.#midLine = false;
  }

  /** Ends a bar's line left open by an error, so that the error gets a line of its own. */
  static endLine(): void {
    if (Progress.#midLine) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    Progress.#midLine = false;
  }
}

export function fmtSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}
