// Scores every candidate of one request in a single pass: overlap, the KV cost's two terms, the
// plain load, and the busy verdict. Shared by all policies so that every decision explains itself
// the same way whatever the policy minimises. O(candidates), one overlap lookup each.

import { KvrouteError } from '../../errors.js';
import type { Candidate, CandidateScore, ResolvedSchedulerConfig, RouteRequest } from './types.js';

export interface ScoredRequest {
  overlapWeight: number;
  /** One score per candidate, in order. */
  scores: CandidateScore[];
  /** Indices of the candidates that are not busy, in order. */
  eligible: number[];
}

function badRequest(message: string): KvrouteError {
  return new KvrouteError('internal_error', `scheduler: ${message}`);
}

export function scoreCandidates<C extends Candidate>(
  request: RouteRequest<C>,
  config: ResolvedSchedulerConfig,
): ScoredRequest {
  const { promptTokens, overlaps } = request;
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
  const sequenceBlocks = Math.ceil((promptTokens + outputTokens) / bs);
  const { busyPrefillTokens, busyDecodeFraction } = config;
  const candidates = request.candidates;
  const n = candidates.length;
  const scores = new Array<CandidateScore>(n);
  const eligible: number[] = [];
  for (let i = 0; i < n; i++) {
    const c = candidates[i]!;
    let overlapBlocks = overlaps === undefined ? 0 : (overlaps.get(c.id) ?? 0);
    if (overlapBlocks > fullPromptBlocks) overlapBlocks = fullPromptBlocks;
    else if (!(overlapBlocks > 0)) overlapBlocks = 0;
    const cachedTokens = overlapBlocks * bs;
    const uncachedTokens = promptTokens - cachedTokens;
    const newBlocks = sequenceBlocks - overlapBlocks;
    const activePrefill = c.load.activePrefillTokens;
    const activeDecode = c.load.activeDecodeBlocks;
    const prefillBlocks = (activePrefill + uncachedTokens) / bs;
    const decodeBlocks = activeDecode + newBlocks;
    const busy = activePrefill > busyPrefillTokens || activeDecode > busyDecodeFraction * c.kvBlocks;
    scores[i] = {
      workerId: c.id,
      overlapBlocks,
      cachedTokens,
      uncachedTokens,
      newBlocks,
      prefillBlocks,
      decodeBlocks,
      cost: overlapWeight * prefillBlocks + decodeBlocks,
      load: activePrefill / bs + activeDecode,
      busy,
    };
    if (!busy) eligible.push(i);
  }
  return { overlapWeight, scores, eligible };
}
