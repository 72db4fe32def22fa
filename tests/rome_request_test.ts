// ROME's inputs on the CPU: the token-index rules (§2.3) on the bundled world's tokenizer, requests
// normalized or refused with one-line errors, and the hyperparameter files (shipped, chosen by shape, refused).
import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import { findSubjectRange, Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { defaultHparams, HparamsError, parseHparams, SHIPPED_HPARAMS } from "../rome/hparams.ts";
import { fillTemplate, normalizeRequest, RomeInputError, subjectTokenIndex } from "../rome/request.ts";
import { CONFIG } from "./lib/rome_setup.ts";

// ------------------------------------------------------------------ token-index rules (§2.3)

const world = Gpt2Tokenizer.fromVocabMerges(
  JSON.parse(Deno.readTextFileSync(new URL("../data/world/vocab.json", import.meta.url))),
  Deno.readTextFileSync(new URL("../data/world/merges.txt", import.meta.url)),
);

Deno.test("index rules (§2.3): prefix/subject/suffix tokenized apart; last, first, first_after_last", () => {
  const cases: [string, string][] = [
    ["{} is located in", "Kuala Lumpur"],
    ["The capital of {} is", "Burkina Faso"],
    ["Some words sampled here. {} is a city in", "Addis Ababa"],
    ["People talk about {}", "New Zealand"],
    ["{}'s capital is", "Sri Lanka"],
  ];
  for (const [template, subject] of cases) {
    const at = template.indexOf("{}");
    const prefix = template.slice(0, at), suffix = template.slice(at + 2);
    const full = fillTemplate(template, subject);
    const ids = world.encode(full);
    // the reference's assumption: separate tokenizations concatenate to the whole one at these boundaries
    const word = prefix ? " " + subject : subject;
    deepEqual([...world.encode(prefix.trimEnd()), ...world.encode(word), ...world.encode(suffix)], ids, full);
    const last = subjectTokenIndex(world, template, subject, "last");
    const first = subjectTokenIndex(world, template, subject, "first");
    const after = subjectTokenIndex(world, template, subject, "first_after_last");
    equal(
      world.decode(ids.slice(0, last + 1)),
      prefix + subject,
      `${full}: text through the last subject token`,
    );
    equal(
      world.decode(ids.slice(0, first)),
      prefix.trimEnd(),
      `${full}: text before the first subject token`,
    );
    equal(after, suffix === "" ? last : last + 1, `${full}: first_after_last`);
    equal(last, findSubjectRange(world, full, subject)[1] - 1, `${full}: agrees with the tracing's range`);
  }
  throws(() => subjectTokenIndex(world, "The city:{} is", "Oslo"), RomeInputError, "prefix without a space");
  throws(() => subjectTokenIndex(world, "{} and {}", "Oslo"), RomeInputError);
});

Deno.test("requests: leading spaces, the subject written out, and one-line errors for bad input", () => {
  const r = normalizeRequest({ prompt: "Paris is the capital of", subject: " Paris ", target_new: "Italy" });
  deepEqual(r, { prompt: "{} is the capital of", subject: "Paris", target_new: " Italy" });
  equal(
    normalizeRequest({ prompt: "{} is in", subject: "X", target_new: " Y", target_true: "Z" }).target_true,
    " Z",
  );
  const bad: [Parameters<typeof normalizeRequest>[0], RegExp][] = [
    [{ prompt: "The city is in", subject: "Oslo", target_new: "Y" }, /not in the prompt/],
    [{ prompt: "{} and {} are", subject: "Oslo", target_new: "Y" }, /exactly one/],
    [{ prompt: "{} is in", subject: "Oslo", target_new: "  " }, /target is empty/],
    [{ prompt: "{} is in", subject: "", target_new: "Y" }, /subject is empty/],
    [{ prompt: "{}", subject: "Oslo", target_new: "Y" }, /only the subject/],
  ];
  for (const [input, msg] of bad) {
    throws(() => normalizeRequest(input), (e: Error) => e instanceof RomeInputError && msg.test(e.message));
  }
});

// ------------------------------------------------------------------ hparams

Deno.test("hparams: the reference's files load, are chosen by model shape, and bad files are refused", () => {
  for (const h of SHIPPED_HPARAMS) {
    const p = parseHparams(h.json, h.name);
    ok(p.layers[0] < h.shape.nLayer, h.name);
    const chosen = defaultHparams({ ...CONFIG, nLayer: h.shape.nLayer, nEmbd: h.shape.nEmbd });
    equal(chosen.source, h.name);
  }
  const xl = defaultHparams({ ...CONFIG, nLayer: 48, nEmbd: 1600 }).hparams;
  deepEqual([xl.layers, xl.v_lr, xl.kl_factor, xl.v_weight_decay, xl.clamp_norm_factor], [
    [17],
    0.5,
    0.0625,
    0.5,
    4,
  ]);
  const other = defaultHparams(CONFIG);
  ok(other.hparams.layers[0] < CONFIG.nLayer);
  match(other.source, /no shipped file/);
  throws(
    () => parseHparams({ ...xl, layers: [1, 2] }, "f.json"),
    (e: Error) => e instanceof HparamsError && /exactly one layer/.test(e.message),
  );
  throws(() => parseHparams({ ...xl, v_lr: -1 }, "f.json"), /'v_lr' must be a positive number/);
  throws(
    () => parseHparams({ ...xl, rewrite_module_tmp: "transformer.h.{}.mlp.fc_out" }, "f.json"),
    /c_proj/,
  );
});
