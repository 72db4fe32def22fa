// The engine: one device, one buffer pool, one pipeline cache, and one command encoder per step.
// Every op records its dispatch into the open encoder; the encoder is submitted only when a result is
// read back or the batch limit is reached. Uniforms of a whole batch live in one arena buffer written
// once per submit, so no op creates a buffer, an encoder or a staging buffer of its own.
import {
  kernelSource,
  type KernelSpec,
  packUniforms,
  uniformBytes,
  type Workgroups,
} from "../kernels/descriptor.ts";
import { type DeviceOptions, type GpuDevice, GpuError, openDevice } from "./device.ts";
import { bucketSize, BufferPool } from "./pool.ts";
import {
  type BoundRange,
  type DType,
  DTYPE_BYTES,
  type HostArray,
  type Shape,
  shapeSize,
  Tensor,
  TensorStorage,
} from "./tensor.ts";

/** Dispatches recorded before a forced submit; bounds the uniform arena and the latency of one batch. */
const BATCH_LIMIT = 1024;

export interface EngineLimits {
  maxBindingBytes: number;
  maxBufferSize: number;
  maxWorkgroupsPerDim: number;
  maxInvocations: number;
  workgroupStorage: number;
  storageOffsetAlignment: number;
  uniformOffsetAlignment: number;
}

export interface EngineStats {
  dispatches: number;
  submits: number;
  readbacks: number;
  pipelines: number;
  buffersCreated: number;
  poolHits: number;
  peakBytes: number;
  bytesLive: number;
}

type Binding = Tensor | BoundRange;

interface Pipeline {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  uniformStride: number;
}

export class Engine {
  readonly device: GPUDevice;
  readonly limits: EngineLimits;
  readonly pool: BufferPool;
  #pipelines = new Map<string, Pipeline>();
  #counters = { dispatches: 0, submits: 0, readbacks: 0 };

  // the open batch
  #encoder: GPUCommandEncoder | undefined;
  #pass: GPUComputePassEncoder | undefined;
  #batch = 0;
  #batchDispatches = 0;
  #lastUse = new WeakMap<GPUBuffer, number>();
  #arena: GPUBuffer;
  #arenaHost: ArrayBuffer;
  #arenaView: DataView;
  #arenaUsed = 0;

  #staging = new Map<number, GPUBuffer[]>();
  #scopes: Set<Tensor>[] = [];

  private constructor(readonly gpu: GpuDevice) {
    this.device = gpu.device;
    const l = gpu.info.limits;
    this.limits = {
      maxBindingBytes: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxWorkgroupsPerDim: l.maxComputeWorkgroupsPerDimension,
      maxInvocations: l.maxComputeInvocationsPerWorkgroup,
      workgroupStorage: l.maxComputeWorkgroupStorageSize,
      storageOffsetAlignment: l.minStorageBufferOffsetAlignment,
      uniformOffsetAlignment: l.minUniformBufferOffsetAlignment,
    };
    this.pool = new BufferPool(this.device, this.limits.maxBufferSize);
    const arenaBytes = BATCH_LIMIT * Math.max(256, this.limits.uniformOffsetAlignment);
    this.#arena = this.device.createBuffer({
      size: arenaBytes,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#arenaHost = new ArrayBuffer(arenaBytes);
    this.#arenaView = new DataView(this.#arenaHost);
  }

  static async create(opts: DeviceOptions = {}): Promise<Engine> {
    return new Engine(await openDevice(opts));
  }

  get stats(): EngineStats {
    const p = this.pool.stats;
    return {
      ...this.#counters,
      pipelines: this.#pipelines.size,
      buffersCreated: p.buffersCreated,
      poolHits: p.poolHits,
      peakBytes: p.peakBytes,
      bytesLive: p.bytesLive,
    };
  }

  // ---------------------------------------------------------------- tensors

  /** An uninitialised tensor (contents are whatever the pooled buffer held). */
  empty(shape: Shape, dtype: DType = "f32"): Tensor {
    const bytes = shapeSize(shape) * DTYPE_BYTES[dtype];
    return this.adopt(this.pool.acquire(bytes), shape, dtype);
  }

  /** A tensor filled with zeros (cleared on the GPU, in stream order). */
  zeros(shape: Shape, dtype: DType = "f32"): Tensor {
    const t = this.empty(shape, dtype);
    this.clear(t);
    return t;
  }

