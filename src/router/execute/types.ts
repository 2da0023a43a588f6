// The seam between routing and running. The pipeline decides WHERE (an ExecutionPlan: the decode
// worker, optionally a remote prefill worker) and books load; an Executor decides HOW to run the
// plan over the request plane and streams the worker's GenerateChunks back. The aggregated
// executor (one `generate` on the decode worker) and the disaggregated one (prefill, then
// generate with kv_transfer) implement the same interface; `plan.prefill` picks between them.

import type { FastifyBaseLogger } from 'fastify';
import type { BlockKeys } from '../../kv-index/index.js';
import type { GenerateChunk } from '../../protocols/worker-plane.js';
import type { RequestPlaneClient } from '../../tcp/index.js';
import type { RouterMetrics } from '../metrics.js';
import type { Worker } from '../registry/index.js';
import type { OverlapSource, SelectedDecision } from '../scheduling/index.js';
import type { RequestAbort } from './request-abort.js';

/** A scheduler decision whose candidate is a registered worker. */
export type WorkerDecision = SelectedDecision<Worker>;

/** What routing knows about one request, handed to the prefill planner and kept on the plan. */
export interface RoutingInput {
  model: string;
  /** Prompt token ids (as the worker receives them). */
  tokenIds: number[];
  /** Local block keys of the prompt (`localBlockKeys`), for the index and approximate crediting. */
  keys: BlockKeys;
  /** Leading cached blocks per worker, read before the index next changes. */
  overlaps: OverlapSource;
  promptTokens: number;
  /** max_tokens: the output the request may produce. */
  outputTokens: number;
}

/** Where a request runs. Open for extension: executors read only what they need. */
export interface ExecutionPlan {
  /** The router's own id: booking key and the workers' `request_id`. Unique (a UUID). */
  requestId: string;
  /** The caller's `x-request-id` (or a generated one): the frame header on every worker hop, logs, spans. */
  httpRequestId: string;
  routing: RoutingInput;
  maxTokens: number;
  stopTokenIds: number[];
  /** The worker that streams the output. Replaced in place when a retry moves the request. */
  decode: WorkerDecision;
  /** A separate worker computing the prompt first; null or absent = the decode worker prefills. */
  prefill?: WorkerDecision | null;
  /** Why prefill is (or is not) remote: `aggregated`, `short_prompt`, ... (metrics label). */
  prefillReason: string;
}

/** Decides remote vs local prefill after the decode worker is chosen. Must book nothing. */
export interface PrefillPlanner {
  choosePrefill(
    routing: RoutingInput,
    decode: WorkerDecision,
  ): { prefill: WorkerDecision | null; reason: string };
}

/** What an executor may use besides the plan. One per request. */
export interface ExecutionContext {
  /** Aborts when the client goes away, the request times out or the router shuts down. */
  readonly abort: RequestAbort;
  /** The router's one request-plane client. */
  readonly client: RequestPlaneClient;
  readonly metrics: RouterMetrics;
  /** Where a retry or a fallback says so (at info: `--verbose`), naming the workers, for an operator without traces. */
  readonly log: Pick<FastifyBaseLogger, 'info'>;
  /** Attempts per request across workers (1 = no retry). */
  readonly maxAttempts: number;
  /** Bound on waiting for a worker's first chunk (each attempt). */
  readonly firstTokenTimeoutMs: number;
  /** Bound on the silence between two chunks of a running stream. */
  readonly streamIdleTimeoutMs: number;
  /** How long decode may wait for a KV handoff from remote prefill. */
  readonly prefillWaitMs: number;
  /**
   * A retry: chooses another decode worker avoiding `exclude`, moves the request's booking there
   * and sets `plan.decode`; counts the retry (`kvroute_request_retries_total`, reason from `cause`)
   * and records it as a `retry` event on the request's span. Throws the scheduler's KvrouteError
   * (503) when no other worker can take it: then nothing is counted, no retry happened.
   */
  rerouteDecode(exclude: ReadonlySet<string>, cause: unknown): WorkerDecision;
  /**
   * Same for the prefill leg: another prefill worker avoiding `exclude`, its booking moved there
   * and `plan.prefill` set, the retry counted and recorded as for decode. Null, changing nothing,
   * when no other prefill worker can take it (the caller then falls back).
   */
  reroutePrefill(exclude: ReadonlySet<string>, cause: unknown): WorkerDecision | null;
  /**
   * The outcome of one call to a worker, for its health (outlier ejection): no `failure` when its
   * first chunk or answer came; else a failure `isWorkerFault` counts.
   */
  recordWorkerCall(workerId: string, failure?: unknown): void;
  /** The prefill leg is over (handoff done or abandoned): release its booking. */
  prefillDone(): void;
  /**
   * The remote prefill is given up (fallback): the decode worker computes the prompt. Sets
   * `plan.prefill` to null and books the decode worker for the whole prompt instead of its tail.
   */
  prefillOnDecode(): void;
}

/** Runs a plan. The first chunk carries prompt accounting; the stream ends after finish_reason. */
export interface Executor {
  run(plan: ExecutionPlan, ctx: ExecutionContext): AsyncIterable<GenerateChunk>;
}
