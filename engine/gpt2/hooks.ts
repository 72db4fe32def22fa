// Hook points of the GPT-2 graph: named sites where a forward pass can be read or patched, on the GPU
// and without readback. A site holds one state vector per (row, token) of the batch:
//   embed   token embedding output, before position embeddings are added (layer is ignored)   [d]
//   resid   block `layer`'s output, i.e. the residual stream after that layer                [d]
//   attn    block `layer`'s attention output (after c_proj), before the residual add          [d]
//   mlp     block `layer`'s MLP output (after c_proj), before the residual add                [d]
//   mlpKey  block `layer`'s MLP key: the input of mlp.c_proj, after GELU (ROME's k)           [d_ff]
import type { Tensor } from "../tensor.ts";

export type Site = "embed" | "resid" | "attn" | "mlp" | "mlpKey";
export const SITES: readonly Site[] = ["embed", "resid", "attn", "mlp", "mlpKey"];

/** A (row, token) position in a right-padded batch. */
export type Pos = readonly [row: number, token: number];

export type Hook =
  /** Keep a copy of the site's states (all of them, or those `at`) under `name` in the forward's captures. */
  | { site: Site; layer: number; kind: "read"; name: string; at?: readonly Pos[] }
  /** Overwrite the states at `at` with the rows of `value` ([at.length, D]). */
  | { site: Site; layer: number; kind: "set"; at: readonly Pos[]; value: Tensor }
  /** Add `value` ([D] for every position, or [at.length, D]) to the states at `at`. */
  | { site: Site; layer: number; kind: "add"; at: readonly Pos[]; value: Tensor }
  /** Copy states between positions of the same run: to[i] ← from[i] (how tracing restores clean states). */
  | { site: Site; layer: number; kind: "copy"; from: readonly Pos[]; to: readonly Pos[] }
  /** Replace the whole site tensor [B·T, D] by fn(x) (the caller owns what fn returns; used with autograd). */
  | { site: Site; layer: number; kind: "map"; fn: (x: Tensor) => Tensor };

export function hookKey(site: Site, layer: number): string {
  return site === "embed" ? "embed" : `${site}.${layer}`;
}

/** Groups hooks by site, keeping their order; validates layers and positions against the batch. */
export function planHooks(
  hooks: readonly Hook[],
  nLayer: number,
  lengths: readonly number[],
): Map<string, Hook[]> {
  const plan = new Map<string, Hook[]>();
  const checkPos = (h: Hook, ps: readonly Pos[]) => {
    for (const [r, t] of ps) {
      if (!Number.isInteger(r) || r < 0 || r >= lengths.length) {
        throw new RangeError(
          `hook ${h.kind} at ${hookKey(h.site, h.layer)}: row ${r} outside the batch of ${lengths.length}`,
        );
      }
      if (!Number.isInteger(t) || t < 0 || t >= lengths[r]) {
        throw new RangeError(
          `hook ${h.kind} at ${hookKey(h.site, h.layer)}: token ${t} outside row ${r} (length ${lengths[r]})`,
        );
      }
    }
  };
  for (const h of hooks) {
    if (h.site !== "embed" && (!Number.isInteger(h.layer) || h.layer < 0 || h.layer >= nLayer)) {
      throw new RangeError(`hook ${h.kind} at site ${h.site}: layer ${h.layer} outside 0..${nLayer - 1}`);
    }
    if (h.kind === "read" && h.at) checkPos(h, h.at);
    if (h.kind === "set" || h.kind === "add") checkPos(h, h.at);
    if (h.kind === "copy") {
      if (h.from.length !== h.to.length) {
        throw new RangeError(`hook copy: ${h.from.length} sources, ${h.to.length} targets`);
      }
      checkPos(h, h.from);
      checkPos(h, h.to);
    }
    const k = hookKey(h.site, h.layer);
    const list = plan.get(k) ?? [];
    list.push(h);
    plan.set(k, list);
  }
  return plan;
}
