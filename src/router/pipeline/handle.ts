// One inference request through the whole pipeline:
//   parse -> route (tokenize, hash, match, select) -> admit (book) -> execute -> respond -> finish
// The first chunk is awaited before anything is sent, so every failure up to the first token
// (including retries on other workers) is an ordinary HTTP error with its status, and the
// response headers can name the worker that actually serves the request.

import { randomUUID } from 'node:crypto';
import { type Span, trace } from '@opentelemetry/api';
import { isKvrouteError, KvrouteError } from '../../errors.js';
import type { GenerateChunk } from '../../protocols/worker-plane.js';
import { bindIterableToCurrentContext, isSpanContextValid, recordFailure } from '../../telemetry/index.js';
import { PREFILL_LEG_OUTPUT_TOKENS } from '../disagg/index.js';
import type { RequestAbort } from '../execute/request-abort.js';
import type { ExecutionContext, ExecutionPlan } from '../execute/types.js';
import { failureKind } from '../execute/worker-call.js';
import type { EndpointKind } from '../openai/request.js';
import { type ResponseIdentity, responseId } from '../openai/response.js';
import { Admission, type InflightLimit } from './admission.js';
import type { PipelineDeps } from './deps.js';
import { collectBody, StreamTally, sseEvents } from './respond.js';
import { parseStage, routeStage, selectDecode } from './route.js';

export interface InferenceCall {
  body: unknown;
  endpoint: EndpointKind;
  /** Aborts when the client disconnects or the router shuts down. */
  abort: RequestAbort;
  /** Arrival time (performance.now ms) for TTFT. */
  arrivedAt: number;
  /** The HTTP request's x-request-id: sent to every worker hop (frame header, span attribute). */
  requestId?: string;
}

export type InferenceResult =
  | { kind: 'json'; headers: Record<string, string>; body: object }
  | {
      kind: 'sse';
      headers: Record<string, string>;
      events: AsyncIterable<string>;
      /**
       * Ends the request as `events` would have, for a stream that may never be read: call it when
       * the HTTP stream closes. A no-op once the request has finished.
       */
      abandon(err: unknown): void;
    };

/** Renders any error as the body of an SSE error event. */
export function errorEventBody(err: unknown): object {
  const e = err instanceof KvrouteError ? err : new KvrouteError('internal_error', String(err));
  return e.toJSON();
}

export async function handleInference(
  deps: PipelineDeps,
  limit: InflightLimit,
  call: InferenceCall,
): Promise<InferenceResult> {
  const request = parseStage(deps, call.body, call.endpoint);
  // Bookings and worker request ids need a unique key; a client may reuse its x-request-id.
  const requestId = randomUUID();
  const routed = routeStage(deps, request, requestId, call.requestId ?? requestId, call.abort);
  const plan = routed instanceof Promise ? await routed : routed;
  const admission = Admission.admit(deps.fleet, limit, plan);
  const span = trace.getActiveSpan();
  const tally = new StreamTally(plan.routing.promptTokens, deps.tokenizer.decodeStream(), request.stop);
  let lastChunkAt = 0;
  let ttftMs: number | undefined;
  let finished = false;
  // `rethrown`: the error goes on to the HTTP error handler, which records it on the span (once).
  // Once per request: the SSE events' own end and `abandon` may both report it.
  const finish = (err: unknown, rethrown = false) => {
    if (finished) return;
    finished = true;
    admission.release();
    deps.metrics.promptTokens.inc(tally.promptTokens);
    deps.metrics.cachedTokens.inc(tally.cachedTokens);
    // One attribute write for the whole request, and none when the span does not record.
    if (span?.isRecording()) {
      span.setAttributes({
        'kvroute.model': request.model,
        'kvroute.decode_worker_id': plan.decode.worker.id,
        'kvroute.prefill_worker_id': plan.prefill?.worker.id,
        'kvroute.prompt_tokens': tally.promptTokens,
        'kvroute.cached_tokens': tally.cachedTokens,
        'kvroute.completion_tokens': tally.completionTokens,
        'kvroute.ttft_ms': ttftMs,
        'kvroute.outcome': err === undefined ? 'ok' : 'error',
      });
      if (err !== undefined && !rethrown) {
        // Mid-stream (the status line is gone): the failure is the span's to tell. A client that
        // left is a cancellation, not a failure of the request (outcome becomes `cancelled`).
        if (isKvrouteError(err) && err.code === 'client_closed') span.recordException(err);
        else recordFailure(span, err);
      }
    }
  };
  const onChunk = () => {
    const now = performance.now();
    deps.metrics.itl.observe((now - lastChunkAt) / 1000);
    lastChunkAt = now;
  };

  let chunks: AsyncIterator<GenerateChunk>;
  let firstText: string;
  try {
    const executor = plan.prefill ? deps.executors.disaggregated : deps.executors.aggregated;
    if (!executor) throw new KvrouteError('internal_error', 'no executor for remote prefill');
    chunks = executor
      .run(plan, executionContext(deps, plan, admission, call.abort, span))
      [Symbol.asyncIterator]();
    const first = await chunks.next();
    if (first.done) throw new KvrouteError('worker_error', 'worker ended the stream without output');
    lastChunkAt = performance.now();
    ttftMs = lastChunkAt - call.arrivedAt;
    deps.metrics.ttft.observe(ttftMs / 1000);
    admission.firstToken();
    firstText = tally.add(first.value);
  } catch (err) {
    finish(err, true);
    throw err;
  }

  const headers: Record<string, string> = { 'x-kvroute-decode-worker': plan.decode.worker.id };
  if (plan.prefill) headers['x-kvroute-prefill-worker'] = plan.prefill.worker.id;
  const who: ResponseIdentity = {
    id: responseId(call.endpoint, requestId),
    created: Math.floor(Date.now() / 1000),
    model: request.model,
  };
  if (!request.stream) {
    try {
      const body = await collectBody(call.endpoint, who, tally, firstText, chunks, onChunk);
      finish(undefined);
      return { kind: 'json', headers, body };
    } catch (err) {
      finish(err, true);
      await chunks.return?.();
      throw err;
    }
  }
  const events = sseEvents(
    {
      endpoint: call.endpoint,
      who,
      includeUsage: request.includeUsage,
      onChunk,
      onEnd: finish,
      errorBody: errorEventBody,
    },
    tally,
    firstText,
    chunks,
  );
  // The HTTP layer's stream pulls these from its own callbacks: every step stays in this request's
  // trace. A request without one (tracing off, no traceparent) has nothing to keep: no context
  // switch per chunk there.
  const traced = span !== undefined && isSpanContextValid(span.spanContext());
  return {
    kind: 'sse',
    headers,
    events: traced ? bindIterableToCurrentContext(events) : events,
    // A generator closed before its first step never runs its finally: without this, a stream the
    // HTTP layer drops unread (fastify does when the client left before the reply was sent) would
    // keep its in-flight slot and bookings forever, and its worker stream open.
    abandon: (err) => {
      if (finished) return;
      finish(err);
      void chunks.return?.();
    },
  };
}

