// A tensor is a shape, a dtype and a pooled GPU buffer with an explicit lifetime (dispose, or the
// engine's scopes). Tensors are dense and row-major; there are no strided views.
import type { Engine } from "./engine.ts";

export type DType = "f32" | "f16" | "u32" | "i32";
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, u32: 4, i32: 4 };
export type Shape = readonly number[];
export type HostArray = Float32Array | Uint32Array | Int32Array;

export function shapeSize(shape: Shape): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`bad dimension ${d} in shape [${shape}]`);
    n *= d;
  }
  return n;
}

export function shapeStr(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

/** A sub-range of a tensor as bindable (aligned) bytes, plus where the wanted elements start inside it. */
export interface BoundRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
  /** Index, in elements, of the range's first wanted element relative to `offset`. */
  elemOffset: number;
}

/** A pooled GPU buffer shared by every tensor handle that views it; returned to the pool at zero refs. */
export class TensorStorage {
  refs = 1;
  constructor(readonly engine: Engine, public buffer: GPUBuffer | undefined) {}

  unref(): void {
    if (--this.refs === 0 && this.buffer) {
      this.engine.releaseBuffer(this.buffer);
      this.buffer = undefined;
    }
  }
}

/**
 * A handle on a storage with a shape. Each handle holds one reference: `dispose()` drops it (once),
 * and the buffer goes back to the pool when the last handle is disposed. `view()` (and `reshape`) make
 * another handle in the current scope; `share()` makes one the caller owns outright (the tape uses it
 * to keep saved activations alive past the scope that made them).
 */
export class Tensor {
  #storage: TensorStorage;
  #released = false;
  readonly size: number;
  /** Set on leaves whose gradient the tape should compute (parameters, ROME's delta). */
  requiresGrad = false;

  constructor(readonly engine: Engine, readonly shape: Shape, readonly dtype: DType, storage: TensorStorage) {
    this.size = shapeSize(shape);
    this.#storage = storage;
  }

  get byteLength(): number {
    return this.size * DTYPE_BYTES[this.dtype];
  }

  /** True once this handle is disposed (its storage may live on in other handles). */
  get disposed(): boolean {
    return this.#released || this.#storage.buffer === undefined;
  }

  get buffer(): GPUBuffer {
    if (this.disposed) throw new Error(`use of a disposed tensor ${shapeStr(this.shape)} ${this.dtype}`);
    return this.#storage.buffer!;
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Elements [first, end) as a binding that respects the device's offset alignment. */
  range(first: number, end: number): BoundRange {
    const eb = DTYPE_BYTES[this.dtype];
    const align = this.engine.limits.storageOffsetAlignment;
    const startByte = first * eb;
    const offset = Math.floor(startByte / align) * align;
    const size = Math.max(4, Math.ceil((end * eb - offset) / 4) * 4);
    return { buffer: this.buffer, offset, size, elemOffset: (startByte - offset) / eb };
  }

  dispose(): void {
    if (this.#released) return;
    this.#released = true;
    this.#storage.unref();
  }

  read(): Promise<HostArray> {
    return this.engine.read(this);
  }

  #handle(shape: Shape): Tensor {
    if (shapeSize(shape) !== this.size) {
      throw new RangeError(`cannot view ${shapeStr(this.shape)} as ${shapeStr(shape)}`);
    }
    this.buffer; // throws when disposed
    this.#storage.refs++;
    return new Tensor(this.engine, shape, this.dtype, this.#storage);
  }

  /** Another handle on the same data (same size, any shape), registered in the current scope. */
  view(shape: Shape = this.shape): Tensor {
    return this.engine.track(this.#handle(shape));
  }

  /** Same data, another shape of the same size (a view; nothing is copied). */
  reshape(shape: Shape): Tensor {
    return this.view(shape);
  }

  /** A handle the caller owns outright (in no scope); dispose it when done. */
  share(): Tensor {
    return this.#handle(this.shape);
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype})`;
  }
}
