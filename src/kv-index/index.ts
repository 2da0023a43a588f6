// Public surface of the KV-cache prefix index: block hashing, u64 key conversions, the radix index
// fed by worker KV events, and the approximate index for workers that publish none.

export type { ApproxIndexOptions, ApproxIndexStats } from './approx-index.js';
export { ApproxIndex, DEFAULT_APPROX_MAX_BLOCKS, DEFAULT_APPROX_TTL_MS } from './approx-index.js';
export { BLOCK_HASH_SEED, computeBlockHashes, localBlockKeys, xxh3Seeded } from './block-hash.js';
export type { IndexStats, PrefixIndex } from './prefix-index.js';
export type {
  ApplyResult,
  RadixIndexOptions,
  RadixIndexStats,
  RejectReason,
  WorkerReset,
} from './radix-index.js';
export { DEFAULT_MAX_EVENT_BLOCKS, DEFAULT_MAX_NODES, RadixIndex } from './radix-index.js';
export { MatchScores } from './radix-tree.js';
export type { BlockKeys } from './u64.js';
export { keysFromBigUint64, keysFromU64Strings, keyToBigInt, parseU64Into, u64String } from './u64.js';
