/// <reference lib="dom" />
// The page: forms, progress and drawing over web/session.ts. The heatmaps are the CLI's own SVGs
// (tracing/render.ts), whose cells carry their values for the hover readout. `window.romeWeb` exposes the
// state and the last results as plain data, for scripts and the e2e test (tests/web_test.ts).
import { GpuError } from "../engine/device.ts";
import type { EvaluationPrompts, TargetProbabilities } from "../rome/evaluate.ts";
import { fillTemplate, type RequestInput } from "../rome/request.ts";
import { escapeXml, heatmapSvg } from "../tracing/render.ts";
import { EXAMPLE_KNOWN_ID } from "../tracing/facts.ts";
import { traceHeatmapSpec } from "../tracing/report.ts";
import { type EditRun, type LoadStage, Session, type TraceRun } from "./session.ts";

type State = "loading" | "ready" | "tracing" | "editing" | "no-webgpu" | "error";

interface PageState {
  state: State;
  /** The fatal error (loading, no WebGPU), or the last action's error. */
  error: string | null;
  adapter: string | null;
  trace: TraceRun | null;
  edit: EditRun | null;
}

const page: PageState = { state: "loading", error: null, adapter: null, trace: null, edit: null };
(globalThis as unknown as { romeWeb: PageState }).romeWeb = page;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const input = (id: string) => $<HTMLInputElement>(id);

function show(id: string, on = true): void {
  $(id).hidden = !on;
}

function fatal(message: string, state: State = "error"): void {
  const f = $("fatal");
  f.textContent = message;
  f.hidden = false;
  show("loading", false);
  page.error = message;
  page.state = state;
}

const pct = (p: number | undefined) => p === undefined ? "–" : `${(p * 100).toFixed(2)}%`;
const message = (e: unknown) => e instanceof Error ? e.message : String(e);

// ---------------------------------------------------------------- loading

const STAGE_TEXT: Record<LoadStage, string> = {
  weights: "downloading the weights",
  gpu: "uploading tensors to the GPU",
  facts: "reading the facts world",
  noise: "measuring the subjects' embedding spread (noise level)",
};

async function load(): Promise<Session | undefined> {
  if (!("gpu" in navigator) || !navigator.gpu) {
    fatal(
      "This browser has no WebGPU (navigator.gpu is missing), so the model cannot run here.\n" +
        "Use a browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), and " +
        "open the page from http://127.0.0.1 or https (WebGPU needs a secure context). On Linux, Chrome " +
        "needs --enable-unsafe-webgpu (and Vulkan).",
      "no-webgpu",
    );
    return undefined;
  }
  const bar = $<HTMLProgressElement>("load-bar"), status = $("load-status");
  try {
    const session = await Session.load((stage, done, total) => {
      bar.max = Math.max(total, 1);
      bar.value = done;
      const amount = stage === "weights" && total > 0
        ? ` ${(done / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MiB`
        : total > 1
        ? ` ${done} of ${total}`
        : "";
      status.textContent = STAGE_TEXT[stage] + amount;
    });
    const info = session.engine.gpu.info;
    page.adapter = [info.vendor, info.architecture, info.description]
      .filter((s) => s && s !== "unknown").join(" ");
    const c = session.model.config;
    $("adapter").textContent = `Adapter: ${page.adapter}${info.isFallbackAdapter ? " (software)" : ""}. ` +
      `Model: ${c.nLayer} layers, d ${c.nEmbd}, ${c.nHead} heads, ${session.tokenizer.vocabSize} tokens ` +
      `(${session.model.hash}).`;
    return session;
  } catch (e) {
    if (e instanceof GpuError) {
      fatal(
        `WebGPU is there but gave no usable device: ${e.message}\nThe browser may block WebGPU on this ` +
          "GPU or driver; check chrome://gpu (or the equivalent) and enable WebGPU.",
        "no-webgpu",
      );
    } else fatal(`Loading failed: ${message(e)}`);
    return undefined;
  }
}

// ---------------------------------------------------------------- trace

