// WGSL entry points shared by the kernel families: the `main` headers of the two dispatch shapes that
// `flatWorkgroups` (descriptor.ts) folds into x/y. Each returns the opening of `main` (the body's
// caller closes it) and declares the flat index the kernel goes on with.
// Plain ES module: no Deno API.

/**
 * One thread per element: `let <index> = gid.x + gid.y * nwg.x * WG_X;` over a dispatch of
 * `flatWorkgroups(ceil(n / WG_X))`, then, when `count` is given, `if (<index> >= <count>) { return; }`.
 */
export function wgslThreadMain(index: string, count?: string): string {
  return /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let ${index} = gid.x + gid.y * nwg.x * WG_X;${count ? `\n  if (${index} >= ${count}) { return; }` : ""}`;
}

/**
 * One workgroup per row (or segment): `let <group> = wid.x + wid.y * nwg.x;` over a dispatch of
 * `flatWorkgroups(groups)`, the thread's index in the workgroup named `lid` (or `local`), then, when
 * `count` is given, `if (<group> >= <count>) { return; }` (uniform: the whole workgroup leaves).
 */
export function wgslGroupMain(group: string, count?: string, local = "lid"): string {
  return /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) ${local}: u32) {
  let ${group} = wid.x + wid.y * nwg.x;${count ? `\n  if (${group} >= ${count}) { return; }` : ""}`;
}

/**
 * One thread per item, counted through the workgroups: `let <index> = (wid.x + wid.y * nwg.x) * WG_X +
 * <local>;` over a dispatch of `flatWorkgroups(ceil(n / WG_X))`, then, when `count` is given,
 * `if (<index> >= <count>) { return; }`.
 */
export function wgslGroupThreadMain(index: string, count?: string, local = "lid"): string {
  return /* wgsl */ `
@compute @workgroup_size(WG_X, WG_Y, WG_Z)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) ${local}: u32) {
  let ${index} = (wid.x + wid.y * nwg.x) * WG_X + ${local};${
    count ? `\n  if (${index} >= ${count}) { return; }` : ""
  }`;
}
