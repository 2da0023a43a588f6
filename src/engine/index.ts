// Public surface of the mock engine (pure core; the worker shell in src/worker drives it).

export { type CachedBlock, KvBlockPool } from './block-pool.js';
export {
  type BlockHasher,
  ENGINE_DEFAULTS,
  type EngineConfig,
  type EngineOutput,
  type EngineRequest,
  type EngineTotals,
  MockEngine,
  type RequestAccounting,
  type WaitingPlace,
} from './engine.js';
export { eventBlocks, type KvEventBody, type KvEventListener, KvEventLog } from './event-log.js';
export { decodeStepMs, prefillMs } from './timing.js';
export { promptSeed, TokenSampler, WORD_TOKEN_IDS } from './token-sampler.js';
