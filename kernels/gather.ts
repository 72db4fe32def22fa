// Embedding kernels: row gather out of a table bound in row chunks (GPT-2's wte is larger than one storage
// binding on some devices), position-embedding add, and the deterministic scatter-add that is the
// gather's gradient. Row gathers copy 4-byte words bit for bit (u32), so any 4-byte dtype works.
// Plain ES module: no Deno API.
import type { KernelSpec } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const GATHER_WG = 256;

/** Marks "no next occurrence" in the scatter links. */
export const NO_NEXT = 0xffffffff;

/**
 * out[k, :] = table[ids[k], :] for the ids that fall in the table rows [r0, r1) bound in this dispatch;
 * other ids are left to the dispatches of their chunk. Ids >= V (no chunk holds them) are written as zero
 * rows by the dispatch of the last chunk (r1 == V): the op cannot see ids without a readback, so callers
 * validate them on the host and the GPU never reads outside the table.
 */
export const gatherRowsKernel: KernelSpec = {
  key: "gather_rows_u32_chunked",
  uniforms: [
    ["n", "u32"],
    ["C", "u32"],
    ["r0", "u32"],
    ["r1", "u32"],
    ["V", "u32"],
    ["tOff", "u32"],
    ["oOff", "u32"],
    ["idOff", "u32"],
  ],
  bindings: [
    { name: "ids", access: "read", type: "u32" },
    { name: "table", access: "read", type: "u32" },
    { name: "out", access: "read_write", type: "u32" },
  ],
  workgroupSize: [GATHER_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n * P.C")}
  let k = i / P.C;
  let c = i % P.C;
  let id = ids[P.idOff + k];
  if (id >= P.r0 && id < P.r1) {
    out[P.oOff + i] = table[P.tOff + (id - P.r0) * P.C + c];
  } else if (id >= P.V && P.r1 == P.V) {
    out[P.oOff + i] = 0u;
  }
}`,
};

/**
 * out[r, c] = x[r, c] + wpe[t - tBase, c] for the flat rows r = row0 + (i / C) of x [B*T, C], t = r % T.
 * The op binds x/out from row0 and wpe from position tBase (0 when all of wpe[0:T] fits one binding).
 */
export const addPositionsKernel: KernelSpec = {
  key: "gather_add_positions_f32",
  uniforms: [
    ["n", "u32"],
    ["C", "u32"],
    ["T", "u32"],
    ["row0", "u32"],
    ["tBase", "u32"],
    ["xOff", "u32"],
    ["wOff", "u32"],
    ["oOff", "u32"],
  ],
  bindings: [
    { name: "x", access: "read", type: "f32" },
    { name: "wpe", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [GATHER_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  let t = (P.row0 + i / P.C) % P.T;
  out[P.oOff + i] = x[P.xOff + i] + wpe[P.wOff + (t - P.tBase) * P.C + i % P.C];
}`,
};

/**
 * Links of equal ids, for a deterministic scatter-add without float atomics: links[n] = the next m > n
 * with ids[m] == ids[n] (NO_NEXT if none), links[N + n] = 1 when n is the first occurrence of its id.
 * O(N) per thread, O(N^2) in all: fine for the few thousand positions of a batch.
 */
export const scatterLinksKernel: KernelSpec = {
  key: "gather_scatter_links_u32",
  uniforms: [["N", "u32"]],
  bindings: [
    { name: "ids", access: "read", type: "u32" },
    { name: "links", access: "read_write", type: "u32" },
  ],
  workgroupSize: [GATHER_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("n", "P.N")}
  let id = ids[n];
  var first = 1u;
  for (var m = 0u; m < n; m++) {
    if (ids[m] == id) { first = 0u; break; }
  }
  var next = ${NO_NEXT}u;
  for (var m = n + 1u; m < P.N; m++) {
    if (ids[m] == id) { next = m; break; }
  }
  links[n] = next;
  links[P.N + n] = first;
}`,
};

/**
 * out[id - r0, c] = sum of dy[m, c] over the chain of positions m holding id, in increasing m (so the
 * sum is the same every run). One thread per (first occurrence, column); other threads idle. Only ids in
 * the output rows [r0, r1) bound here are written; rows of ids that never occur stay as the op cleared
 * them (zero), and ids >= V are dropped (their gather gave constant zero rows).
 */
export const scatterAddKernel: KernelSpec = {
  key: "gather_scatter_add_rows_f32",
  uniforms: [
    ["N", "u32"],
    ["C", "u32"],
    ["r0", "u32"],
    ["r1", "u32"],
    ["oOff", "u32"],
  ],
  bindings: [
    { name: "ids", access: "read", type: "u32" },
    { name: "links", access: "read", type: "u32" },
    { name: "dy", access: "read", type: "f32" },
    { name: "out", access: "read_write", type: "f32" },
  ],
  workgroupSize: [GATHER_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.N * P.C")}
  let n = i / P.C;
  let c = i % P.C;
  let id = ids[n];
  if (links[P.N + n] == 0u || id < P.r0 || id >= P.r1) { return; }
  var acc = 0.0;
  var m = n;
  loop {
    acc = acc + dy[m * P.C + c];
    m = links[m];
    if (m == ${NO_NEXT}u) { break; }
  }
  out[P.oOff + (id - P.r0) * P.C + c] = acc;
}`,
};
