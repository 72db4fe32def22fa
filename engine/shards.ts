// Which shards of a job array a merge holds: each index of 0..n-1 at most once, and the ones not there.
// Shared by the statistics merge (rome/stats_shards.ts) and the evaluation merge (eval/merge.ts), which word
// their refusals themselves. A leaf module: no imports, no Deno APIs.

/**
 * The items by shard index and the indices of 0..count-1 that none has. An index held twice is refused with
 * the error `twice(first, second)` builds.
 */
export function shardsByIndex<T>(
  items: readonly T[],
  indexOf: (item: T) => number,
  count: number,
  twice: (first: T, second: T) => Error,
): { byIndex: Map<number, T>; missing: number[] } {
  const byIndex = new Map<number, T>();
  for (const item of items) {
    const seen = byIndex.get(indexOf(item));
    if (seen !== undefined) throw twice(seen, item);
    byIndex.set(indexOf(item), item);
  }
  const missing = Array.from({ length: count }, (_, i) => i).filter((i) => !byIndex.has(i));
  return { byIndex, missing };
}
