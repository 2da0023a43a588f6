// Turns one policy's replayed requests into the figures the replay bench reports: TTFT and
// inter-token latency distributions, output throughput, KV hit rate, load spread over workers and
// in-flight requests per worker over time. Pure: records in, summary out.

import type { CompletionTiming } from './completion-stream.js';
import { coefficientOfVariation, type Distribution, distribution, extent, round } from './stats.js';

export interface ReplayRecord {
  /** ms from the replay's start to sending the request. */
  sentAt: number;
  timing: CompletionTiming;
}

export interface WorkerLoad {
  worker: string;
  requests: number;
  promptTokens: number;
}

export interface LoadTimeline {
  /** Sample times, ms from the replay's start. */
  times: number[];
  /** Per worker, requests in flight at each sample time. */
  inFlight: Record<string, number[]>;
}

export interface PolicySummary {
  requests: number;
  completed: number;
  errors: number;
  errorSamples: string[];
  /** Requests whose prompt was prefilled on another worker than the decode worker (x-kvroute-prefill-worker). */
  remotePrefills: number;
  /** Wall time from the first send to the last answer, ms. */
  durationMs: number;
  ttftMs: Distribution;
  /** Per request: (last content chunk − first) / (completion tokens − 1), for requests with ≥ 2 tokens. */
  itlMs: Distribution;
  outputTokens: number;
  outputTokensPerS: number;
  promptTokens: number;
  cachedTokens: number;
  /** cached_tokens / prompt_tokens over completed requests. */
  kvHitRate: number;
  perWorker: WorkerLoad[];
  /** Coefficient of variation (stddev / mean) of requests per worker. */
  cvRequests: number;
  cvPromptTokens: number;
  timeline: LoadTimeline;
}

/** Summarises one policy's run. `workers` lists every registered worker, so idle ones count as 0. */
export function summarizeReplay(
  records: readonly ReplayRecord[],
  workers: readonly string[],
  timelineSamples = 60,
): PolicySummary {
  const completed = records.filter((r) => r.timing.ok);
  const failed = records.filter((r) => !r.timing.ok);
  const ttft = completed.flatMap((r) => (r.timing.ttftMs === undefined ? [] : [r.timing.ttftMs]));
  const itl = completed.flatMap((r) => {
    const n = r.timing.completionTokens ?? 0;
    return n >= 2 && r.timing.decodeMs !== undefined ? [r.timing.decodeMs / (n - 1)] : [];
  });
  let outputTokens = 0;
  let promptTokens = 0;
  let cachedTokens = 0;
  const load = new Map<string, WorkerLoad>(
    workers.map((w) => [w, { worker: w, requests: 0, promptTokens: 0 }]),
  );
  for (const { timing } of completed) {
    outputTokens += timing.completionTokens ?? 0;
    promptTokens += timing.promptTokens ?? 0;
    cachedTokens += timing.cachedTokens ?? 0;
  }
  for (const { timing } of records) {
    if (timing.decodeWorker === undefined) continue;
    let w = load.get(timing.decodeWorker);
    if (!w) {
      w = { worker: timing.decodeWorker, requests: 0, promptTokens: 0 };
      load.set(timing.decodeWorker, w);
    }
    w.requests++;
    w.promptTokens += timing.promptTokens ?? 0;
  }
  const start = extent(records.map((r) => r.sentAt))?.min ?? 0;
  const end = extent(records.map((r) => r.sentAt + r.timing.totalMs))?.max ?? 0;
  const durationMs = end - start;
  const perWorker = [...load.values()].sort((a, b) =>
    a.worker.localeCompare(b.worker, 'en', { numeric: true }),
  );
  return {
    requests: records.length,
    completed: completed.length,
    errors: failed.length,
    remotePrefills: records.filter(
      (r) => r.timing.prefillWorker !== undefined && r.timing.prefillWorker !== r.timing.decodeWorker,
    ).length,
    errorSamples: [...new Set(failed.map((r) => r.timing.error ?? 'unknown error'))].slice(0, 5),
    durationMs: round(durationMs, 1),
    ttftMs: distribution(ttft),
    itlMs: distribution(itl, 3),
    outputTokens,
    outputTokensPerS: durationMs > 0 ? round((outputTokens * 1000) / durationMs, 1) : 0,
    promptTokens,
    cachedTokens,
    kvHitRate: promptTokens > 0 ? round(cachedTokens / promptTokens, 4) : 0,
    perWorker,
    cvRequests: round(coefficientOfVariation(perWorker.map((w) => w.requests)), 4),
    cvPromptTokens: round(coefficientOfVariation(perWorker.map((w) => w.promptTokens)), 4),
    timeline: loadTimeline(
      records,
      perWorker.map((w) => w.worker),
      start,
      end,
      timelineSamples,
    ),
  };
}

