// A minimal reproduction, with no code of ours, of the abort at exit that made `deno test` fail about one
// run in 7-15 after every test passed (issue #16; the reason tests/lib/run.ts runs the tests on the main
// thread). WebGPU used from a thread other than the main one (a Web Worker, or `deno test`'s module
// thread), then that thread torn down: the process later dies in exit() with a glibc heap message
// ("double free or corruption", "corrupted size vs. prev_size in fastbins") or a segfault in an exit
// handler. The same calls on the main thread never crash. Measured on lavapipe (Mesa 22.3.6, Deno 2.9.6),
// 2-core VM: worker 11 of 80 runs, deno test 5 of 60 (24 modules), main thread 0 of 220.
//
//   deno run -A bench/webgpu_exit_repro.ts [--runs 40] [--modes main,worker,test]
import { parseArgs } from "node:util";
import { join } from "node:path";

const GPU_WORK = `
const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice();
const read = device.createBuffer({ size: 4096, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
const data = device.createBuffer({
  size: 4096,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});
device.queue.writeBuffer(data, 0, new Float32Array(1024).fill(1));
const enc = device.createCommandEncoder();
enc.copyBufferToBuffer(data, 0, read, 0, 4096);
device.queue.submit([enc.finish()]);
await read.mapAsync(GPUMapMode.READ);
read.unmap();
`;

/** Writes the three programs: the work on the main thread, in 24 workers, in 24 test modules. */
function writePrograms(dir: string): Record<string, string[]> {
  Deno.writeTextFileSync(join(dir, "work.ts"), `export async function work() {${GPU_WORK}}\n`);
  Deno.writeTextFileSync(
    join(dir, "main.ts"),
    `import { work } from "./work.ts";\nfor (let i = 0; i < 24; i++) await work();\n`,
  );
  Deno.writeTextFileSync(
    join(dir, "worker.ts"),
    `import { work } from "./work.ts";\nawait work();\nself.postMessage("done");\n`,
  );
  Deno.writeTextFileSync(
    join(dir, "workers.ts"),
    `for (let i = 0; i < 24; i++) {
  const w = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
  await new Promise((done) => (w.onmessage = done));
  w.terminate();
}\n`,
  );
  Deno.mkdirSync(join(dir, "tests"));
  for (let i = 0; i < 24; i++) {
    Deno.writeTextFileSync(
      join(dir, "tests", `m${String(i).padStart(2, "0")}_test.ts`),
      `import { work } from "../work.ts";\nDeno.test("gpu work", work);\n`,
    );
  }
  return {
    main: ["run", "-A", join(dir, "main.ts")],
    worker: ["run", "-A", join(dir, "workers.ts")],
    test: ["test", "-A", join(dir, "tests")],
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      runs: { type: "string", default: "40" },
      modes: { type: "string", default: "main,worker,test" },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error("--runs must be an integer ≥ 1");
  const dir = Deno.makeTempDirSync({ prefix: "webgpu_exit_" });
  const programs = writePrograms(dir);
  const env = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? dir, NO_COLOR: "1" };
  try {
    for (const mode of values.modes.split(",")) {
      const args = programs[mode];
      if (!args) throw new Error(`unknown mode ${mode} (main, worker, test)`);
      let crashes = 0;
      const kinds = new Map<string, number>();
      for (let r = 0; r < runs; r++) {
        const out = await new Deno.Command(Deno.execPath(), { args, env, stdout: "piped", stderr: "piped" })
          .output();
        if (!out.success) {
          crashes++;
          const kind = out.signal ?? `exit ${out.code}`;
          kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        }
      }
      const detail = [...kinds].map(([k, n]) => `${k} ×${n}`).join(", ");
      console.log(`${mode.padEnd(7)} ${crashes} of ${runs} runs died${detail ? ` (${detail})` : ""}`);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
