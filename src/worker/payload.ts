// Validation of request-plane payloads (JSON objects). Each failure is a KvrouteError
// ('invalid_request') naming the field in its message and `param`; unknown fields are ignored.
// Token ids use the router's validator, so both sides accept exactly the same ids.

import { KvrouteError } from '../errors.js';
import { parseU64Into } from '../kv-index/index.js';
import type { KvEventsSubscribe } from '../protocols/kv-events.js';
import type {
  GenerateRequest,
  KvHandoffRequest,
  KvTransferParams,
  PrefillRequest,
} from '../protocols/worker-plane.js';
import { validateTokenIds } from '../router/openai/request.js';
import { decodeJson } from '../tcp/index.js';
import { describeRejected } from '../util/describe-rejected.js';

type Obj = Record<string, unknown>;

function invalid(message: string, param: string): KvrouteError {
  return new KvrouteError('invalid_request', message, { param });
}

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses a JSON object payload; an empty payload is an empty object. */
export function parseObject(payload: Uint8Array, what: string): Obj {
  if (payload.byteLength === 0) return {};
  let value: unknown;
  try {
    value = decodeJson<unknown>(payload);
  } catch {
    throw new KvrouteError('invalid_json', `${what} payload is not valid JSON`);
  }
  if (!isObject(value)) throw new KvrouteError('invalid_request', `${what} payload must be a JSON object`);
  return value;
}

function required(body: Obj, field: string, prefix: string): unknown {
  const v = body[field];
  if (v === undefined || v === null) throw invalid(`missing field '${prefix}${field}'`, prefix + field);
  return v;
}

function integer(v: unknown, param: string, min: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw invalid(`'${param}' must be an integer >= ${min}, got ${describeRejected(v)}`, param);
  }
  return v;
}

function string(v: unknown, param: string): string {
  if (typeof v !== 'string' || v.length === 0) {
    throw invalid(`'${param}' must be a non-empty string, got ${describeRejected(v)}`, param);
  }
  return v;
}

function tokenIds(v: unknown, param: string, allowEmpty: boolean): number[] {
  if (!Array.isArray(v)) throw invalid(`'${param}' must be an array of token ids`, param);
  if (!allowEmpty && v.length === 0) throw invalid(`'${param}' must not be empty`, param);
  return validateTokenIds(v, param);
}

/** parseU64Into's output, unused: only whether a hash is a u64 matters here. */
const U64_SCRATCH = new Uint32Array(2);

/**
 * A block hash as the router's index reads one (kv-index's parseU64Into): canonical decimal, at
 * most 2^64-1. A regex of 1 to 20 digits also took 20-digit numbers past 2^64-1.
 */
function isU64String(h: unknown): boolean {
  return parseU64Into(h, U64_SCRATCH, 0);
}

function kvTransfer(v: unknown): KvTransferParams {
  const p = 'kv_transfer.';
  if (!isObject(v)) throw invalid(`'kv_transfer' must be an object`, 'kv_transfer');
  const hashes = required(v, 'block_hashes', p);
  if (!Array.isArray(hashes) || !hashes.every(isU64String)) {
    throw invalid(`'${p}block_hashes' must be an array of decimal u64 strings`, `${p}block_hashes`);
  }
  const transferred = integer(required(v, 'transferred_blocks', p), `${p}transferred_blocks`, 0);
  if (transferred !== hashes.length) {
    throw invalid(
      `'${p}transferred_blocks' is ${transferred} but '${p}block_hashes' has ${hashes.length} entries`,
      `${p}transferred_blocks`,
    );
  }
  return {
    prefill_worker_id: string(required(v, 'prefill_worker_id', p), `${p}prefill_worker_id`),
    block_size: integer(required(v, 'block_size', p), `${p}block_size`, 1),
    transferred_blocks: transferred,
    block_hashes: hashes as string[],
    cached_tokens: integer(v.cached_tokens ?? 0, `${p}cached_tokens`, 0),
  };
}

export function parsePrefillRequest(payload: Uint8Array): PrefillRequest {
  const body = parseObject(payload, 'prefill');
  return {
    request_id: string(required(body, 'request_id', ''), 'request_id'),
    token_ids: tokenIds(required(body, 'token_ids', ''), 'token_ids', false),
    ...(body.max_tokens === undefined ? {} : { max_tokens: integer(body.max_tokens, 'max_tokens', 1) }),
  };
}

export function parseGenerateRequest(payload: Uint8Array): GenerateRequest {
  const body = parseObject(payload, 'generate');
  const req: GenerateRequest = {
    request_id: string(required(body, 'request_id', ''), 'request_id'),
    token_ids: tokenIds(required(body, 'token_ids', ''), 'token_ids', false),
    max_tokens: integer(required(body, 'max_tokens', ''), 'max_tokens', 1),
  };
  if (body.stop_token_ids !== undefined && body.stop_token_ids !== null) {
    req.stop_token_ids = tokenIds(body.stop_token_ids, 'stop_token_ids', true);
  }
  if (body.kv_transfer !== undefined && body.kv_transfer !== null)
    req.kv_transfer = kvTransfer(body.kv_transfer);
  if (body.first_token !== undefined && body.first_token !== null) {
    req.first_token = tokenIds([body.first_token], 'first_token', false)[0]!;
  }
  if (body.await_kv_handoff !== undefined && body.await_kv_handoff !== null) {
    const wait = body.await_kv_handoff;
    if (!isObject(wait)) throw invalid(`'await_kv_handoff' must be an object`, 'await_kv_handoff');
    const timeout = integer(
      required(wait, 'timeout_ms', 'await_kv_handoff.'),
      'await_kv_handoff.timeout_ms',
      1,
    );
    req.await_kv_handoff = { timeout_ms: timeout };
  }
  return req;
}

export function parseKvHandoff(payload: Uint8Array): KvHandoffRequest {
  const body = parseObject(payload, 'kv_handoff');
  const handoff: KvHandoffRequest = { request_id: string(required(body, 'request_id', ''), 'request_id') };
  if (body.prefill !== undefined && body.prefill !== null) {
    const prefill = body.prefill;
    if (!isObject(prefill)) throw invalid(`'prefill' must be an object`, 'prefill');
    handoff.prefill = {
      first_token: tokenIds([required(prefill, 'first_token', 'prefill.')], 'prefill.first_token', false)[0]!,
      kv_transfer: kvTransfer(required(prefill, 'kv_transfer', 'prefill.')),
    };
  }
  return handoff;
}

export function parseKvEventsSubscribe(payload: Uint8Array): KvEventsSubscribe {
  const body = parseObject(payload, 'kv_events');
  const after = body.after_event_id ?? 0;
  return { after_event_id: integer(after, 'after_event_id', 0) };
}
