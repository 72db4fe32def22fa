// `--shard i/n` and `--shard auto`: which part of a job array this process is. `auto` reads the array index
// (and, where the scheduler sets it, the count) from the environment, so that one sbatch script, Indexed Job
// manifest or CI matrix runs every shard with the same command line:
// - Slurm job arrays: SLURM_ARRAY_TASK_ID, with SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MIN/MAX/STEP
//   (https://slurm.schedmd.com/job_array.html). The array must be a range (`--array=0-3`, `1-8:2`); the
//   shard index is the task's position in it.
// - Kubernetes Indexed Jobs: JOB_COMPLETION_INDEX; the count is not in the pod's environment, so it comes
//   from `--shard auto/N` or ROME_SHARD_COUNT (the manifest's `completions`).
// - Anything else (GitHub Actions matrices: `strategy.job-index` and `strategy.job-total` are contexts, not
//   variables): ROME_SHARD_INDEX and ROME_SHARD_COUNT, set in the job's env.
import { parseShard } from "../eval/metrics.ts";
import { UsageError } from "./args.ts";

export interface Shard {
  index: number;
  count: number;
}

/** A shard and where it came from (the option, or the variables that `auto` read). */
export interface ResolvedShard extends Shard {
  source: string;
}

type Env = (name: string) => string | undefined;

const denoEnv: Env = (name) => Deno.env.get(name);

/** A non-negative integer spelled in decimal, or undefined when the variable is unset or empty. */
function envInt(env: Env, name: string): number | undefined {
  const raw = env(name);
  if (raw === undefined || raw.trim() === "") return undefined;
  if (!/^\d+$/.test(raw.trim())) {
    throw new UsageError(`--shard auto: ${name} is '${raw}', not an integer ≥ 0`);
  }
  return Number(raw.trim());
}

function checked(index: number, count: number, source: string): ResolvedShard {
  if (!(count >= 1) || !(index < count)) {
    throw new UsageError(
      `--shard auto: ${source} gives shard ${index} of ${count}; a shard is i/n with 0 ≤ i < n`,
    );
  }
  return { index, count, source };
}

function fromSlurm(env: Env, givenCount: number | undefined): ResolvedShard | undefined {
  const id = envInt(env, "SLURM_ARRAY_TASK_ID");
  if (id === undefined) return undefined;
  const min = envInt(env, "SLURM_ARRAY_TASK_MIN") ?? 0;
  const step = envInt(env, "SLURM_ARRAY_TASK_STEP") ?? 1;
  const max = envInt(env, "SLURM_ARRAY_TASK_MAX");
  const count = envInt(env, "SLURM_ARRAY_TASK_COUNT") ??
    (max !== undefined && step > 0 ? Math.floor((max - min) / step) + 1 : undefined) ?? givenCount;
  if (count === undefined) {
    throw new UsageError(
      "--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX; " +
        "give --shard auto/N",
    );
  }
  // A range min, min+step, …, max has exactly (max − min)/step + 1 tasks; an array like 1,4,9 does not, and
  // its task ids say nothing about the position of a task in it.
  const isRange = step > 0 && (id - min) % step === 0 &&
    (max === undefined || Math.floor((max - min) / step) + 1 === count);
  if (!isRange) {
    throw new UsageError(
      `--shard auto: this Slurm array is not a range (task ${id}, min ${min}, max ${
        max ?? "?"
      }, step ${step}, ` +
        `${count} tasks); submit it as --array=0-${count - 1}, or give --shard i/n`,
    );
  }
  if (givenCount !== undefined && givenCount !== count) {
    throw new UsageError(`--shard auto/${givenCount}: the Slurm array has ${count} tasks`);
  }
  return checked((id - min) / step, count, `SLURM_ARRAY_TASK_ID=${id} (${count} tasks from ${min})`);
}

function fromIndexVariable(
  env: Env,
  indexName: string,
  givenCount: number | undefined,
): ResolvedShard | undefined {
  const index = envInt(env, indexName);
  if (index === undefined) return undefined;
  const envCount = envInt(env, "ROME_SHARD_COUNT");
  if (givenCount !== undefined && envCount !== undefined && givenCount !== envCount) {
    throw new UsageError(`--shard auto/${givenCount} disagrees with ROME_SHARD_COUNT=${envCount}`);
  }
  const count = givenCount ?? envCount;
  if (count === undefined) {
    throw new UsageError(
      `--shard auto: ${indexName} is set but not the shard count; give --shard auto/N or ROME_SHARD_COUNT`,
    );
  }
  return checked(index, count, `${indexName}=${index} of ${count}`);
}

/**
 * The shard a `--shard` value names: `i/n`, `auto` or `auto/N` (the index from the scheduler, N shards).
 * Undefined when the option is absent. Any bad value or missing variable is a UsageError naming it.
 */
export function resolveShard(value: unknown, env: Env = denoEnv): ResolvedShard | undefined {
  if (value === undefined) return undefined;
  const text = String(value).trim();
  const auto = /^auto(?:\/(\d+))?$/.exec(text);
  if (!auto) {
    try {
      return { ...parseShard(text), source: "--shard" };
    } catch (e) {
      throw new UsageError(`--shard: ${(e as Error).message} (or auto, auto/N: the job array's index)`);
    }
  }
  const givenCount = auto[1] === undefined ? undefined : Number(auto[1]);
  if (givenCount !== undefined && givenCount < 1) {
    throw new UsageError(`--shard auto/N needs N ≥ 1 (got '${text}')`);
  }
  const found = fromSlurm(env, givenCount) ?? fromIndexVariable(env, "JOB_COMPLETION_INDEX", givenCount) ??
    fromIndexVariable(env, "ROME_SHARD_INDEX", givenCount);
  if (!found) {
    throw new UsageError(
      "--shard auto: no job array index in the environment (SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or " +
        "ROME_SHARD_INDEX); give --shard i/n",
    );
  }
  return found;
}
