// The model a command works on: the folder (--model, or the bundled one), the process's engine and the
// folder loaded onto it with a progress bar.
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { getEngine } from "../engine/engine.ts";
import { exists } from "../engine/files.ts";
import { hasVulkanDriver } from "../engine/host.ts";
import { type LoadedModel, loadGpt2Folder } from "../engine/gpt2/folder.ts";
import { UsageError } from "./args.ts";
import { Progress } from "./progress.ts";

/** The bundled model every command uses when --model is not given (trained by `deno task train-demo`). */
export const BUNDLED_MODEL = fileURLToPath(new URL("../models/world-gpt2", import.meta.url));

/** The model folder: --model, or the bundled one; one that is not there is a usage error (exit code 2). */
export function modelDir(opts: Record<string, unknown>): string {
  const dir = (opts.model as string | undefined) ?? BUNDLED_MODEL;
  if (!exists(dir)) {
    const stale = (() => {
      try {
        const parent = dirname(dir), base = basename(dir);
        return [...Deno.readDirSync(parent)].find((e) => e.name.startsWith(`${base}.old-`))?.name;
      } catch {
        return undefined;
      }
    })();
    if (stale) {
      throw new UsageError(
        `model folder '${dir}' is missing but '${join(dirname(dir), stale)}' exists: an interrupted save ` +
          `left the previous copy there; rename it back to '${dir}'`,
      );
    }
    if (opts.model === undefined) {
      throw new UsageError(
        `the bundled model ${dir} is not there yet (it is trained by \`deno task train-demo\`); give --model DIR`,
      );
    }
    throw new UsageError(`model folder '${dir}' not found (give --model DIR, a Hugging Face GPT-2 folder)`);
  }
  return dir;
}

let adapterAdviceGiven = false;

/**
 * The process's engine. On Linux with only the GL fallback (no Vulkan driver at all) it says once, on stderr,
 * which package makes every command about 4× faster: a trace took 1 min 29 s on GL and 20 s on lavapipe.
 */
export async function openEngine() {
  const engine = await getEngine();
  if (
    !adapterAdviceGiven && Deno.build.os === "linux" && engine.gpu.info.isFallbackAdapter &&
    !hasVulkanDriver()
  ) {
    console.error(
      "note: running on wgpu's GL fallback adapter; Mesa's software Vulkan is about 4× faster: " +
        "apt-get install -y mesa-vulkan-drivers",
    );
  }
  adapterAdviceGiven = true;
  return engine;
}

export async function loadModel(opts: Record<string, unknown>, quiet = false): Promise<LoadedModel> {
  const dir = modelDir(opts);
  const engine = await openEngine();
  const bar = new Progress(`loading ${dir}`, 1, quiet || Boolean(opts.json));
  const loaded = await loadGpt2Folder(engine, dir, {
    onTensor: (d, n) => {
      bar.total = n;
      bar.update(d);
    },
  });
  await engine.sync();
  bar.done();
  return loaded;
}
