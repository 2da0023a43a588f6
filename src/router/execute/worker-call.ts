// Calling a worker's `generate` over the request plane, with the router's bounds: the first chunk
// within `firstTokenTimeoutMs` (the client's first-response timeout), and no silence longer than
// `streamIdleTimeoutMs` between chunks, counted while the router waits for one (not while a slow
// client holds the stream: that has its own bound, http/client-stall.ts), and no end before a
// chunk with a finish_reason (a stream cut short is a worker_error, not an end). Plus the one
// mapping from request-plane failures to the KvrouteError the client sees, and the rule for which
// failures may be retried elsewhere.

import { ERROR_CODES, isErrorCode, isKvrouteError, KvrouteError } from '../../errors.js';
import type { GenerateChunk, GenerateRequest } from '../../protocols/worker-plane.js';
import { ENDPOINTS } from '../../protocols/worker-plane.js';
import {
  type CallOptions,
  type ChunkStream,
  decodeJson,
  isTransportError,
  TransportError,
} from '../../tcp/index.js';
import { generatePayload } from './generate-payload.js';
import type { AbortListener } from './request-abort.js';
import type { ExecutionContext } from './types.js';

/**
 * Whether sending the request to another worker is safe and useful: the worker produced nothing
 * (refused, unreachable, gone before answering) or said it is overloaded.
 */
export function isRetryable(err: unknown): boolean {
  if (!isTransportError(err)) return false;
  return err.retryable || (err.kind === 'remote_error' && err.remoteCode === 'overloaded');
}

/**
 * Whether a failed call counts against the worker's health (outlier ejection, registry/
 * worker-health.ts): it did not answer in time, broke its stream or connection, stopped reading,
 * or answered an error that is neither the request's fault nor honest backpressure. Not: the
 * caller cancelling, `overloaded` and a refusal while shutting down (the worker said it is busy
 * or leaving, which load and deregistration handle), and errors a worker answers for the request
 * itself (a 4xx code of ours, such as context_length_exceeded).
 */
export function isWorkerFault(err: unknown): boolean {
  if (isKvrouteError(err)) return err.code === 'timeout' || err.code === 'worker_error';
  if (!isTransportError(err)) return false;
  switch (err.kind) {
    case 'cancelled':
      return false;
    case 'remote_error': {
      const code = err.remoteCode;
      // timeout: a worker answers it only for a KV handoff that did not come in time, the prefill
      // leg's fault (charged to the prefill worker, disaggregated.ts), not the decode worker's.
      if (code === 'overloaded' || code === 'shutting_down' || code === 'timeout') return false;
      // not_found: the worker lacks the endpoint (another build or role); unauthorized: it wants
      // another token. Both are the worker's, whatever status the code has for a client.
      if (code === 'not_found' || code === 'unauthorized') return true;
      return !(isErrorCode(code) && ERROR_CODES[code].status < 500);
    }
    default:
      return true;
  }
}

/**
 * The label for `kvroute_request_retries_total{reason}`: a transport error kind or one of our error
 * codes. A worker's error code outside ours is `remote_error`, so what a worker sends cannot grow
 * the label's values without bound.
 */
export function failureKind(err: unknown): string {
  if (isTransportError(err)) {
    if (err.kind !== 'remote_error') return err.kind;
    return isErrorCode(err.remoteCode) ? err.remoteCode : 'remote_error';
  }
  return isKvrouteError(err) ? err.code : 'error';
}