function drawTrace(run: TraceRun): void {
  const r0 = run.records[0];
  $("trace-summary").textContent =
    `answer ${JSON.stringify(r0.answer)}: p clean ${r0.high_score.toFixed(4)}, ` +
    `corrupted ${r0.low_score.toFixed(4)}; noise ${run.noise.toFixed(4)} (${run.noiseSpec} σ_t = ` +
    `${run.std.toFixed(4)}), ${r0.samples} samples, ` +
    `window ${r0.window}; ${run.seconds.toFixed(1)} s` + (run.edited ? " (on the edited model)" : "");
  const figs = $("trace-figs");
  figs.innerHTML = run.records.map((r) =>
    `<figure data-kind="${r.kind}">${heatmapSvg(traceHeatmapSpec(r))}<figcaption>${
      escapeXml(r.kind === "hidden" ? "hidden states" : `${r.kind}, window ${r.window}`)
    }</figcaption></figure>`
  ).join("");
  show("trace-out");
}

async function runTrace(session: Session): Promise<void> {
  const bar = $<HTMLProgressElement>("trace-bar"), status = $("trace-status");
  show("trace-error", false);
  setBusy(true, "tracing");
  show("trace-bar");
  try {
    const run = await session.trace(
      input("trace-prompt").value,
      input("trace-subject").value,
      (d, t, kind) => {
        bar.max = t;
        bar.value = d;
        status.textContent = `${kind}: ${d} of ${t} cells`;
      },
    );
    page.trace = run;
    drawTrace(run);
    status.textContent = "";
  } catch (e) {
    failAction("trace", e);
  } finally {
    show("trace-bar", false);
    setBusy(false);
  }
}

// ---------------------------------------------------------------- edit

/** The request in the form, and the example case's prompts while the form still shows that case. */
function editForm(session: Session): { input: RequestInput; prompts: EvaluationPrompts; caseId?: number } {
  const form: RequestInput = {
    prompt: input("edit-prompt").value,
    subject: input("edit-subject").value,
    target_new: input("edit-target").value,
    target_true: input("edit-true").value.trim() === "" ? undefined : input("edit-true").value,
  };
  const id = $<HTMLSelectElement>("edit-example").value;
  if (id !== "") {
    const c = session.caseEdit(Number(id));
    const same = (["prompt", "subject", "target_new", "target_true"] as const).every((k) =>
      (c.input[k] ?? "") === (form[k] ?? "")
    );
    if (same) return c;
  }
  return { input: form, prompts: {} };
}

function probabilityRows(label: string, pre: TargetProbabilities[], post: TargetProbabilities[]): string {
  const arrow = (a: number | undefined, b: number | undefined) => {
    if (a === undefined || b === undefined) return "–";
    const cls = b > a ? "up" : b < a ? "down" : "";
    return `${pct(a)} → <span class="${cls}">${pct(b)}</span>`;
  };
  return pre.map((p, i) =>
    `<tr><th>${label}${pre.length > 1 ? ` ${i + 1}` : ""}</th><td>${
      arrow(p.target_new, post[i].target_new)
    }</td><td>${arrow(p.target_true, post[i].target_true)}</td><td class="p">${escapeXml(p.prompt)}</td></tr>`
  ).join("");
}

function drawEdit(run: EditRun): void {
  const r = run.request;
  $("edit-summary").textContent = `${JSON.stringify(fillTemplate(r.prompt, r.subject))} → ` +
    `${JSON.stringify(r.target_new.trim())}; layer ${run.layer}, ${run.variant}, hparams ${run.hparams}; ` +
    `C over ${run.statsCount} tokens; v* loss ${run.losses[0].toFixed(3)} → ${
      run.losses.at(-1)!.toFixed(3)
    }; ` +
    `‖δ‖ ${run.deltaNorm.toFixed(3)}; ${run.seconds.total.toFixed(1)} s`;
  const pre = run.pre, post = run.post;
  $("edit-table").innerHTML = `<tr><th></th><th>P(new): pre → post</th><th>P(true): pre → post</th>` +
    `<th style="text-align:left">prompt</th></tr>` +
    probabilityRows("rewrite", [pre.rewrite], [post.rewrite]) +
    probabilityRows("paraphrase", pre.paraphrases, post.paraphrases) +
    probabilityRows("neighbour", pre.neighbours, post.neighbours);
  $("edit-gens").innerHTML = pre.generations.map((g, i) =>
    `<div class="gen"><b>${escapeXml(g.prompt)}</b>\n  pre:  …${escapeXml(JSON.stringify(g.text))}\n` +
    `  post: …${escapeXml(JSON.stringify(post.generations[i].text))}</div>`
  ).join("");
  show("edit-out");
}

