// `random`: uniform over the eligible candidates (not busy, pool large enough). A baseline for benchmarks.

import { uniformIndex } from '../pick.js';
import { definePolicy } from '../policy-base.js';
import type { ResolvedSchedulerConfig, RoutingPolicy } from '../types.js';

export function createRandomPolicy(config: ResolvedSchedulerConfig): RoutingPolicy {
  const { rng } = config;
  return definePolicy('random', config, (table) => table.eligible[uniformIndex(table.eligibleCount, rng)]!);
}
