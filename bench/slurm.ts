// The job arrays of examples/slurm on a real Slurm: starts a single-node cluster from Debian's packages
// (slurmctld, slurmd, munge) on this machine, submits examples/slurm/submit.sh (an N-task evaluation array,
// an N-task statistics array, the merge as an afterok job), waits, and compares what the merge wrote with a
// single-process run of the same commands, made here first:
// - evaluation: every case_<id>.json identical apart from its timings, the merged summary equal to the single
//   run's to the last printed digit;
// - statistics: the merged C against the single-process C (max relative difference; goal ≤ 1e-6), and an
//   edit made with each (`edit --stats FILE --json`): post-edit probabilities within 1e-5.
//   deno run -A bench/slurm.ts [--tasks 4] [--limit 40] [--method rome] [--generation-length 0] [--keep]
// Needs root (it installs the packages with apt-get when missing and runs the daemons); too slow for the test
// suite (about 10 minutes on the 2-core VM with lavapipe). Nothing is left running unless --keep; the files of
// a failed run are kept (the jobs' logs in <out>/logs).
import { parseArgs } from "node:util";
import { join } from "node:path";
import { exists } from "../engine/files.ts";
import { quietMesa } from "../engine/host.ts";
import { decodeSecondMoment } from "../rome/stats.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO = ["npx", "-y", "deno@2.9.6"];

