// The disaggregated executor: runs a plan whose prompt is prefilled on a separate prefill worker.
//
// Sequential (default): the prefill leg runs as a SPAWNED task (detached from the HTTP handler's
// promise chain, inside the request's trace context) sending `prefill` with max_tokens 1; its
// answer (first token + kv_transfer) is handed to the decode worker's `generate`.
// Overlapped (`--overlapped-prefill`): `generate` goes out at once with `await_kv_handoff`, the
// prefill leg runs concurrently, and its answer travels to the decode worker as `kv_handoff`. Both
// sides bound the wait by `prefillWaitMs`; when either leg fails, the other is cancelled.
//
// A prefill leg that the prefill worker refused or never got (unreachable, overloaded) moves to
// another prefill worker when one is left. One that fails otherwise before the handoff
// (connect_failed, remote_error, timeout, disconnect), or with no other prefill worker left,
// falls back to prefilling on the decode worker, counted in `kvroute_prefill_fallbacks_total` and
// marked on the request's span — unless `--enforce-disagg`, which makes it a 502/504. In
// overlapped mode a leg that does not answer within the bound fails the request (504): the decode
// worker's own bound has run out too. Plans without a remote prefill go to the `local` executor.

import { type Tracer, trace } from '@opentelemetry/api';
import { isKvrouteError, KvrouteError } from '../../errors.js';
import {
  ENDPOINTS,
  type GenerateChunk,
  type GenerateRequest,
  type KvHandoffRequest,
  type PrefillRequest,
  type PrefillResponse,
} from '../../protocols/worker-plane.js';
import { decodeJson, encodeJson, isTransportError, type TransportError } from '../../tcp/index.js';
import { recordFailure, spawnInCurrentContext } from '../../telemetry/index.js';
import { type BackoffPolicy, backoffDelay } from '../../util/backoff.js';
import {
  checkPrefillAnswer,
  enforcedDisaggError,
  type FallbackReason,
  fallbackReason,
  PREFILL_LEG_OUTPUT_TOKENS,
  reusedPromptTokens,
} from '../disagg/index.js';
import { generateBody } from './aggregated.js';
import { type AbortListener, RequestAbort } from './request-abort.js';
import type { ExecutionContext, ExecutionPlan, Executor, WorkerDecision } from './types.js';
import { callGenerate, failureKind, isRetryable, isWorkerFault, toClientError } from './worker-call.js';

export interface DisaggregatedExecutorDeps {
  /** The router's tracer (`telemetry.tracer`). */
  tracer: Tracer;
  /** Runs plans without a remote prefill, and the local fallback (the aggregated executor). */
  local: Executor;
  /** Start decode while prefill runs (`--overlapped-prefill`). */
  overlapped: boolean;
  /** A failed remote prefill fails the request instead of falling back (`--enforce-disagg`). */
  enforceDisagg: boolean;
}

/** Span attributes and event names this executor writes (docs/disaggregation.md). */
export const DISAGG_ATTR = {
  prefillWorker: 'kvroute.prefill.worker_id',
  fallback: 'kvroute.prefill.fallback',
  fallbackEvent: 'prefill_fallback',
  handoffRedeliveryEvent: 'kv_handoff_redelivery',
  handoffReason: 'kvroute.handoff.reason',
  handoffWorker: 'kvroute.handoff.worker_id',
  handoffAttempt: 'kvroute.handoff.attempt',
} as const;

/**
 * Pauses before delivering a kv_handoff again to a worker it never reached: short (the generate
 * there is waiting), growing, and random so that a crowded worker is not hit by every request's
 * redelivery at once.
 */
const HANDOFF_REDELIVERY_BACKOFF: BackoffPolicy = { baseMs: 10, capMs: 200 };

/** A refusal by the worker's request plane that the same call would get again (not_found, payload_too_large). */
function refusedForGood(err: TransportError): boolean {
  return (
    err.kind === 'remote_error' && (err.remoteCode === 'not_found' || err.remoteCode === 'payload_too_large')
  );
}

export class DisaggregatedExecutor implements Executor {
  constructor(private readonly deps: DisaggregatedExecutorDeps) {}