function executionContext(
  deps: PipelineDeps,
  plan: ExecutionPlan,
  admission: Admission,
  abort: RequestAbort,
  /** The request's `http-request` span: retries are events on it. */
  span: Span | undefined,
): ExecutionContext {
  const { config } = deps;
  /**
   * A retry on another worker (either leg): counted, an event on the request's span, and a log
   * line at info (`--verbose`): with tracing off, the only place that names the worker it left.
   */
  const countRetry = (
    leg: 'decode' | 'prefill',
    cause: unknown,
    failedWorker: string,
    worker: string,
    attempt: number,
  ) => {
    const reason = failureKind(cause);
    const message = cause instanceof Error ? cause.message : String(cause);
    deps.metrics.retries.inc({ reason });
    deps.log.info(
      {
        event: 'request_retried',
        request_id: plan.httpRequestId,
        leg,
        reason,
        failed_worker_id: failedWorker,
        worker_id: worker,
        attempt,
        error: message,
      },
      'request retried on another worker',
    );
    if (span?.isRecording()) {
      span.addEvent('retry', {
        'kvroute.retry.reason': reason,
        'kvroute.retry.failed_worker_id': failedWorker,
        'kvroute.retry.worker_id': worker,
        'kvroute.retry.attempt': attempt,
        'exception.message': message,
      });
    }
  };
  return {
    abort,
    client: deps.client,
    metrics: deps.metrics,
    log: deps.log,
    maxAttempts: config.maxAttempts,
    firstTokenTimeoutMs: config.firstTokenTimeoutMs,
    streamIdleTimeoutMs: config.streamIdleTimeoutMs,
    prefillWaitMs: config.prefillWaitMs,
    rerouteDecode(exclude, cause) {
      // The overlaps read at routing time may be stale by now: read the index again.
      plan.routing.overlaps = deps.fleet.overlaps(plan.routing.keys);
      const failedWorker = plan.decode.worker.id;
      const decision = selectDecode(deps, plan.routing, exclude);
      admission.moveDecode(decision);
      countRetry('decode', cause, failedWorker, decision.worker.id, exclude.size + 1);
      return decision;
    },
    reroutePrefill(exclude, cause) {
      plan.routing.overlaps = deps.fleet.overlaps(plan.routing.keys);
      const candidates = deps.fleet.registry
        .candidates(plan.routing.model, 'prefill')
        .filter((w) => !exclude.has(w.id));
      const decision = deps.prefillPolicy.select({
        candidates,
        promptTokens: plan.routing.promptTokens,
        // As the first choice (prefill-planner.ts): the leg reserves prompt + 1 tokens of blocks.
        outputTokens: PREFILL_LEG_OUTPUT_TOKENS,
        overlaps: plan.routing.overlaps,
      });
      if (decision.outcome !== 'selected') return null;
      const failedWorker = plan.prefill?.worker.id ?? '';
      admission.movePrefill(decision);
      countRetry('prefill', cause, failedWorker, decision.worker.id, exclude.size + 1);
      return decision;
    },
    recordWorkerCall: (workerId, failure) => deps.fleet.recordCall(workerId, failure),
    prefillDone: () => admission.prefillDone(),
    prefillOnDecode: () => admission.movePrefill(null),
  };
}
