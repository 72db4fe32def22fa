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
  device.addEventListener("uncapturederror", (ev) => {
    const e = (ev as GPUUncapturedErrorEvent).error;
    pending ??= new GpuError(`WebGPU ${e.constructor?.name ?? "error"}: ${e.message}`);
  });
  device.lost.then((info) => {
    if (info.reason !== "destroyed") {
      lost = new GpuError(`WebGPU device lost (${info.reason}): ${info.message}`);
    }
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
  };
}
