// What the router accepts from a prefill worker before handing its result to a decode worker.
//
// The answer carries no request id: a worker that mixed up two requests (or is broken) is caught
// by its blocks, which must be this prompt's leading full blocks, hashed as CONTRACT.md §4 says.
// Every check here is one the decode worker would make too, but a refusal there is a 400
// `invalid_request` that blames the client; a refusal here is the worker's fault, an
// `invalid_answer` fallback (or a 502 under --enforce-disagg).

import { KvrouteError } from '../../errors.js';
import { computeBlockHashes } from '../../kv-index/index.js';
import type { PrefillResponse } from '../../protocols/worker-plane.js';
import { MAX_TOKEN_ID } from '../openai/request.js';

function isCount(v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;
}

/**
 * Returns `answer` as a PrefillResponse when it is one for the prompt `tokenIds` (block size
 * `blockSize`), else throws KvrouteError('worker_error') saying what is wrong with it.
 */
export function checkPrefillAnswer(
  answer: unknown,
  tokenIds: readonly number[],
  blockSize: number,
  workerId: string,
): PrefillResponse {
  const wrong = (what: string) =>
    new KvrouteError('worker_error', `prefill worker ${workerId} sent an invalid answer: ${what}`);
  if (typeof answer !== 'object' || answer === null) throw wrong('not an object');
  const res = answer as Record<string, unknown>;
  if (!isCount(res.first_token, MAX_TOKEN_ID)) throw wrong('first_token is not a token id');
  if (!isCount(res.cached_tokens, tokenIds.length)) throw wrong('cached_tokens is not a prompt token count');
  const transfer = res.kv_transfer as Record<string, unknown> | null;
  if (typeof transfer !== 'object' || transfer === null) throw wrong('kv_transfer is not an object');
  if (transfer.block_size !== blockSize) throw wrong(`kv_transfer.block_size is not ${blockSize}`);
  if (typeof transfer.prefill_worker_id !== 'string' || transfer.prefill_worker_id.length === 0) {
    throw wrong('kv_transfer.prefill_worker_id is not a name');
  }
  const hashes = transfer.block_hashes;
  if (!Array.isArray(hashes) || transfer.transferred_blocks !== hashes.length) {
    throw wrong('kv_transfer.block_hashes is not a list of transferred_blocks hashes');
  }
  if (hashes.length > Math.floor(tokenIds.length / blockSize)) {
    throw wrong(`kv_transfer names ${hashes.length} blocks, more than the prompt's full blocks`);
  }
  if (transfer.cached_tokens !== undefined && !isCount(transfer.cached_tokens, tokenIds.length)) {
    throw wrong('kv_transfer.cached_tokens is not a prompt token count');
  }
  const sequence = computeBlockHashes(tokenIds.slice(0, hashes.length * blockSize), blockSize).sequence;
  for (let i = 0; i < hashes.length; i++) {
    if (hashes[i] !== sequence[i]!.toString()) {
      throw wrong(
        `kv_transfer.block_hashes[${i}] is not this prompt's block (an answer for another request?)`,
      );
    }
  }
  return res as unknown as PrefillResponse;
}
