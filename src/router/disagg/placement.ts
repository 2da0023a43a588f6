// Conditional disaggregation: whether a request's prompt is prefilled on a prefill worker
// ("remote") or by the decode worker itself ("local"). Pure: it reads the two scheduler decisions
// the pipeline already made and returns the placement with the one reason that decided it.

import type { Candidate, RouteDecision, SelectedDecision } from '../scheduling/index.js';

export type PrefillPlacement = 'remote' | 'local';

/**
 * The output tokens of a prefill leg (its `max_tokens`: the first token only). A prefill worker's
 * engine reserves `sequenceBlockCount(prompt, 1, blockSize)` blocks for it, so prefill selection
 * passes this as `outputTokens`: a worker whose pool is smaller would refuse the leg.
 */
export const PREFILL_LEG_OUTPUT_TOKENS = 1;

/**
 * Why a placement was chosen (the `reason` label of `kvroute_disagg_decisions_total`).
 * - `no_prefill_workers`: no prefill-capable worker is registered for the model.
 * - `prefill_pool_too_small`: no prefill worker's KV pool can hold the prompt (it would refuse the
 *   prefill); the decode worker, chosen because its pool holds the whole request, prefills it.
 * - `prefill_busy`: every prefill-capable worker is over a busy threshold.
 * - `same_worker`: the best prefill candidate is the decode worker itself (role `both`).
 * - `short_prompt`: the uncached part on the best prefill candidate is under `maxLocalPrefill`.
 * - `cached_on_decode`: the decode worker would compute fewer than `maxLocalPrefill` tokens itself.
 * - `long_prompt`: none of the above: a prefill worker computes the prompt.
 */
export type PlacementReason =
  | 'no_prefill_workers'
  | 'prefill_pool_too_small'
  | 'prefill_busy'
  | 'same_worker'
  | 'short_prompt'
  | 'cached_on_decode'
  | 'long_prompt';

export type PlacementDecision<C extends Candidate = Candidate> =
  | { placement: 'remote'; reason: 'long_prompt'; prefill: SelectedDecision<C> }
  | { placement: 'local'; reason: Exclude<PlacementReason, 'long_prompt'>; prefill: null };

export interface PlacementInput<C extends Candidate = Candidate> {
  /** `select` over the prefill-capable candidates (KV-aware), with outputTokens 1 (the prefill leg's max_tokens). */
  prefill: RouteDecision<C>;
  /** The decode worker already chosen. */
  decode: SelectedDecision<C>;
  /** Prompts whose uncached part is shorter than this many tokens are prefilled locally (default 512). */
  maxLocalPrefill: number;
}

/**
 * The rules, in order (first match wins):
 * 1. no prefill-capable worker → local `no_prefill_workers`
 * 2. no prefill worker's pool holds the prompt → local `prefill_pool_too_small`
 * 3. every prefill worker whose pool holds it busy → local `prefill_busy`
 * 4. best prefill candidate is the decode worker → local `same_worker`
 * 5. uncached tokens on the best prefill candidate < maxLocalPrefill → local `short_prompt`
 * 6. uncached tokens on the decode worker < maxLocalPrefill → local `cached_on_decode`
 * 7. otherwise → remote `long_prompt`
 * O(1).
 */
export function decidePlacement<C extends Candidate>(input: PlacementInput<C>): PlacementDecision<C> {
  const { prefill, decode, maxLocalPrefill } = input;
  if (prefill.outcome === 'no_workers') return local('no_prefill_workers');
  if (prefill.outcome === 'too_large') return local('prefill_pool_too_small');
  if (prefill.outcome === 'overloaded') return local('prefill_busy');
  if (prefill.worker.id === decode.worker.id) return local('same_worker');
  if (prefill.chosen.uncachedTokens < maxLocalPrefill) return local('short_prompt');
  if (decode.chosen.uncachedTokens < maxLocalPrefill) return local('cached_on_decode');
  return { placement: 'remote', reason: 'long_prompt', prefill };
}

function local<C extends Candidate>(reason: Exclude<PlacementReason, 'long_prompt'>): PlacementDecision<C> {
  return { placement: 'local', reason, prefill: null };
}
