// Names the engine's numerics for shard and cache checks: bumped by hand when computed results would change.
export const ENGINE_VERSION = "0.18.0";