/** What the client sees for a failed worker call. An abort of the request keeps its reason. */
export function toClientError(
  err: unknown,
  signal: { readonly aborted: boolean; readonly reason: unknown },
): KvrouteError {
  if (signal.aborted && isKvrouteError(signal.reason)) return signal.reason;
  if (isKvrouteError(err)) return err;
  if (!isTransportError(err)) {
    return new KvrouteError('internal_error', `worker call failed: ${String(err)}`, { cause: err });
  }
  const options = { cause: err };
  switch (err.kind) {
    case 'timeout':
      return new KvrouteError('timeout', `worker did not answer in time: ${err.message}`, options);
    case 'disconnected_mid_stream':
    case 'disconnected_before_response':
    case 'connect_failed':
    // Not sent: the worker has not read what was sent before on any connection the pool may open.
    case 'peer_not_reading':
      return new KvrouteError('worker_disconnected', `worker connection failed: ${err.message}`, options);
    case 'remote_error': {
      // A worker's own KvrouteError code passes through when it is the caller's mistake or overload.
      // not_found is neither: only a worker's request plane says it, for an endpoint it lacks (a
      // worker of another build or role), which is no 404 of the client's.
      const code = err.remoteCode;
      // A worker shutting down refused the request before running it, like an overloaded one: the
      // client may retry at once (another worker takes it). Passed on as shutting_down it would say
      // that this router is stopping.
      if (code === 'shutting_down' && err.retryable) {
        return new KvrouteError('overloaded', `worker is shutting down: ${err.message}`, {
          ...options,
          retryAfterSeconds: 1,
        });
      }
      // The worker wants another worker token than this router's (or one when the router has
      // none): the router's setup, not the client's request, so no 401 for the client.
      if (code === 'unauthorized') {
        return new KvrouteError(
          'worker_error',
          "worker refused the router's request-plane call: its --worker-token (KVROUTE_WORKER_TOKEN) is not the router's",
          options,
        );
      }
      if (
        isErrorCode(code) &&
        code !== 'not_found' &&
        (ERROR_CODES[code].status < 500 || code === 'overloaded')
      ) {
        return new KvrouteError(code, `worker refused the request: ${err.message}`, {
          ...options,
          ...(code === 'overloaded' ? { retryAfterSeconds: 1 } : {}),
        });
      }
      return new KvrouteError('worker_error', `worker failed: ${err.message}`, options);
    }
    default:
      return new KvrouteError('worker_error', `worker call failed: ${err.message}`, options);
  }
}

/** The end of an iteration. */
export const DONE: IteratorResult<GenerateChunk> = Object.freeze({ value: undefined, done: true });

/**
 * Streams `generate` from one worker. Throws the raw TransportError (callers decide on retries),
 * or KvrouteError('timeout') when a pull waits longer than the idle bound for its chunk. Nothing
 * is sent until the first `next()`; `return()` cancels the remote stream. Its outcome counts for
 * `worker`'s health (by id: a worker registered later at the same address is another worker).
 */
export function callGenerate(
  ctx: ExecutionContext,
  worker: { readonly id: string; readonly address: string },
  body: GenerateRequest,
  requestId: string,
): AsyncIterableIterator<GenerateChunk> {
  return new GenerateCall(ctx, worker.id, worker.address, body, requestId);
}

/**
 * callGenerate's iterator. Written out rather than as an async generator over `for await`: each
 * chunk then costs the transport's promise and one `then`, instead of the ~5 promises a generator
 * layer adds per chunk (each also running the async-context promise hooks when tracing is on).
 */
class GenerateCall implements AsyncIterableIterator<GenerateChunk>, AbortListener {
  #chunks: ChunkStream | undefined;
  /** The idle bound's timer, armed at the first chunk (before it, the first-token bound rules). */
  #timer: NodeJS.Timeout | undefined;
  /**
   * When the pull now waiting on the transport began (performance.now()), or -1 while none waits.
   * Silence is time spent waiting for a chunk that does not come: a pull resolves as soon as a
   * chunk arrives (or at once when one is queued), so a pull waiting since T means nothing has
   * arrived since T. Time the consumer holds the stream (an HTTP client applying backpressure)
   * is not silence: chunks then queue until the request plane's credit window stops the worker,
   * which goes quiet because of us.
   */
  #waitingSince = -1;
  /** The idle bound ended the stream. */
  #idled = false;
  /** A chunk said why the output finished: only then may the stream end. */
  #finishedOutput = false;
  #done = false;

