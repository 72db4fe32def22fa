// Drives the page (web/) in Debian's headless Chromium for tests/web_test.ts: loads it from a running
// `web/serve.ts`, runs a trace and an edit through the form, hovers a heatmap cell, takes a screenshot, and
// opens the page once more with WebGPU hidden. Prints what the page computed as one JSON line; the test
// compares it with the CLI. A separate process because playwright-core reads paths (/proc/sys/...) that
// Deno grants only to `-A`, which the test suite does not run with.
//
//   deno run -A tests/lib/web_browser.ts CHROMIUM URL PROMPT SUBJECT CASE_ID SCREENSHOT.png
import { chromium, type Page } from "playwright-core";

/**
 * `--enable-unsafe-webgpu` exposes WebGPU on Linux; headless, Chromium then runs it on SwiftShader, its own
 * software Vulkan (Dawn is not offered lavapipe here). `--no-sandbox`: CI runs as root.
 */
const CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-webgpu"];
/** Limit per action (loading, a trace, an edit): SwiftShader on 2 cores takes about a minute for each. */
const ACTION_MS = 6 * 60_000;

/** What the page publishes as `window.romeWeb` (web/app.ts). */
interface RomeWeb {
  state: string;
  error: string | null;
  adapter: string | null;
  trace: unknown;
  edit: unknown;
}

async function settled(page: Page, what: string): Promise<RomeWeb> {
  await page.waitForFunction(
    () => {
      const s = (globalThis as unknown as { romeWeb?: RomeWeb }).romeWeb?.state;
      return s !== undefined && s !== "loading" && s !== "tracing" && s !== "editing";
    },
    null,
    { timeout: ACTION_MS, polling: 250 },
  );
  const s = await page.evaluate(() => (globalThis as unknown as { romeWeb: RomeWeb }).romeWeb);
  if (s.error || s.state !== "ready") throw new Error(`the page's ${what} failed (${s.state}): ${s.error}`);
  return s;
}

async function main([chromiumPath, url, prompt, subject, caseId, screenshot]: string[]): Promise<void> {
  if (!screenshot) {
    throw new Error("usage: web_browser.ts CHROMIUM URL PROMPT SUBJECT CASE_ID SCREENSHOT.png");
  }
  const t0 = performance.now();
  const seconds: Record<string, number> = {};
  const lap = (k: string) => seconds[k] = (performance.now() - t0) / 1000;
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: CHROMIUM_ARGS,
    headless: true,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(url);
    const loaded = await settled(page, "loading");
    lap("load");

    await page.fill("#trace-prompt", prompt);
    await page.fill("#trace-subject", subject);
    await page.click("#trace-run");
    const traced = await settled(page, "trace");
    lap("trace");
    await page.hover("figure[data-kind=hidden] rect.cell >> nth=0");
    const hover = await page.textContent("#readout");

    await page.selectOption("#edit-example", caseId);
    await page.click("#edit-run");
    const edited = await settled(page, "edit");
    lap("edit");
    await page.screenshot({ path: screenshot, fullPage: true });

    const bare = await browser.newPage();
    await bare.addInitScript(() =>
      Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined })
    );
    await bare.goto(url);
    await bare.waitForFunction(() =>
      (globalThis as unknown as { romeWeb?: RomeWeb }).romeWeb?.state === "no-webgpu"
    );
    const noWebgpu = {
      message: await bare.textContent("#fatal"),
      traceHidden: await bare.isHidden("#trace"),
      editHidden: await bare.isHidden("#edit"),
    };
    console.log(JSON.stringify({
      adapter: loaded.adapter,
      trace: traced.trace,
      edit: edited.edit,
      hover,
      noWebgpu,
      seconds,
    }));
  } finally {
    await browser.close();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
