// What every policy shares: score all candidates, answer `no_workers` for an empty set,
// `too_large` when no candidate's KV pool can hold the request, `overloaded` when every one that
// can is busy, and otherwise let the policy pick one eligible index (fits, not busy).
// A policy file therefore only states how it chooses.

import { type ScoreTable, scoreCandidates } from './score.js';
import type {
  Candidate,
  CandidateScore,
  PolicyName,
  ResolvedSchedulerConfig,
  RouteDecision,
  RouteRequest,
  RoutingPolicy,
} from './types.js';

/** Picks one candidate index among the table's eligible ones (there is at least one). */
export type Chooser = (table: ScoreTable) => number;

/**
 * The runtime shape of every RouteDecision. `candidates` is a prototype getter over the score
 * table, so the per-candidate objects are only built when explain or JSON.stringify asks.
 * (A getter in an object literal closes over the table and made V8 pretenure the table's columns
 * into old space: a full GC every ~300 decisions at 4,096 candidates.)
 */
class Decision {
  declare outcome: RouteDecision['outcome'];
  declare worker?: Candidate;
  declare chosen?: CandidateScore;
  declare booking?: { prefillTokens: number; decodeBlocks: number; contextBlocks: number };
  declare retryAfterSeconds?: number;
  declare requiredBlocks?: number;
  declare largestKvBlocks?: number;
  declare blockSize?: number;
  readonly policy: PolicyName;
  readonly overlapWeight: number;
  readonly candidateCount: number;
  readonly #table: ScoreTable;

  constructor(policy: PolicyName, table: ScoreTable) {
    this.policy = policy;
    this.overlapWeight = table.overlapWeight;
    this.candidateCount = table.count;
    this.#table = table;
  }

  get candidates(): CandidateScore[] {
    return this.#table.scores();
  }

  toJSON(): object {
    return { ...this, candidates: this.candidates };
  }
}

export function definePolicy(
  name: PolicyName,
  config: ResolvedSchedulerConfig,
  choose: Chooser,
): RoutingPolicy {
  return {
    name,
    config,
    select<C extends Candidate>(request: RouteRequest<C>): RouteDecision<C> {
      const table = scoreCandidates(request, config);
      const decision = new Decision(name, table);
      if (table.count === 0) {
        decision.outcome = 'no_workers';
      } else if (table.eligibleCount === 0 && !table.fits.includes(true)) {
        // Told apart from `overloaded` only here, off the selecting path: no scoring pass pays for it.
        decision.outcome = 'too_large';
        decision.requiredBlocks = table.sequenceBlocks;
        decision.largestKvBlocks = largestKvBlocks(request.candidates);
        decision.blockSize = config.blockSize;
      } else if (table.eligibleCount === 0) {
        decision.outcome = 'overloaded';
        decision.retryAfterSeconds = config.retryAfterSeconds;
      } else {
        const index = choose(table);
        const chosen = table.score(index);
        decision.outcome = 'selected';
        decision.worker = request.candidates[index]!;
        decision.chosen = chosen;
        decision.booking = {
          prefillTokens: chosen.uncachedTokens,
          decodeBlocks: chosen.newBlocks,
          contextBlocks: table.sequenceBlocks,
        };
      }
      return decision as unknown as RouteDecision<C>;
    },
  };
}

/** The largest pool among `candidates`, in blocks (0 for none; an unknown pool counts as none). */
function largestKvBlocks(candidates: readonly Candidate[]): number {
  let largest = 0;
  for (const c of candidates) if (c.kvBlocks > largest) largest = c.kvBlocks;
  return largest;
}
