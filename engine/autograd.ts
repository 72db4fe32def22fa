// The tape: ops record a node when an input requires a gradient; `backward` walks the nodes once in
// reverse (the recording order is already topological), accumulates gradients on the GPU, and frees
// each node's saved tensors as soon as its backward has run. Nothing is recorded outside `tape.run`,
// nor for ops none of whose inputs require a gradient — so a forward with a hooked δ records only the
// layers above the hook.
import { launchAdd } from "./launch/elementwise.ts";
import type { Tensor } from "./tensor.ts";

export type InputGrads = readonly (Tensor | undefined)[];

interface Node {
  inputs: readonly Tensor[];
  output: Tensor;
  /** Gradients of the inputs given the output's; `needs[i]` says whether input i wants one. */
  backward: (g: Tensor, needs: readonly boolean[]) => InputGrads;
  saved: Tensor[];
}

let active: Tape | undefined;

/** The tape recording right now (inside `tape.run`), if any. */
export function activeTape(): Tape | undefined {
  return active;
}

export class Tape {
  #nodes: Node[] = [];

  get size(): number {
    return this.#nodes.length;
  }

  /** Runs `fn` with this tape recording. */
  run<T>(fn: () => T): T {
    const prev = active;
    active = this;
    try {
      return fn();
    } finally {
      active = prev;
    }
  }

  /**
   * Records `output = f(inputs)` if some input requires a gradient. `save` lists tensors the backward
   * reads; the tape keeps its own handles on them (they outlive the scope that made them) and drops them
   * right after this node's backward. Returns the saved handles, in order, for the backward closure.
   */
  record(
    output: Tensor,
    inputs: readonly Tensor[],
    save: readonly Tensor[],
    backward: (g: Tensor, needs: readonly boolean[], saved: readonly Tensor[]) => InputGrads,
  ): void {
    if (!inputs.some((t) => t.requiresGrad)) return;
    output.requiresGrad = true;
    const saved = save.map((t) => t.share());
    this.#nodes.push({ inputs, output, saved, backward: (g, needs) => backward(g, needs, saved) });
  }

  /**
   * Gradients of `root` (seeded with `seed`, default ones — i.e. the sum of root's elements) with
   * respect to every leaf that requires a gradient. The tape is empty afterwards. The caller owns the
   * returned gradient tensors.
   */
  backward(root: Tensor, seed?: Tensor): Map<Tensor, Tensor> {
    const e = root.engine;
    if (!root.requiresGrad) {
      throw new Error("backward: the root does not depend on anything that requires a gradient");
    }
    const produced = new Set(this.#nodes.map((n) => n.output));
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, seed ? seed.share() : e.keep(fillLike(root, 1)));
    const accumulate = (t: Tensor, g: Tensor) => {
      const prev = grads.get(t);
      if (!prev) return void grads.set(t, g);
      const sum = e.keep(launchAdd(prev, g));
      prev.dispose();
      g.dispose();
      grads.set(t, sum);
    };
    try {
      for (let i = this.#nodes.length - 1; i >= 0; i--) {
        const node = this.#nodes[i];
        const g = grads.get(node.output);
        if (g) {
          grads.delete(node.output);
          const needs = node.inputs.map((t) => t.requiresGrad);
          const gin = e.scope(() => [...node.backward(g, needs)]);
          g.dispose();
          gin.forEach((gi, k) => {
            if (!gi) return;
            if (!needs[k]) return gi.dispose();
            const x = node.inputs[k];
            if (gi.size !== x.size) {
              throw new Error(
                `backward: gradient of ${gi} for input ${x} (a backward rule returned the wrong shape)`,
              );
            }
            e.keep(gi);
            accumulate(x, gi.shape.join() === x.shape.join() ? gi : reshaped(gi, x));
          });
        }
        for (const s of node.saved) s.dispose();
      }
    } finally {
      this.#nodes.forEach((n) => n.saved.forEach((s) => s.dispose()));
      this.#nodes = [];
    }
    for (const [t, g] of grads) {
      if (produced.has(t)) g.dispose();
    }
    for (const t of produced) grads.delete(t);
    return grads;
  }

  /** Drops everything recorded (e.g. after a forward whose gradient is not wanted). */
  clear(): void {
    for (const n of this.#nodes) n.saved.forEach((s) => s.dispose());
    this.#nodes = [];
  }
}

function reshaped(g: Tensor, like: Tensor): Tensor {
  const v = g.engine.keep(g.view(like.shape));
  g.dispose();
  return v;
}

function fillLike(t: Tensor, value: number): Tensor {
  const data = new Float32Array(t.size).fill(value);
  return t.engine.upload(data, t.shape);
}
