// Plumbing kernels: row copies by index, column blocks, fills, in-place row adds and f16 <-> f32 casts.
// Every kernel works on one bound window of its tensors (the op splits tensors larger than one storage
// binding into row chunks), so each takes the element offset of its window inside the binding
// (`Tensor.range(..).elemOffset`) as a uniform. Copies move 4-byte words bit for bit (as u32), so they
// serve f32, u32 and i32 tensors alike.
// Plain ES module: no Deno API.
import { flatWorkgroups, type KernelSpec, type Workgroups } from "./descriptor.ts";
import { wgslThreadMain } from "./wgsl.ts";

export const COPY_WG = 256;

/** Flat 1-D dispatch of `n` threads folded into x/y (the kernels recover `i = gid.x + gid.y * nwg.x * WG_X`). */
export function copyWorkgroups(n: number): Workgroups {
  return flatWorkgroups(Math.ceil(n / COPY_WG));
}

/**
 * dst[dstRows[k], :] = src[srcRows[k], :] for k < n, restricted to the source rows [sR0, sR1) and the
 * destination rows [dR0, dR1) bound in this dispatch. A list flagged identity (`srcIdentity`/`dstIdentity`
 * = 1) is not read: its k-th row is k. Pairs outside the windows are left to other dispatches; pairs
 * outside every window (an index >= the tensor's rows) write nothing.
 */
export const copyRowsKernel: KernelSpec = {
  key: "copy_rows_u32_indexed",
  uniforms: [
    ["n", "u32"],
    ["C", "u32"],
    ["sR0", "u32"],
    ["sR1", "u32"],
    ["dR0", "u32"],
    ["dR1", "u32"],
    ["sOff", "u32"],
    ["dOff", "u32"],
    ["srcIdentity", "u32"],
    ["dstIdentity", "u32"],
  ],
  bindings: [
    { name: "srcRows", access: "read", type: "u32" },
    { name: "dstRows", access: "read", type: "u32" },
    { name: "src", access: "read", type: "u32" },
    { name: "dst", access: "read_write", type: "u32" },
  ],
  workgroupSize: [COPY_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n * P.C")}
  let k = i / P.C;
  let c = i % P.C;
  var sr = k;
  if (P.srcIdentity == 0u) { sr = srcRows[k]; }
  var dr = k;
  if (P.dstIdentity == 0u) { dr = dstRows[k]; }
  if (sr < P.sR0 || sr >= P.sR1 || dr < P.dR0 || dr >= P.dR1) { return; }
  dst[P.dOff + (dr - P.dR0) * P.C + c] = src[P.sOff + (sr - P.sR0) * P.C + c];
}`,
};

/**
 * A block of columns: dst[r, dCol + c] = src[r, sCol + c] for r < rows, c < w (row strides sStride,
 * dStride). Serves sliceCols (one block) and concatCols (one block per input).
 */
export const copyColsKernel: KernelSpec = {
  key: "copy_cols_u32",
  uniforms: [
    ["rows", "u32"],
    ["w", "u32"],
    ["sStride", "u32"],
    ["sCol", "u32"],
    ["sOff", "u32"],
    ["dStride", "u32"],
    ["dCol", "u32"],
    ["dOff", "u32"],
  ],
  bindings: [
    { name: "src", access: "read", type: "u32" },
    { name: "dst", access: "read_write", type: "u32" },
  ],
  workgroupSize: [COPY_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.rows * P.w")}
  let r = i / P.w;
  let c = i % P.w;
  dst[P.dOff + r * P.dStride + P.dCol + c] = src[P.sOff + r * P.sStride + P.sCol + c];
}`,
};

