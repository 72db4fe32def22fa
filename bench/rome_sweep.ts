// The ROME hyperparameter sweep behind rome/hparams/world-gpt2.json: for each edit layer × v* weight
// decay × norm clamp, `deno task eval --method rome` on the first --cases records of the dataset (every
// edit from the clean model, no generation tests) and its S / ES / PS / NS / NM beside the unedited model's.
// The layer's C is computed once per layer and cached by the CLI, so the first row of each layer is slower.
//
//   deno run -A bench/rome_sweep.ts [--model DIR] [--dataset FILE] [--cases N] [--from I]
//     [--layers 0,1,2] [--weight-decay 0.5,0.05] [--clamp 4,10] [--fact-token subject_last,last]
//     [--base FILE] [--json]
//
// --base: the hparams file the grid varies (default rome/hparams/world-gpt2.json).
// --from I: sweep records I .. I+N−1 instead of the first N, so settings can be chosen on records that an
// evaluation table does not use (the bundled model's clamp was chosen with --from 300 --cases 50; its
// table covers records 0–299).
import { parseArgs } from "node:util";
import { join } from "node:path";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "models/world-gpt2" },
    dataset: { type: "string", default: "data/world/counterfact.json" },
    cases: { type: "string", default: "20" },
    from: { type: "string", default: "0" },
    layers: { type: "string", default: "0,1,2" },
    "weight-decay": { type: "string", default: "0.5,0.05" },
    clamp: { type: "string", default: "4,10" },
    "fact-token": { type: "string", default: "subject_last" },
    base: { type: "string", default: "rome/hparams/world-gpt2.json" },
    json: { type: "boolean" },
  },
});

const list = (s: string) => s.split(",").map((x) => Number(x.trim()));
const root = new URL("..", import.meta.url).pathname;
const base = JSON.parse(Deno.readTextFileSync(values.base!));
/** Bad arguments: one line naming the problem, exit 2 (no stack trace). */
function usageError(message: string): never {
  console.error(`rome_sweep: ${message}`);
  Deno.exit(2);
}
const from = Number(values.from);
if (!Number.isInteger(from) || from < 0) {
  usageError(`--from must be a record index ≥ 0, got '${values.from}'`);
}
// eval takes the first --limit records of a file, so records from --from on go to a slice in the sweep's
// temp folder (no generation tests run, so eval needs no snippets beside it)
const records = from > 0 ? JSON.parse(Deno.readTextFileSync(values.dataset!)) as unknown[] : [];
if (from > 0 && from >= records.length) {
  usageError(`--from ${from}: ${values.dataset} has only ${records.length} records`);
}
const tmp = Deno.makeTempDirSync({ prefix: "rome-sweep-" });
const dataset = from === 0 ? values.dataset! : join(tmp, "dataset.json");
if (from > 0) Deno.writeTextFileSync(dataset, JSON.stringify(records.slice(from)));

interface Row {
  fact_token: string;
  layer: number;
  weight_decay: number;
  clamp: number;
  S: number;
  ES: number;
  PS: number;
  NS: number;
  NM: number;
  seconds: number;
}

async function evalRome(hp: Record<string, unknown>, name: string): Promise<Record<string, unknown>> {
  const file = join(tmp, `${name}.json`);
  Deno.writeTextFileSync(file, JSON.stringify(hp));
  const args = [
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    join(root, "cli.ts"),
    "eval",
    "--method",
    "rome",
    "--json",
    "--model",
    values.model!,
    "--dataset",
    dataset,
    "--limit",
    values.cases!,
    "--generation-length",
    "0",
    "--hparams",
    file,
    "--out",
    join(tmp, name),
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "inherit" }).output();
  if (!out.success) throw new Error(`eval failed for ${name} (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const rows: Row[] = [];
let pre: Record<string, number> | undefined;
const fmt = (x: number) => x.toFixed(1).padStart(6);
if (!values.json) {
  console.log(
    `ROME sweep on ${values.model}, ${values.cases} records of ${values.dataset} from record ${from}`,
  );
  console.log("token         layer  wd     clamp      S     ES     PS     NS     NM   s/edit");
}
for (const token of values["fact-token"]!.split(",")) {
  for (const layer of list(values.layers!)) {
    for (const wd of list(values["weight-decay"]!)) {
      for (const clamp of list(values.clamp!)) {
        const name = `${token}_l${layer}_wd${wd}_c${clamp}`;
        const hp = {
          ...base,
          fact_token: token,
          layers: [layer],
          v_weight_decay: wd,
          clamp_norm_factor: clamp,
        };
        const t0 = performance.now();
        const res = await evalRome(hp, name) as {
          n: number;
          summary: Record<string, number>;
          pre: Record<string, number>;
        };
        const s = res.summary;
        pre ??= res.pre;
        const row: Row = {
          fact_token: token,
          layer,
          weight_decay: wd,
          clamp,
          S: s.S,
          ES: s.ES,
          PS: s.PS,
          NS: s.NS,
          NM: s.NM,
          seconds: (performance.now() - t0) / 1000 / res.n,
        };
        rows.push(row);
        if (!values.json) {
          console.log(
            `${token.padEnd(13)} ${String(layer).padStart(5)}  ${String(wd).padEnd(6)} ${
              String(clamp).padStart(5)
            } ${fmt(row.S)} ${fmt(row.ES)} ${fmt(row.PS)} ${fmt(row.NS)} ${fmt(row.NM)} ${
              row.seconds.toFixed(1).padStart(8)
            }`,
          );
        }
      }
    }
  }
}
if (values.json) console.log(JSON.stringify({ model: values.model, cases: Number(values.cases), pre, rows }));
else if (pre) {
  console.log(
    `unedited                         ${fmt(pre.S)} ${fmt(pre.ES)} ${fmt(pre.PS)} ${fmt(pre.NS)} ${
      fmt(pre.NM)
    }   (pre)`,
  );
  const best = rows.reduce((a, b) => (b.S > a.S ? b : a));
  console.log(
    `best S: ${best.fact_token}, layer ${best.layer}, weight decay ${best.weight_decay}, clamp ${best.clamp} (S ${
      best.S.toFixed(1)
    })`,
  );
}
Deno.removeSync(tmp, { recursive: true });
