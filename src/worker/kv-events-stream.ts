// `kv_events` subscriptions: each replays the ring buffer after the subscriber's last applied id
// (or sends a full dump when the ring no longer holds it), then follows live events. Live events
// accumulate until the subscriber pulls the next chunk, so a chunk carries everything since the
// previous one; a subscriber that lets more than `maxBacklog` events pile up (its transport window
// is full) is cut off with `overloaded` and resubscribes from its last id. A stalled router thus
// cannot grow the worker's memory without bound.

import type { MockEngine } from '../engine/index.js';
import { KvrouteError } from '../errors.js';
import type { KvEvent, KvEventsChunk } from '../protocols/kv-events.js';

export interface KvEventsSubscriptionOptions {
  afterEventId: number;
  /** Live events held for this subscriber before it is cut off. */
  maxBacklog: number;
  signal?: AbortSignal;
}

interface Subscription {
  pending: KvEvent[];
  /** Set when the subscription must stop: undefined error = clean end. */
  stop: { error?: unknown } | undefined;
  wake: (() => void) | undefined;
  /** Unsubscribes from the log and forgets the subscription; idempotent. */
  release: () => void;
}

/** Open subscriptions, so shutdown can end them (they never finish on their own). */
export class KvEventsHub {
  private readonly open = new Set<Subscription>();

  constructor(private readonly engine: MockEngine) {}

  get subscribers(): number {
    return this.open.size;
  }

  subscribe(options: KvEventsSubscriptionOptions): AsyncIterable<KvEventsChunk> {
    const { engine } = this;
    // Replay and subscription happen in one synchronous turn: no event can fall between them.
    const replay = engine.events.since(options.afterEventId);
    const first: KvEventsChunk =
      replay === null
        ? (() => {
            const dump = engine.dump();
            return { kind: 'dump', as_of_event_id: dump.asOfEventId, events: dump.events };
          })()
        : { kind: 'events', events: replay };
    const sub: Subscription = { pending: [], stop: undefined, wake: undefined, release: () => {} };
    const release = () => sub.release();
    // Stopping unsubscribes at once: a stalled subscriber must not keep collecting events.
    const stop = (error?: unknown) => {
      if (sub.stop) return;
      sub.stop = error === undefined ? {} : { error };
      release();
      sub.wake?.();
    };
    const unsubscribe = engine.events.subscribe((event) => {
      sub.pending.push(event);
      if (sub.pending.length > options.maxBacklog) {
        stop(
          new KvrouteError(
            'overloaded',
            `kv_events subscriber fell more than ${options.maxBacklog} events behind; resubscribe`,
          ),
        );
      }
      sub.wake?.();
    });
    const onAbort = () => stop(new KvrouteError('client_closed', 'kv_events subscription cancelled'));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    this.open.add(sub);
    sub.release = () => {
      unsubscribe();
      this.open.delete(sub);
      options.signal?.removeEventListener('abort', onAbort);
    };
    return follow(sub, first);
  }

  /** Ends every subscription cleanly (each subscriber sees its stream end). */
  endAll(): void {
    for (const sub of [...this.open]) {
      sub.stop ??= {};
      sub.release();
      sub.wake?.();
    }
  }
}

async function* follow(sub: Subscription, first: KvEventsChunk): AsyncGenerator<KvEventsChunk> {
  try {
    yield first;
    for (;;) {
      while (sub.pending.length === 0 && !sub.stop) {
        await new Promise<void>((resolve) => {
          sub.wake = resolve;
        });
        sub.wake = undefined;
      }
      if (sub.stop) {
        if (sub.stop.error !== undefined) throw sub.stop.error;
        return;
      }
      const events = sub.pending;
      sub.pending = [];
      yield { kind: 'events', events };
    }
  } finally {
    sub.release();
  }
}
