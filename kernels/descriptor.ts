// The typed kernel descriptor every kernel family builds. The WGSL header (uniform struct, storage
// bindings, workgroup-size constants) is generated from the descriptor, so the TypeScript side that
// fills uniforms and binds buffers and the shader that reads them cannot drift apart.
// Plain ES module: no Deno API, loads unchanged in a browser.

/** Storage access of one binding, as the shader declares it. */
export type Access = "read" | "read_write";
/** Uniform fields are all 4-byte scalars, packed in declaration order. */
export type UniformType = "u32" | "i32" | "f32";

export interface StorageBinding {
  readonly name: string;
  readonly access: Access;
  /** WGSL element type of the runtime-sized array, e.g. "f32", "vec4<f32>", "u32". */
  readonly type: string;
}

export interface KernelSpec {
  /** Pipeline cache key that reads like a label, e.g. `matmul_f32_64x64_transB_bias`. */
  readonly key: string;
  /** Uniform fields, in order; exposed to WGSL as `P.<name>`. Empty means no uniform binding. */
  readonly uniforms: readonly (readonly [string, UniformType])[];
  /** Storage bindings, in order; exposed to WGSL as `<name>` (array<type>). */
  readonly bindings: readonly StorageBinding[];
  readonly workgroupSize: readonly [number, number, number];
  /** WGSL after the generated header; must declare `@compute @workgroup_size(WG_X, WG_Y, WG_Z) fn main(...)`. */
  readonly body: string;
  /** Extra `enable` directives (e.g. "f16"). */
  readonly enables?: readonly string[];
}

/** Number of workgroups per dimension of one dispatch. */
export type Workgroups = readonly [number, number, number];

/** The full WGSL source of a kernel: generated header + body. */
export function kernelSource(spec: KernelSpec): string {
  const lines: string[] = [];
  for (const e of spec.enables ?? []) lines.push(`enable ${e};`);
  const [x, y, z] = spec.workgroupSize;
  lines.push(`const WG_X: u32 = ${x}u;`, `const WG_Y: u32 = ${y}u;`, `const WG_Z: u32 = ${z}u;`);
  let binding = 0;
  if (spec.uniforms.length > 0) {
    lines.push(`struct Params {`);
    for (const [name, type] of spec.uniforms) lines.push(`  ${name}: ${type},`);
    lines.push(`};`, `@group(0) @binding(${binding++}) var<uniform> P: Params;`);
  }
  for (const b of spec.bindings) {
    lines.push(`@group(0) @binding(${binding++}) var<storage, ${b.access}> ${b.name}: array<${b.type}>;`);
  }
  return lines.join("\n") + "\n" + spec.body;
}

/** Bytes of the uniform block (WGSL rounds a uniform struct up to 16 bytes). */
export function uniformBytes(spec: KernelSpec): number {
  return Math.ceil((spec.uniforms.length * 4) / 16) * 16;
}

/** Packs uniform values, in the descriptor's order, into `out` at byte `offset`. */
export function packUniforms(
  spec: KernelSpec,
  values: Readonly<Record<string, number>>,
  out: DataView,
  offset: number,
): void {
  spec.uniforms.forEach(([name, type], i) => {
    const v = values[name];
    if (v === undefined) throw new Error(`kernel ${spec.key}: uniform '${name}' not given`);
    const at = offset + i * 4;
    if (type === "f32") out.setFloat32(at, v, true);
    else if (type === "i32") out.setInt32(at, v, true);
    else {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new Error(`kernel ${spec.key}: uniform '${name}' = ${v} is not a u32`);
      }
      out.setUint32(at, v, true);
    }
  });
}

/** ceil(a / b) for positive integers. */
export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}

/**
 * Spreads `n` workgroups over x and y so no dimension exceeds the 65535 limit. Kernels using it
 * recover the flat id as `wid.x + wid.y * nwg.x` (WGSL `num_workgroups`) and must bound-check it.
 */
export function flatWorkgroups(n: number, maxPerDim = 65535): Workgroups {
  if (n <= maxPerDim) return [Math.max(1, n), 1, 1];
  const y = ceilDiv(n, maxPerDim);
  return [ceilDiv(n, y), y, 1];
}
