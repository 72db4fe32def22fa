// --shard i/n and --shard auto (cli/shard.ts): the index and count a job array's environment gives, and a
// one-line UsageError for every environment that does not say which shard this is.
import { deepEqual, throws } from "node:assert/strict";
import { UsageError } from "../cli/args.ts";
import { resolveShard } from "../cli/shard.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];
const shard = (value: string, vars: Record<string, string> = {}) => {
  const s = resolveShard(value, env(vars))!;
  return [s.index, s.count];
};
const refused = (value: string, vars: Record<string, string>, message: RegExp) =>
  throws(
    () => resolveShard(value, env(vars)),
    (e: unknown) => e instanceof UsageError && message.test(e.message),
  );

Deno.test("shard: i/n as given; absent is undefined; bad text names the form", () => {
  deepEqual(shard("2/4"), [2, 4]);
  deepEqual(resolveShard(undefined, env({})), undefined);
  for (const bad of ["4/4", "-1/2", "1/0", "a/b", "2", "auto/0", "auto/x"]) refused(bad, {}, /--shard/);
});

Deno.test("shard auto: Slurm arrays by position in the range (0-3, 1-8:2, count from max)", () => {
  const slurm = (id: number, min: number, max: number, step = 1) => ({
    SLURM_ARRAY_TASK_ID: `${id}`,
    SLURM_ARRAY_TASK_MIN: `${min}`,
    SLURM_ARRAY_TASK_MAX: `${max}`,
    SLURM_ARRAY_TASK_STEP: `${step}`,
    SLURM_ARRAY_TASK_COUNT: `${Math.floor((max - min) / step) + 1}`,
  });
  deepEqual(shard("auto", slurm(0, 0, 3)), [0, 4]);
  deepEqual(shard("auto", slurm(3, 0, 3)), [3, 4]);
  deepEqual(shard("auto", slurm(5, 1, 7, 2)), [2, 4]);
  deepEqual(shard("auto/4", slurm(5, 1, 7, 2)), [2, 4]);
  deepEqual(shard("auto", { SLURM_ARRAY_TASK_ID: "2", SLURM_ARRAY_TASK_MAX: "3" }), [2, 4]);
  // 1,4,9 is not a range: the task id says nothing about its position.
  refused("auto", { ...slurm(4, 1, 9), SLURM_ARRAY_TASK_COUNT: "3" }, /not a range/);
  refused("auto/5", slurm(1, 0, 3), /has 4 tasks/);
  refused("auto", { SLURM_ARRAY_TASK_ID: "1" }, /give --shard auto\/N/);
  refused("auto", { SLURM_ARRAY_TASK_ID: "x" }, /SLURM_ARRAY_TASK_ID is 'x'/);
});

Deno.test("shard auto: Kubernetes Indexed Jobs and ROME_SHARD_INDEX take the count from auto/N or ROME_SHARD_COUNT", () => {
  deepEqual(shard("auto/4", { JOB_COMPLETION_INDEX: "3" }), [3, 4]);
  deepEqual(shard("auto", { JOB_COMPLETION_INDEX: "1", ROME_SHARD_COUNT: "2" }), [1, 2]);
  deepEqual(shard("auto", { ROME_SHARD_INDEX: "0", ROME_SHARD_COUNT: "3" }), [0, 3]);
  refused("auto", { JOB_COMPLETION_INDEX: "1" }, /not the shard count/);
  refused("auto/4", { JOB_COMPLETION_INDEX: "4" }, /shard 4 of 4/);
  refused("auto/4", { ROME_SHARD_INDEX: "0", ROME_SHARD_COUNT: "3" }, /disagrees/);
  refused("auto", {}, /no job array index in the environment/);
});
