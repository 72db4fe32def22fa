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

export class Tensor {
  #buffer: GPUBuffer | undefined;
  readonly size: number;

  constructor(readonly engine: Engine, readonly shape: Shape, readonly dtype: DType, buffer: GPUBuffer) {
    this.size = shapeSize(shape);
    this.#buffer = buffer;
  }

  get byteLength(): number {
    return this.size * DTYPE_BYTES[this.dtype];
  }

  get disposed(): boolean {
    return this.#buffer === undefined;
  }

  get buffer(): GPUBuffer {
    if (!this.#buffer) throw new Error(`use of a disposed tensor ${shapeStr(this.shape)} ${this.dtype}`);
    return this.#buffer;
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
    const size = Math.ceil((end * eb - offset) / 4) * 4;
    return { buffer: this.buffer, offset, size, elemOffset: (startByte - offset) / eb };
  }

  dispose(): void {
    if (!this.#buffer) return;
    this.engine.releaseBuffer(this.#buffer);
    this.#buffer = undefined;
  }

  read(): Promise<HostArray> {
    return this.engine.read(this);
  }

  /** Same buffer, another shape of the same size; the new tensor takes the buffer (this one is consumed). */
  reshape(shape: Shape): Tensor {
    if (shapeSize(shape) !== this.size) {
      throw new RangeError(`cannot reshape ${shapeStr(this.shape)} to ${shapeStr(shape)}`);
    }
    const t = this.engine.adopt(this.buffer, shape, this.dtype);
    this.#buffer = undefined;
    return t;
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype})`;
  }
}