  /** Uploads host data. f16 tensors take the raw half bits as a Uint16Array. */
  upload(data: HostArray | Uint16Array | readonly number[], shape: Shape, dtype?: DType): Tensor {
    const dt: DType = dtype ??
      (data instanceof Uint32Array
        ? "u32"
        : data instanceof Int32Array
        ? "i32"
        : data instanceof Uint16Array
        ? "f16"
        : "f32");
    const n = shapeSize(shape);
    if (data.length !== n) throw new RangeError(`upload: ${data.length} values for shape [${shape}] (${n})`);
    const host = Array.isArray(data)
      ? (dt === "u32"
        ? Uint32Array.from(data)
        : dt === "i32"
        ? Int32Array.from(data)
        : Float32Array.from(data))
      : data as HostArray | Uint16Array;
    // A freed buffer that unsubmitted commands still use must not receive a queue write, which would
    // land before those commands run.
    const buf = this.pool.acquire(n * DTYPE_BYTES[dt], (b) => this.#pendingUse(b));
    const bytes = new Uint8Array(host.buffer as ArrayBuffer, host.byteOffset, host.byteLength);
    if (bytes.byteLength === 0) return this.adopt(buf, shape, dt); // a 0-byte write panics Deno 2.9.6
    if (bytes.byteLength % 4 === 0) this.device.queue.writeBuffer(buf, 0, bytes);
    else {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      this.device.queue.writeBuffer(buf, 0, padded);
    }
    return this.adopt(buf, shape, dt);
  }

  /** Wraps a buffer the caller gives up into a tensor registered in the current scope. */
  adopt(buffer: GPUBuffer, shape: Shape, dtype: DType): Tensor {
    return this.track(new Tensor(this, shape, dtype, new TensorStorage(this, buffer)));
  }

  /** Registers a new tensor handle in the current scope (if any). */
  track(t: Tensor): Tensor {
    this.#scopes.at(-1)?.add(t);
    return t;
  }

  releaseBuffer(buf: GPUBuffer): void {
    this.pool.release(buf);
  }

  /**
   * Runs `fn` and disposes every tensor created inside it, except those it returns (directly, in an
   * array, or as values of a plain object) and those passed to `keep`. Survivors join the outer scope.
   */
  scope<T>(fn: () => T): T {
    const set = new Set<Tensor>();
    this.#scopes.push(set);
    let result: T;
    try {
      result = fn();
    } finally {
      this.#scopes.pop();
    }
    if (result instanceof Promise) throw new Error("engine.scope: use scopeAsync for async functions");
    this.#endScope(set, result);
    return result;
  }

  async scopeAsync<T>(fn: () => Promise<T>): Promise<T> {
    const set = new Set<Tensor>();
    this.#scopes.push(set);
    let result: T;
    try {
      result = await fn();
    } finally {
      const i = this.#scopes.lastIndexOf(set);
      if (i >= 0) this.#scopes.splice(i, 1);
    }
    this.#endScope(set, result);
    return result;
  }

  /** Removes tensors from the scope they were created in, so they outlive it. */
  keep<T extends Tensor | Tensor[]>(t: T): T {
    for (const x of Array.isArray(t) ? t : [t]) for (const s of this.#scopes) s.delete(x);
    return t;
  }

  #endScope(set: Set<Tensor>, result: unknown): void {
    const survivors = new Set<Tensor>();
    const collect = (v: unknown) => {
      if (v instanceof Tensor) survivors.add(v);
      else if (Array.isArray(v)) v.forEach(collect);
      else if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
        Object.values(v).forEach(collect);
      }
    };
    collect(result);
    const outer = this.#scopes.at(-1);
    for (const t of set) {
      if (survivors.has(t)) outer?.add(t);
      else t.dispose();
    }
  }

  // ---------------------------------------------------------------- recording

