// Where a model listens: for CounterFact records, the largest P(target_new) on the plain rewrite prompt that
// a free vector δ added to the MLP output at one (layer, token) can reach (Adam lr 0.5, no norm clamp, no
// weight decay, --steps steps). ROME writes its edit at one such site (`fact_token` subject_last: the
// subject's last token; last: the prompt's last token), so a site where even an unconstrained δ cannot move
// the answer is a site where no rank-one update can either. This is what chose `fact_token` for the bundled
// model (rome/hparams/world-gpt2.json): GPT-2 XL listens at the subject's last token; the bundled model
// reads the subject's tokens straight into the last token from layer 0 and listens only there.
//
// The summary counts, per layer, the records where the δ at the subject's last token reaches P(new) ≥ 50%.
//
//   deno run -A bench/rome_leverage.ts [--model DIR] [--dataset FILE] [--cases 0,2 | --cases 0-23]
//                                      [--sites all|subject_last,last] [--steps 20] [--json]
import { parseArgs } from "node:util";
import { getEngine } from "../engine/engine.ts";
import { Tape } from "../engine/autograd.ts";
import { loadGpt2Folder } from "../engine/gpt2/folder.ts";
import { crossEntropy, sumAll } from "../engine/ops.ts";
import { Adam } from "../engine/optim.ts";
import { fillTemplate, subjectTokenIndex } from "../rome/request.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "models/world-gpt2" },
    dataset: { type: "string", default: "data/world/counterfact.json" },
    cases: { type: "string", default: "0,2" },
    sites: { type: "string", default: "all" },
    steps: { type: "string", default: "20" },
    json: { type: "boolean" },
  },
});
const steps = Number(values.steps);
const e = await getEngine();
const { model, tokenizer } = await loadGpt2Folder(e, values.model!);
const records = JSON.parse(Deno.readTextFileSync(values.dataset!)) as {
  case_id: number;
  requested_rewrite: { prompt: string; subject: string; target_new: { str: string } };
}[];

/** Best P(target) at the last position with δ added to the MLP output at (layer, token). */
async function reachable(ids: number[], target: number, layer: number, token: number): Promise<number> {
  const delta = e.keep(e.zeros([model.config.nEmbd]));
  const t = e.keep(e.upload(Uint32Array.of(target), [1], "u32"));
  delta.requiresGrad = true;
  const adam = new Adam([delta], { lr: 0.5 });
  let p = 0;
  try {
    for (let step = 0; step <= steps; step++) {
      const tape = new Tape();
      const done = await e.scopeAsync(async () => {
        const loss = tape.run(() => {
          const { logits } = model.forward([ids], {
            hooks: [{ site: "mlp", layer, kind: "add", at: [[0, token]], value: delta }],
            logits: [[0, ids.length - 1]],
          });
          return sumAll(crossEntropy(logits!, t));
        });
        const [nll] = await loss.read();
        p = Math.max(p, Math.exp(-nll));
        if (step === steps) {
          tape.clear();
          return true;
        }
        const g = tape.backward(loss).get(delta)!;
        adam.step([g]);
        g.dispose();
        return false;
      });
      if (done) break;
    }
  } finally {
    adam.dispose();
    delta.dispose();
    t.dispose();
  }
  return p;
}

/** Bad arguments: one line naming the problem, exit 2 (no stack trace). */
function usageError(message: string): never {
  console.error(`rome_leverage: ${message}`);
  Deno.exit(2);
}
/** "0,2,5" or "0-23" (or a mix). */
const caseIds = values.cases!.split(",").flatMap((part) => {
  const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
  if (!m || (m[2] !== undefined && Number(m[2]) < Number(m[1]))) {
    usageError(`--cases takes ids and ranges like 0,2 or 0-23 (got '${part}')`);
  }
  const [lo, hi] = [Number(m[1]), Number(m[2] ?? m[1])];
  return Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
});
if (values.sites !== "all" && values.sites !== "subject_last,last") {
  usageError(`--sites is all or subject_last,last (got '${values.sites}')`);
}
const allSites = values.sites === "all";
const out = [];
const hits = Array.from({ length: model.config.nLayer }, () => 0);
for (const id of caseIds) {
  const rec = records.find((r) => r.case_id === id);
  if (!rec) usageError(`no case ${id} in ${values.dataset}`);
  const r = rec.requested_rewrite;
  const text = fillTemplate(r.prompt, r.subject);
  const ids = tokenizer.encode(text);
  const target = tokenizer.encode(" " + r.target_new.str.trim())[0];
  const tokens = ids.map((i) => tokenizer.decode([i]));
  const subjectLast = subjectTokenIndex(tokenizer, r.prompt, r.subject, "last");
  // --sites subject_last,last: only those two columns (NaN elsewhere), for many records quickly
  const wanted = (tok: number) => allSites || tok === subjectLast || tok === ids.length - 1;
  const grid: number[][] = [];
  for (let layer = 0; layer < model.config.nLayer; layer++) {
    const row: number[] = [];
    for (let tok = 0; tok < ids.length; tok++) {
      row.push(wanted(tok) ? await reachable(ids, target, layer, tok) : NaN);
    }
    grid.push(row);
    if (row[subjectLast] >= 0.5) hits[layer]++;
  }
  out.push({
    case_id: id,
    prompt: text,
    target_new: r.target_new.str,
    tokens,
    subject_last: subjectLast,
    reachable: grid,
  });
  if (!values.json) {
    console.log(`case ${id}: ${JSON.stringify(text)} → ${r.target_new.str} (reachable P(new) ×100, δ free)`);
    console.log("      " + tokens.map((t) => JSON.stringify(t).slice(0, 7).padStart(8)).join(""));
    grid.forEach((row, l) =>
      console.log(
        `  L${l}  ` + row.map((p) => (Number.isNaN(p) ? "·" : (p * 100).toFixed(0)).padStart(8)).join(""),
      )
    );
  }
}
const summary = { records: caseIds.length, subject_last_reaches_half_by_layer: hits };
if (values.json) console.log(JSON.stringify({ model: values.model, steps, summary, cases: out }));
else {
  console.log(
    `δ at the subject's last token reaches P(new) ≥ 50%, records of ${caseIds.length}, layers 0–${
      hits.length - 1
    }: ${hits.join(" ")}`,
  );
}