/** x[off + i] = bits for i < n (4-byte words; f16 fills pass two copies of the half in one word). */
export const fillKernel: KernelSpec = {
  key: "copy_fill_u32",
  uniforms: [["n", "u32"], ["bits", "u32"], ["off", "u32"]],
  bindings: [{ name: "x", access: "read_write", type: "u32" }],
  workgroupSize: [COPY_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("i", "P.n")}
  x[P.off + i] = P.bits;
}`,
};

/** x[off + c] += alpha * v[c] for c < C: one row of x, in place (ROME's edit at a site). */
export const addRowKernel: KernelSpec = {
  key: "copy_add_row_f32",
  uniforms: [["C", "u32"], ["off", "u32"], ["alpha", "f32"]],
  bindings: [
    { name: "v", access: "read", type: "f32" },
    { name: "x", access: "read_write", type: "f32" },
  ],
  workgroupSize: [COPY_WG, 1, 1],
  body: /* wgsl */ `${wgslThreadMain("c", "P.C")}
  x[P.off + c] = x[P.off + c] + P.alpha * v[c];
}`,
};

// f16 tensors are stored two halves per u32 word, element 2w in the low half (little endian). The cast
// kernels run one thread per word, so no two threads write the same word and odd sizes need no special
// case beyond a zero high half in the last word.

// The software conversions follow IEEE 754 binary16 with round-to-nearest-even, exactly what
// Float16Array does: overflow (|x| >= 65520) goes to infinity, tiny values to subnormals or signed zero,
// NaN stays NaN (quiet).
const HALF_BITS_FNS = /* wgsl */ `
fn half_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); } // inf / NaN
  if (e == 0u) {
    // zero or subnormal: m * 2^-24, exact in f32
    let v = f32(m) * 5.9604644775390625e-8;
    return select(v, -v, sign != 0u);
  }
  return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn f32_to_half(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sign = (b >> 16u) & 0x8000u;
  let e = i32((b >> 23u) & 0xffu);
  let m = b & 0x7fffffu;
  if (e == 0xff) { return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u); } // inf / NaN
  let he = e - 112; // rebias 127 -> 15
  if (he >= 31) { return sign | 0x7c00u; } // overflow
  if (he <= 0) {
    // subnormal half (or zero): shift the full significand right, rounding to nearest even
    if (he < -10) { return sign; }
    let full = m | 0x800000u;
    let shift = u32(14 - he);
    var r = full >> shift;
    let rem = full & ((1u << shift) - 1u);
    let halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u) == 1u)) { r = r + 1u; }
    return sign | r;
  }
  var r = (u32(he) << 10u) | (m >> 13u);
  let rem = m & 0x1fffu;
  // a carry out of the mantissa correctly bumps the exponent (up to infinity)
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u)) { r = r + 1u; }
  return sign | r;
}
`;

/**
 * f16 -> f32 over n elements: `native` reads vec2<f16> (needs shader-f16), else u32 words decoded by bits.
 * Element offsets: sOff in words of the f16 binding, dOff in f32 elements.
 */
export function castF16ToF32Kernel(native: boolean): KernelSpec {
  return {
    key: `cast_f16_to_f32_${native ? "native" : "bits"}`,
    uniforms: [["n", "u32"], ["sOff", "u32"], ["dOff", "u32"]],
    bindings: [
      { name: "src", access: "read", type: native ? "vec2<f16>" : "u32" },
      { name: "dst", access: "read_write", type: "f32" },
    ],
    workgroupSize: [COPY_WG, 1, 1],
    enables: native ? ["f16"] : [],
    body: (native ? "" : HALF_BITS_FNS) + /* wgsl */ `${wgslThreadMain("w")}
  if (2u * w >= P.n) { return; }
  ${
      native
        ? "let v = vec2<f32>(src[P.sOff + w]);"
        : "let h = src[P.sOff + w];\n  let v = vec2<f32>(half_to_f32(h & 0xffffu), half_to_f32(h >> 16u));"
    }
  dst[P.dOff + 2u * w] = v.x;
  if (2u * w + 1u < P.n) { dst[P.dOff + 2u * w + 1u] = v.y; }
}`,
  };
}

/**
 * f32 -> f16 over n elements. The native conversion's rounding is the device's (WGSL allows either
 * neighbour); values beyond the f16 range are sent to infinity explicitly since WGSL leaves them
 * indeterminate (`P.inf` is +inf, passed as a uniform because a constant infinity is a shader error).
 */
export function castF32ToF16Kernel(native: boolean): KernelSpec {
  return {
    key: `cast_f32_to_f16_${native ? "native" : "bits"}`,
    uniforms: native ? [["n", "u32"], ["sOff", "u32"], ["dOff", "u32"], ["inf", "f32"]] : [
      ["n", "u32"],
      ["sOff", "u32"],
      ["dOff", "u32"],
    ],
    bindings: [
      { name: "src", access: "read", type: "f32" },
      { name: "dst", access: "read_write", type: native ? "vec2<f16>" : "u32" },
    ],
    workgroupSize: [COPY_WG, 1, 1],
    enables: native ? ["f16"] : [],
    body: (native ? "" : HALF_BITS_FNS) + /* wgsl */ `${wgslThreadMain("w")}
  if (2u * w >= P.n) { return; }
  var v = vec2<f32>(src[P.sOff + 2u * w], 0.0);
  if (2u * w + 1u < P.n) { v.y = src[P.sOff + 2u * w + 1u]; }
  ${
      native
        ? "v = select(v, sign(v) * P.inf, abs(v) >= vec2<f32>(65520.0));\n  dst[P.dOff + w] = vec2<f16>(v);"
        : "dst[P.dOff + w] = f32_to_half(v.x) | (f32_to_half(v.y) << 16u);"
    }
}`,
  };
}
