// The `stats` endpoint's answer: the engine's accounting (what was computed, found cached, or
// installed from transfers) plus pool and subscription figures. For tests and operators; the
// router's scheduling uses `load`.

import type { MockEngine } from '../engine/index.js';

export interface WorkerStats {
  requests: number;
  finished: number;
  cancelled: number;
  rejected: number;
  prompt_tokens: number;
  /** Prompt tokens found in this worker's prefix cache. */
  cached_tokens: number;
  /** Prompt tokens installed from kv_transfer (not computed here). */
  transferred_tokens: number;
  installed_blocks: number;
  /** Prompt tokens prefilled here. */
  computed_tokens: number;
  generated_tokens: number;
  steps: number;
  busy_ms: number;
  cached_blocks: number;
  used_blocks: number;
  total_blocks: number;
  last_event_id: number;
  kv_event_subscribers: number;
  /** Overlapped-prefill generates waiting for their kv_handoff. */
  handoffs_waiting: number;
}

export function workerStats(
  engine: MockEngine,
  kvEventSubscribers: number,
  handoffsWaiting = 0,
): WorkerStats {
  const t = engine.totals();
  return {
    requests: t.requests,
    finished: t.finished,
    cancelled: t.cancelled,
    rejected: t.rejected,
    prompt_tokens: t.promptTokens,
    cached_tokens: t.cachedTokens,
    transferred_tokens: t.transferredTokens,
    installed_blocks: t.installedBlocks,
    computed_tokens: t.computedTokens,
    generated_tokens: t.generatedTokens,
    steps: t.steps,
    busy_ms: t.busyMs,
    cached_blocks: engine.pool.cachedBlocks,
    used_blocks: engine.pool.usedBlocks,
    total_blocks: engine.pool.capacity,
    last_event_id: engine.events.lastEventId,
    kv_event_subscribers: kvEventSubscribers,
    handoffs_waiting: handoffsWaiting,
  };
}
