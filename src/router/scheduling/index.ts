// The scheduler's public surface: import from here.

export { createPolicy, DEFAULT_SCHEDULER_CONFIG, resolveSchedulerConfig } from './create-policy.js';
export { decisionError } from './decision-error.js';
export { decodeOverlapWeight } from './decode-weight.js';
export { seededRng } from './rng.js';
export {
  type Candidate,
  type CandidateScore,
  type NoWorkersDecision,
  type OverlapSource,
  type OverloadedDecision,
  POLICY_NAMES,
  type PolicyName,
  type ResolvedSchedulerConfig,
  type Rng,
  type RouteDecision,
  type RouteRequest,
  type RoutingPolicy,
  type SchedulerConfig,
  type SelectedDecision,
  type TooLargeDecision,
} from './types.js';