  run(plan: ExecutionPlan, ctx: ExecutionContext): AsyncIterable<GenerateChunk> {
    const prefill = plan.prefill;
    if (!prefill) return this.deps.local.run(plan, ctx);
    return this.deps.overlapped ? this.overlapped(plan, prefill, ctx) : this.sequential(plan, prefill, ctx);
  }

  private async *sequential(
    plan: ExecutionPlan,
    prefill: WorkerDecision,
    ctx: ExecutionContext,
  ): AsyncGenerator<GenerateChunk> {
    let remote: PrefillResponse | null = null;
    let failure: { reason: FallbackReason; err: unknown } | null = null;
    try {
      // Spawned: the prefill call does not hang off the handler's promise chain, but its spans
      // are children of the request's (the context is captured here).
      remote = await spawnInCurrentContext(() =>
        this.prefillLeg(plan, prefill, ctx, ctx.abort.signal, ctx.firstTokenTimeoutMs),
      );
    } catch (err) {
      const reason = fallbackReason(err, ctx.abort.aborted);
      if (reason === null) throw cancelled(ctx.abort, err);
      failure = { reason, err };
    } finally {
      ctx.prefillDone();
    }
    if (failure) {
      this.fallBack(plan, prefill, failure.reason, failure.err, ctx);
      yield* this.deps.local.run(plan, ctx);
      return;
    }
    const handoff = remote as PrefillResponse;
    yield* this.generate(
      plan,
      ctx,
      { kv_transfer: handoff.kv_transfer, first_token: handoff.first_token },
      handoff,
    );
  }

