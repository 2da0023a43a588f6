// `least-loaded`: the worker with the least current load (active prefill tokens / blockSize +
// active decode blocks), ignoring the cache. Ties break at random.

import { pickLowest } from '../pick.js';
import { definePolicy } from '../policy-base.js';
import type { ResolvedSchedulerConfig, RoutingPolicy } from '../types.js';

export function createLeastLoadedPolicy(config: ResolvedSchedulerConfig): RoutingPolicy {
  const { rng } = config;
  return definePolicy('least-loaded', config, (table) => pickLowest(table, 'load', rng));
}