async function runEdit(session: Session): Promise<void> {
  const bar = $<HTMLProgressElement>("edit-bar"), status = $("edit-status");
  show("edit-error", false);
  setBusy(true, "editing");
  show("edit-bar");
  const steps = session.hparams.v_num_grad_steps;
  const stageText = {
    stats: `loading the statistics C of layer ${session.editLayer}`,
    pre: "measuring the unedited model",
    templates: "sampling context templates",
    k: "k* (the subject's key)",
    v: "v* (Adam on δ)",
    update: "rank-one update",
    post: "measuring the edited model",
  } as const;
  const order = Object.keys(stageText);
  try {
    const { input: request, prompts, caseId } = editForm(session);
    const run = await session.edit(request, prompts, caseId, (stage, step) => {
      // v* takes most of the time: its steps fill the bar between the stages before and after it
      bar.max = order.length + steps;
      const at = order.indexOf(stage);
      bar.value = stage === "v" ? at + (step ?? 0) : at + (at > order.indexOf("v") ? steps : 0);
      status.textContent = stageText[stage] + (stage === "v" && step ? `: step ${step} of ${steps}` : "");
    });
    page.edit = run;
    drawEdit(run);
    status.textContent = "";
  } catch (e) {
    failAction("edit", e);
  } finally {
    show("edit-bar", false);
    setBusy(false);
    $<HTMLButtonElement>("edit-revert").disabled = session.editCount === 0;
    $("edit-revert").textContent = `Revert to the original model${
      session.editCount > 0 ? ` (${session.editCount} edit${session.editCount > 1 ? "s" : ""})` : ""
    }`;
  }
}

// ---------------------------------------------------------------- wiring

function setBusy(busy: boolean, state: State = "ready"): void {
  for (const id of ["trace-run", "edit-run", "edit-revert"]) $<HTMLButtonElement>(id).disabled = busy;
  page.state = busy ? state : "ready";
  if (busy) page.error = null;
}

function failAction(where: "trace" | "edit", e: unknown): void {
  const box = $(`${where}-error`);
  box.textContent = message(e);
  box.hidden = false;
  page.error = message(e);
  $(`${where}-status`).textContent = "";
}

function fillExamples(session: Session): void {
  const facts = $<HTMLSelectElement>("trace-example");
  facts.innerHTML = session.facts.map((f, i) =>
    `<option value="${i}">${escapeXml(`${f.known_id}: ${f.prompt} → ${f.attribute}`)}</option>`
  ).join("");
  const pickFact = () => {
    const f = session.facts[Number(facts.value)];
    input("trace-prompt").value = f.prompt;
    input("trace-subject").value = f.subject;
  };
  facts.addEventListener("change", pickFact);
  // the CLI's default trace first
  facts.value = String(Math.max(0, session.facts.findIndex((f) => f.known_id === EXAMPLE_KNOWN_ID)));
  pickFact();

  const cases = $<HTMLSelectElement>("edit-example");
  cases.innerHTML = `<option value="">(your own)</option>` + session.cases.map((c) => {
    const r = c.requested_rewrite;
    return `<option value="${c.case_id}">${
      escapeXml(
        `${c.case_id}: ${fillTemplate(r.prompt, r.subject)} ${r.target_true.str} → ${r.target_new.str}`,
      )
    }</option>`;
  }).join("");
  const pickCase = () => {
    if (cases.value === "") return;
    const { input: r } = session.caseEdit(Number(cases.value));
    input("edit-prompt").value = r.prompt;
    input("edit-subject").value = r.subject;
    input("edit-target").value = r.target_new;
    input("edit-true").value = r.target_true ?? "";
  };
  cases.addEventListener("change", pickCase);
  if (session.cases.length > 0) cases.value = String(session.cases[0].case_id);
  pickCase();
}

async function main(): Promise<void> {
  const session = await load();
  if (!session) return;
  fillExamples(session);
  $("trace-run").addEventListener("click", () => runTrace(session));
  $("edit-run").addEventListener("click", () => runEdit(session));
  $("edit-revert").addEventListener("click", async () => {
    setBusy(true, "editing");
    try {
      await session.revert();
      $("edit-status").textContent = "reverted: the model is the original again";
    } catch (e) {
      failAction("edit", e);
    } finally {
      setBusy(false);
      $<HTMLButtonElement>("edit-revert").disabled = session.editCount === 0;
      $("edit-revert").textContent = "Revert to the original model";
    }
  });
  document.addEventListener("mouseover", (ev) => {
    const v = (ev.target as Element | null)?.getAttribute?.("data-v");
    if (v) $("readout").textContent = v;
  });
  show("loading", false);
  show("trace");
  show("edit");
  page.state = "ready";
}

main().catch((e) => fatal(`The page failed: ${message(e)}`));