  private async *overlapped(
    plan: ExecutionPlan,
    prefill: WorkerDecision,
    ctx: ExecutionContext,
  ): AsyncGenerator<GenerateChunk> {
    const waitMs = ctx.prefillWaitMs;
    // The end of the decode worker's wait for the handoff (its generate goes out now): no
    // redelivery starts after it.
    const redeliverBy = performance.now() + waitMs;
    const decodeAbort = new RequestAbort();
    const prefillAbort = new AbortController();
    const callerAbort: AbortListener = {
      onAbort: () => {
        // Keep the router's reason (client gone, shutting down) so the client sees it.
        decodeAbort.abort(ctx.abort.reason);
        prefillAbort.abort(ctx.abort.reason);
      },
    };
    if (ctx.abort.aborted) throw cancelled(ctx.abort, undefined);
    ctx.abort.listen(callerAbort);
    // The generate moves to another decode worker only when nothing can be waiting there for the
    // handoff: it never reached its worker (a refused or failed connection, or one gone before any
    // answer, which ends a wait), or the worker refused it as overloaded (draining, or its
    // --max-waiting taken), which a worker says before the generate waits. So any retryable
    // failure moves it (isRetryable, in generate()). The handoff follows it (below): each move is
    // counted and wakes the delivery.
    let decodeMoves = 0;
    let wakeDelivery: (() => void) | undefined;
    const onDecodeMoved = () => {
      decodeMoves++;
      wakeDelivery?.();
    };
    /**
     * Resolves once the generate has moved since `movesBefore`, the decode leg has ended, or (when
     * given) `pauseMs` have passed.
     */
    const movedOrEnded = (movesBefore: number, pauseMs?: number) =>
      new Promise<void>((resolve) => {
        let timer: NodeJS.Timeout | undefined;
        const wake = () => {
          clearTimeout(timer);
          decodeAbort.unlisten(ended);
          resolve();
        };
        const ended: AbortListener = { onAbort: wake };
        wakeDelivery = wake;
        decodeAbort.listen(ended);
        if (decodeAbort.aborted || decodeMoves !== movesBefore) wake();
        else if (pauseMs !== undefined) timer = setTimeout(wake, pauseMs);
      });
    // What made the prefill side fail the request (it then cancels the decode leg).
    let legError: KvrouteError | undefined;
    let remote: PrefillResponse | null = null;
    // The decode leg runs under its own signal (cancelled when the prefill side fails) and waits
    // for its first chunk through the handoff bound plus the usual first-token bound.
    const decodeCtx: ExecutionContext = {
      ...ctx,
      abort: decodeAbort,
      firstTokenTimeoutMs: waitMs + ctx.firstTokenTimeoutMs,
    };
    const chunks = this.generate(
      plan,
      decodeCtx,
      { await_kv_handoff: { timeout_ms: waitMs } },
      () => remote,
      onDecodeMoved,
    );
    // Starts the decode stream now (the request-plane client dials on the first next()).
    const first = chunks.next();
    first.catch(() => {});

    const prefillSide = spawnInCurrentContext(async () => {
      let handoff: KvHandoffRequest = { request_id: plan.requestId };
      try {
        // The router's side of the bound: the prefill answer is this call's first response.
        remote = await this.prefillLeg(plan, prefill, ctx, prefillAbort.signal, waitMs);
        handoff = {
          request_id: plan.requestId,
          prefill: { first_token: remote.first_token, kv_transfer: remote.kv_transfer },
        };
      } catch (err) {
        const reason = fallbackReason(err, ctx.abort.aborted || prefillAbort.signal.aborted);
        if (reason === null) return;
        if (reason === 'timeout') {
          legError = new KvrouteError(
            'timeout',
            `remote prefill on ${(plan.prefill ?? prefill).worker.id} did not answer within --prefill-wait-ms (${waitMs} ms)`,
            { cause: err },
          );
        } else {
          try {
            this.fallBack(plan, prefill, reason, err, ctx);
          } catch (enforced) {
            legError = enforced as KvrouteError;
          }
        }
        if (legError) {
          decodeAbort.abort();
          return;
        }
      } finally {
        ctx.prefillDone();
      }
      // To the worker the generate is on when it is sent, and again wherever the generate moves
      // afterwards (until the decode leg ends): both legs may fail to reach a gone worker, in
      // either order, and a generate cut off before its first answer moves after its handoff was
      // delivered.
      let deliveries = 0;
      for (;;) {
        const target = plan.decode.worker;
        const movesBefore = decodeMoves;
        deliveries++;
        try {
          await ctx.client.unary(target.address, ENDPOINTS.kvHandoff, encodeJson(handoff), {
            requestId: plan.httpRequestId,
            signal: decodeAbort.signal,
            firstResponseTimeoutMs: waitMs,
          });
        } catch (err) {
          if (decodeAbort.aborted) return;
          // A delivery that reached the worker and failed there fails the request, and so does
          // one its plane refused for good (no such endpoint, a payload over its limit): the same
          // handoff would be refused again, and the generate waiting there never moves.
          if (
            decodeMoves === movesBefore &&
            !(isTransportError(err) && err.retryable && !refusedForGood(err))
          ) {
            legError = toClientError(err, decodeAbort);
            decodeAbort.abort();
            return;
          }
          // One that never reached it: the generate sent there may be waiting for it (the
          // worker's plane refused the call, a connection of the pool failed) or about to fail
          // the same way and move (the worker is gone). Delivered again after a short pause, or
          // at once to where the generate moves meanwhile, while the worker's wait has time left;
          // after that the generate's own bound ends the request. A redelivery of one that did
          // arrive (its answer lost with the connection) is only held there, unclaimed.
          if (decodeMoves === movesBefore) {
            const pauseMs = backoffDelay(deliveries - 1, HANDOFF_REDELIVERY_BACKOFF, Math.random());
            if (performance.now() + pauseMs < redeliverBy) {
              const reason = failureKind(err);
              ctx.metrics.handoffRedeliveries.labels(reason).inc();
              trace.getActiveSpan()?.addEvent(DISAGG_ATTR.handoffRedeliveryEvent, {
                [DISAGG_ATTR.handoffReason]: reason,
                [DISAGG_ATTR.handoffWorker]: target.id,
                [DISAGG_ATTR.handoffAttempt]: deliveries + 1,
                'exception.message': (err as Error)?.message ?? String(err),
              });
              await movedOrEnded(movesBefore, pauseMs);
              if (decodeAbort.aborted) return;
              continue;
            }
          }
        }
        await movedOrEnded(movesBefore);
        if (decodeAbort.aborted) return;
      }
    });
    prefillSide.catch(() => {});
    // What ends the request when decode fails: the prefill leg's own failure, else decode's. A
    // decode worker that got no handoff in time answers `timeout`: the prefill worker's fault (it
    // is still computing, or hung), charged to it, since ending the request cancels its leg.
    const decodeFailure = (err: unknown): unknown => {
      if (legError !== undefined) return legError;
      const failure = handoffTimeout(err, waitMs);
      if (failure !== err && plan.prefill) ctx.recordWorkerCall(plan.prefill.worker.id, failure);
      return failure;
    };

    try {
      let result: IteratorResult<GenerateChunk>;
      try {
        result = await first;
      } catch (err) {
        throw decodeFailure(err);
      }
      while (!result.done) {
        yield result.value;
        try {
          result = await chunks.next();
        } catch (err) {
          throw decodeFailure(err);
        }
      }
    } finally {
      ctx.abort.unlisten(callerAbort);
      // Whatever ended the stream (done, failure, the consumer stopping), the other leg stops too.
      prefillAbort.abort();
      decodeAbort.abort();
      await chunks.return(undefined).catch(() => {});
    }
  }

