// Adapter and device: the real limits of the adapter (not the spec defaults wgpu enforces until asked),
// optional features, and GPU errors surfaced as exceptions instead of console noise.

/** Raised when WebGPU itself fails: no adapter, a lost device, a validation or out-of-memory error. */
export class GpuError extends Error {
  override name = "GpuError";
}

export const NO_ADAPTER_HELP =
  "No WebGPU adapter found. On Linux without a GPU install Mesa's software Vulkan: " +
  "`apt-get install -y mesa-vulkan-drivers`; with a GPU install its Vulkan driver.";

export interface DeviceInfo {
  description: string;
  vendor: string;
  architecture: string;
  isFallbackAdapter: boolean;
  features: string[];
  limits: Record<string, number>;
}

export interface GpuDevice {
  device: GPUDevice;
  info: DeviceInfo;
  hasF16: boolean;
  hasTimestamps: boolean;
  /** The first uncaptured error or device loss, if any; checked at every submit and readback. */
  takeError(): GpuError | undefined;
  /**
   * `p`, or a rejection with the loss once the device is lost or destroyed: a readback or a wait on a lost
   * device never hangs, whatever the implementation does with its pending maps.
   */
  untilLost<T>(p: Promise<T>): Promise<T>;
  /** Resolves when the device is lost (or destroyed), or after `ms` milliseconds, whichever is first. */
  settleLoss(ms: number): Promise<void>;
  /**
   * Test-only (the device-loss drill, ROME_DRILL_DEVICE_LOSS): destroys the device and records it as lost,
   * so that it is reported as a real loss is (an ordinary destroy() is not an error).
   */
  simulateLoss(why: string): void;
}

/** Limits we request at the adapter's own value (they only ever grow above the spec defaults). */
const LIMITS_WANTED = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxBindGroups",
] as const;

export interface DeviceOptions {
  /** Cap on the storage binding size (tests force a small one to exercise chunked big tensors). */
  maxBindingBytes?: number;
  powerPreference?: GPUPowerPreference;
}

export async function openDevice(opts: DeviceOptions = {}): Promise<GpuDevice> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) throw new GpuError("This runtime has no WebGPU (navigator.gpu is missing). " + NO_ADAPTER_HELP);
  const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? "high-performance" });
  if (!adapter) throw new GpuError(NO_ADAPTER_HELP);

  const requiredLimits: Record<string, number> = {};
  for (const k of LIMITS_WANTED) {
    const v = (adapter.limits as unknown as Record<string, number>)[k];
    if (typeof v === "number") requiredLimits[k] = v;
  }
  const features: GPUFeatureName[] = [];
  for (const f of ["shader-f16", "timestamp-query"] as GPUFeatureName[]) {
    if (adapter.features.has(f)) features.push(f);
  }

  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: features });
  let pending: GpuError | undefined;
  let lost: GpuError | undefined;
  let gone: GpuError | undefined; // lost, or destroyed on purpose: what pending waits are rejected with
  const waiters = new Set<(e: GpuError) => void>();
  device.addEventListener("uncapturederror", (ev) => {
    const e = (ev as GPUUncapturedErrorEvent).error;
    pending ??= new GpuError(`WebGPU ${e.constructor?.name ?? "error"}: ${e.message}`);
  });
  const goneWith = (e: GpuError) => {
    gone ??= e;
    for (const w of waiters) w(gone);
    waiters.clear();
  };
  device.lost.then((info) => {
    // "destroyed" is engine.destroy() letting go of the device (not an error), unless the drill did it
    if (info.reason !== "destroyed") {
      lost ??= new GpuError(`the GPU device was lost (${info.reason}): ${info.message || "no message"}`);
    }
    goneWith(lost ?? new GpuError(`the GPU device was destroyed: ${info.message || "no message"}`));
  });

  const limits: Record<string, number> = {};
  for (const k in device.limits) limits[k] = (device.limits as unknown as Record<string, number>)[k];
  if (opts.maxBindingBytes !== undefined) {
    limits.maxStorageBufferBindingSize = Math.min(limits.maxStorageBufferBindingSize, opts.maxBindingBytes);
  }
  const ai = adapter.info;
  return {
    device,
    info: {
      description: ai.description || ai.device || "unknown",
      vendor: ai.vendor,
      architecture: ai.architecture,
      // deno-lint-ignore no-explicit-any
      isFallbackAdapter: Boolean((ai as any).isFallbackAdapter ?? (adapter as any).isFallbackAdapter),
      features: [...device.features].sort(),
      limits,
    },
    hasF16: device.features.has("shader-f16"),
    hasTimestamps: device.features.has("timestamp-query"),
    takeError() {
      if (lost) return lost; // sticky: nothing works after a loss
      const e = pending;
      pending = undefined;
      return e;
    },
    untilLost<T>(p: Promise<T>): Promise<T> {
      if (gone) {
        p.catch(() => {}); // settles on its own; its failure is not news
        return Promise.reject(gone);
      }
      return new Promise<T>((resolve, reject) => {
        waiters.add(reject);
        p.then(resolve, reject).finally(() => waiters.delete(reject));
      });
    },
    async settleLoss(ms: number): Promise<void> {
      if (gone) return;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([device.lost, new Promise((r) => timer = setTimeout(r, ms))]);
      clearTimeout(timer);
    },
    simulateLoss(why: string) {
      lost ??= new GpuError(`the GPU device was lost (${why})`);
      goneWith(lost);
      device.destroy();
    },
  };
}
