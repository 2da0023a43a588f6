// The two ways a policy turns scores into one choice: the lowest value with ties broken at
// random, or a softmax draw over normalised costs. Both look only at eligible (not busy)
// candidates and cost O(eligible).

import type { ScoreField, ScoreTable } from './score.js';
import type { Rng } from './types.js';

/** Values this close (relative) count as a tie: equal costs reached by different float paths. */
const TIE_EPSILON = 1e-9;

/**
 * Index of the eligible candidate with the lowest `field`; ties pick uniformly at random (one rng
 * call). A NaN never beats a number; when no value is below +Infinity, any eligible one may be chosen.
 */
export function pickLowest(table: ScoreTable, field: ScoreField, rng: Rng): number {
  const { eligible, eligibleCount } = table;
  const values = table[field];
  let min = Number.POSITIVE_INFINITY;
  let first = -1;
  let ties = 0;
  for (let k = 0; k < eligibleCount; k++) {
    const v = values[eligible[k]!]!;
    if (v < min) {
      min = v;
      first = k;
    }
  }
  // Nothing below +Infinity (figures that overflowed or are NaN): all are equally bad, and a
  // choice must still be an eligible candidate (first = -1 would select none).
  if (first === -1) return eligible[uniformIndex(eligibleCount, rng)]!;
  const limit = min + TIE_EPSILON * Math.max(1, Math.abs(min));
  for (let k = 0; k < eligibleCount; k++) if (values[eligible[k]!]! <= limit) ties++;
  if (ties === 1) return eligible[first]!;
  // Walk to the chosen tie instead of collecting them: no allocation on the hot path.
  let nth = uniformIndex(ties, rng);
  for (let k = 0; k < eligibleCount; k++) {
    if (values[eligible[k]!]! <= limit && nth-- === 0) return eligible[k]!;
  }
  return eligible[first]!;
}

/**
 * Softmax draw over costs. Costs are first normalised to [0, 1] across the eligible candidates,
 * n = (cost − min) / (max − min), so the temperature means the same at any load level; each
 * candidate then weighs exp(−n / temperature): the cheapest weighs 1, the dearest exp(−1/T).
 * All costs equal → uniform.
 */
export function pickSoftmax(table: ScoreTable, temperature: number, rng: Rng): number {
  const { eligible, eligibleCount, cost } = table;
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (let k = 0; k < eligibleCount; k++) {
    const c = cost[eligible[k]!]!;
    if (c < min) min = c;
    if (c > max) max = c;
  }
  const range = max - min;
  if (!(range > 0)) return eligible[uniformIndex(eligibleCount, rng)]!;
  const weights = new Float64Array(eligibleCount);
  let total = 0;
  for (let k = 0; k < eligibleCount; k++) {
    const w = Math.exp(-(cost[eligible[k]!]! - min) / range / temperature);
    weights[k] = w;
    total += w;
  }
  let r = rng() * total;
  for (let k = 0; k < eligibleCount; k++) {
    r -= weights[k]!;
    if (r < 0) return eligible[k]!;
  }
  // Float rounding left r at ~0: the last positive weight takes it.
  for (let k = eligibleCount - 1; k >= 0; k--) if (weights[k]! > 0) return eligible[k]!;
  return eligible[0]!;
}

export function uniformIndex(n: number, rng: Rng): number {
  const k = Math.floor(rng() * n);
  return k < n ? k : n - 1;
}
