// Active-sequence tracking: what each worker is busy with right now, as the router booked it.
// Pure and synchronous.
//
// One admission path: `book` when a request is routed, `firstToken` when its first token arrives
// (the prompt is computed, so its prefill tokens leave the worker's queue), `release` when the
// stream ends. A booking lasts until its release or its worker's removal, however long the stream
// runs: nothing expires on its own. There used to be a sweep retiring bookings 300 s after their
// last update (book or first token), a guard against streams that never reported back. It took
// the load off streams still decoding past 300 s, so the scheduler over-filled their worker, and
// it guarded nothing: the router books only for an admitted request, which holds an in-flight
// slot (`--max-inflight`) until the one release that frees the slot and its bookings together
// (handle.ts `finish` on every path), so a booking never released would leak its slot too, which
// no sweep returned. That same pairing bounds memory: at most two bookings (decode, remote
// prefill) per in-flight slot.

import { KvrouteError } from '../../errors.js';

/** Load counters of one worker. The scheduler reads these fields directly (no lookups per candidate). */
export interface WorkerLoad {
  /** Prompt tokens routed to the worker whose prefill has not finished yet. */
  readonly activePrefillTokens: number;
  /** KV blocks the worker's in-flight requests were booked for: new blocks, what they add to its pool. */
  readonly activeDecodeBlocks: number;
  /**
   * Blocks of the in-flight sequences whole, a cached prefix counted once per sequence: what each
   * decode step reads (attention runs over a sequence's whole context), so the worker's decode
   * work. A prefix shared by many requests is stored once but read by each (scheduling README).
   */
  readonly activeContextBlocks: number;
  /** Requests in flight on the worker. */
  readonly activeRequests: number;
}

/** What one request adds to its worker's load (the scheduler's decision says how much). */
export interface LoadBooking {
  prefillTokens: number;
  decodeBlocks: number;
  contextBlocks: number;
}

interface MutableWorkerLoad {
  activePrefillTokens: number;
  activeDecodeBlocks: number;
  activeContextBlocks: number;
  activeRequests: number;
}

interface Booking {
  readonly requestId: string;
  readonly workerId: string;
  readonly load: MutableWorkerLoad;
  prefillTokens: number;
  readonly decodeBlocks: number;
  readonly contextBlocks: number;
}

interface WorkerEntry {
  readonly load: MutableWorkerLoad;
  readonly bookings: Set<Booking>;
}

function nonNegative(n: number, what: string): number {
  if (!(Number.isFinite(n) && n >= 0))
    throw new KvrouteError('internal_error', `${what} must be >= 0, got ${n}`);
  return n;
}

export class ActiveLoad {
  private readonly workers = new Map<string, WorkerEntry>();
  private readonly bookings = new Map<string, Booking>();

  /** Starts tracking a worker; returns its live counters (the same object for the worker's lifetime). */
  addWorker(workerId: string): WorkerLoad {
    let entry = this.workers.get(workerId);
    if (!entry) {
      entry = {
        load: { activePrefillTokens: 0, activeDecodeBlocks: 0, activeContextBlocks: 0, activeRequests: 0 },
        bookings: new Set(),
      };
      this.workers.set(workerId, entry);
    }
    return entry.load;
  }

  /** Stops tracking a worker and forgets every booking on it. O(its active requests). */
  dropWorker(workerId: string): void {
    const entry = this.workers.get(workerId);
    if (!entry) return;
    for (const booking of entry.bookings) this.bookings.delete(booking.requestId);
    this.workers.delete(workerId);
  }

  /** The live counters of a worker, or undefined when it is not tracked. */
  loadOf(workerId: string): WorkerLoad | undefined {
    return this.workers.get(workerId)?.load;
  }

  /**
   * Books a routed request on a worker. `requestId` must be unique among active bookings (use the
   * router's own id, not a client-supplied one). Returns false when the worker is no longer tracked.
   */
  book(workerId: string, requestId: string, booking: LoadBooking): boolean {
    const entry = this.workers.get(workerId);
    if (!entry) return false;
    if (this.bookings.has(requestId)) {
      throw new KvrouteError('internal_error', `request ${requestId} is already booked`);
    }
    const b: Booking = {
      requestId,
      workerId,
      load: entry.load,
      prefillTokens: nonNegative(booking.prefillTokens, 'prefillTokens'),
      decodeBlocks: nonNegative(booking.decodeBlocks, 'decodeBlocks'),
      contextBlocks: nonNegative(booking.contextBlocks, 'contextBlocks'),
    };
    entry.load.activePrefillTokens += b.prefillTokens;
    entry.load.activeDecodeBlocks += b.decodeBlocks;
    entry.load.activeContextBlocks += b.contextBlocks;
    entry.load.activeRequests += 1;
    entry.bookings.add(b);
    this.bookings.set(requestId, b);
    return true;
  }

  /** The first token arrived: the prompt's prefill is done, its tokens leave the worker's prefill load. */
  firstToken(requestId: string): boolean {
    const b = this.bookings.get(requestId);
    if (!b) return false;
    b.load.activePrefillTokens -= b.prefillTokens;
    b.prefillTokens = 0;
    return true;
  }

  /** The stream ended (done, failed or cancelled): everything the request booked is released. */
  release(requestId: string): boolean {
    const b = this.bookings.get(requestId);
    if (!b) return false;
    this.remove(b);
    return true;
  }

  /** Worker id a request is booked on, if it is active. */
  workerOf(requestId: string): string | undefined {
    return this.bookings.get(requestId)?.workerId;
  }

  /** Active bookings across all workers. */
  get size(): number {
    return this.bookings.size;
  }

  private remove(b: Booking): void {
    b.load.activePrefillTokens -= b.prefillTokens;
    b.load.activeDecodeBlocks -= b.decodeBlocks;
    b.load.activeContextBlocks -= b.contextBlocks;
    b.load.activeRequests -= 1;
    this.workers.get(b.workerId)?.bookings.delete(b);
    this.bookings.delete(b.requestId);
  }
}
