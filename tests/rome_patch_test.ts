// ROME's patch files: round trip, exact apply and revert on a fresh copy of the edited model, refusals
// (another model, a double apply, an out-of-order revert), and malformed files.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import {
  checkApply,
  checkRevert,
  decodePatch,
  emptyEditsLog,
  encodePatch,
  logEntry,
  matrixHash,
  PatchError,
  type RomePatch,
  xorMatrix,
} from "../rome/patch.ts";
import { encodeSecondMoment } from "../rome/stats.ts";
import { disposeModel, memoryModel, sensitiveWeights } from "./lib/fixtures.ts";
import { bitsEqual, CONFIG, editedCase, patchOf, readWeights } from "./lib/rome_setup.ts";
import { concat, testEngine } from "./lib/util.ts";

const engine = await testEngine();

Deno.test("patch: round trip; applying it to the unedited model reproduces the edit, reverting restores every bit", async () => {
  const c = await editedCase("rome");
  const patch = await patchOf(c);
  const back = decodePatch(concat(encodePatch(patch)), "p.safetensors");
  deepEqual(back.meta, patch.meta);
  for (const k of ["u", "lambda", "key", "vStar", "xor"] as const) deepEqual(back[k], patch[k], k);
  const name = patch.meta.matrix;
  equal(matrixHash(name, [CONFIG.nInner, CONFIG.nEmbd], c.before.get(name)!), patch.meta.matrix_hash_before);

  const m = memoryModel(engine, CONFIG, sensitiveWeights(CONFIG, 31));
  try {
    const original = await readWeights(m);
    checkApply(back, patch.meta.matrix_hash_before, undefined, m.hash);
    const a = await xorMatrix(m, name, back.xor);
    deepEqual(a, { before: patch.meta.matrix_hash_before, after: patch.meta.matrix_hash_after });
    const applied = await readWeights(m);
    for (const [n, w] of c.after) ok(bitsEqual(applied.get(n)!, w), `${n} after apply`);
    checkRevert(back, a.after, undefined, m.hash);
    await xorMatrix(m, name, back.xor);
    const reverted = await readWeights(m);
    for (const [n, w] of original) ok(bitsEqual(reverted.get(n)!, w), `${n} after revert`);
  } finally {
    disposeModel(m);
  }
});

Deno.test("patch: another model, a double apply and an out-of-order revert are refused; other matrices commute", async () => {
  const c = await editedCase("rome");
  const p1 = await patchOf(c);
  const other = memoryModel(engine, CONFIG, sensitiveWeights(CONFIG, 99));
  try {
    const cur = matrixHash(
      p1.meta.matrix,
      [CONFIG.nInner, CONFIG.nEmbd],
      await other.w(p1.meta.matrix).read() as Float32Array,
    );
    throws(
      () => checkApply(p1, cur, undefined, other.hash),
      (e: Error) => e instanceof PatchError && /another model/.test(e.message),
    );
  } finally {
    disposeModel(other);
  }
  const log = emptyEditsLog("base");
  log.edits.push(logEntry(p1, "edits/1.safetensors"));
  throws(() => checkApply(p1, p1.meta.matrix_hash_before, log, "m"), /already applied/);
  // a second patch on the same matrix, applied after p1
  const p2: RomePatch = {
    ...p1,
    meta: {
      ...p1.meta,
      id: "second",
      matrix_hash_before: p1.meta.matrix_hash_after,
      matrix_hash_after: "h2",
    },
  };
  log.edits.push(logEntry(p2, "edits/2.safetensors"));
  throws(
    () => checkRevert(p1, "h2", log, "m"),
    (e: Error) => /revert the last one first/.test(e.message) && /second/.test(e.message),
  );
  checkRevert(p2, "h2", log, "m");
  // on another matrix, p2 does not block reverting p1
  log.edits[1] = { ...log.edits[1], matrix: "h.2.mlp.c_proj.weight" };
  checkRevert(p1, p1.meta.matrix_hash_after, log, "m");
  throws(() => checkRevert(p1, "something else", undefined, "m"), /is not applied to this model/);
});

Deno.test("patch: malformed files are refused with the file named", async () => {
  const c = await editedCase("rome");
  const good = concat(encodePatch(await patchOf(c)));
  const malformed = (bytes: Uint8Array, why: RegExp) =>
    throws(
      () => decodePatch(bytes, "x.safetensors"),
      (e: Error) =>
        e instanceof PatchError && /malformed patch x\.safetensors/.test(e.message) && why.test(e.message),
    );
  malformed(good.subarray(0, 100), /not a safetensors file/);
  malformed(new TextEncoder().encode("hello world, not a patch"), /not a safetensors file/);
  malformed(
    concat(
      encodeSecondMoment(new Float32Array(4), 1, {
        model_hash: "m",
        layer: 0,
        corpus_hash: "c",
        samples: 1,
        cursor: 1,
        source: "s",
      }),
    ),
    /format/,
  );
});
