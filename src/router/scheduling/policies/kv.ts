// `kv` (default): the lowest KV cost, overlapWeight × prefillBlocks + decodeBlocks, so cached
// prefixes attract a request until the load they draw makes another worker cheaper. Ties break at
// random; with temperature > 0 a softmax draw spreads traffic over near-best workers.

import { pickLowest, pickSoftmax } from '../pick.js';
import { definePolicy } from '../policy-base.js';
import type { ResolvedSchedulerConfig, RoutingPolicy } from '../types.js';

export function createKvPolicy(config: ResolvedSchedulerConfig): RoutingPolicy {
  const { temperature, rng } = config;
  return definePolicy('kv', config, (table) =>
    temperature > 0 ? pickSoftmax(table, temperature, rng) : pickLowest(table, 'cost', rng),
  );
}
