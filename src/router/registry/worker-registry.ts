// The router's worker registry: who is registered, under which lease, serving which model in
// which role, and (through ActiveLoad) how busy each one is. Pure and synchronous; time comes in
// as `now` (ms) on every call that needs it, so leases are testable without timers.
//
// Removal (deregister, lease expiry, re-registration of the same address) drops the worker's load
// here and hands the removed records back, so the caller purges the KV index of the same ids.

import { KvrouteError } from '../../errors.js';
import type { WorkerRole } from '../../protocols/registration.js';
import { ActiveLoad, type WorkerLoad } from './active-load.js';
import { validateRegistration, type WorkerRegistration } from './validate-registration.js';
import { type FailureVerdict, WorkerHealth, type WorkerHealthOptions } from './worker-health.js';

/** Which half of a request a worker is asked to serve. */
export type WorkerPhase = 'prefill' | 'decode';

/** One registered worker. Fields are fixed for its lifetime except the lease and the live load. */
export interface Worker extends Readonly<WorkerRegistration> {
  /** `w-1`, `w-2`, ... never reused within a process. */
  readonly id: string;
  readonly registeredAt: number;
  /** The lease runs out at this time (ms) unless a heartbeat renews it. */
  readonly leaseExpiresAt: number;
  /** Live counters, updated in place by `registry.load`. */
  readonly load: WorkerLoad;
}

export interface WorkerRegistryOptions {
  /** Tokens per KV block; registrations with another block size are refused. */
  blockSize: number;
  /** Lease length (default 10 s). */
  leaseTtlMs?: number;
  /** Registrations beyond this many live workers are refused with `overloaded` (default 4096). */
  maxWorkers?: number;
  /**
   * Start of every id (default `w-`). A router process should make it unique (e.g. random): a
   * worker that outlived a router restart heartbeats with its old id, which must not name another
   * worker in the new router (it would renew that worker's lease and never register itself).
   */
  idPrefix?: string;
  /** Outlier ejection of workers that keep failing (worker-health.ts). */
  health?: WorkerHealthOptions;
}

export const DEFAULT_LEASE_TTL_MS = 10_000;
export const DEFAULT_MAX_WORKERS = 4096;

export interface RegisterResult {
  worker: Worker;
  /** A live worker at the same address that the new registration replaced (the worker restarted). */
  replaced: Worker | undefined;
  /** The registration repeated one of the same worker process: `worker` is the one it had, renewed. */
  repeated: boolean;
}

/** Whether a registration is the one `worker` made, sent again by the same process. */
function sameRegistration(worker: Worker, r: WorkerRegistration): boolean {
  return (
    r.instanceId !== undefined &&
    worker.instanceId === r.instanceId &&
    worker.role === r.role &&
    worker.model === r.model &&
    worker.blockSize === r.blockSize &&
    worker.kvBlocks === r.kvBlocks &&
    worker.maxBatchedTokens === r.maxBatchedTokens &&
    worker.kvEvents === r.kvEvents
  );
}

type MutableWorker = { -readonly [K in keyof Worker]: Worker[K] };

/** Members of one model, with candidate lists rebuilt only after membership changes. */
interface ModelGroup {
  readonly members: Set<MutableWorker>;
  prefill: readonly Worker[] | undefined;
  decode: readonly Worker[] | undefined;
}

const NONE: readonly Worker[] = Object.freeze([]);

// Remote prefill goes to dedicated prefill workers only: a `both` worker prefills its own
// requests, so a fleet of aggregated workers never splits a request across two of them.
function serves(role: WorkerRole, phase: WorkerPhase): boolean {
  return phase === 'prefill' ? role === 'prefill' : role === 'both' || role === 'decode';
}

