// What every policy shares: score all candidates, answer `no_workers` for an empty set and
// `overloaded` when every candidate is busy, and otherwise let the policy pick one eligible index.
// A policy file therefore only states how it chooses.

import { scoreCandidates } from './score.js';
import type {
  Candidate,
  CandidateScore,
  PolicyName,
  ResolvedSchedulerConfig,
  RouteDecision,
  RouteRequest,
  RoutingPolicy,
} from './types.js';

/**
/** Picks one index of `scores` among `eligible` (never empty). */
export type Chooser = (scores: readonly CandidateScore[], eligible: readonly number[]) => number;

export function definePolicy(
  name: PolicyName,
  config: ResolvedSchedulerConfig,
  choose: Chooser,
): RoutingPolicy {
  return {
    name,
    config,
    select<C extends Candidate>(request: RouteRequest<C>): RouteDecision<C> {
      const { overlapWeight, scores, eligible } = scoreCandidates(request, config);
      const base = { policy: name, overlapWeight, candidates: scores };
      if (scores.length === 0) return { ...base, outcome: 'no_workers' };
      if (eligible.length === 0) {
        return { ...base, outcome: 'overloaded', retryAfterSeconds: config.retryAfterSeconds };
      }
      const index = choose(scores, eligible);
      const chosen = scores[index]!;
      return {
        ...base,
        outcome: 'selected',
        worker: request.candidates[index]!,
        chosen,
        booking: { prefillTokens: chosen.uncachedTokens, decodeBlocks: chosen.newBlocks },
      };
    },
  };
}
