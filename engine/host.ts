// Facts about the machine the Deno edges (cli.ts and cli/, tests/lib/run.ts, tests and benches) need before the
// first adapter request: whether any Vulkan driver is installed, and a runtime folder that keeps Mesa quiet.
// Deno only; the browser build never imports this file.
import { join } from "node:path";

/** Where Vulkan driver manifests live on Linux. */
const VULKAN_ICD_DIRS = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];

/** Any Vulkan driver (a GPU's or lavapipe's): with none, wgpu on Linux can only use its slower GL backend. */
export function hasVulkanDriver(): boolean {
  for (const dir of VULKAN_ICD_DIRS) {
    try {
      for (const e of Deno.readDirSync(dir)) if (e.name.endsWith(".json")) return true;
    } catch { /* no such folder */ }
  }
  return false;
}

/**
 * Mesa's window-system code prints "error: XDG_RUNTIME_DIR is invalid or not set" twice per process when the
 * variable is unset (containers, CI, ssh sessions), though nothing is displayed: give it a private folder,
 * per user, before the first adapter request reads it.
 */
export function quietMesa(): void {
  if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
  const home = Deno.env.get("HOME");
  const cache = Deno.env.get("XDG_CACHE_HOME") || (home ? join(home, ".cache") : undefined);
  const candidates = [
    cache && join(cache, "rome-webgpu", "runtime"),
    `/tmp/rome-webgpu-runtime-${Deno.env.get("USER") ?? "user"}`,
  ];
  for (const dir of candidates) {
    if (!dir) continue;
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      Deno.env.set("XDG_RUNTIME_DIR", dir);
      return;
    } catch { /* not writable here: try the next; the warning itself is only cosmetic */ }
  }
}
