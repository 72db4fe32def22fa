// The GPT-2 graph on the engine: token + position embeddings, pre-LN blocks (causal multi-head attention,
// gelu_new MLP), final layer norm and the tied unembedding, over right-padded batches of prompts of
// different lengths. Hook points (hooks.ts) read or patch states in flight; logits are computed only at
// the positions asked for (never a [B, T, vocab] tensor unless asked).
import type { Engine } from "../engine.ts";
import {
  add,
  addPositions,
  attention,
  clone,
  gatherRows,
  gelu,
  layerNorm,
  matmul,
  reshape,
  selectRows,
  withRows,
} from "../ops.ts";
import { shapeStr, type Tensor } from "../tensor.ts";
import type { Gpt2Config } from "./config.ts";
import { type Hook, hookKey, planHooks, type Pos, type Site } from "./hooks.ts";

/** Weights by their Hugging Face names without the `transformer.` prefix (`h.3.mlp.c_proj.weight`, `wte.weight`). */
export type Gpt2Weights = Map<string, Tensor>;

/** Every weight the graph needs, with its shape (Conv1D weights are [in, out], as in HF GPT-2). */
export function expectedWeightShapes(c: Gpt2Config): Map<string, number[]> {
  const d = c.nEmbd, f = c.nInner;
  const m = new Map<string, number[]>([["wte.weight", [c.vocabSize, d]], ["wpe.weight", [c.nPositions, d]]]);
  for (let l = 0; l < c.nLayer; l++) {
    const p = `h.${l}.`;
    m.set(p + "ln_1.weight", [d]).set(p + "ln_1.bias", [d]);
    m.set(p + "attn.c_attn.weight", [d, 3 * d]).set(p + "attn.c_attn.bias", [3 * d]);
    m.set(p + "attn.c_proj.weight", [d, d]).set(p + "attn.c_proj.bias", [d]);
    m.set(p + "ln_2.weight", [d]).set(p + "ln_2.bias", [d]);
    m.set(p + "mlp.c_fc.weight", [d, f]).set(p + "mlp.c_fc.bias", [f]);
    m.set(p + "mlp.c_proj.weight", [f, d]).set(p + "mlp.c_proj.bias", [d]);
  }
  m.set("ln_f.weight", [d]).set("ln_f.bias", [d]);
  return m;
}

/** Which positions get logits: each row's last token, explicit positions, every position, or none. */
export type LogitsAt = "last" | "all" | "none" | readonly Pos[];

export interface ForwardOptions {
  hooks?: readonly Hook[];
  logits?: LogitsAt;
  /**
   * Start at block `layer` from a given residual stream [B·T, d] (the output of block layer−1, or the
   * embeddings for layer 0) instead of embedding the tokens: states below a patched layer that a caller
   * already has need not be recomputed (causal tracing's restored cells).
   */
  start?: { layer: number; resid: Tensor };
}

export interface ForwardResult {
  /** [positions.length, vocab] logits, when asked for. */
  logits?: Tensor;
  /** The (row, token) of each logits row. */
  positions: Pos[];
  /** States kept by `read` hooks, by name. */
  captures: Map<string, Tensor>;
  lengths: number[];
  /** Padded length of the batch. */
  T: number;
}

export class Gpt2Model {
  constructor(
    readonly engine: Engine,
    readonly config: Gpt2Config,
    readonly weights: Gpt2Weights,
    /** Content hash of the weights as loaded (edits that change weights update it). */
    public hash = "unhashed",
  ) {
    for (const [name, shape] of expectedWeightShapes(config)) {
      const w = weights.get(name);
      if (!w) throw new Error(`GPT-2 weights: '${name}' is missing`);
      if (w.shape.join(",") !== shape.join(",")) {
        throw new Error(
          `GPT-2 weights: '${name}' has shape ${shapeStr(w.shape)}, expected ${shapeStr(shape)}`,
        );
      }
    }
  }

  w(name: string): Tensor {
    const t = this.weights.get(name);
    if (!t) throw new Error(`GPT-2 weights: no tensor '${name}'`);
    return t;
  }

