// The two ways a policy turns scores into one choice: the lowest value with ties broken at
// random, or a softmax draw over normalised costs. Both look only at eligible (not busy)
// candidates and cost O(eligible).

import type { CandidateScore, Rng } from './types.js';

/** Values this close (relative) count as a tie: equal costs reached by different float paths. */
const TIE_EPSILON = 1e-9;

/** Index of the eligible candidate with the lowest `key`; ties pick uniformly at random (one rng call). */
export function pickLowest(
  scores: readonly CandidateScore[],
  eligible: readonly number[],
  key: 'cost' | 'load',
  rng: Rng,
): number {
  let min = Number.POSITIVE_INFINITY;
  for (const i of eligible) {
    const v = scores[i]![key];
    if (v < min) min = v;
  }
  const limit = min + TIE_EPSILON * Math.max(1, Math.abs(min));
  const tied: number[] = [];
  for (const i of eligible) if (scores[i]![key] <= limit) tied.push(i);
  return tied.length === 1 ? tied[0]! : tied[uniformIndex(tied.length, rng)]!;
}

/**
 * Softmax draw over costs. Costs are first normalised to [0, 1] across the eligible candidates,
 * n = (cost − min) / (max − min), so the temperature means the same at any load level; each
 * candidate then weighs exp(−n / temperature): the cheapest weighs 1, the dearest exp(−1/T).
 * All costs equal → uniform.
 */
export function pickSoftmax(
  scores: readonly CandidateScore[],
  eligible: readonly number[],
  temperature: number,
  rng: Rng,
): number {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (const i of eligible) {
    const c = scores[i]!.cost;
    if (c < min) min = c;
    if (c > max) max = c;
  }
  const range = max - min;
  if (!(range > 0)) return eligible[uniformIndex(eligible.length, rng)]!;
  const weights = new Float64Array(eligible.length);
  let total = 0;
  for (let k = 0; k < eligible.length; k++) {
    const w = Math.exp(-(scores[eligible[k]!]!.cost - min) / range / temperature);
    weights[k] = w;
    total += w;
  }
  let r = rng() * total;
  for (let k = 0; k < eligible.length; k++) {
    r -= weights[k]!;
    if (r < 0) return eligible[k]!;
  }
  // Float rounding left r at ~0: the last positive weight takes it.
  for (let k = eligible.length - 1; k >= 0; k--) if (weights[k]! > 0) return eligible[k]!;
  return eligible[0]!;
}

export function uniformIndex(n: number, rng: Rng): number {
  const k = Math.floor(rng() * n);
  return k < n ? k : n - 1;
}
