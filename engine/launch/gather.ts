// Embedding ops: token-embedding gather (tables larger than one storage binding are bound in row chunks),
// position-embedding add, and the gather's gradient, a deterministic scatter-add of rows.
import { copyWorkgroups } from "../../kernels/copy.ts";
import { addPositionsKernel, scatterAddKernel, scatterLinksKernel } from "../../kernels/gather.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
import { launchSelectRows } from "./copy.ts";
import { bindAll, bindRows, rowChunks } from "../chunks.ts";

/**
 * out[k, :] = table[ids[k], :] for a table [V, C] and u32 ids [N]; out is [N, C]. One dispatch per row
 * chunk of the table that fits a storage binding (wte of GPT-2 small is 147 MiB; lavapipe binds 128 MiB),
 * each writing only the rows whose id falls in its chunk. Ids >= V cannot be seen without a readback:
 * they give zero rows. Callers validate ids on the host.
 */
export function launchGatherRows(table: Tensor, ids: Tensor): Tensor {
  if (table.rank !== 2) throw new RangeError(`gatherRows: table must be [V, C], got ${table}`);
  return launchSelectRows(table, ids, "gatherRows");
}

/** out[b, t, :] = x[b, t, :] + wpe[t, :] for x [B, T, C] and wpe [P, C] with T <= P. */
export function launchAddPositions(x: Tensor, wpe: Tensor): Tensor {
  const what = "addPositions";
  if (x.dtype !== "f32" || wpe.dtype !== "f32") {
    throw new TypeError(`${what}: expected f32, got ${x} and ${wpe}`);
  }
  if (x.rank !== 3 || wpe.rank !== 2) {
    throw new RangeError(`${what}: expected x [B, T, C] and wpe [P, C], got ${x} and ${wpe}`);
  }
  const [B, T, C] = x.shape;
  if (wpe.shape[1] !== C) {
    throw new RangeError(`${what}: width of ${wpe} does not match x ${shapeStr(x.shape)}`);
  }
  if (T > wpe.shape[0]) throw new RangeError(`${what}: ${T} positions but wpe has ${wpe.shape[0]}`);
  const e = x.engine, out = e.empty(x.shape);
  if (x.size === 0) return out;
  const dispatch = (row0: number, rows: number, t0: number, t1: number) => {
    const xb = bindRows(x, row0, row0 + rows, C), ob = bindRows(out, row0, row0 + rows, C);
    const wb = bindRows(wpe, t0, t1, C);
    e.dispatch(
      addPositionsKernel,
      { n: rows * C, C, T, row0, tBase: t0, xOff: xb.elemOffset, wOff: wb.elemOffset, oOff: ob.elemOffset },
      [xb, wb, ob],
      copyWorkgroups(rows * C),
    );
  };
  const wpeFits = rowChunks(e, T, [C * 4], what).length === 1;
  if (wpeFits) {
    for (const [r0, r1] of rowChunks(e, B * T, [C * 4], what)) dispatch(r0, r1 - r0, 0, T);
  } else {
    // wpe[0:T] alone is over the binding limit: blocks of positions, one dispatch per batch row each.
    // x's block starts at row b·T + t0, not t0, so the block leaves room for any alignment slack.
    const block = Math.floor((e.limits.maxBindingBytes - e.limits.storageOffsetAlignment) / (C * 4));
    if (block < 1) throw new RangeError(`${what}: one row of ${C * 4} bytes does not fit a storage binding`);
    for (let t0 = 0; t0 < T; t0 += block) {
      const t1 = Math.min(T, t0 + block);
      for (let b = 0; b < B; b++) dispatch(b * T + t0, t1 - t0, t0, t1);
    }
  }
  return out;
}

/**
 * Gradient of gatherRows: out[v, :] = sum of dy[k, :] over the k with ids[k] == v, out [V, C]. No float
 * atomics: equal ids are linked on the GPU (O(N^2) compares, N = ids.size, a few thousand at most) and
 * each first occurrence sums its chain in increasing k, so results are bitwise reproducible. Ids >= V
 * are dropped. out is chunked over V like the gather; dy and ids must each fit one binding.
 */
export function scatterAddRows(dy: Tensor, ids: Tensor, V: number): Tensor {
  const what = "scatterAddRows";
  if (dy.dtype !== "f32" || dy.rank !== 2) throw new TypeError(`${what}: dy must be f32 [N, C], got ${dy}`);
  if (ids.dtype !== "u32" || ids.rank !== 1) throw new TypeError(`${what}: ids must be u32 [N], got ${ids}`);
  const [N, C] = dy.shape;
  if (ids.size !== N) throw new RangeError(`${what}: ${ids.size} ids for ${N} rows of dy`);
  if (!Number.isInteger(V) || V < 0) throw new RangeError(`${what}: V = ${V}`);
  const e = dy.engine;
  const out = e.zeros([V, C]);
  if (N === 0 || C === 0 || V === 0) return out;
  e.scope(() => {
    const links = e.empty([2 * N], "u32");
    const ib = bindAll(ids, what), lb = bindAll(links, what), db = bindAll(dy, what);
    e.dispatch(scatterLinksKernel, { N }, [ib, lb], copyWorkgroups(N));
    for (const [r0, r1] of rowChunks(e, V, [C * 4], what)) {
      const ob = bindRows(out, r0, r1, C);
      e.dispatch(
        scatterAddKernel,
        { N, C, r0, r1, oOff: ob.elemOffset },
        [ib, lb, db, ob],
        copyWorkgroups(N * C),
      );
    }
  });
  return out;
}
