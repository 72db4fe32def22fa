// examples/: the Kubernetes manifests cannot run here (no cluster), so their structure is checked: Indexed
// Jobs whose `--shard auto/N` matches `completions`, the README's install steps, one shared claim, and a
// merge that reads exactly what the shards write. The Slurm scripts are checked by bash and run for real by
// bench/slurm.ts on a single-node Slurm.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { ROOT } from "./lib/cli_process.ts";

const K8S = join(ROOT, "examples", "kubernetes");
const SLURM = join(ROOT, "examples", "slurm");

// deno-lint-ignore no-explicit-any
type Manifest = any;

function manifests(file: string): Manifest[] {
  const docs = parseAllDocuments(Deno.readTextFileSync(join(K8S, file)));
  for (const d of docs) equal(d.errors.map(String).join("\n"), "", `${file} parses as YAML`);
  return docs.map((d) => d.toJS());
}

/** The one container's bash script of a Job. */
function script(job: Manifest): string {
  const [c] = job.spec.template.spec.containers;
  deepEqual(c.command, ["bash", "-c"]);
  return c.args.join("\n");
}

function checkJob(job: Manifest, claim: string, file: string): void {
  equal(job.apiVersion, "batch/v1", file);
  equal(job.kind, "Job", file);
  const pod = job.spec.template.spec;
  equal(pod.restartPolicy, "Never", `${file}: a failed shard is retried by the Job, not restarted in place`);
  equal(pod.containers.length, 1, file);
  const [c] = pod.containers;
  ok(c.image.startsWith("node:"), `${file}: Node.js for npx (the README's install steps)`);
  const vols = new Map<string, Manifest>(pod.volumes.map((v: Manifest) => [v.name, v]));
  for (const m of c.volumeMounts) {
    ok(vols.has(m.name), `${file}: mount ${m.name} has a volume`);
    equal(vols.get(m.name).persistentVolumeClaim.claimName, claim, `${file}: the shared claim`);
    ok(c.workingDir.startsWith(m.mountPath + "/"), `${file}: the checkout lies on the shared volume`);
  }
  ok(/npx -y deno@2\.9\.6 task (eval|stats)/.test(script(job)), `${file}: runs the README's command`);
}

Deno.test("examples/kubernetes: Indexed Jobs shard with auto/N = completions and the merge reads what they write", () => {
  const [pvc] = manifests("volume.yaml");
  equal(pvc.kind, "PersistentVolumeClaim");
  deepEqual(pvc.spec.accessModes, ["ReadWriteMany"], "every pod mounts it at once");
  const claim = pvc.metadata.name;

  const written: string[] = [];
  for (const [file, task] of [["eval-indexed-job.yaml", "eval"], ["stats-indexed-job.yaml", "stats"]]) {
    const [job] = manifests(file);
    checkJob(job, claim, file);
    equal(job.spec.completionMode, "Indexed", file);
    ok(Number.isInteger(job.spec.completions) && job.spec.completions >= 1, file);
    ok(job.spec.parallelism <= job.spec.completions, file);
    const s = script(job);
    ok(s.includes(`task ${task} `), file);
    ok(s.includes(`--shard auto/${job.spec.completions} `), `${file}: auto/N with N = completions`);
    ok(s.includes("apt-get install") && s.includes("mesa-vulkan-drivers"), `${file}: software Vulkan`);
    const out = /--out "([^"]+)"/.exec(s)?.[1];
    if (task === "eval") {
      ok(out?.includes("$JOB_COMPLETION_INDEX"), `${file}: each pod writes its own results folder`);
      written.push(out!.replace("$JOB_COMPLETION_INDEX", "*"));
    } else {
      // stats --shard writes <out>/layer<L>.shard<i>-of-<n>.safetensors: one folder for all pods
      written.push(`${out}/layer*.shard*-of-${job.spec.completions}.safetensors`);
    }
  }

  const [merge] = manifests("merge-job.yaml");
  checkJob(merge, claim, "merge-job.yaml");
  const s = script(merge);
  for (const pattern of written) ok(s.includes(pattern), `merge-job.yaml reads ${pattern}`);
  ok(s.includes("task eval --merge") && s.includes("task stats --merge"), "merge-job.yaml merges both");

  const run = Deno.readTextFileSync(join(K8S, "run.sh"));
  for (const f of ["volume.yaml", "eval-indexed-job.yaml", "stats-indexed-job.yaml", "merge-job.yaml"]) {
    ok(run.includes(f), `run.sh applies ${f}`);
  }
  ok(/\nwait_jobs rome-eval rome-stats\n/.test(run), "run.sh waits for both Indexed Jobs before the merge");
});

Deno.test("examples/slurm: the scripts parse, shard with --shard auto and merge what the arrays write", async () => {
  for (const f of Deno.readDirSync(SLURM)) {
    const r = await new Deno.Command("bash", { args: ["-n", join(SLURM, f.name)], stderr: "piped" }).output();
    equal(r.code, 0, `bash -n ${f.name}: ${new TextDecoder().decode(r.stderr)}`);
  }
  const text = (f: string) => Deno.readTextFileSync(join(SLURM, f));
  for (
    const [f, task, out] of [
      ["eval.sbatch", "eval", "$OUT/eval/shard-*"],
      ["stats.sbatch", "stats", "$OUT/stats/layer*.shard*-of-*.safetensors"],
    ]
  ) {
    ok(text(f).includes("#SBATCH --array="), f);
    ok(text(f).includes(`npx -y deno@2.9.6 task ${task}`) && text(f).includes("--shard auto"), f);
    ok(text("merge.sbatch").replaceAll('"', "").includes(out), `merge.sbatch reads ${out}`);
  }
  ok(
    /--dependency=afterok:\$eval_job:\$stats_job/.test(text("submit.sh")),
    "the merge waits for both arrays",
  );
});

Deno.test("examples/kubernetes/run.sh: the merge runs after both Jobs complete, and a failed Job stops it at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "k8s-run-" });
  try {
    // A stand-in kubectl: logs its calls, answers `get job/NAME` with the state in $STATES/NAME.
    await Deno.writeTextFile(
      join(dir, "kubectl"),
      `#!/bin/bash
echo "$*" >> "$STATES/calls"
if [ "$1" = get ]; then cat "$STATES/\${2#job/}"; fi
`,
    );
    await Deno.chmod(join(dir, "kubectl"), 0o755);
    const run = async (states: Record<string, string>) => {
      for (const [job, state] of Object.entries(states)) await Deno.writeTextFile(join(dir, job), state);
      await Deno.remove(join(dir, "calls")).catch(() => {});
      const r = await new Deno.Command("bash", {
        args: [join(K8S, "run.sh")],
        env: { PATH: `${dir}:${Deno.env.get("PATH")}`, STATES: dir },
        stderr: "piped",
      }).output();
      return {
        code: r.code,
        err: new TextDecoder().decode(r.stderr),
        calls: await Deno.readTextFile(join(dir, "calls")),
      };
    };
    const done = await run({
      "rome-eval": "Complete ",
      "rome-stats": "Complete ",
      "rome-merge": "Complete ",
    });
    equal(done.code, 0, done.err);
    ok(/apply -f \S+merge-job\.yaml/.test(done.calls), "the merge is applied");
    const failed = await run({
      "rome-eval": "Complete ",
      "rome-stats": "Failed ",
      "rome-merge": "Complete ",
    });
    equal(failed.code, 1);
    ok(/job rome-stats failed/.test(failed.err), failed.err);
    ok(!/merge-job\.yaml/.test(failed.calls), "no merge after a failed Job");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
