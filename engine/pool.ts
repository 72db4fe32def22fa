// Size-bucketed pool of storage buffers. Tensors return their buffer here on dispose; the next tensor of
// a similar size takes it instead of creating a GPU buffer. Buckets have four steps per octave, so a
// buffer is at most 25% larger than asked and a few sizes serve a whole model's activations.

export const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

export interface PoolStats {
  buffersCreated: number;
  poolHits: number;
  bytesLive: number;
  bytesPooled: number;
  peakBytes: number;
}

/** The bucket a request of `bytes` is served from: 256 B minimum, then 4 steps per power of two. */
export function bucketSize(bytes: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.floor(Math.log2(bytes));
  if (p === bytes) return bytes;
  const step = p / 4;
  return Math.ceil(bytes / step) * step;
}

export class BufferPool {
  readonly stats: PoolStats = { buffersCreated: 0, poolHits: 0, bytesLive: 0, bytesPooled: 0, peakBytes: 0 };
  #free = new Map<number, GPUBuffer[]>();

  constructor(private readonly device: GPUDevice, private readonly maxBufferSize: number) {}

  /**
   * A buffer of at least `bytes`. `avoid` rejects free buffers that are not safe to reuse for this
   * purpose (an upload must not land in a buffer that unsubmitted commands still read).
   */
  acquire(bytes: number, avoid?: (b: GPUBuffer) => boolean): GPUBuffer {
    const size = bucketSize(Math.max(4, bytes));
    if (size > this.maxBufferSize) {
      throw new RangeError(
        `tensor of ${bytes} bytes exceeds this device's maxBufferSize (${this.maxBufferSize} bytes)`,
      );
    }
    const list = this.#free.get(size);
    if (list && list.length > 0) {
      const i = avoid ? list.findIndex((b) => !avoid(b)) : list.length - 1;
      if (i >= 0) {
        const [buf] = list.splice(i, 1);
        this.stats.poolHits++;
        this.stats.bytesPooled -= size;
        this.stats.bytesLive += size;
        return buf;
      }
    }
    const buf = this.device.createBuffer({ size, usage: STORAGE_USAGE });
    this.stats.buffersCreated++;
    this.stats.bytesLive += size;
    this.stats.peakBytes = Math.max(this.stats.peakBytes, this.stats.bytesLive + this.stats.bytesPooled);
    return buf;
  }

  release(buf: GPUBuffer): void {
    const size = buf.size;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    list.push(buf);
    this.stats.bytesLive -= size;
    this.stats.bytesPooled += size;
  }

  /** Destroys every pooled (free) buffer, giving the memory back now rather than at GC. */
  trim(): void {
    for (const list of this.#free.values()) for (const b of list) b.destroy();
    this.#free.clear();
    this.stats.bytesPooled = 0;
  }
}
