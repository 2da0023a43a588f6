// The I/O shell around the pure MockEngine: feeds it the wall clock, keeps one timer armed for the
// engine's next wake-up, and fans its outputs out to one AsyncQueue per request. Cancellation (the
// request's AbortSignal, or the consumer stopping early) cancels the request in the engine at once,
// which frees its blocks.

import { performance } from 'node:perf_hooks';
import type { Tracer } from '@opentelemetry/api';
import type { EngineOutput, EngineRequest, MockEngine, WaitingPlace } from '../engine/index.js';
import { KvrouteError } from '../errors.js';
import { withRootContext } from '../telemetry/index.js';
import { AsyncQueue } from './async-queue.js';
import { EnginePhaseSpans } from './engine-spans.js';

/** One request in flight: where its outputs go, and its phase spans when it is traced. */
interface Stream {
  queue: AsyncQueue<EngineOutput>;
  phases: EnginePhaseSpans | undefined;
}

export class EngineDriver {
  private readonly streams = new Map<string, Stream>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  /** Engine-side ids are ours, so two callers reusing one request_id never collide. */
  private nextId = 0;
  private closed = false;
  /** Callers of whenIdle(), resolved when the last request in flight ends. */
  private idle: (() => void)[] = [];

  constructor(
    readonly engine: MockEngine,
    private readonly now: () => number = () => performance.now(),
    /** When given, each request's prefill and decode phases become spans (engine-spans.ts). */
    private readonly tracer?: Tracer,
  ) {}

  /** Requests in flight (submitted and not yet finished or cancelled). */
  get inFlight(): number {
    return this.streams.size;
  }

  /**
   * Submits a request and returns its outputs as they are produced. Throws (synchronously) the
   * engine's KvrouteError when it is rejected; the iteration fails with `client_closed` when
   * `signal` aborts. A `place` reserved in the engine's queue is taken over or released either way.
   */
  run(
    req: Omit<EngineRequest, 'id'>,
    signal?: AbortSignal,
    place?: WaitingPlace,
  ): AsyncIterable<EngineOutput> {
    if (this.closed || signal?.aborted) {
      place?.release();
      if (this.closed) throw new KvrouteError('shutting_down', 'worker is shutting down');
      throw new KvrouteError('client_closed', 'request was cancelled');
    }
    const id = String(++this.nextId);
    this.engine.submit({ ...req, id }, this.now(), place);
    const queue = new AsyncQueue<EngineOutput>();
    const phases =
      this.tracer === undefined ? undefined : EnginePhaseSpans.start(this.tracer, req.tokenIds.length);
    this.streams.set(id, { queue, phases });
    const cancel = () => {
      if (!this.streams.delete(id)) return;
      this.engine.cancel(id);
      phases?.finish('cancelled');
      queue.fail(new KvrouteError('client_closed', 'request was cancelled'));
      this.pump();
      this.settleIdle();
    };
    queue.onReturn = cancel;
    signal?.addEventListener('abort', cancel, { once: true });
    this.pump();
    return queue;
  }

  /** Resolves once no request is in flight (at once when none is). */
  whenIdle(): Promise<void> {
    if (this.streams.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /** Cancels everything in flight and disarms the timer. */
  close(): void {
    this.closed = true;
    for (const [id, { queue, phases }] of this.streams) {
      this.engine.cancel(id);
      const err = new KvrouteError('shutting_down', 'worker is shutting down');
      phases?.finish('error', err);
      queue.fail(err);
    }
    this.streams.clear();
    this.settleIdle();
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private settleIdle(): void {
    if (this.streams.size > 0 || this.idle.length === 0) return;
    const idle = this.idle;
    this.idle = [];
    for (const resolve of idle) resolve();
  }

  private pump(): void {
    const now = this.now();
    for (const output of this.engine.tick(now)) {
      const stream = this.streams.get(output.requestId);
      if (!stream) continue;
      stream.phases?.observe(output);
      stream.queue.push(output);
      if (output.finishReason !== null) {
        stream.phases?.finish('finished');
        stream.queue.end();
        this.streams.delete(output.requestId);
      }
    }
    this.settleIdle();
    const at = this.engine.nextWakeAt();
    if (at === null || this.closed) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Number.POSITIVE_INFINITY;
      return;
    }
    if (this.timer !== undefined && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    // Armed in the root context: the engine's clock serves every request, and a timer made inside
    // the request that happened to call pump() would carry that request's trace from step to step.
    this.timer = withRootContext(() =>
      setTimeout(
        () => {
          this.timer = undefined;
          this.timerAt = Number.POSITIVE_INFINITY;
          this.pump();
        },
        Math.max(0, Math.ceil(at - now)),
      ),
    );
  }
}
