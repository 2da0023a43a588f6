// The `generate` endpoint: streams output tokens. With a kv_transfer the prompt's leading blocks
// are installed from the prefill worker instead of recomputed (only an uncached tail is
// prefilled), and the remote first token is emitted first. The first chunk carries the prompt
// accounting: cached_tokens = local cache hits + transferred tokens.

import type { EngineOutput } from '../engine/index.js';
import type { GenerateChunk } from '../protocols/worker-plane.js';
import type { IncomingRequest, RequestHandler } from '../tcp/index.js';
import { encodeJson } from '../tcp/index.js';
import type { EngineDriver } from '../worker/engine-driver.js';
import { parseGenerateRequest } from '../worker/payload.js';

export function createGenerateHandler(driver: EngineDriver): RequestHandler {
  // async: a rejected submit (bad payload, never fits, queue full) becomes the error response.
  return async (req: IncomingRequest) => {
    const body = parseGenerateRequest(req.payload);
    const outputs = driver.run(
      {
        tokenIds: body.token_ids,
        maxTokens: body.max_tokens,
        ...(body.stop_token_ids ? { stopTokenIds: body.stop_token_ids } : {}),
        ...(body.first_token === undefined ? {} : { firstToken: body.first_token }),
        ...(body.kv_transfer
          ? {
              transfer: {
                blockSize: body.kv_transfer.block_size,
                blockHashes: body.kv_transfer.block_hashes,
              },
            }
          : {}),
      },
      req.signal,
    );
    return chunks(outputs);
  };
}

async function* chunks(outputs: AsyncIterable<EngineOutput>): AsyncGenerator<Uint8Array> {
  for await (const out of outputs) {
    const chunk: GenerateChunk = { token_ids: out.tokenIds, finish_reason: out.finishReason };
    if (out.prompt) {
      const a = out.prompt.accounting;
      chunk.prompt_tokens = a.promptTokens;
      chunk.cached_tokens = a.cachedTokens + a.transferredTokens;
    }
    yield encodeJson(chunk);
  }
}
