// `deno task serve`: the Deno edge of the page. Serves web/index.html, the bundle web/dist/app.js (built by
// `deno task web-build`, which `serve` runs first), a model folder under /model/ and the facts world's
// example files under /data/. Only those: nothing else of the disk is reachable.
import { parseArgs } from "node:util";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { decodeSecondMoment, shippedStatsFile } from "../rome/stats.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEFAULT_PORT = 8000;

const USAGE = `deno task serve [--port ${DEFAULT_PORT}] [--host 127.0.0.1] [--model DIR] [--stats FILE]
  Serves the browser page (web/) on http://HOST:PORT/: causal tracing and ROME edits on WebGPU in the tab.
  --model DIR   the model folder the page loads (default: the bundled models/world-gpt2)
  --stats FILE  statistics C made by \`deno task stats\` (or found in its cache), served as the model's
                stats/layer<L>.safetensors for the layer the file was taken at (for a folder that ships none)
  --port 0 picks a free port; the address is printed on stdout once the server listens.`;

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".png": "image/png",
  ".safetensors": "application/octet-stream",
};

/** The files of a model folder the page may fetch (config, weights, tokenizer, shipped statistics). */
const MODEL_FILE =
  /^(config\.json|model\.safetensors|vocab\.json|merges\.txt|tokenizer\.json|stats\/layer\d+\.safetensors)$/;

export interface ServeOptions {
  modelDir: string;
  /** A statistics file served as the model's stats/layer<L>.safetensors (L from the file). */
  statsFile?: string;
}

/** URL path → file, or undefined for anything that is not one of the page's files. */
export function routes(o: ServeOptions): (path: string) => string | undefined {
  const fixed = new Map<string, string>([
    ["/", join(ROOT, "web/index.html")],
    ["/index.html", join(ROOT, "web/index.html")],
    ["/dist/app.js", join(ROOT, "web/dist/app.js")],
    ["/data/known_facts.json", join(ROOT, "data/world/known_facts.json")],
    ["/data/counterfact.json", join(ROOT, "data/world/counterfact.json")],
  ]);
  if (o.statsFile) {
    const { info } = decodeSecondMoment(Deno.readFileSync(o.statsFile), o.statsFile);
    if (info.layer === undefined) {
      throw new Error(
        `--stats ${o.statsFile}: the file does not record its layer (make it with deno task stats)`,
      );
    }
    fixed.set(`/model/${shippedStatsFile(info.layer)}`, o.statsFile);
  }
  return (path) => {
    const hit = fixed.get(path);
    if (hit) return hit;
    if (!path.startsWith("/model/")) return undefined;
    const rel = path.slice("/model/".length);
    return MODEL_FILE.test(rel) ? join(o.modelDir, rel) : undefined;
  };
}

function contentType(path: string): string {
  const dot = basename(path).lastIndexOf(".");
  return TYPES[dot < 0 ? "" : basename(path).slice(dot)] ?? "application/octet-stream";
}

export function handler(o: ServeOptions): (req: Request) => Promise<Response> {
  const route = routes(o);
  return async (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed", { status: 405 });
    }
    const file = route(decodeURIComponent(new URL(req.url).pathname));
    if (!file) return new Response("not found", { status: 404 });
    let f: Deno.FsFile;
    try {
      f = await Deno.open(file, { read: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return new Response("not found", { status: 404 });
      throw e;
    }
    const { size } = await f.stat();
    const headers = {
      "content-type": contentType(file),
      "content-length": String(size),
      // the model folder can be rebuilt (or the bundle rebuilt) while the server runs
      "cache-control": "no-store",
    };
    if (req.method === "HEAD") {
      f.close();
      return new Response(null, { headers });
    }
    return new Response(f.readable, { headers });
  };
}

function main(args: string[]): void {
  // `--port -1` as `--port=-1`: parseArgs would call it "ambiguous" before the port check sees it
  args = args.map((a, i) => (a === "--port" && /^-\d/.test(args[i + 1] ?? "") ? `--port=${args[i + 1]}` : a))
    .filter((_, i) => !(args[i - 1] === "--port" && /^-\d/.test(args[i])));
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      host: { type: "string" },
      model: { type: "string" },
      stats: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return console.log(USAGE);
  // decimal digits only: Number("") is 0 (any free port) and Number("0x1F90") 8080, neither what was typed
  const port = values.port === undefined
    ? DEFAULT_PORT
    : /^\d+$/.test(values.port)
    ? Number(values.port)
    : NaN;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`--port must be an integer in 0..65535 (got '${values.port}')`);
  }
  const modelDir = resolve(values.model ?? join(ROOT, "models/world-gpt2"));
  try {
    Deno.statSync(join(modelDir, "config.json"));
  } catch {
    throw new Error(`--model '${modelDir}' has no config.json (give a Hugging Face GPT-2 folder)`);
  }
  try {
    Deno.statSync(join(ROOT, "web/dist/app.js"));
  } catch {
    throw new Error(
      "web/dist/app.js is missing: run `deno task web-build` (`deno task serve` runs it first)",
    );
  }
  const hostname = values.host ?? "127.0.0.1";
  Deno.serve({
    port,
    hostname,
    onListen: ({ hostname, port }) => console.log(`serving http://${hostname}:${port}/ (model ${modelDir})`),
  }, handler({ modelDir, statsFile: values.stats }));
}

if (import.meta.main) {
  try {
    main(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
}