  /**
   * The prefill leg: `prefill` on `first`, moved to another prefill worker (`plan.prefill` then
   * names it) while the failure is safe to retry (the worker computed nothing: unreachable,
   * refused, or overloaded, as a draining one answers), another is left, and maxAttempts allows.
   * All attempts share one bound of `timeoutMs`. Throws the last failure.
   */
  private async prefillLeg(
    plan: ExecutionPlan,
    first: WorkerDecision,
    ctx: ExecutionContext,
    signal: AbortSignal,
    timeoutMs: number,
  ): Promise<PrefillResponse> {
    const deadline = performance.now() + timeoutMs;
    const failed = new Set<string>();
    let prefill = first;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.remotePrefill(
          plan,
          prefill,
          ctx,
          signal,
          Math.max(1, deadline - performance.now()),
        );
      } catch (err) {
        if (signal.aborted || !isRetryable(err) || attempt >= ctx.maxAttempts) throw err;
        failed.add(prefill.worker.id);
        const next = ctx.reroutePrefill(failed, err);
        if (next === null) throw err;
        prefill = next;
      }
    }
  }

  /** One `prefill` call on the prefill worker, in its own `remote_prefill` span. */
  private remotePrefill(
    plan: ExecutionPlan,
    prefill: WorkerDecision,
    ctx: ExecutionContext,
    signal: AbortSignal,
    timeoutMs: number,
  ): Promise<PrefillResponse> {
    const worker = prefill.worker;
    return this.deps.tracer.startActiveSpan(
      'remote_prefill',
      { attributes: { [DISAGG_ATTR.prefillWorker]: worker.id, 'kvroute.request_id': plan.httpRequestId } },
      async (span) => {
        try {
          const body: PrefillRequest = {
            request_id: plan.requestId,
            token_ids: plan.routing.tokenIds,
            max_tokens: PREFILL_LEG_OUTPUT_TOKENS,
          };
          const answer = await ctx.client.unary(worker.address, ENDPOINTS.prefill, encodeJson(body), {
            requestId: plan.httpRequestId,
            signal,
            firstResponseTimeoutMs: timeoutMs,
          });
          // Checked against this prompt: a wrong answer is the worker's fault (an invalid_answer
          // fallback), not the client's 400 the decode worker would answer it with.
          const res = checkPrefillAnswer(
            decodeJson<unknown>(answer),
            plan.routing.tokenIds,
            plan.decode.worker.blockSize,
            worker.id,
          );
          span.setAttributes({
            'kvroute.prefill.cached_tokens': res.cached_tokens,
            'kvroute.prefill.transferred_blocks': res.kv_transfer.transferred_blocks,
          });
          ctx.recordWorkerCall(worker.id);
          return res;
        } catch (err) {
          // The client leaving (or the router shutting down) cancels the leg; it did not fail.
          // Marked as handle_payload marks it, so the trace tells a cancel from a failure.
          if (ctx.abort.aborted) span.setAttribute('kvroute.cancelled', true);
          else {
            recordFailure(span, err);
            if (!signal.aborted && isWorkerFault(err)) ctx.recordWorkerCall(worker.id, err);
          }
          throw err;
        } finally {
          span.end();
        }
      },
    );
  }

  /**
   * The remote leg failed before the handoff: count it, mark the request's span, and make the plan
   * local — or, under --enforce-disagg, throw the 502/504 instead.
   */
  private fallBack(
    plan: ExecutionPlan,
    prefill: WorkerDecision,
    reason: FallbackReason,
    err: unknown,
    ctx: ExecutionContext,
  ): void {
    // The worker that failed last: plan.prefill after a retry on another one.
    const failedWorker = (plan.prefill ?? prefill).worker.id;
    if (this.deps.enforceDisagg) throw enforcedDisaggError(reason, failedWorker, err);
    ctx.metrics.prefillFallbacks.labels(reason).inc();
    const message = (err as Error)?.message ?? String(err);
    ctx.log.info(
      {
        event: 'prefill_fallback',
        request_id: plan.httpRequestId,
        reason,
        prefill_worker_id: failedWorker,
        decode_worker_id: plan.decode.worker.id,
        error: message,
      },
      'remote prefill failed: the decode worker prefills',
    );
    const span = trace.getActiveSpan();
    span?.addEvent(DISAGG_ATTR.fallbackEvent, {
      reason,
      [DISAGG_ATTR.prefillWorker]: failedWorker,
      'exception.message': message,
    });
    span?.setAttribute(DISAGG_ATTR.fallback, reason);
    ctx.prefillOnDecode();
    plan.prefillReason = `fallback_${reason}`;
  }

  /**
   * `generate` on the decode worker, retried on another decode worker (same kv_transfer: the blocks
   * are named by hash) while nothing was received and the failure is safe to retry. The first
   * chunk's cached_tokens is rewritten to what was reused (src/router/disagg/cached-tokens.ts): the
   * transferred blocks are not reuse.
   */
  private async *generate(
    plan: ExecutionPlan,
    ctx: ExecutionContext,
    extra: Partial<GenerateRequest>,
    remote: PrefillResponse | null | (() => PrefillResponse | null),
    /** Told after each move to another decode worker (plan.decode is the new one). */
    onMoved?: () => void,
  ): AsyncGenerator<GenerateChunk> {
    const body: GenerateRequest = { ...generateBody(plan), ...extra };
    const failed = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const worker = plan.decode.worker;
      let received = false;
      try {
        for await (const chunk of callGenerate(ctx, worker, body, plan.httpRequestId)) {
          if (!received && chunk.cached_tokens !== undefined) {
            const prefilled = typeof remote === 'function' ? remote() : remote;
            chunk.cached_tokens = reusedPromptTokens(prefilled, chunk.cached_tokens);
          }
          received = true;
          yield chunk;
        }
        return;
      } catch (err) {
        if (received || ctx.abort.aborted || !isRetryable(err) || attempt >= ctx.maxAttempts) {
          throw toClientError(err, ctx.abort);
        }
        failed.add(worker.id);
        try {
          ctx.rerouteDecode(failed, err);
        } catch {
          // No other decode worker can take it: the client hears about the failure itself (a 502
          // worker_disconnected, say), as in the aggregated executor, not the scheduler's 503
          // no_workers. Only a retry that happens is counted.
          throw toClientError(err, ctx.abort);
        }
        onMoved?.();
      }
    }
  }
}

/**
 * The decode worker's own bound on the handoff may fire before the router's (both are
 * `prefillWaitMs`): its `timeout` answer is the same 504, not a generic worker failure.
 */
function handoffTimeout(err: unknown, waitMs: number): unknown {
  const cause = err instanceof KvrouteError ? err.cause : err;
  if (isTransportError(cause) && cause.kind === 'remote_error' && cause.remoteCode === 'timeout') {
    return new KvrouteError(
      'timeout',
      `the decode worker got no KV handoff from remote prefill within --prefill-wait-ms (${waitMs} ms)`,
      { cause },
    );
  }
  return err;
}

/**
 * The error of a request its abort ended: the abort's own reason (client gone, or the router
 * shutting down: a 503 with Retry-After, not a 499 that blames the client), else client_closed.
 */
function cancelled(abort: RequestAbort, cause: unknown): KvrouteError {
  if (isKvrouteError(abort.reason)) return abort.reason;
  return new KvrouteError('client_closed', 'request was cancelled', { cause });
}
