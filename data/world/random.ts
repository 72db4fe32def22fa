// The facts world's seeded random streams and the draws the builder makes from them. No Deno APIs.
import { mulberry32 } from "../../engine/random.ts";

/** A seeded random source: returns floats in [0, 1). */
export type Rand = () => number;

/** mulberry32, seeded by a number and a stream name (so each use gets its own stream). */
export function makeRand(seed: number, stream: string): Rand {
  // FNV-1a of the stream name, mixed with the seed.
  let h = 0x811c9dc5;
  for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193);
  return mulberry32(h ^ Math.imul(seed >>> 0, 0x9e3779b1));
}

export function pick<T>(r: Rand, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)];
}

export function int(r: Rand, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

/** Fisher-Yates, in place. */
export function shuffle<T>(r: Rand, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** k distinct elements (or all of them if fewer), in random order. */
export function sample<T>(r: Rand, xs: readonly T[], k: number): T[] {
  return shuffle(r, [...xs]).slice(0, k);
}
