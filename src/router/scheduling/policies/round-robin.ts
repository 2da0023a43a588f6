// `round-robin`: the next candidate after the last one chosen, skipping busy ones and those whose
// pool cannot hold the request. The cursor is
// a position in the candidate list (registration order), the policy's only state; candidate lists
// of different sizes (models, phases) share it, which still spreads each list evenly enough.

import { definePolicy } from '../policy-base.js';
import type { ResolvedSchedulerConfig, RoutingPolicy } from '../types.js';

export function createRoundRobinPolicy(config: ResolvedSchedulerConfig): RoutingPolicy {
  let cursor = 0;
  return definePolicy('round-robin', config, (table) => {
    const n = table.count;
    const start = cursor % n;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      if (table.isEligible(i)) {
        cursor = i + 1;
        return i;
      }
    }
    // Unreachable: the base hands over at least one eligible candidate.
    throw new Error('round-robin: no eligible candidate');
  });
}
