// The admit stage: the ONE place that books load. A routed request books its decode worker under
// its request id and, when prefill is remote, its prefill worker under `<id>#prefill` (ActiveLoad
// keeps one booking per key). With a remote prefill the decode worker is booked only for the
// partial tail block it computes itself; when the prefill comes back onto it (fallback, no prefill
// worker left) it is booked for the whole prompt again. Retries move the booking; the first token
// releases the prompt's prefill tokens; finishing releases everything. Workers without KV events are credited with the
// prompt's blocks here (approximate mode). Also enforces the in-flight cap: nothing queues.

import { KvrouteError } from '../../errors.js';
import type { ExecutionPlan, WorkerDecision } from '../execute/types.js';
import type { Fleet } from '../fleet/fleet.js';
import type { LoadBooking } from '../registry/index.js';

/** Counts admitted, unfinished requests against a cap. */
export class InflightLimit {
  active = 0;
  constructor(readonly max: number) {}

  acquire(): void {
    if (this.active >= this.max) {
      throw new KvrouteError('overloaded', `the router has ${this.max} requests in flight; retry in 1 s`, {
        retryAfterSeconds: 1,
      });
    }
    this.active++;
  }

  release(): void {
    this.active--;
  }
}

export class Admission {
  private readonly prefillKey: string;
  private released = false;

  private constructor(
    private readonly fleet: Fleet,
    private readonly limit: InflightLimit,
    readonly plan: ExecutionPlan,
  ) {
    this.prefillKey = `${plan.requestId}#prefill`;
  }

  /** Takes an in-flight slot and books the plan's workers. Throws 503 when the router is full. */
  static admit(fleet: Fleet, limit: InflightLimit, plan: ExecutionPlan): Admission {
    limit.acquire();
    const admission = new Admission(fleet, limit, plan);
    admission.bookDecode(plan.decode);
    if (plan.prefill) admission.bookPrefill(plan.prefill);
    return admission;
  }

  /** A retry moved the request to another decode worker. */
  moveDecode(decision: WorkerDecision): void {
    this.fleet.registry.load.release(this.plan.requestId);
    this.plan.decode = decision;
    this.bookDecode(decision);
  }

  /** The prefill leg moved to another worker, or (null) back onto the decode worker. */
  movePrefill(decision: WorkerDecision | null): void {
    const wasRemote = Boolean(this.plan.prefill);
    this.fleet.registry.load.release(this.prefillKey);
    this.plan.prefill = decision;
    if (decision) this.bookPrefill(decision);
    else if (wasRemote) {
      // The decode worker now computes the whole prompt, not just its tail.
      this.fleet.registry.load.release(this.plan.requestId);
      this.bookDecode(this.plan.decode);
    }
  }

  /** The first output token arrived: the prompt is computed. */
  firstToken(): void {
    this.fleet.registry.load.firstToken(this.plan.requestId);
    this.prefillDone();
  }

  prefillDone(): void {
    this.fleet.registry.load.release(this.prefillKey);
  }

  /** The request is over (done, failed, cancelled). Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    const { load } = this.fleet.registry;
    load.release(this.plan.requestId);
    load.release(this.prefillKey);
    this.limit.release();
  }

  private bookDecode(decision: WorkerDecision): void {
    this.fleet.registry.load.book(decision.worker.id, this.plan.requestId, this.decodeBooking(decision));
    this.fleet.credit(decision.worker.id, this.plan.routing.keys);
  }

  /**
   * What the decode worker computes: with a remote prefill it installs the transferred blocks and
   * computes only the partial tail block; otherwise the uncached prompt the scheduler counted.
   */
  private decodeBooking({ booking }: WorkerDecision): LoadBooking {
    if (!this.plan.prefill) return booking;
    const tail = this.plan.routing.promptTokens % this.fleet.registry.blockSize;
    return { ...booking, prefillTokens: Math.min(booking.prefillTokens, tail) };
  }

  private bookPrefill(decision: WorkerDecision): void {
    // The prefill worker computes the prompt and hands the KV over: it holds no decode blocks.
    this.fleet.registry.load.book(decision.worker.id, this.prefillKey, {
      prefillTokens: decision.booking.prefillTokens,
      decodeBlocks: 0,
      contextBlocks: 0,
    });
    this.fleet.credit(decision.worker.id, this.plan.routing.keys);
  }
}