/** Requests in flight per worker at `samples` evenly spaced times over [start, end]. */
export function loadTimeline(
  records: readonly ReplayRecord[],
  workers: readonly string[],
  start: number,
  end: number,
  samples: number,
): LoadTimeline {
  const times = Array.from({ length: samples }, (_, i) =>
    round(start + ((end - start) * i) / Math.max(1, samples - 1), 1),
  );
  const inFlight: Record<string, number[]> = {};
  for (const w of workers) inFlight[w] = new Array<number>(samples).fill(0);
  for (const { sentAt, timing } of records) {
    const row = timing.decodeWorker === undefined ? undefined : inFlight[timing.decodeWorker];
    if (!row) continue;
    const finish = sentAt + timing.totalMs;
    for (let i = 0; i < samples; i++) if (times[i]! >= sentAt && times[i]! < finish) row[i]!++;
  }
  return { times, inFlight };
}

/** The replay's goals: kv's mean TTFT at most a third of round-robin's, its hit rate at least 2×. */
export const REPLAY_GOALS = { kvMeanTtftOverRoundRobinAtMost: 1 / 3, kvHitRateOverRoundRobinAtLeast: 2 };

/**
 * kv against round-robin, and whether the goals are met (null without both policies). Means and
 * hit rates cover completed requests only, so a policy that failed requests would be judged on
 * the ones it did not fail (one that failed every request read a mean TTFT of 0): the goals are
 * met only when both policies completed all `requests`. `incomplete` names every policy that did
 * not complete them all, compared or not, so the bench can say whose figures leave requests out.
 */
export function judgeReplay<R extends { policy: string; summary: PolicySummary }>(
  runs: readonly R[],
  requests: number,
) {
  const kv = runs.find((r) => r.policy === 'kv')?.summary;
  const rr = runs.find((r) => r.policy === 'round-robin')?.summary;
  const comparison =
    kv && rr
      ? {
          kvMeanTtftOverRoundRobin: rr.ttftMs.mean > 0 ? round(kv.ttftMs.mean / rr.ttftMs.mean, 3) : null,
          kvHitRateOverRoundRobin: rr.kvHitRate > 0 ? round(kv.kvHitRate / rr.kvHitRate, 2) : null,
        }
      : null;
  const incomplete = runs.filter((r) => r.summary.errors > 0 || r.summary.completed < requests);
  const met =
    comparison && kv
      ? incomplete.some((r) => r.policy === 'kv' || r.policy === 'round-robin')
        ? { ttft: false, hitRate: false }
        : {
            ttft:
              comparison.kvMeanTtftOverRoundRobin !== null &&
              comparison.kvMeanTtftOverRoundRobin <= REPLAY_GOALS.kvMeanTtftOverRoundRobinAtMost,
            hitRate:
              comparison.kvHitRateOverRoundRobin === null
                ? kv.kvHitRate > 0
                : comparison.kvHitRateOverRoundRobin >= REPLAY_GOALS.kvHitRateOverRoundRobinAtLeast,
          }
      : null;
  return { comparison, goals: REPLAY_GOALS, met, incomplete };
}
