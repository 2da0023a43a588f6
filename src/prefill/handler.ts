// The `prefill` endpoint: computes a prompt's KV on this worker and answers once with the first
// token and what a decode worker needs to take over (kv_transfer). The prompt's blocks stay in this
// worker's pool afterwards, unreferenced and evictable, so the next prompt sharing the prefix hits.

import type { PrefillResponse } from '../protocols/worker-plane.js';
import type { IncomingRequest, RequestHandler } from '../tcp/index.js';
import { encodeJson } from '../tcp/index.js';
import type { EngineDriver } from '../worker/engine-driver.js';
import { parsePrefillRequest } from '../worker/payload.js';

export interface PrefillHandlerDeps {
  driver: EngineDriver;
  /** This worker's id as the router knows it (its address until registered). */
  workerId: () => string;
}

export function createPrefillHandler({ driver, workerId }: PrefillHandlerDeps): RequestHandler {
  const { blockSize } = driver.engine.config;
  return async (req: IncomingRequest) => {
    const body = parsePrefillRequest(req.payload);
    // Remote prefill always produces exactly one token (max_tokens is 1 by definition).
    for await (const out of driver.run({ tokenIds: body.token_ids, maxTokens: 1 }, req.signal)) {
      if (!out.prompt) continue;
      const { accounting, sequenceHashes } = out.prompt;
      const response: PrefillResponse = {
        first_token: out.tokenIds[0]!,
        prompt_tokens: accounting.promptTokens,
        cached_tokens: accounting.cachedTokens,
        kv_transfer: {
          prefill_worker_id: workerId(),
          block_size: blockSize,
          transferred_blocks: sequenceHashes.length,
          block_hashes: sequenceHashes.map(String),
          cached_tokens: accounting.cachedTokens,
        },
      };
      return encodeJson(response);
    }
    throw new Error('prefill ended without a first token');
  };
}
