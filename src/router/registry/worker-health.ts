// Outlier ejection: a worker that keeps failing the requests sent to it is taken out of routing
// for a while. Leases catch a worker that goes silent, and refused connections one that is gone;
// neither catches a worker that heartbeats and accepts connections but does not answer (an engine
// stuck on its accelerator, a broken model), whose free-looking load drew request after request
// into the first-token timeout. Pure and synchronous; time comes in as `now` (ms).
//
// Lifecycle of one worker: healthy → (failuresToEject failures in a row) ejected for
// baseEjectionMs × 2^(times ejected before), at most maxEjectionMs → back on probation when that
// runs out → a success makes it healthy again (and forgets past ejections), a failure ejects it
// again at once, for twice as long. Only failures that are the worker's own count: the caller
// classifies (see `isWorkerFault` in execute/worker-call.ts).

export interface WorkerHealthOptions {
  /** Failures in a row that eject a worker; 0 never ejects (default 3). */
  failuresToEject?: number;
  /** The first ejection's length (default 10 s); each repeat doubles it. */
  baseEjectionMs?: number;
  /** Longest ejection (default 5 min, or baseEjectionMs when that is longer). */
  maxEjectionMs?: number;
}

export const DEFAULT_FAILURES_TO_EJECT = 3;
export const DEFAULT_BASE_EJECTION_MS = 10_000;
export const DEFAULT_MAX_EJECTION_MS = 300_000;

/** One worker's record; only workers that failed since their last success have one. */
interface HealthRecord {
  /** Failures since the last success or ejection. */
  failures: number;
  /** Ejections since the last success: the next one lasts base × 2^ejections. */
  ejections: number;
  /** Out of routing until then (ms); 0 while in routing. */
  ejectedUntil: number;
  /** Back from an ejection and not yet proven: one failure ejects it again. */
  probation: boolean;
}

/** What a reported failure did. */
export type FailureVerdict =
  | { readonly kind: 'counted'; readonly failures: number }
  | { readonly kind: 'ejected'; readonly failures: number; readonly forMs: number }
  /** It would have been ejected, but it is the last of its kind in routing: it stays. */
  | { readonly kind: 'kept_last'; readonly failures: number };

export interface HealthView {
  readonly consecutiveFailures: number;
  /** Ms until it is back in routing (at least 1 while it is out); 0 when it is in routing. */
  readonly ejectedForMs: number;
  /** Back from an ejection and not yet proven: its next failure ejects it again. */
  readonly onProbation: boolean;
}

const HEALTHY: HealthView = Object.freeze({ consecutiveFailures: 0, ejectedForMs: 0, onProbation: false });

export class WorkerHealth {
  readonly failuresToEject: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
  private readonly records = new Map<string, HealthRecord>();
  /** Ids ejected now (small: a sweep scans it). */
  private readonly ejected = new Set<string>();

  constructor(options: WorkerHealthOptions = {}) {
    this.failuresToEject = options.failuresToEject ?? DEFAULT_FAILURES_TO_EJECT;
    this.baseEjectionMs = options.baseEjectionMs ?? DEFAULT_BASE_EJECTION_MS;
    // A first ejection set longer than the default cap is the cap.
    this.maxEjectionMs = Math.max(options.maxEjectionMs ?? DEFAULT_MAX_EJECTION_MS, this.baseEjectionMs);
  }

  /** Whether the worker is out of routing. O(1). */
  isEjected(workerId: string): boolean {
    return this.ejected.has(workerId);
  }

  /** A call to the worker succeeded. Cheap when it had no record (the common case): one lookup. */
  recordSuccess(workerId: string): void {
    const record = this.records.get(workerId);
    // An ejected worker's streams begun before the ejection may still succeed: they do not prove
    // that it answers new requests, and its ejection stands.
    if (record !== undefined && record.ejectedUntil === 0) this.records.delete(workerId);
  }

  /**
   * A call to the worker failed by the worker's fault. `mayEject` is asked only when the failure
   * would eject it: false when it is the last worker of its kind in routing (ejecting it would
   * turn every request into a 503 instead of some into errors).
   */
  recordFailure(workerId: string, now: number, mayEject: () => boolean): FailureVerdict {
    let record = this.records.get(workerId);
    if (record === undefined) {
      record = { failures: 0, ejections: 0, ejectedUntil: 0, probation: false };
      this.records.set(workerId, record);
    }
    // Failures of calls begun before its ejection: it is out already.
    if (record.ejectedUntil !== 0) return { kind: 'counted', failures: record.failures };
    record.failures++;
    const due = record.probation || (this.failuresToEject > 0 && record.failures >= this.failuresToEject);
    if (!due) return { kind: 'counted', failures: record.failures };
    if (!mayEject()) return { kind: 'kept_last', failures: record.failures };
    const forMs = Math.min(this.maxEjectionMs, this.baseEjectionMs * 2 ** record.ejections);
    const failures = record.failures;
    record.ejections++;
    record.failures = 0;
    record.probation = false;
    record.ejectedUntil = now + forMs;
    this.ejected.add(workerId);
    return { kind: 'ejected', failures, forMs };
  }

  /** Workers whose ejection ran out by `now`, now back in routing on probation. O(ejected). */
  reinstateDue(now: number): string[] {
    const back: string[] = [];
    for (const id of this.ejected) {
      const record = this.records.get(id)!;
      if (record.ejectedUntil > now) continue;
      record.ejectedUntil = 0;
      record.probation = true;
      this.ejected.delete(id);
      back.push(id);
    }
    return back;
  }

  view(workerId: string, now: number): HealthView {
    const record = this.records.get(workerId);
    if (record === undefined) return HEALTHY;
    return {
      consecutiveFailures: record.failures,
      // At least 1 while ejected: its time may have run out, but it is out until a sweep brings it back.
      ejectedForMs: record.ejectedUntil === 0 ? 0 : Math.max(1, record.ejectedUntil - now),
      onProbation: record.probation,
    };
  }

  /** Forgets a worker that left the registry. */
  remove(workerId: string): void {
    this.records.delete(workerId);
    this.ejected.delete(workerId);
  }

  /** Workers out of routing now. */
  get ejectedCount(): number {
    return this.ejected.size;
  }
}
