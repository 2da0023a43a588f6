// One worker's KV-event subscription: streams `kv_events` from the worker, applies each chunk to
// the router's RadixIndex, and keeps doing so across disconnects. On reconnect it resumes after the
// last applied event id; a `gap` (events missing) ends the stream and resubscribes from that id,
// so the worker replays what is missing or sends a dump (`resetWorker`; a large dump comes in
// parts, applied as they arrive and finished by the last). Runs entirely in the ROOT trace
// context: background traffic never joins a user's trace.

import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyBaseLogger } from 'fastify';
import { KvrouteError } from '../../errors.js';
import type { RadixIndex, WorkerReset } from '../../kv-index/index.js';
import type { KvEventsChunk, KvEventsSubscribe } from '../../protocols/kv-events.js';
import { ENDPOINTS } from '../../protocols/worker-plane.js';
import { decodeJson, encodeJson, isTransportError, type RequestPlaneClient } from '../../tcp/index.js';
import { withRootContext } from '../../telemetry/index.js';
import { type BackoffPolicy, backoffDelay } from '../../util/backoff.js';
import type { RouterMetrics } from '../metrics.js';
import type { Worker } from '../registry/index.js';

export interface KvEventsSubscriberDeps {
  client: RequestPlaneClient;
  index: RadixIndex;
  metrics: RouterMetrics;
  log: FastifyBaseLogger;
  /** Called once when the worker refused connections `unreachableAfter` times in a row. */
  onUnreachable(worker: Worker): void;
  /** Consecutive connect failures that make the worker unreachable (default 3). */
  unreachableAfter?: number;
  /** Bound on the worker's first answer to a subscription. */
  firstResponseTimeoutMs?: number;
}

/** Between subscriptions that failed or ended early: a fleet of subscribers does not reconnect in lockstep. */
const RESUBSCRIBE_BACKOFF: BackoffPolicy = { baseMs: 50, capMs: 2000 };

export class KvEventsSubscriber {
  private readonly stopper = new AbortController();
  private loop: Promise<void> | undefined;
  /** Chunks applied since start (tests and /v1/workers). */
  chunks = 0;

  constructor(
    readonly worker: Worker,
    private readonly deps: KvEventsSubscriberDeps,
  ) {}

  start(): void {
    this.loop ??= withRootContext(() => this.run());
  }

  /** Cancels the subscription; resolves when the loop has ended. */
  async stop(): Promise<void> {
    this.stopper.abort();
    await this.loop;
  }

  private async run(): Promise<void> {
    const { signal } = this.stopper;
    const unreachableAfter = this.deps.unreachableAfter ?? 3;
    let failures = 0;
    let connectFailures = 0;
    /** The last applied id at the previous gap (-1: none yet). */
    let gapAt = -1;
    while (!signal.aborted) {
      const chunksBefore = this.chunks;
      // Live chunks after the first (the replay or dump) mean the subscription worked: whatever
      // ended it, the next one starts again from the first backoff step.
      const progressed = () => this.chunks - chunksBefore > 1;
      try {
        const outcome = await this.follow(signal);
        connectFailures = 0;
        // A gap resubscribes at once, unless the replay from the same id left the same hole: the
        // worker cannot fill it, and asking again at once would loop. Then it backs off like a
        // failure. A stream the worker ended (it is draining, or restarting its subscriptions) is
        // retried after a short backoff, longer each time it ends without live chunks, so it
        // cannot become a tight loop either.
        if (outcome === 'gap') {
          const at = this.deps.index.lastEventId(this.worker.id);
          failures = at === gapAt ? failures + 1 : 0;
          gapAt = at;
        } else failures = progressed() ? 1 : failures + 1;
      } catch (err) {
        if (signal.aborted) break;
        failures = progressed() ? 1 : failures + 1;
        if (isTransportError(err) && err.kind === 'connect_failed') {
          if (++connectFailures >= unreachableAfter) {
            this.deps.log.warn(
              { event: 'worker_unreachable', worker_id: this.worker.id, address: this.worker.address },
              'worker unreachable',
            );
            this.deps.onUnreachable(this.worker);
            return;
          }
        } else connectFailures = 0;
        this.deps.log.info(
          { event: 'kv_events_reconnect', worker_id: this.worker.id, error: String(err), attempt: failures },
          'kv_events subscription failed',
        );
      }
      if (signal.aborted) break;
      const pauseMs = failures === 0 ? 0 : backoffDelay(failures, RESUBSCRIBE_BACKOFF, Math.random());
      await sleep(pauseMs, undefined, { signal }).catch(() => {});
    }
  }

  /**
   * One subscription from the last applied id. Returns 'gap' when events are missing (resubscribe
   * from the last applied id) or 'ended' when the worker ended the stream; throws on transport failure.
   */
  private async follow(signal: AbortSignal): Promise<'gap' | 'ended'> {
    const { client, index, metrics, log } = this.deps;
    const workerId = this.worker.id;
    const body: KvEventsSubscribe = { after_event_id: index.lastEventId(workerId) };
    const stream = client.stream(this.worker.address, ENDPOINTS.kvEvents, encodeJson(body), {
      signal,
      firstResponseTimeoutMs: this.deps.firstResponseTimeoutMs ?? 5000,
    });
    // The dump being received, when it comes in parts (all but the last say `more`).
    let dump: { reset: WorkerReset; asOfEventId: number } | undefined;
    for await (const buf of stream) {
      this.chunks++;
      const chunk = decodeJson<KvEventsChunk>(buf);
      if (chunk.kind === 'dump') {
        if (dump !== undefined && dump.asOfEventId !== chunk.as_of_event_id)
          throw new KvrouteError('worker_error', 'kv_events: a dump part of another dump');
        dump ??= { reset: index.beginReset(workerId), asOfEventId: chunk.as_of_event_id };
        const rejected = dump.reset.apply(chunk.events);
        metrics.kvEventsApplied.inc(chunk.events.length - rejected);
        if (rejected > 0) metrics.kvEventsRejected.inc({ reason: 'dump' }, rejected);
        if (chunk.more === true) continue;
        dump.reset.finish(chunk.as_of_event_id);
        dump = undefined;
        metrics.kvResyncs.inc({ reason: 'dump' });
        continue;
      }
      // Leaving the loop cancels the stream; the unfinished reset removed nothing and the last
      // applied id is unchanged, so the next subscription asks again and gets a whole dump.
      if (dump !== undefined)
        throw new KvrouteError('worker_error', 'kv_events: events inside an unfinished dump');
      for (const event of chunk.events) {
        const result = index.applyEvent(workerId, event);
        if (result.status === 'applied') metrics.kvEventsApplied.inc();
        else if (result.status === 'rejected') metrics.kvEventsRejected.inc({ reason: result.reason });
        else if (result.status === 'gap') {
          metrics.kvResyncs.inc({ reason: 'gap' });
          log.info(
            { event: 'kv_events_gap', worker_id: workerId, expected: result.expectedEventId },
            'kv_events gap: resubscribing',
          );
          return 'gap'; // leaving the loop cancels the stream; the caller resubscribes from lastEventId
        }
      }
    }
    return 'ended';
  }
}
