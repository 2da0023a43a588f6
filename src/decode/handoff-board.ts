// Overlapped prefill, decode side: a `generate` sent with `await_kv_handoff` waits here, keyed by
// its request_id, until the router's `kv_handoff` brings the remote prefill's result (or says to
// prefill locally). The wait is bounded: past `timeout_ms` the generate fails with `timeout`, so a
// prefill leg that never answers cannot pin a decode request; how many wait is bounded by the
// generate handler, which gives each waiter a place in the engine's queue (--max-waiting) first.
// A handoff that arrives before its generate (the two travel on different streams) is held for
// the same bound, and at most MAX_HELD_HANDOFFS are held (the oldest goes first).
//
// Lifecycle per request id: wait() or deliver() first; the other completes it; a timer, the
// generate's AbortSignal or close() ends it otherwise. At most one waiter and one held handoff per id.

import { KvrouteError } from '../errors.js';
import type { KvHandoffRequest } from '../protocols/worker-plane.js';
import { withRootContext } from '../telemetry/index.js';

/** Longest wait a generate may ask for; also how long an early handoff is held. */
export const MAX_HANDOFF_WAIT_MS = 60_000;

/** Unclaimed handoffs held at once; past it the oldest is dropped. */
export const MAX_HELD_HANDOFFS = 4096;

interface Waiter {
  resolve(handoff: KvHandoffRequest): void;
  reject(err: Error): void;
}

export class KvHandoffBoard {
  private readonly waiting = new Map<string, Waiter>();
  private readonly held = new Map<string, { handoff: KvHandoffRequest; timer: NodeJS.Timeout }>();
  /** Callers of whenNoneWaiting(), resolved when the last waiter leaves. */
  private idle: (() => void)[] = [];

  /** Requests waiting for their handoff (for stats and tests). */
  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Handoffs held for a generate that has not come yet (for tests). */
  get heldCount(): number {
    return this.held.size;
  }

  /**
   * Resolves with the handoff for `requestId`. Rejects with `timeout` after `timeoutMs` (clamped to
   * [1, MAX_HANDOFF_WAIT_MS]), `client_closed` when `signal` aborts, `invalid_request` if the id
   * already has a waiter.
   */
  wait(requestId: string, timeoutMs: number, signal?: AbortSignal): Promise<KvHandoffRequest> {
    const early = this.held.get(requestId);
    if (early) {
      this.held.delete(requestId);
      clearTimeout(early.timer);
      return Promise.resolve(early.handoff);
    }
    if (this.waiting.has(requestId)) {
      return Promise.reject(
        new KvrouteError('invalid_request', `a generate is already waiting for the handoff of ${requestId}`, {
          param: 'request_id',
        }),
      );
    }
    if (signal?.aborted) return Promise.reject(new KvrouteError('client_closed', 'request was cancelled'));
    const boundMs = Math.min(Math.max(1, timeoutMs), MAX_HANDOFF_WAIT_MS);
    return new Promise<KvHandoffRequest>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiting.delete(requestId);
        if (this.waiting.size === 0) this.settleIdle();
      };
      const onAbort = () => {
        done();
        reject(new KvrouteError('client_closed', 'request was cancelled'));
      };
      const timer = setTimeout(() => {
        done();
        reject(new KvrouteError('timeout', `no kv_handoff for ${requestId} within ${boundMs} ms`));
      }, boundMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.set(requestId, {
        resolve: (h) => {
          done();
          resolve(h);
        },
        reject: (err) => {
          done();
          reject(err);
        },
      });
    });
  }

  /**
   * Resolves once no generate waits for its handoff (at once when none does). A draining worker
   * waits for this before it closes its server: the handoff of a generate already in flight comes
   * as a new `kv_handoff` request, which a closed server would refuse.
   */
  whenNoneWaiting(): Promise<void> {
    if (this.waiting.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /** Hands a handoff to its waiting generate, or holds it (bounded) for a generate still on its way. */
  deliver(handoff: KvHandoffRequest): 'waiting' | 'held' {
    const waiter = this.waiting.get(handoff.request_id);
    if (waiter) {
      waiter.resolve(handoff);
      return 'waiting';
    }
    const previous = this.held.get(handoff.request_id);
    if (previous) {
      clearTimeout(previous.timer);
      this.held.delete(handoff.request_id);
    }
    // Bounded in number as well as in time: handoffs whose generate already gave up would
    // otherwise pile up for a minute each. The Map iterates oldest first.
    if (this.held.size >= MAX_HELD_HANDOFFS) {
      const [oldestId, oldest] = this.held.entries().next().value!;
      clearTimeout(oldest.timer);
      this.held.delete(oldestId);
    }
    // Held for a generate that may never come: not in the kv_handoff request's context, which
    // has answered and must not be kept alive (or run this) for up to a minute.
    const timer = withRootContext(() =>
      setTimeout(() => this.held.delete(handoff.request_id), MAX_HANDOFF_WAIT_MS),
    );
    timer.unref();
    this.held.set(handoff.request_id, { handoff, timer });
    return 'held';
  }

  /** Fails every waiter with `shutting_down` and drops held handoffs. */
  close(): void {
    for (const waiter of [...this.waiting.values()]) {
      waiter.reject(new KvrouteError('shutting_down', 'worker is shutting down'));
    }
    for (const { timer } of this.held.values()) clearTimeout(timer);
    this.held.clear();
  }

  private settleIdle(): void {
    const idle = this.idle;
    this.idle = [];
    for (const resolve of idle) resolve();
  }
}
