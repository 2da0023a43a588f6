// `kv_events` subscriptions: each replays the ring buffer after the subscriber's last applied id
// (or sends a full dump when the ring no longer holds it), then follows live events. Live events
// accumulate until the subscriber pulls the next chunk, so a chunk carries everything since the
// previous one; a subscriber that lets more than `maxBacklog` blocks' worth of events pile up (its
// transport window is full) is cut off with `overloaded` and resubscribes from its last id. A
// stalled router thus cannot grow the worker's memory without bound. Counted in blocks, not events:
// one long prompt's events hold ~45 KB of heap each, so 100,000 of them would be ~4.5 GB.
//
// Every chunk carries at most `chunkBlocks` blocks' worth of events (a single larger event goes
// alone), whatever the size of the replay, the dump or the backlog: one chunk is one frame, and a
// replay of the ring (up to 2^20 blocks' worth of events, ~90 MB of JSON) could pass the 32 MiB
// frame limit, failing the subscription on every retry. A dump in several chunks marks all but its last part
// `more: true`; the router resets the worker only once the last part is in.

import { eventBlocks, type MockEngine } from '../engine/index.js';
import { KvrouteError } from '../errors.js';
import type { KvEvent, KvEventsChunk } from '../protocols/kv-events.js';

/**
 * Blocks per chunk by default: a block is ~85 bytes of JSON (two 64-bit hashes as decimal
 * strings and their keys), so a chunk stays near 350 KB, a hundredth of the frame limit.
 */
export const KV_EVENTS_CHUNK_BLOCKS = 4096;

/**
 * `events` in order, cut into runs of at most `maxBlocks` blocks (an event larger than that
 * alone). Always at least one run, so an empty replay or dump is still one chunk.
 */
export function splitEvents(events: KvEvent[], maxBlocks: number): KvEvent[][] {
  const runs: KvEvent[][] = [];
  let start = 0;
  let blocks = 0;
  for (let i = 0; i < events.length; i++) {
    const size = eventBlocks(events[i]!);
    if (blocks + size > maxBlocks && i > start) {
      runs.push(events.slice(start, i));
      start = i;
      blocks = 0;
    }
    blocks += size;
  }
  // The common case, everything in one run, hands back the array itself.
  runs.push(start === 0 ? events : events.slice(start));
  return runs;
}

/** The first chunks of a subscription: the replay, or the dump in parts. */
function firstChunks(replay: KvEvent[] | null, engine: MockEngine, maxBlocks: number): KvEventsChunk[] {
  if (replay !== null) return splitEvents(replay, maxBlocks).map((events) => ({ kind: 'events', events }));
  const dump = engine.dump();
  const parts = splitEvents(dump.events, maxBlocks);
  return parts.map((events, i) => ({
    kind: 'dump',
    as_of_event_id: dump.asOfEventId,
    events,
    ...(i < parts.length - 1 ? { more: true } : {}),
  }));
}

export interface KvEventsHubOptions {
  /** Blocks' worth of events per chunk (default KV_EVENTS_CHUNK_BLOCKS). */
  chunkBlocks?: number;
}

export interface KvEventsSubscriptionOptions {
  afterEventId: number;
  /** Blocks' worth of live events (eventBlocks) held for this subscriber before it is cut off. */
  maxBacklog: number;
  signal?: AbortSignal;
}

interface Subscription {
  pending: KvEvent[];
  /** Blocks' worth of the pending events. */
  pendingBlocks: number;
  /** Set when the subscription must stop: undefined error = clean end. */
  stop: { error?: unknown } | undefined;
  wake: (() => void) | undefined;
  /** Unsubscribes from the log and forgets the subscription; idempotent. */
  release: () => void;
}

/** Open subscriptions, so shutdown can end them (they never finish on their own). */
export class KvEventsHub {
  private readonly open = new Set<Subscription>();

  private readonly chunkBlocks: number;

  constructor(
    private readonly engine: MockEngine,
    options: KvEventsHubOptions = {},
  ) {
    this.chunkBlocks = options.chunkBlocks ?? KV_EVENTS_CHUNK_BLOCKS;
  }

  get subscribers(): number {
    return this.open.size;
  }

  subscribe(options: KvEventsSubscriptionOptions): AsyncIterable<KvEventsChunk> {
    const { engine } = this;
    // Replay and subscription happen in one synchronous turn: no event can fall between them.
    const first = firstChunks(engine.events.since(options.afterEventId), engine, this.chunkBlocks);
    const sub: Subscription = {
      pending: [],
      pendingBlocks: 0,
      stop: undefined,
      wake: undefined,
      release: () => {},
    };
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
      sub.pendingBlocks += eventBlocks(event);
      if (sub.pendingBlocks > options.maxBacklog) {
        stop(
          new KvrouteError(
            'overloaded',
            `kv_events subscriber fell more than ${options.maxBacklog} blocks' worth of events behind; resubscribe`,
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
    return follow(sub, first, this.chunkBlocks);
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

async function* follow(
  sub: Subscription,
  first: KvEventsChunk[],
  chunkBlocks: number,
): AsyncGenerator<KvEventsChunk> {
  try {
    yield* first;
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
      const pending = sub.pending;
      sub.pending = [];
      sub.pendingBlocks = 0;
      for (const events of splitEvents(pending, chunkBlocks)) yield { kind: 'events', events };
    }
  } finally {
    sub.release();
  }
}
