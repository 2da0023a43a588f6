// Payloads of the request-plane endpoints a worker serves (CONTRACT.md §3 frames; JSON payloads).
// Shared by the router (client side) and the workers (server side): one definition, no drift.

import type { U64String } from './kv-events.js';

export const ENDPOINTS = {
  prefill: 'prefill',
  generate: 'generate',
  kvEvents: 'kv_events',
  load: 'load',
  health: 'health',
  /** Engine accounting (computed, cached, transferred tokens) for tests and operators: src/worker/stats.ts. */
  stats: 'stats',
  /** Overlapped prefill: the router hands a prefilled prompt's KV to a waiting `generate` (src/decode/handoff-board.ts). */
  kvHandoff: 'kv_handoff',
} as const;

/** Body of `prefill`: compute the prompt's KV and the first token. */
export interface PrefillRequest {
  request_id: string;
  token_ids: number[];
  /** Always 1 for remote prefill. */
  max_tokens?: number;
}

/** What the decode side needs to take over a prefilled prompt. */
export interface KvTransferParams {
  prefill_worker_id: string;
  block_size: number;
  /** Full blocks whose KV was transferred (the prompt's leading full blocks). */
  transferred_blocks: number;
  /** Sequence hashes of the transferred blocks, in order, so the receiver can verify and install them. */
  block_hashes: U64String[];
  /** Prompt tokens the prefill worker found already cached. */
  cached_tokens: number;
}

/** Single answer of `prefill`. */
export interface PrefillResponse {
  first_token: number;
  prompt_tokens: number;
  cached_tokens: number;
  kv_transfer: KvTransferParams;
}

/** Body of `generate`: stream output tokens. */
export interface GenerateRequest {
  request_id: string;
  token_ids: number[];
  max_tokens: number;
  stop_token_ids?: number[];
  /** Present when a prefill worker already computed the prompt: install these blocks, do not recompute. */
  kv_transfer?: KvTransferParams;
  /** The first token produced by remote prefill; it is emitted first and counts toward max_tokens. */
  first_token?: number;
  /** Overlapped prefill: wait up to timeout_ms for a `kv_handoff` with this request_id before starting. */
  await_kv_handoff?: { timeout_ms: number };
}

/**
 * KV blocks a `generate` holds for its whole life: its prompt and up to max_tokens of output, in
 * blocks of the worker's block_size (a partial last block is a whole one). The worker's engine
 * reserves this many at admission and refuses a request whose count exceeds its pool; the
 * router's scheduler counts the same to send a request only to a worker whose pool holds it.
 */
export function sequenceBlockCount(promptTokens: number, maxTokens: number, blockSize: number): number {
  return Math.ceil((promptTokens + maxTokens) / blockSize);
}

/** Body of `kv_handoff`: what a `generate` waiting with `await_kv_handoff` starts from. */
export interface KvHandoffRequest {
  request_id: string;
  /** The remote prefill's result. Absent: the remote leg failed, prefill the prompt locally. */
  prefill?: { first_token: number; kv_transfer: KvTransferParams };
}

/** Answer of `kv_handoff`: `waiting` = a generate was waiting for it; `held` = it arrived first and is kept for it. */
export interface KvHandoffResponse {
  delivered: 'waiting' | 'held';
}

/** One chunk of a `generate` stream. The first chunk carries the prompt accounting. */
export interface GenerateChunk {
  token_ids: number[];
  finish_reason: null | 'length' | 'stop';
  prompt_tokens?: number;
  /** Prompt tokens not computed here: found in the local cache or installed from a transfer. */
  cached_tokens?: number;
}

/** Answer of `load`. */
export interface LoadReport {
  active_prefill_tokens: number;
  active_decode_blocks: number;
  used_blocks: number;
  total_blocks: number;
  running: number;
  waiting: number;
}

/** Answer of `health`. */
export interface HealthReport {
  ok: boolean;
  worker_id: string | null;
  role: string;
}