  /**
   * Runs the batch. Rows may have different lengths (right-padded to the longest). Returns tensors the
   * caller owns (logits, captures); every intermediate is released before returning.
   */
  forward(ids: readonly (readonly number[])[], opts: ForwardOptions = {}): ForwardResult {
    const c = this.config, e = this.engine;
    const B = ids.length;
    if (B === 0) throw new RangeError("forward: empty batch");
    const lengths = ids.map((r) => r.length);
    const T = Math.max(...lengths);
    if (Math.min(...lengths) === 0) throw new RangeError("forward: a prompt has no tokens");
    if (T > c.nPositions) {
      throw new RangeError(`forward: a prompt of ${T} tokens exceeds the model's context of ${c.nPositions}`);
    }
    const flat = new Uint32Array(B * T);
    ids.forEach((row, b) =>
      row.forEach((id, t) => {
        if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
          throw new RangeError(
            `forward: token id ${id} (row ${b}, position ${t}) outside the vocabulary of ${c.vocabSize}`,
          );
        }
        flat[b * T + t] = id;
      })
    );
    const plan = planHooks(opts.hooks ?? [], c.nLayer, lengths);
    const first = opts.start?.layer ?? 0;
    if (opts.start) {
      const { layer, resid } = opts.start;
      if (!Number.isInteger(layer) || layer < 0 || layer > c.nLayer) {
        throw new RangeError(`forward: start layer ${layer} outside 0..${c.nLayer}`);
      }
      if (resid.rank !== 2 || resid.shape[0] !== B * T || resid.shape[1] !== c.nEmbd) {
        throw new RangeError(
          `forward: start state ${shapeStr(resid.shape)}, expected [${B * T}, ${c.nEmbd}]`,
        );
      }
      for (const h of opts.hooks ?? []) {
        if (h.site === "embed" || h.layer < layer) {
          throw new RangeError(
            `forward: hook at ${hookKey(h.site, h.layer)} lies below the start layer ${layer}`,
          );
        }
      }
    }
    const positions = logitPositions(opts.logits ?? "last", lengths, T);
    const captures = new Map<string, Tensor>();