export class WorkerRegistry {
  readonly blockSize: number;
  readonly leaseTtlMs: number;
  readonly maxWorkers: number;
  /** Active-sequence tracking of the registered workers; removal here drops their load there. */
  readonly load: ActiveLoad;
  /** Failures per worker and the ejected ones, which `candidates` leaves out. */
  readonly health: WorkerHealth;
  private nextId = 1;
  private readonly idPrefix: string;
  /**
   * Workers by id, in order of lease expiry: every lease has the same TTL, so re-inserting a worker
   * on each heartbeat keeps the soonest-expiring at the front and `expire` stops at the first live one.
   */
  private readonly byLease = new Map<string, MutableWorker>();
  private readonly byAddress = new Map<string, MutableWorker>();
  private readonly byModel = new Map<string, ModelGroup>();
  private modelNames: readonly string[] | undefined;

  constructor(options: WorkerRegistryOptions) {
    this.blockSize = options.blockSize;
    this.leaseTtlMs = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    this.maxWorkers = options.maxWorkers ?? DEFAULT_MAX_WORKERS;
    this.idPrefix = options.idPrefix ?? 'w-';
    this.load = new ActiveLoad();
    this.health = new WorkerHealth(options.health);
  }

  /**
   * Validates a `POST /v1/workers` body and registers the worker under a fresh id. A live worker
   * already registered at the same address is replaced (and returned in `replaced`): it restarted;
   * unless it is the same process registering again (same `instance_id` and fields), whose worker
   * is renewed and returned (`repeated`).
   * `peerHost`: the HTTP peer, dialled for a worker that registered an unspecified host (0.0.0.0).
   */
  register(body: unknown, now: number, peerHost?: string): RegisterResult {
    const registration = validateRegistration(body, this.blockSize, peerHost);
    const previous = this.byAddress.get(registration.address);
    if (previous && previous.leaseExpiresAt > now && sameRegistration(previous, registration)) {
      return { worker: this.heartbeat(previous.id, now), replaced: undefined, repeated: true };
    }
    if (!previous && this.byLease.size >= this.maxWorkers) {
      throw new KvrouteError('overloaded', `worker registry is full (${this.maxWorkers} workers)`, {
        retryAfterSeconds: Math.ceil(this.leaseTtlMs / 1000),
      });
    }
    const replaced = previous ? this.remove(previous) : undefined;
    const id = `${this.idPrefix}${this.nextId++}`;
    const worker: MutableWorker = {
      ...registration,
      id,
      registeredAt: now,
      leaseExpiresAt: now + this.leaseTtlMs,
      load: this.load.addWorker(id),
    };
    this.byLease.set(id, worker);
    this.byAddress.set(worker.address, worker);
    this.groupFor(worker.model).members.add(worker);
    this.invalidate(worker.model);
    return { worker, replaced, repeated: false };
  }

  /**
   * Renews a lease. Throws `worker_not_found` (404: register again) for an unknown id or a lease
   * that ran out by `now`, whether or not `expire` has removed it yet (the caller's sweep runs
   * periodically; the answer must not depend on its phase). `expire` still removes the worker.
   */
  heartbeat(workerId: string, now: number): Worker {
    const worker = this.mustGet(workerId);
    if (worker.leaseExpiresAt <= now) {
      throw new KvrouteError('worker_not_found', `the lease of worker ${workerId} ran out`, { param: 'id' });
    }
    worker.leaseExpiresAt = now + this.leaseTtlMs;
    this.byLease.delete(workerId);
    this.byLease.set(workerId, worker);
    return worker;
  }

  /** Removes a worker and its load; returns its record. Throws `worker_not_found` for an unknown id. */
  deregister(workerId: string): Worker {
    return this.remove(this.mustGet(workerId));
  }

  /**
   * Moves every lease `ms` later: the router itself was stalled (paused, or its event loop blocked)
   * and could not hear heartbeats meanwhile. Expiry order is kept (all move alike). O(n).
   */
  extendLeases(ms: number): void {
    for (const worker of this.byLease.values()) worker.leaseExpiresAt += ms;
  }

  /** Removes every worker whose lease ran out by `now`; returns them. O(expired + 1). */
  expire(now: number): Worker[] {
    const expired: MutableWorker[] = [];
    for (const worker of this.byLease.values()) {
      if (worker.leaseExpiresAt > now) break;
      expired.push(worker);
    }
    for (const worker of expired) this.remove(worker);
    return expired;
  }

  get(workerId: string): Worker | undefined {
    return this.byLease.get(workerId);
  }

