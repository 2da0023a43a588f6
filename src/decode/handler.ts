// The `generate` endpoint: streams output tokens. With a kv_transfer the prompt's leading blocks
// are installed from the prefill worker instead of recomputed (only an uncached tail is
// prefilled), and the remote first token is emitted first. The first chunk carries the prompt
// accounting: cached_tokens = local cache hits + transferred tokens.
// With `await_kv_handoff` (overlapped prefill) the request first waits, bounded, on the handoff
// board for the router's `kv_handoff`, which brings the kv_transfer and first token (or says to
// prefill locally); a `kv_handoff` endpoint is registered beside `generate` for that.

import type { EngineOutput, WaitingPlace } from '../engine/index.js';
import type { GenerateChunk, KvHandoffRequest, KvHandoffResponse } from '../protocols/worker-plane.js';
import type { IncomingRequest, RequestHandler } from '../tcp/index.js';
import { encodeJson } from '../tcp/index.js';
import type { EngineDriver } from '../worker/engine-driver.js';
import { parseGenerateRequest, parseKvHandoff } from '../worker/payload.js';
import type { KvHandoffBoard } from './handoff-board.js';

export function createGenerateHandler(driver: EngineDriver, handoffs?: KvHandoffBoard): RequestHandler {
  // async: a rejected submit (bad payload, never fits, queue full) becomes the error response.
  return async (req: IncomingRequest) => {
    const body = parseGenerateRequest(req.payload);
    let place: WaitingPlace | undefined;
    if (body.await_kv_handoff && handoffs) {
      // Waiting for the handoff is waiting on this worker: the request takes its place in the
      // engine's queue (--max-waiting) now, refused with `overloaded` when it is full, and keeps
      // it into the engine: once its prefill is done it is not refused for a place taken meanwhile.
      place = driver.engine.reserveWaiting();
      let handoff: KvHandoffRequest;
      try {
        handoff = await handoffs.wait(body.request_id, body.await_kv_handoff.timeout_ms, req.signal);
      } catch (err) {
        place.release();
        throw err;
      }
      if (handoff.prefill) {
        body.kv_transfer = handoff.prefill.kv_transfer;
        body.first_token = handoff.prefill.first_token;
      }
    }
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
      place,
    );
    return chunks(outputs);
  };
}

/** The `kv_handoff` endpoint: delivers a handoff to the generate waiting for it (or holds it briefly). */
export function createKvHandoffHandler(handoffs: KvHandoffBoard): RequestHandler {
  return async (req: IncomingRequest) => {
    const answer: KvHandoffResponse = { delivered: handoffs.deliver(parseKvHandoff(req.payload)) };
    return encodeJson(answer);
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
