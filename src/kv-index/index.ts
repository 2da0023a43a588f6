// Public surface of the KV-cache prefix index: block hashing, u64 key conversions, the radix index
// fed by worker KV events, and the approximate index for workers that publish none.

export { BLOCK_HASH_SEED, computeBlockHashes, localBlockKeys, xxh3Seeded } from './block-hash.js';
export type { BlockKeys } from './u64.js';
export { keysFromBigUint64, keysFromU64Strings, keyToBigInt, parseU64Into, u64String } from './u64.js';
