// The worker's KV event stream: assigns ids (1, 2, 3 ... per worker), keeps the most recent
// events in a fixed ring so a subscriber can resume after the last id it applied, and notifies
// live listeners synchronously. Pure: no I/O; the worker shell turns listeners into streams.

import type { KvEvent } from '../protocols/kv-events.js';

type WithoutId<T> = T extends unknown ? Omit<T, 'event_id'> : never;
/** An event before the log numbers it. */
export type KvEventBody = WithoutId<KvEvent>;

export type KvEventListener = (event: KvEvent) => void;

export class KvEventLog {
  private readonly ring: (KvEvent | undefined)[];
  private last = 0;
  private readonly listeners = new Set<KvEventListener>();

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('event ring capacity must be >= 1');
    this.ring = new Array<KvEvent | undefined>(capacity);
  }

  /** Id of the newest event, 0 before the first. */
  get lastEventId(): number {
    return this.last;
  }

  /** Smallest id still held in the ring (lastEventId + 1 when empty). */
  get oldestEventId(): number {
    return Math.max(1, this.last - this.capacity + 1);
  }

  append(body: KvEventBody): KvEvent {
    const event = { event_id: ++this.last, ...body } as KvEvent;
    this.ring[event.event_id % this.capacity] = event;
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
    if (afterId + 1 < this.oldestEventId) return null;
    const out: KvEvent[] = [];
    for (let id = afterId + 1; id <= this.last; id++) out.push(this.ring[id % this.capacity]!);
    return out;
  }

  /** Calls `listener` for each event appended from now on; returns the unsubscribe function. */
  subscribe(listener: KvEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