const { values: opt } = parseArgs({
  options: {
    tasks: { type: "string", default: "4" },
    limit: { type: "string", default: "40" },
    method: { type: "string", default: "rome" },
    "generation-length": { type: "string", default: "0" },
    keep: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
});
const TASKS = Number(opt.tasks), LIMIT = Number(opt.limit);
if (!Number.isInteger(TASKS) || TASKS < 1 || !Number.isInteger(LIMIT) || LIMIT < 1) {
  console.error("error: --tasks and --limit must be integers ≥ 1");
  Deno.exit(2);
}
quietMesa();

async function sh(cmd: string[], env: Record<string, string> = {}, check = true) {
  const r = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
  if (check && r.code !== 0) throw new Error(`${cmd.join(" ")} exited ${r.code}\n${err.slice(-2000)}`);
  return { code: r.code, out, err };
}

/** The WebGPU adapter the jobs run on (this machine's: the cluster is this one node), as `deno task info` says. */
async function adapterName(): Promise<string> {
  const info = JSON.parse((await denoTask(["info", "--json"])).out);
  return info.description ?? "unknown";
}

const has = async (tool: string) => (await sh(["sh", "-c", `command -v ${tool}`], {}, false)).code === 0;

// ---------------------------------------------------------------------------------------- the cluster

async function installSlurm(): Promise<void> {
  if (await has("sbatch") && await has("slurmctld") && await has("slurmd") && await has("munged")) return;
  if (Deno.uid() !== 0 || !await has("apt-get")) {
    throw new Error(
      "Slurm is not installed: apt-get install -y slurmctld slurmd slurm-client munge (as root)",
    );
  }
  console.error("installing slurmctld slurmd slurm-client munge (apt-get)");
  await sh([
    "apt-get",
    "install",
    "-y",
    "-qq",
    "--no-install-recommends",
    "slurmctld",
    "slurmd",
    "slurm-client",
    "munge",
  ], {
    DEBIAN_FRONTEND: "noninteractive",
    PATH: Deno.env.get("PATH") ?? "",
  });
}

/** munged as the munge user (it refuses root), unless one runs already; true when this bench started it. */
async function startMunge(): Promise<boolean> {
  if ((await sh(["sh", "-c", "munge -n | unmunge"], {}, false)).code === 0) return false;
  await Deno.mkdir("/run/munge", { recursive: true });
  await sh(["chown", "munge:munge", "/run/munge"]);
  await sh(["su", "-s", "/bin/sh", "munge", "-c", "munged"]);
  return true;
}

interface Cluster {
  conf: string;
  dir: string;
  stop(): Promise<void>;
}

/** slurmctld and slurmd for this one node, with their state, logs and config in `dir`. */
async function startCluster(dir: string): Promise<Cluster> {
  const host = (await sh(["hostname"])).out.trim();
  const cpus = navigator.hardwareConcurrency;
  const memMb = Math.floor(
    Number(/MemTotal:\s+(\d+)/.exec(await Deno.readTextFile("/proc/meminfo"))![1]) / 1024 * 0.8,
  );
  for (const d of ["state", "spool"]) await Deno.mkdir(join(dir, d), { recursive: true });
  const conf = join(dir, "slurm.conf");
  await Deno.writeTextFile(
    conf,
    [
      "ClusterName=rome-bench",
      `SlurmctldHost=${host}`,
      "SlurmUser=root",
      "SlurmdUser=root",
      `StateSaveLocation=${dir}/state`,
      `SlurmdSpoolDir=${dir}/spool`,
      `SlurmctldPidFile=${dir}/slurmctld.pid`,
      `SlurmdPidFile=${dir}/slurmd.pid`,
      // Ports away from the defaults, so that a cluster this machine may already belong to is not disturbed.
      "SlurmctldPort=6917",
      "SlurmdPort=6918",
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "ReturnToService=2",
      "SchedulerType=sched/builtin",
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core_Memory",
      "AuthType=auth/munge",
      "MpiDefault=none",
      "JobCompType=jobcomp/none",
      "AccountingStorageType=accounting_storage/none",
      "JobAcctGatherType=jobacct_gather/none",
      // Finished jobs stay visible to scontrol long enough to read their exit codes.
      "MinJobAge=3600",
      `SlurmctldLogFile=${dir}/slurmctld.log`,
      `SlurmdLogFile=${dir}/slurmd.log`,
      `NodeName=${host} CPUs=${cpus} RealMemory=${memMb} State=UNKNOWN`,
      "PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ].join("\n") + "\n",
  );
  await sh(["slurmctld", "-f", conf]);
  await sh(["slurmd", "-f", conf]);
  const env = { SLURM_CONF: conf };
  for (let i = 0; i < 60; i++) {
    const s = await sh(["sinfo", "-h", "-o", "%T"], env, false);
    if (s.code === 0 && /idle|mixed|allocated/.test(s.out)) {
      return {
        conf,
        dir,
        async stop() {
          for (const file of ["slurmd.pid", "slurmctld.pid"]) {
            try {
              const pid = Number(await Deno.readTextFile(join(dir, file)));
              Deno.kill(pid, "SIGTERM");
              // slurmctld saves its state as it exits: wait, so that the folder can then be removed whole
              for (let i = 0; i < 100 && exists(`/proc/${pid}`); i++) {
                await new Promise((r) => setTimeout(r, 100));
              }
            } catch { /* already gone */ }
          }
        },
      };
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`the node did not come up; see ${dir}/slurmctld.log and slurmd.log`);
}

/** Waits until none of the jobs is pending or running; returns each job's (or array task's) state and exit code. */
async function waitForJobs(ids: string[], env: Record<string, string>): Promise<string[]> {
  for (;;) {
    const q = await sh(["squeue", "-h", "-j", ids.join(","), "-o", "%i %T"], env, false);
    if (q.out.trim() === "") break;
    await new Promise((r) => setTimeout(r, 5000));
  }
  const states: string[] = [];
  for (const id of ids) {
    const show = await sh(["scontrol", "-o", "show", "job", id], env);
    for (const line of show.out.trim().split("\n")) {
      const f = (k: string) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1];
      states.push(
        `${f("JobId")}${f("ArrayTaskId") ? `_${f("ArrayTaskId")}` : ""} ${f("JobName")} ${
          f("JobState")
        } exit ${f("ExitCode")}`,
      );
    }
  }
  return states;
}

// ---------------------------------------------------------------------------------------- comparisons

const denoTask = (args: string[], env: Record<string, string> = {}) =>
  sh([...DENO, "task", ...args], { ...Deno.env.toObject(), ...env });

/** case_<id>.json of a folder without its timings (the only part of a case that depends on the run). */
async function caseFiles(dirs: string[]): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  const untimed = (k: string, v: unknown) => (k === "time" || k === "seconds" ? undefined : v);
  for (const dir of dirs) {
    for (const e of Deno.readDirSync(dir)) {
      const m = /^case_(\d+)\.json$/.exec(e.name);
      if (m) {
        out.set(
          Number(m[1]),
          JSON.stringify(JSON.parse(await Deno.readTextFile(join(dir, e.name))), untimed),
        );
      }
    }
  }
  return out;
}

/** Max |a − b| / max |b| over the two files' Σ kkᵀ, and their token counts. */
async function statsDifference(
  a: string,
  b: string,
): Promise<{ rel: number; countA: number; countB: number }> {
  const [fa, fb] = await Promise.all(
    [a, b].map(async (f) => decodeSecondMoment(await Deno.readFile(f), f)),
  );
  let num = 0, den = 0;
  for (let i = 0; i < fb.mom2.length; i++) {
    num = Math.max(num, Math.abs(fa.mom2[i] - fb.mom2[i]));
    den = Math.max(den, Math.abs(fb.mom2[i]));
  }
  return { rel: num / den, countA: fa.count, countB: fb.count };
}

// ---------------------------------------------------------------------------------------- the run

const work = await Deno.makeTempDir({ prefix: "rome-slurm-bench-" });
const out = join(work, "out");
const evalArgs = ["--generation-length", opt["generation-length"]!];
console.error(`bench/slurm: ${TASKS} tasks, ${LIMIT} records, method ${opt.method}; files in ${work}`);

// The single-process reference, with its own ROME cache so that nothing computed by one side is reused by
// the other.
const t0 = performance.now();
const single = join(work, "single");
await denoTask(
  [
    "eval",
    "--method",
    opt.method!,
    "--limit",
    `${LIMIT}`,
    ...evalArgs,
    "--out",
    join(single, "eval"),
    "--json",
  ],
  { XDG_CACHE_HOME: join(single, "cache") },
);
await denoTask(["stats", "--out", join(single, "stats.safetensors"), "--json"], {
  XDG_CACHE_HOME: join(single, "cache"),
});
const singleSeconds = (performance.now() - t0) / 1000;

await installSlurm();
const startedMunge = await startMunge();
const cluster = await startCluster(join(work, "slurm"));
let passed = true;
try {
  const env = { SLURM_CONF: cluster.conf };
  const t1 = performance.now();
  const submitted = await sh(["bash", "examples/slurm/submit.sh", `${TASKS}`], {
    ...Deno.env.toObject(),
    ...env,
    OUT: out,
    LIMIT: `${LIMIT}`,
    METHOD: opt.method!,
    EVAL_ARGS: evalArgs.join(" "),
    XDG_CACHE_HOME: join(work, "array-cache"),
  });
  const ids = /eval array (\d+), stats array (\d+), merge (\d+)/.exec(submitted.out)!.slice(1);
  const states = await waitForJobs(ids, env);
  const arraySeconds = (performance.now() - t1) / 1000;
  const failed = states.filter((s) => !/COMPLETED exit 0:0/.test(s));

  const shardDirs = [...Deno.readDirSync(join(out, "eval"))]
    .filter((e) => /^shard-\d+$/.test(e.name)).map((e) => join(out, "eval", e.name));
  const [mine, theirs] = await Promise.all([caseFiles([join(single, "eval")]), caseFiles(shardDirs)]);
  const differing = [...mine.keys()].filter((id) => theirs.get(id) !== mine.get(id));
  const missing = [...mine.keys()].filter((id) => !theirs.has(id));
  const summary = async (dir: string) => {
    const s = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    return JSON.stringify(s.full ?? s, (k, v) => (k === "time" || /seconds/.test(k) ? undefined : v));
  };
  const summariesEqual =
    (await summary(join(single, "eval"))) === (await summary(join(out, "eval", "merged")));

  const stats = await statsDifference(
    join(out, "stats", "merged.safetensors"),
    join(single, "stats.safetensors"),
  );
  const edit = async (file: string) =>
    JSON.parse(
      (await denoTask(["edit", "--stats", file, "--json"], { XDG_CACHE_HOME: join(work, "edit-cache") })).out,
    );
  const [withMerged, withSingle] = [
    await edit(join(out, "stats", "merged.safetensors")),
    await edit(join(single, "stats.safetensors")),
  ];
  // The rewrite prompt's and every paraphrase's and neighbour's post-edit probabilities.
  const probs = (
    r: { post: Record<string, number>; paraphrases: { post: unknown }[]; neighbours: { post: unknown }[] },
  ) =>
    JSON.stringify([r.post, r.paraphrases.map((p) => p.post), r.neighbours.map((p) => p.post)])
      .match(/-?\d+(\.\d+)?(e-?\d+)?/g)!.map(Number);
  const pa = probs(withMerged), pb = probs(withSingle);
  const editDiff = Math.max(...pa.map((x, i) => Math.abs(x - pb[i])));

  const result = {
    adapter: await adapterName(),
    tasks: TASKS,
    records: LIMIT,
    method: opt.method,
    jobs: states,
    failed_jobs: failed,
    single_process_seconds: Math.round(singleSeconds),
    array_seconds: Math.round(arraySeconds),
    eval: { cases: mine.size, missing, differing, summary_equal: summariesEqual },
    stats: { max_relative_difference: stats.rel, count_merged: stats.countA, count_single: stats.countB },
    edit: { max_post_probability_difference: editDiff },
  };
  if (opt.json) console.log(JSON.stringify(result));
  else {
    console.log(
      `bench/slurm on ${result.adapter}, host ${await sh(["hostname"]).then((r) =>
        r.out.trim()
      )}: ${TASKS}-task arrays, ${LIMIT} records (${opt.method})`,
    );
    for (const s of states) console.log(`  job ${s}`);
    console.log(
      `single process ${result.single_process_seconds} s; arrays and merge ${result.array_seconds} s`,
    );
    console.log(
      `eval: ${
        mine.size - differing.length - missing.length
      } of ${mine.size} case files identical (timings aside); ` +
        `merged summary ${summariesEqual ? "equal to" : "DIFFERS from"} the single run's`,
    );
    console.log(
      `stats: merged C vs single-process C, max relative difference ${
        stats.rel.toExponential(2)
      } (goal ≤ 1e-6); ` +
        `tokens ${stats.countA} vs ${stats.countB}`,
    );
    console.log(
      `edit --stats: post-edit probabilities differ by at most ${editDiff.toExponential(2)} (goal ≤ 1e-5)`,
    );
  }
  const okAll = failed.length === 0 && differing.length === 0 && missing.length === 0 && summariesEqual &&
    stats.rel <= 1e-6 && stats.countA === stats.countB && editDiff <= 1e-5;
  if (!okAll) {
    Deno.exitCode = 1;
    passed = false;
  }
} catch (e) {
  passed = false;
  throw e;
} finally {
  if (!opt.keep) {
    await cluster.stop();
    // a munged that ran before the bench is the machine's; one the bench started goes with the cluster
    if (startedMunge) await sh(["pkill", "-x", "munged"], {}, false);
  }
  // A failed run keeps its files (the jobs' logs are in <out>/logs) to be looked at.
  if (!opt.keep && passed) await Deno.remove(work, { recursive: true }).catch(() => {});
  else console.error(`kept: ${work}${opt.keep ? ` (cluster running: SLURM_CONF=${cluster.conf})` : ""}`);
}