    const result = e.scope(() => {
      const idsT = opts.start ? undefined : e.upload(flat, [B * T], "u32");
      const lengthsT = e.upload(Uint32Array.from(lengths), [B], "u32");
      const at = (site: Site, layer: number, x: Tensor) =>
        this.#applyHooks(plan.get(hookKey(site, layer)), x, T, captures);

      let x: Tensor;
      if (opts.start) x = opts.start.resid;
      else {
        let tok = gatherRows(this.w("wte.weight"), idsT!); // [B·T, d]
        tok = at("embed", 0, tok);
        x = reshape(addPositions(reshape(tok, [B, T, c.nEmbd]), this.w("wpe.weight")), [B * T, c.nEmbd]);
      }
      for (let l = first; l < c.nLayer; l++) {
        // One scope per block: its intermediates go back to the pool as soon as the block is done (the
        // tape keeps its own handles on what a backward needs), so a forward holds ~one block at a time.
        const prev = x;
        const attend = (qkv: Tensor) =>
          reshape(attention(reshape(qkv, [B, T, 3 * c.nEmbd]), lengthsT, c.nHead), [B * T, c.nEmbd]);
        x = e.scope(() => this.block(l, prev, attend, at));
        if (prev !== opts.start?.resid) prev.dispose();
      }
      if (positions.length === 0) return { logits: undefined };
      const last = selectRows(
        x,
        e.upload(Uint32Array.from(positions.map(([r, t]) => r * T + t)), [positions.length], "u32"),
      );
      return { logits: this.logitsOf(last) };
    });
    for (const t of captures.values()) e.keep(t);
    return { logits: result.logits, positions, captures, lengths, T };
  }

  /**
   * Block `l` over rows x [n, d]: x + attn(ln_1(x)), then + mlp(ln_2(·)), with the hook sites applied on
   * the way. `attend` maps the rows' c_attn output [n, 3d] to the merged heads [n, d]: causal attention over
   * the padded batch in `forward`, attention through a KV cache in incremental decoding (decode.ts).
   */
  block(
    l: number,
    x: Tensor,
    attend: (qkv: Tensor) => Tensor,
    at: (site: Site, layer: number, x: Tensor) => Tensor = (_s, _l, v) => v,
  ): Tensor {
    const c = this.config, p = `h.${l}.`;
    const h1 = layerNorm(x, this.w(p + "ln_1.weight"), this.w(p + "ln_1.bias"), c.layerNormEps);
    const heads = attend(
      matmul(h1, this.w(p + "attn.c_attn.weight"), { bias: this.w(p + "attn.c_attn.bias") }),
    );
    let a = matmul(heads, this.w(p + "attn.c_proj.weight"), { bias: this.w(p + "attn.c_proj.bias") });
    a = at("attn", l, a);
    x = add(x, a);
    const h2 = layerNorm(x, this.w(p + "ln_2.weight"), this.w(p + "ln_2.bias"), c.layerNormEps);
    let k = gelu(matmul(h2, this.w(p + "mlp.c_fc.weight"), { bias: this.w(p + "mlp.c_fc.bias") }));
    k = at("mlpKey", l, k);
    let m = matmul(k, this.w(p + "mlp.c_proj.weight"), { bias: this.w(p + "mlp.c_proj.bias") });
    m = at("mlp", l, m);
    x = add(x, m);
    return at("resid", l, x);
  }

  /** Logits [n, vocab] of final residual rows [n, d]: ln_f, then the (tied) unembedding. */
  logitsOf(x: Tensor): Tensor {
    const hf = layerNorm(x, this.w("ln_f.weight"), this.w("ln_f.bias"), this.config.layerNormEps);
    const unembed = this.weights.get("lm_head.weight") ?? this.w("wte.weight");
    return matmul(hf, unembed, { transB: true });
  }

  /** Applies the hooks of one site in order; returns the (possibly new) site tensor. */
  #applyHooks(hooks: Hook[] | undefined, x: Tensor, T: number, captures: Map<string, Tensor>): Tensor {
    if (!hooks) return x;
    const e = this.engine;
    const rowsOf = (ps: readonly Pos[]) =>
      e.upload(Uint32Array.from(ps.map(([r, t]) => r * T + t)), [ps.length], "u32");
    for (const h of hooks) {
      switch (h.kind) {
        case "read": {
          if (captures.has(h.name)) throw new Error(`hook read: capture name '${h.name}' used twice`);
          const kept = h.at ? selectRows(x, rowsOf(h.at)) : clone(x); // a copy: x itself may be patched later
          captures.set(h.name, e.keep(kept));
          break;
        }
        case "set":
          this.#checkRows("set", h.value, h.at.length, x.shape[1]);
          x = withRows(x, rowsOf(h.at), h.value);
          break;
        case "add": {
          const idx = rowsOf(h.at);
          const v = h.value.rank === 1
            ? h.value
            : (this.#checkRows("add", h.value, h.at.length, x.shape[1]), h.value);
          if (h.value.rank === 1 && h.value.size !== x.shape[1]) {
            throw new RangeError(`hook add: vector of ${h.value.size}, site width ${x.shape[1]}`);
          }
          x = withRows(x, idx, add(selectRows(x, idx), v));
          break;
        }
        case "copy":
          x = withRows(x, rowsOf(h.to), selectRows(x, rowsOf(h.from)));
          break;
        case "map":
          x = h.fn(x);
          break;
      }
    }
    return x;
  }

  #checkRows(kind: string, v: Tensor, n: number, width: number): void {
    if (v.rank !== 2 || v.shape[0] !== n || v.shape[1] !== width) {
      throw new RangeError(`hook ${kind}: value ${shapeStr(v.shape)}, expected [${n}, ${width}]`);
    }
  }
}

function logitPositions(at: LogitsAt, lengths: readonly number[], T: number): Pos[] {
  if (at === "none") return [];
  if (at === "last") return lengths.map((n, r) => [r, n - 1] as const);
  if (at === "all") return lengths.flatMap((n, r) => Array.from({ length: n }, (_, t) => [r, t] as const));
  for (const [r, t] of at) {
    if (r < 0 || r >= lengths.length || t < 0 || t >= lengths[r] || t >= T) {
      throw new RangeError(`logits at (${r}, ${t}): outside the batch`);
    }
  }
  return [...at];
}
