// The one factory: a typed config in, a RoutingPolicy out. Defaults and validation live here so
// every policy sees the same resolved config.

import { KvrouteError } from '../../errors.js';
import { createKvPolicy } from './policies/kv.js';
import { createLeastLoadedPolicy } from './policies/least-loaded.js';
import { createRandomPolicy } from './policies/random.js';
import { createRoundRobinPolicy } from './policies/round-robin.js';
import {
  POLICY_NAMES,
  type PolicyName,
  type ResolvedSchedulerConfig,
  type RoutingPolicy,
  type SchedulerConfig,
} from './types.js';

export const DEFAULT_SCHEDULER_CONFIG = {
  overlapWeight: 1,
  temperature: 0,
  busyPrefillTokens: 65_536,
  busyDecodeFraction: 0.95,
  retryAfterSeconds: 1,
} as const;

const FACTORIES: Record<PolicyName, (config: ResolvedSchedulerConfig) => RoutingPolicy> = {
  kv: createKvPolicy,
  'round-robin': createRoundRobinPolicy,
  random: createRandomPolicy,
  'least-loaded': createLeastLoadedPolicy,
};

function check(ok: boolean, message: string): void {
  if (!ok) throw new KvrouteError('internal_error', `scheduler config: ${message}`);
}

export function resolveSchedulerConfig(config: SchedulerConfig): ResolvedSchedulerConfig {
  const resolved: ResolvedSchedulerConfig = {
    ...DEFAULT_SCHEDULER_CONFIG,
    rng: Math.random,
    ...Object.fromEntries(Object.entries(config).filter(([, v]) => v !== undefined)),
  } as ResolvedSchedulerConfig;
  check(POLICY_NAMES.includes(resolved.policy), `policy must be one of ${POLICY_NAMES.join('|')}`);
  check(
    Number.isInteger(resolved.blockSize) && resolved.blockSize > 0,
    'blockSize must be a positive integer',
  );
  check(Number.isFinite(resolved.overlapWeight) && resolved.overlapWeight >= 0, 'overlapWeight must be >= 0');
  check(Number.isFinite(resolved.temperature) && resolved.temperature >= 0, 'temperature must be >= 0');
  check(resolved.busyPrefillTokens >= 0, 'busyPrefillTokens must be >= 0');
  check(resolved.busyDecodeFraction >= 0, 'busyDecodeFraction must be >= 0');
  check(resolved.retryAfterSeconds >= 0, 'retryAfterSeconds must be >= 0');
  check(typeof resolved.rng === 'function', 'rng must be a function');
  return resolved;
}

/** Builds the configured policy. Each call makes an independent instance (own round-robin cursor). */
export function createPolicy(config: SchedulerConfig): RoutingPolicy {
  const resolved = resolveSchedulerConfig(config);
  return FACTORIES[resolved.policy](resolved);
}
