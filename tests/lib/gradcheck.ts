// Gradient checking: the tape's analytic gradient on the GPU against central finite differences of an
// independent float64 CPU implementation of the same function. The scalar checked is Σ R ⊙ f(x) with a
// fixed random R, so every output element contributes.
import { Tape } from "../../engine/autograd.ts";
import type { Engine } from "../../engine/engine.ts";
import { mul, reshape, sumAll } from "../../engine/ops.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { randn } from "./util.ts";

export interface GradInput {
  shape: number[];
  data: Float32Array;
  /** false for inputs that are not differentiated (indices, lengths, fixed targets). */
  grad?: boolean;
  dtype?: "f32" | "u32";
}

export interface GradCheckReport {
  maxRelErr: number;
  worst: string;
}

/**
 * Compares d(Σ R ⊙ gpu(inputs))/d(input) with central differences (step h) of Σ R ⊙ cpu(inputs) in
 * float64. Relative error per element: |a − fd| / max(|a|, |fd|, floor), floor = 1e-2 · max |fd| so that
 * elements whose gradient is ~0 are judged on the scale of the whole gradient.
 */
export async function gradCheck(
  engine: Engine,
  inputs: GradInput[],
  gpu: (xs: Tensor[]) => Tensor,
  cpu: (xs: Float64Array[]) => ArrayLike<number>,
  opts: { seed?: number; h?: number } = {},
): Promise<GradCheckReport> {
  const h = opts.h ?? 1e-5;
  const host = inputs.map((i) => Float64Array.from(i.data));
  const out0 = cpu(host);
  const R = randn(out0.length, opts.seed ?? 99);
  const objective = (xs: Float64Array[]) => {
    const y = cpu(xs);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += R[i] * y[i];
    return s;
  };

  const tape = new Tape();
  const grads = await engine.scopeAsync(async () => {
    const ts = inputs.map((i) =>
      engine.upload(i.dtype === "u32" ? Uint32Array.from(i.data) : i.data, i.shape, i.dtype ?? "f32")
    );
    ts.forEach((t, k) => t.requiresGrad = inputs[k].grad !== false);
    const r = engine.upload(R, [out0.length]);
    const loss = tape.run(() => {
      const y = gpu(ts);
      if (y.size !== out0.length) {
        throw new Error(`gradCheck: GPU output has ${y.size} elements, CPU ${out0.length}`);
      }
      return sumAll(mul(reshape(y, [y.size]), r));
    });
    const g = tape.backward(loss);
    const out: (Float32Array | undefined)[] = [];
    for (const t of ts) {
      const gt = g.get(t);
      out.push(gt ? (await gt.read()) as Float32Array : undefined);
      gt?.dispose();
    }
    return out;
  });

  let maxRelErr = 0, worst = "";
  inputs.forEach((inp, k) => {
    if (inp.grad === false) return;
    const fd = new Float64Array(inp.data.length);
    for (let i = 0; i < fd.length; i++) {
      const x0 = host[k][i];
      host[k][i] = x0 + h;
      const fp = objective(host);
      host[k][i] = x0 - h;
      const fm = objective(host);
      host[k][i] = x0;
      fd[i] = (fp - fm) / (2 * h);
    }
    const a = grads[k];
    if (!a) throw new Error(`gradCheck: no gradient for input ${k}`);
    let scale = 0;
    for (const v of fd) scale = Math.max(scale, Math.abs(v));
    const floor = Math.max(1e-2 * scale, 1e-12);
    for (let i = 0; i < fd.length; i++) {
      const err = Math.abs(a[i] - fd[i]) / Math.max(Math.abs(a[i]), Math.abs(fd[i]), floor);
      if (err > maxRelErr) {
        maxRelErr = err;
        worst = `input ${k} element ${i}: analytic ${a[i]}, finite difference ${fd[i]}`;
      }
    }
  });
  return { maxRelErr, worst };
}
