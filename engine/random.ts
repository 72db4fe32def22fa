// The one seeded generator of the project: sampling, initialisation, tracing noise, the facts world and
// the tests' random data all draw from it, so that everything is reproducible from a seed. A leaf module
// (no imports): the facts world's generator (data/world/random.ts) must stay free of Deno APIs.

/**
 * mulberry32: floats in [0, 1) from a 32-bit state (the seed, taken mod 2³²). Small and fast; not for
 * anything that needs unpredictability.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