  constructor(
    private readonly ctx: ExecutionContext,
    private readonly workerId: string,
    private readonly address: string,
    private readonly body: GenerateRequest,
    private readonly requestId: string,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<GenerateChunk>> {
    if (this.#done) return Promise.resolve(DONE);
    try {
      this.#chunks ??= this.#start();
    } catch (err) {
      this.#finish();
      return Promise.reject(err);
    }
    // One clock read per pull, in place of the timer refresh per chunk this used to cost.
    this.#waitingSince = performance.now();
    return this.#chunks.next().then(this.#onChunk, this.#onError);
  }

  return(): Promise<IteratorResult<GenerateChunk>> {
    if (this.#done) return Promise.resolve(DONE);
    const cancelled = this.#chunks?.return?.();
    this.#finish();
    return cancelled ? cancelled.then(() => DONE) : Promise.resolve(DONE);
  }

  /**
   * The request's abort and the idle bound both cancel the stream through its handle: no
   * AbortSignal per call (an AbortController per call to carry both, and a signal listener in the
   * transport, cost ~3% of the router's CPU). A request aborted already goes to the transport as
   * a signal, which fails the call at once as before.
   */
  #start(): ChunkStream {
    const { ctx } = this;
    const { abort } = ctx;
    const options: CallOptions = abort.aborted
      ? { requestId: this.requestId, signal: abort.signal, firstResponseTimeoutMs: ctx.firstTokenTimeoutMs }
      : { requestId: this.requestId, firstResponseTimeoutMs: ctx.firstTokenTimeoutMs };
    const chunks = ctx.client
      .stream(this.address, ENDPOINTS.generate, generatePayload(this.body), options)
      [Symbol.asyncIterator]();
    abort.listen(this);
    return chunks;
  }

  /** The request aborted: cancel the stream as the transport does for a caller's signal. */
  onAbort(reason: unknown): void {
    this.#chunks?.cancel(
      new TransportError('cancelled', `call to '${ENDPOINTS.generate}' cancelled by the caller`, {
        cause: reason,
      }),
    );
  }

  /**
   * The idle bound's timer fired: if a pull has waited the whole bound, the stream fell silent and
   * this call is cancelled (only this call: the request's abort has already ended it). Otherwise
   * the timer is armed for the rest of the bound, counted from when the waiting pull began, or for
   * a whole bound when none waits. So a stream costs one timer per bound, not one re-arm per chunk.
   */
  readonly #onIdle = (): void => {
    if (this.ctx.abort.aborted) return;
    const bound = this.ctx.streamIdleTimeoutMs;
    const since = this.#waitingSince;
    const waited = since < 0 ? 0 : performance.now() - since;
    if (waited < bound) {
      if (since < 0) this.#timer!.refresh();
      else {
        this.#timer = setTimeout(this.#onIdle, Math.ceil(bound - waited));
        this.#timer.unref();
      }
      return;
    }
    this.#idled = true;
    // A timeout, not a cancel: the call failed (the client gets a 504), and its span says so.
    this.#chunks!.cancel(
      new TransportError('timeout', `call to '${ENDPOINTS.generate}' silent for ${bound} ms`),
    );
  };

  readonly #onChunk = (result: IteratorResult<Buffer>): IteratorResult<GenerateChunk> => {
    this.#waitingSince = -1;
    if (result.done) {
      this.#finish();
      if (this.#finishedOutput) return DONE;
      // A stream ended cleanly but cut short (a broken worker): passed on as an end, the client
      // would get a 200 with part of the output and no error.
      const cut = new KvrouteError(
        'worker_error',
        `worker ended '${ENDPOINTS.generate}' before a finish_reason`,
      );
      this.ctx.recordWorkerCall(this.workerId, cut);
      throw cut;
    }
    if (this.#timer === undefined) {
      // The first chunk: the worker answers (once per call, for its health).
      this.ctx.recordWorkerCall(this.workerId);
      this.#timer = setTimeout(this.#onIdle, this.ctx.streamIdleTimeoutMs);
      this.#timer.unref();
    }
    let chunk: GenerateChunk;
    try {
      chunk = decodeJson<GenerateChunk>(result.value);
    } catch (err) {
      // Cancel the remote stream as failed (its span records an error, not a cancel), then fail
      // with the same error: the worker broke the protocol (a 502, counted against it).
      const broken = new TransportError('protocol_error', `undecodable chunk from '${ENDPOINTS.generate}'`, {
        cause: err,
      });
      this.#chunks?.cancel(broken);
      throw this.#failure(broken);
    }
    if (chunk?.finish_reason) this.#finishedOutput = true;
    return { value: chunk, done: false };
  };

  readonly #onError = (err: unknown): never => {
    throw this.#failure(err);
  };

  /** Ends the call and gives the error its caller sees; one by the worker's fault counts against it. */
  #failure(err: unknown): unknown {
    this.#finish();
    if (this.ctx.abort.aborted) return err;
    const failure = this.#idled
      ? new KvrouteError('timeout', `worker stream was silent for ${this.ctx.streamIdleTimeoutMs} ms`, {
          cause: err,
        })
      : err;
    if (isWorkerFault(failure)) this.ctx.recordWorkerCall(this.workerId, failure);
    return failure;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#timer);
    this.ctx.abort.unlisten(this);
  }
}
