// `deno task bench [--json] [--quick] [--only a,b]`: every benchmark family in one run, each printing what
// it measured beside what it compares against. With --json, one JSON object keyed by family.
import { parseArgs } from "node:util";
import { getEngine } from "../engine/engine.ts";

type Bench = (
  engine: Awaited<ReturnType<typeof getEngine>>,
  opts: { json: boolean; quick?: boolean },
) => Promise<Record<string, unknown>[]>;

const FAMILIES: Record<string, () => Promise<{ run: Bench }>> = {
  matmul: () => import("./matmul.ts"),
  cholesky: () => import("./cholesky.ts"),
  nn: () => import("./nn.ts"),
  reduce: () => import("./reduce.ts"),
  attention: () => import("./attention.ts"),
  gpt2: () => import("./gpt2.ts"),
  generate: () => import("./generate.ts"),
  trace: () => import("./trace.ts"),
  edit: () => import("./edit.ts"),
};

const { values } = parseArgs({
  args: Deno.args,
  options: { json: { type: "boolean" }, quick: { type: "boolean" }, only: { type: "string" } },
});
const only = values.only ? String(values.only).split(",") : Object.keys(FAMILIES);
for (const name of only) {
  if (!FAMILIES[name]) {
    console.error(`error: unknown benchmark '${name}' (have: ${Object.keys(FAMILIES).join(", ")})`);
    Deno.exit(2);
  }
}
const engine = await getEngine();
if (!values.json) {
  console.log(
    `adapter: ${engine.gpu.info.description}${engine.gpu.info.isFallbackAdapter ? " (software)" : ""}\n`,
  );
}
const out: Record<string, unknown> = {};
for (const name of only) {
  if (!values.json) console.log(`== ${name}`);
  const { run } = await FAMILIES[name]();
  out[name] = await run(engine, { json: Boolean(values.json), quick: Boolean(values.quick) });
  if (!values.json) console.log();
}
if (values.json) console.log(JSON.stringify(out, null, 2));
