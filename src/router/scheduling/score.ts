// Scores every candidate of one request in a single pass: overlap, the KV cost's two terms, the
// plain load, the busy verdict, and whether the worker's KV pool can hold the request at all.
// Shared by all policies so that every decision explains itself the same way whatever the policy
// minimises. O(candidates), one overlap lookup each.
//
// Figures go into number columns rather than an object per candidate: at 4,096 candidates the
// objects (and the garbage they leave) cost more than the arithmetic. `scores()` builds the
// CandidateScore objects on demand, for explain. The table is per call, never reused, so a
// decision stays valid after later selections.

import { KvrouteError } from '../../errors.js';
import { sequenceBlockCount } from '../../protocols/worker-plane.js';
import type { Candidate, CandidateScore, ResolvedSchedulerConfig, RouteRequest } from './types.js';

/** The columns a policy may minimise. */
export type ScoreField = 'cost' | 'load';

export class ScoreTable {
  /** Candidates scored. */
  readonly count: number;
  readonly overlapWeight: number;
  /** Column i of each holds candidate i's figure (see CandidateScore for their meaning). */
  readonly overlapBlocks: number[];
  readonly prefillBlocks: number[];
  readonly decodeBlocks: number[];
  readonly cost: number[];
  readonly load: number[];
  readonly busy: boolean[];
  readonly fits: boolean[];
  /** Indices of the candidates that fit and are not busy, in order; the first `eligibleCount` are valid. */
  readonly eligible: number[];
  eligibleCount = 0;
  /**
   * Blocks the whole sequence holds: sequenceBlockCount, ceil((prompt + output tokens) / blockSize),
   * the engine's own count of what it reserves at admission (it refuses a request whose count
   * exceeds its pool).
   */
  readonly sequenceBlocks: number;
  private readonly ids: string[];
  private readonly blockSize: number;
  private readonly promptTokens: number;
  private materialized: CandidateScore[] | undefined;

  constructor(
    ids: string[],
    overlapWeight: number,
    blockSize: number,
    promptTokens: number,
    sequenceBlocks: number,
  ) {
    this.count = ids.length;
    this.ids = ids;
    this.overlapWeight = overlapWeight;
    this.blockSize = blockSize;
    this.promptTokens = promptTokens;
    this.sequenceBlocks = sequenceBlocks;
    const n = this.count;
    this.overlapBlocks = new Array<number>(n);
    this.prefillBlocks = new Array<number>(n);
    this.decodeBlocks = new Array<number>(n);
    this.cost = new Array<number>(n);
    this.load = new Array<number>(n);
    this.busy = new Array<boolean>(n);
    this.fits = new Array<boolean>(n);
    this.eligible = new Array<number>(n);
  }

  /** Whether candidate i may be chosen: its pool holds the request and it is not busy. */
  isEligible(i: number): boolean {
    return this.fits[i]! && !this.busy[i]!;
  }

  /** Candidate i's figures as an object (what decisions report). */
  score(i: number): CandidateScore {
    const overlapBlocks = this.overlapBlocks[i]!;
    const cachedTokens = overlapBlocks * this.blockSize;
    return {
      workerId: this.ids[i]!,
      overlapBlocks,
      cachedTokens,
      uncachedTokens: this.promptTokens - cachedTokens,
      newBlocks: this.sequenceBlocks - overlapBlocks,
      prefillBlocks: this.prefillBlocks[i]!,
      decodeBlocks: this.decodeBlocks[i]!,
      cost: this.cost[i]!,
      load: this.load[i]!,
      busy: this.busy[i]!,
      fits: this.fits[i]!,
    };
  }

  /** Every candidate's figures, in order; built once, on first use. */
  scores(): CandidateScore[] {
    if (!this.materialized) {
      this.materialized = new Array<CandidateScore>(this.count);
      for (let i = 0; i < this.count; i++) this.materialized[i] = this.score(i);
    }
    return this.materialized;
  }
}

function badRequest(message: string): KvrouteError {
  return new KvrouteError('internal_error', `scheduler: ${message}`);
}

export function scoreCandidates<C extends Candidate>(
  request: RouteRequest<C>,
  config: ResolvedSchedulerConfig,
): ScoreTable {
  const { promptTokens, overlaps, candidates } = request;
  const outputTokens = request.outputTokens ?? 0;
  const overlapWeight = request.overlapWeight ?? config.overlapWeight;
  if (!(Number.isInteger(promptTokens) && promptTokens >= 0)) {
    throw badRequest(`promptTokens must be a non-negative integer, got ${promptTokens}`);
  }
  if (!(Number.isFinite(outputTokens) && outputTokens >= 0)) {
    throw badRequest(`outputTokens must be >= 0, got ${outputTokens}`);
  }
  if (!(Number.isFinite(overlapWeight) && overlapWeight >= 0)) {
    throw badRequest(`overlapWeight must be >= 0, got ${overlapWeight}`);
  }
  const bs = config.blockSize;
  // The index only counts full blocks of this prompt; clamp anyway so a stale answer cannot
  // produce negative work.
  const fullPromptBlocks = Math.floor(promptTokens / bs);
  // What the engine reserves for the request's whole life (one function for both): a worker whose
  // pool is smaller refuses it with context_length_exceeded, whatever its load.
  const sequenceBlocks = sequenceBlockCount(promptTokens, outputTokens, bs);
  const { busyPrefillTokens, busyDecodeFraction } = config;
  const n = candidates.length;
  const ids = new Array<string>(n);
  for (let i = 0; i < n; i++) ids[i] = candidates[i]!.id;
  const table = new ScoreTable(ids, overlapWeight, bs, promptTokens, sequenceBlocks);
  const { eligible } = table;
  let eligibleCount = 0;
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    let overlapBlocks = overlaps === undefined ? 0 : (overlaps.get(ids[i]!) ?? 0);
    if (overlapBlocks > fullPromptBlocks) overlapBlocks = fullPromptBlocks;
    else if (!(overlapBlocks > 0)) overlapBlocks = 0;
    const activePrefill = c.load.activePrefillTokens;
    const activeDecode = c.load.activeDecodeBlocks;
    const prefillBlocks = (activePrefill + promptTokens - overlapBlocks * bs) / bs;
    // The decode work running there (whole sequences: a shared prefix is read by each of them),
    // plus what this request adds. Counting only new blocks made the holder of a long shared
    // prefix look nearly idle however many of its requests it ran (scheduling README).
    const decodeBlocks = c.load.activeContextBlocks + sequenceBlocks - overlapBlocks;
    const busy = activePrefill > busyPrefillTokens || activeDecode > busyDecodeFraction * c.kvBlocks;
    // Written as "not more than" so that an unknown (NaN) pool does not exclude a worker.
    const fits = !(sequenceBlocks > c.kvBlocks);
    table.overlapBlocks[i] = overlapBlocks;
    table.prefillBlocks[i] = prefillBlocks;
    table.decodeBlocks[i] = decodeBlocks;
    table.cost[i] = overlapWeight * prefillBlocks + decodeBlocks;
    table.load[i] = activePrefill / bs + activeDecode;
    table.busy[i] = busy;
    table.fits[i] = fits;
    if (fits && !busy) eligible[eligibleCount++] = i;
  }
  table.eligibleCount = eligibleCount;
  return table;
}