  #pipeline(spec: KernelSpec): Pipeline {
    let p = this.#pipelines.get(spec.key);
    if (p) return p;
    const entries: GPUBindGroupLayoutEntry[] = [];
    let binding = 0;
    if (spec.uniforms.length > 0) {
      entries.push({ binding: binding++, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } });
    }
    for (const b of spec.bindings) {
      entries.push({
        binding: binding++,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
      });
    }
    const layout = this.device.createBindGroupLayout({ label: spec.key, entries });
    const module = this.device.createShaderModule({ label: spec.key, code: kernelSource(spec) });
    const pipeline = this.device.createComputePipeline({
      label: spec.key,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    const align = Math.max(16, this.limits.uniformOffsetAlignment);
    p = { pipeline, layout, uniformStride: Math.ceil(uniformBytes(spec) / align) * align };
    this.#pipelines.set(spec.key, p);
    return p;
  }

  #open(): GPUCommandEncoder {
    this.#encoder ??= this.device.createCommandEncoder();
    return this.#encoder;
  }

  #computePass(): GPUComputePassEncoder {
    this.#pass ??= this.#open().beginComputePass();
    return this.#pass;
  }

  #endPass(): void {
    this.#pass?.end();
    this.#pass = undefined;
  }

  #pendingUse(b: GPUBuffer): boolean {
    return this.#encoder !== undefined && this.#lastUse.get(b) === this.#batch;
  }

  /** Records one dispatch of `spec` into the open batch. */
  dispatch(
    spec: KernelSpec,
    uniforms: Readonly<Record<string, number>>,
    bindings: readonly Binding[],
    workgroups: Workgroups,
  ): void {
    if (bindings.length !== spec.bindings.length) {
      throw new Error(
        `kernel ${spec.key}: ${bindings.length} buffers bound, descriptor has ${spec.bindings.length}`,
      );
    }
    const [x, y, z] = workgroups;
    const maxDim = this.limits.maxWorkgroupsPerDim;
    if (x > maxDim || y > maxDim || z > maxDim) {
      throw new RangeError(
        `kernel ${spec.key}: dispatch [${workgroups}] exceeds ${maxDim} workgroups per dimension`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;
    const p = this.#pipeline(spec);
    if (this.#arenaUsed + p.uniformStride > this.#arenaHost.byteLength) this.flush();
    const entries: GPUBindGroupEntry[] = [];
    let binding = 0;
    if (spec.uniforms.length > 0) {
      packUniforms(spec, uniforms, this.#arenaView, this.#arenaUsed);
      entries.push({
        binding: binding++,
        resource: { buffer: this.#arena, offset: this.#arenaUsed, size: uniformBytes(spec) },
      });
      this.#arenaUsed += p.uniformStride;
    }
    for (let i = 0; i < bindings.length; i++) {
      const b = bindings[i];
      // A whole tensor binds its own bytes, not its pool bucket (which may be up to 25% larger).
      const r = b instanceof Tensor
        ? { buffer: b.buffer, offset: 0, size: Math.max(4, Math.ceil(b.byteLength / 4) * 4) }
        : b;
      if (r.size > this.limits.maxBindingBytes) {
        throw new RangeError(
          `kernel ${spec.key}: binding '${spec.bindings[i].name}' is ${r.size} bytes, over the device's ` +
            `${this.limits.maxBindingBytes}-byte storage binding limit (the op must chunk it)`,
        );
      }
      this.#lastUse.set(r.buffer, this.#batch);
      entries.push({ binding: binding++, resource: { buffer: r.buffer, offset: r.offset, size: r.size } });
    }
    const group = this.device.createBindGroup({ layout: p.layout, entries });
    const pass = this.#computePass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    this.#counters.dispatches++;
    if (++this.#batchDispatches >= BATCH_LIMIT) this.flush();
  }

  /** Records a buffer-to-buffer copy (bytes; offsets and size multiples of 4). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    if (size === 0) return;
    this.#endPass();
    this.#lastUse.set(src, this.#batch);
    this.#lastUse.set(dst, this.#batch);
    this.#open().copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  clear(t: Tensor): void {
    this.#endPass();
    this.#lastUse.set(t.buffer, this.#batch);
    this.#open().clearBuffer(t.buffer, 0, Math.ceil(t.byteLength / 4) * 4);
  }

  /** Submits the open batch (if any). */
  flush(): void {
    this.#throwPendingError();
    if (!this.#encoder) return;
    this.#endPass();
    if (this.#arenaUsed > 0) {
      this.device.queue.writeBuffer(this.#arena, 0, this.#arenaHost, 0, this.#arenaUsed);
    }
    this.device.queue.submit([this.#encoder.finish()]);
    this.#counters.submits++;
    if (this.#counters.submits === deviceLossDrill) {
      const n = deviceLossDrill;
      this.gpu.simulateLoss(
        `destroyed by the ROME_DRILL_DEVICE_LOSS drill after ${n} submit${n === 1 ? "" : "s"}`,
      );
    }
    this.#encoder = undefined;
    this.#batch++;
    this.#batchDispatches = 0;
    this.#arenaUsed = 0;
  }

  /** Waits for all submitted work; surfaces any GPU error it raised. */
  async sync(): Promise<void> {
    this.flush();
    await this.gpu.untilLost(this.device.queue.onSubmittedWorkDone());
    this.#throwPendingError();
  }

  #throwPendingError(): void {
    const e = this.gpu.takeError();
    if (e) throw e;
  }

  // ---------------------------------------------------------------- readback

  async read(t: Tensor): Promise<HostArray> {
    return (await this.readMany([t]))[0];
  }

  /** Reads several tensors back with one submit and one map (each map costs ~10 ms on Deno). */
  async readMany(ts: readonly Tensor[]): Promise<HostArray[]> {
    const sizes = ts.map((t) => Math.ceil(t.byteLength / 4) * 4);
    const total = sizes.reduce((a, b) => a + b, 0);
    if (total === 0) return ts.map((t) => hostArray(t.dtype, new ArrayBuffer(0)));
    const staging = this.#acquireStaging(total);
    let off = 0;
    ts.forEach((t, i) => {
      this.copy(t.buffer, 0, staging, off, sizes[i]);
      off += sizes[i];
    });
    this.flush();
    this.#counters.readbacks++;
    try {
      await this.gpu.untilLost(staging.mapAsync(GPUMapMode.READ, 0, total));
    } catch (e) {
      // a map fails when the device is lost, possibly before the lost promise settles: give it a moment
      await this.gpu.settleLoss(100);
      this.#throwPendingError();
      throw new GpuError(`readback failed: ${(e as Error).message}`);
    }
    this.#throwPendingError();
    const all = staging.getMappedRange(0, total).slice(0);
    staging.unmap();
    this.#releaseStaging(staging);
    off = 0;
    return ts.map((t, i) => {
      const out = hostArray(t.dtype, all.slice(off, off + t.byteLength));
      off += sizes[i];
      return out;
    });
  }

  #acquireStaging(bytes: number): GPUBuffer {
    const size = bucketSize(bytes);
    const b = this.#staging.get(size)?.pop();
    return b ?? this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  #releaseStaging(b: GPUBuffer): void {
    const list = this.#staging.get(b.size) ?? [];
    list.push(b);
    this.#staging.set(b.size, list);
  }

  /** Lets go of the device; the engine is unusable afterwards. */
  destroy(): void {
    this.flush();
    this.pool.trim();
    for (const l of this.#staging.values()) for (const b of l) b.destroy();
    this.#arena.destroy();
    this.device.destroy();
  }
}

function hostArray(dtype: DType, buf: ArrayBuffer): HostArray {
  switch (dtype) {
    case "u32":
      return new Uint32Array(buf);
    case "i32":
      return new Int32Array(buf);
    case "f16":
      return Float32Array.from(new Float16Array(buf));
    default:
      return new Float32Array(buf);
  }
}

/** Test-only: the submit after which engines simulate a lost device (setDeviceLossDrill). */
let deviceLossDrill: number | undefined;

/**
 * Test-only (the device-loss drill): every engine destroys its device right after its `afterSubmits`-th
 * submit and reports it as lost, as a real loss would be. The CLI sets it from ROME_DRILL_DEVICE_LOSS.
 */
export function setDeviceLossDrill(afterSubmits: number | undefined): void {
  deviceLossDrill = afterSubmits;
}

let defaultEngine: Promise<Engine> | undefined;
let createdEngine: Engine | undefined;

/** The process-wide engine, created on first use. */
export function getEngine(opts?: DeviceOptions): Promise<Engine> {
  defaultEngine ??= Engine.create(opts).then((e) => (createdEngine = e));
  return defaultEngine;
}

/** Destroys the process-wide engine if one was created (synchronous, so it can run in an unload handler). */
export function releaseEngine(): void {
  createdEngine?.destroy();
  createdEngine = undefined;
  defaultEngine = undefined;
}
