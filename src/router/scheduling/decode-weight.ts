// The disaggregated flow's rule for picking a decode worker: by load (overlap weight 0), unless a
// decode candidate already holds part of the prompt, in which case the configured weight applies
// so that holder is favoured. Pass the result as RouteRequest.overlapWeight.

import type { Candidate, OverlapSource } from './types.js';

/** `overlapWeight` when some candidate holds at least one prompt block, else 0. O(candidates). */
export function decodeOverlapWeight(
  candidates: readonly Candidate[],
  overlaps: OverlapSource | undefined,
  overlapWeight: number,
): number {
  if (overlaps === undefined) return 0;
  for (const c of candidates) if ((overlaps.get(c.id) ?? 0) > 0) return overlapWeight;
  return 0;
}
