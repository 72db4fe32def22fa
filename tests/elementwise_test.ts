import { axpy, launchAdd, launchMul, launchScale, launchSub } from "../engine/launch/elementwise.ts";
import { assertClose, AWKWARD, randn, testEngine } from "./lib/util.ts";

const engine = await testEngine();

Deno.test("elementwise add/sub/mul/axpy/scale vs float64, with row broadcast", async () => {
  for (const rows of [1, 3, 17]) {
    for (const cols of AWKWARD) {
      const A = randn(rows * cols, rows * 31 + cols),
        B = randn(rows * cols, cols + 7),
        R = randn(cols, 3 * cols);
      await engine.scopeAsync(async () => {
        const a = engine.upload(A, [rows, cols]),
          b = engine.upload(B, [rows, cols]),
          r = engine.upload(R, [cols]);
        const outs = [
          launchAdd(a, b),
          launchSub(a, b),
          launchMul(a, b),
          axpy(-0.75, a, b),
          launchScale(a, 2.5, -1),
          launchAdd(a, r),
        ];
        const got = await engine.readMany(outs);
        const ref = (f: (i: number) => number) => Float64Array.from({ length: rows * cols }, (_, i) => f(i));
        const tol = { atol: 1e-6, rtol: 1e-6 };
        assertClose(got[0], ref((i) => A[i] + B[i]), tol, "add");
        assertClose(got[1], ref((i) => A[i] - B[i]), tol, "sub");
        assertClose(got[2], ref((i) => A[i] * B[i]), tol, "mul");
        assertClose(got[3], ref((i) => -0.75 * A[i] + B[i]), tol, "axpy");
        assertClose(got[4], ref((i) => 2.5 * A[i] - 1), tol, "scale");
        assertClose(got[5], ref((i) => A[i] + R[i % cols]), tol, "add broadcast");
      });
    }
  }
});
