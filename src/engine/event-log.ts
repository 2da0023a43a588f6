// The worker's KV event stream: assigns ids (1, 2, 3 ... per worker), keeps the most recent
// events in a fixed ring so a subscriber can resume after the last id it applied, and notifies
// live listeners synchronously. Pure: no I/O; the worker shell turns listeners into streams.
//
// The ring is bounded twice: in events and in blocks (what the events store or remove). One
// long prompt's events carry hundreds of blocks (~45 KB of heap for 500), so a bound in events
// alone let 65,536 of them hold ~3 GB. A subscriber whose id fell out gets a dump instead, which
// costs O(cached blocks): never more than the pool.

import type { KvEvent } from '../protocols/kv-events.js';

type WithoutId<T> = T extends unknown ? Omit<T, 'event_id'> : never;
/** An event before the log numbers it. */
export type KvEventBody = WithoutId<KvEvent>;

export type KvEventListener = (event: KvEvent) => void;

/** An event's size in blocks: the blocks it stores or the hashes it removes (at least 1). */
export function eventBlocks(event: KvEventBody): number {
  if (event.type === 'stored') return Math.max(1, event.blocks.length);
  if (event.type === 'removed') return Math.max(1, event.sequence_hashes.length);
  return 1;
}

export class KvEventLog {
  private readonly ring: (KvEvent | undefined)[];
  private last = 0;
  /** Id of the oldest event held. */
  private first = 1;
  /** Blocks' worth of the events held. */
  private heldBlocks = 0;
  private readonly listeners = new Set<KvEventListener>();

  /**
   * `capacity` events at most, and at most `maxBlocks` blocks' worth of them (the newest event is
   * always held, however large).
   */
  constructor(
    readonly capacity: number,
    readonly maxBlocks = Number.POSITIVE_INFINITY,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('event ring capacity must be >= 1');
    if (!(maxBlocks >= 1)) throw new RangeError('event ring block budget must be >= 1');
    this.ring = new Array<KvEvent | undefined>(capacity);
  }

  /** Id of the newest event, 0 before the first. */
  get lastEventId(): number {
    return this.last;
  }

  /** Smallest id still held in the ring (lastEventId + 1 when empty). */
  get oldestEventId(): number {
    return this.first;
  }

  append(body: KvEventBody): KvEvent {
    const event = { event_id: ++this.last, ...body } as KvEvent;
    if (this.last - this.first + 1 > this.capacity) this.dropOldest(); // its slot is the one we take
    this.ring[event.event_id % this.capacity] = event;
    this.heldBlocks += eventBlocks(event);
    while (this.heldBlocks > this.maxBlocks && this.first < this.last) this.dropOldest();
    for (const listener of this.listeners) listener(event);
    return event;
  }

  /**
   * Every event with id > afterId, oldest first; null when the log cannot replay them (some have
   * fallen out of the ring, or afterId is from the future, i.e. another incarnation of this worker).
   * O(returned events).
   */
  since(afterId: number): KvEvent[] | null {
    if (afterId > this.last) return null;
    if (afterId + 1 < this.first) return null;
    const out: KvEvent[] = [];
    for (let id = afterId + 1; id <= this.last; id++) out.push(this.ring[id % this.capacity]!);
    return out;
  }

  /** Calls `listener` for each event appended from now on; returns the unsubscribe function. */
  subscribe(listener: KvEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private dropOldest(): void {
    const slot = this.first % this.capacity;
    this.heldBlocks -= eventBlocks(this.ring[slot]!);
    this.ring[slot] = undefined;
    this.first++;
  }
}
