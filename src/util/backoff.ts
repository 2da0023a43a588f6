// Capped exponential backoff with full jitter: attempt n waits a uniform random time in
// [0, min(cap, base·2^n)], so callers that failed together (workers that lost the router,
// the router's KV-event subscribers, kv_handoff redeliveries) do not retry in lockstep.

export interface BackoffPolicy {
  baseMs: number;
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 100, capMs: 5_000 };

/** Delay before retry number `attempt` (0-based); `random` in [0, 1). Never below 1 ms. */
export function backoffDelay(attempt: number, policy: BackoffPolicy, random: number): number {
  const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(1, Math.round(ceiling * random));
}
