// The version of the engine's numerics, recorded in files whose numbers other runs combine with theirs
// (statistics shards, eval results): a merge refuses parts computed by engines that would give other
// numbers. Bumped by hand when a change alters results (a kernel's summation order, a dtype, a default
// that changes what is computed); not for refactors that give the same bits. A leaf: imports nothing.

/** Bump when numerics change (see above). */
export const ENGINE_VERSION = "1";