  /** Every worker, soonest lease expiry first. O(n): for `GET /v1/workers`, not the request path. */
  list(): Worker[] {
    return [...this.byLease.values()];
  }

  get size(): number {
    return this.byLease.size;
  }

  /**
   * Workers of `model` for `phase` (prefill: dedicated prefill workers, decode: decode|both), in
   * registration order, less the ejected ones; but never no decode worker while one is registered:
   * when every decode worker of the model is ejected (the others left after an ejection), all of
   * them are candidates, since a suspect worker beats a 503 for every request. An empty prefill
   * list only makes prefill local. O(1) after the first call following a change of membership or
   * ejection; the returned array is shared and must not be mutated.
   */
  candidates(model: string, phase: WorkerPhase): readonly Worker[] {
    const group = this.byModel.get(model);
    if (!group) return NONE;
    let list = group[phase];
    if (!list) {
      const serving = [...group.members].filter((w) => serves(w.role, phase));
      const healthy = serving.filter((w) => !this.health.isEjected(w.id));
      list = Object.freeze(healthy.length > 0 || phase === 'prefill' ? healthy : serving);
      group[phase] = list;
    }
    return list;
  }

  /** A call to the worker succeeded (its first chunk or its answer came). */
  recordSuccess(workerId: string): void {
    this.health.recordSuccess(workerId);
  }

  /**
   * A call to the worker failed by its own fault. Ejects it after enough failures in a row, unless
   * it is the last decode-capable worker of its model in routing (`decode` and `both` count
   * together): ejecting it would leave `candidates` nothing better (see there). The last prefill
   * worker is ejected like any other: without one, prefill runs on the decode worker instead of
   * waiting out each timeout. Undefined for a worker no longer registered.
   */
  recordFailure(workerId: string, now: number): FailureVerdict | undefined {
    const worker = this.byLease.get(workerId);
    if (worker === undefined) return undefined;
    // A worker in routing (not ejected) is one of its candidates.
    const verdict = this.health.recordFailure(
      workerId,
      now,
      () => worker.role === 'prefill' || this.candidates(worker.model, 'decode').length > 1,
    );
    if (verdict.kind === 'ejected') this.invalidate(worker.model);
    return verdict;
  }

  /** Ejected workers whose time ran out by `now`, back in routing (on probation). O(ejected). */
  reinstateDue(now: number): Worker[] {
    if (this.health.ejectedCount === 0) return [];
    const back: Worker[] = [];
    for (const id of this.health.reinstateDue(now)) {
      const worker = this.byLease.get(id);
      if (worker === undefined) continue;
      this.invalidate(worker.model);
      back.push(worker);
    }
    return back;
  }

  /** Models served by at least one registered worker, sorted (for `/v1/models`). */
  models(): readonly string[] {
    this.modelNames ??= Object.freeze([...this.byModel.keys()].sort());
    return this.modelNames;
  }

  private mustGet(workerId: string): MutableWorker {
    const worker = this.byLease.get(workerId);
    if (!worker) {
      throw new KvrouteError('worker_not_found', `worker ${workerId} is not registered`, { param: 'id' });
    }
    return worker;
  }

  private remove(worker: MutableWorker): Worker {
    this.byLease.delete(worker.id);
    if (this.byAddress.get(worker.address) === worker) this.byAddress.delete(worker.address);
    const group = this.byModel.get(worker.model);
    if (group) {
      group.members.delete(worker);
      if (group.members.size === 0) {
        this.byModel.delete(worker.model);
        this.modelNames = undefined;
      } else this.invalidate(worker.model);
    }
    this.load.dropWorker(worker.id);
    this.health.remove(worker.id);
    return worker;
  }

  private groupFor(model: string): ModelGroup {
    let group = this.byModel.get(model);
    if (!group) {
      group = { members: new Set(), prefill: undefined, decode: undefined };
      this.byModel.set(model, group);
      this.modelNames = undefined;
    }
    return group;
  }

  private invalidate(model: string): void {
    const group = this.byModel.get(model);
    if (group) {
      group.prefill = undefined;
      group.decode = undefined;
    }
  }
}
