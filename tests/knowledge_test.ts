// eval/knowledge.ts: held-out phrasings one by one, each miss classified as another object of the relation
// (recall failed) or another word (the phrasing led elsewhere), on hand-made probe results.
import { deepEqual } from "node:assert/strict";
import type { Gpt2Tokenizer } from "../engine/gpt2/tokenizer.ts";
import { phrasingRecall } from "../eval/knowledge.ts";

Deno.test("knowledge: recall per held-out phrasing with its misses classified", () => {
  const facts = [
    { subject: "Lyon", relation_id: "P17", object: "France" },
    { subject: "Kyoto", relation_id: "P17", object: "Japan" },
    { subject: "Lyon", relation_id: "P37", object: "French" },
  ];
  const heldOut = [
    { relation: "P17", phrasing: "A: {} lies in" },
    { relation: "P17", phrasing: "A: {} lies in" },
    { relation: "P17", phrasing: "B: {} is in" },
    { relation: "P17", phrasing: "B: {} is in" },
    { relation: "P37", phrasing: "A: {} lies in" },
  ];
  const vocab = ["France", "Japan", "the", "French", "."];
  const tokenizer = { decode: (ids: number[]) => " " + ids.map((i) => vocab[i]).join("") } as Gpt2Tokenizer;
  // answers: "the" twice (another word) | Japan (right), France (Lyon's is right: another object) | French (right)
  const result = {
    predicted: [2, 2, 1, 0, 3],
    correct: [false, false, true, false, true],
    accuracy: 0.4,
  };
  deepEqual(phrasingRecall(facts, heldOut, result, tokenizer), [
    {
      relation_id: "P17",
      phrasing: "A: {} lies in",
      n: 2,
      accuracy: 0,
      same_relation_miss: 0,
      other_answers: [{ token: "the", n: 2 }],
    },
    {
      relation_id: "P17",
      phrasing: "B: {} is in",
      n: 2,
      accuracy: 0.5,
      same_relation_miss: 0.5,
      other_answers: [],
    },
    {
      relation_id: "P37",
      phrasing: "A: {} lies in",
      n: 1,
      accuracy: 1,
      same_relation_miss: 0,
      other_answers: [],
    },
  ]);
});
