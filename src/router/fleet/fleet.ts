// The fleet: the registry plus everything that must follow a worker's membership. Registering a
// worker starts its KV-event subscription (or puts it in approximate mode when it publishes no
// events); removing it (deregistration, lease expiry, replacement at the same address, refused
// connections) purges its index entries, drops its load, stops its subscription and closes its
// request-plane pool: at once when the process is gone, else once the pool carries no stream (a
// draining worker finishes its streams). Lease expiry, and the pools of addresses no registered
// worker uses that were still busy, are swept by an unref'd interval.

import type { FastifyBaseLogger } from 'fastify';
import { ApproxIndex, type BlockKeys, RadixIndex } from '../../kv-index/index.js';
import type { RequestPlaneClient } from '../../tcp/index.js';
import { withRootContext } from '../../telemetry/index.js';
import { KvEventsSubscriber } from '../kv-events/subscriber.js';
import type { RouterMetrics } from '../metrics.js';
import type { Worker, WorkerRegistry } from '../registry/index.js';
import type { OverlapSource } from '../scheduling/index.js';

export interface FleetOptions {
  registry: WorkerRegistry;
  client: RequestPlaneClient;
  metrics: RouterMetrics;
  log: FastifyBaseLogger;
  approxTtlMs: number;
  /** Lease sweep period (default: a quarter of the lease TTL, within 50..1000 ms). */
  sweepIntervalMs?: number;
}

export type RemovalReason = 'deregistered' | 'lease_expired' | 'replaced' | 'unreachable';

const NO_OVERLAP: OverlapSource = { get: () => undefined };

/**
 * The clock of leases (ms): monotonic, never Date.now(). The wall clock steps (NTP corrections, a
 * VM resumed from a pause): a step forward ran every live lease out at the next sweep, a step back
 * kept dead workers listed and broke the registry's expiry order.
 */
export function leaseClock(): number {
  // Whole milliseconds, as Date.now() gave: GET /v1/workers shows lease_expires_in_ms as an integer.
  return Math.floor(performance.now());
}

export class Fleet {
  readonly registry: WorkerRegistry;
  /** Exact index fed by KV events. */
  readonly index = new RadixIndex();
  /** Credit-based index for workers without KV events. */
  readonly approx: ApproxIndex;
  private readonly subscribers = new Map<string, KvEventsSubscriber>();
  private readonly approxWorkers = new Set<string>();
  /** Live worker id at each address: a pool is closed only when no live worker uses it. */
  private readonly liveAt = new Map<string, string>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly sweepPeriodMs: number;
  /** When the router last ran a sweep or a lease call (undefined before its first sweep). */
  private awakeAt: number | undefined;

  constructor(private readonly opts: FleetOptions) {
    this.registry = opts.registry;
    this.approx = new ApproxIndex({ ttlMs: opts.approxTtlMs });
    const ttl = this.registry.leaseTtlMs;
    this.sweepPeriodMs = opts.sweepIntervalMs ?? Math.max(50, Math.min(1000, Math.floor(ttl / 4)));
  }

  start(): void {
    // Root context: lease expiry serves every worker, whoever called start().
    this.sweepTimer = withRootContext(() => setInterval(() => this.sweep(leaseClock()), this.sweepPeriodMs));
    this.sweepTimer.unref();
  }

  /**
   * A lease measures a worker's silence, not the router's: when the router itself ran nothing for
   * more than two sweep periods (the process was paused, its event loop blocked), it could not hear
   * the heartbeats sent meanwhile, and every lease would run out at once as it resumed (the whole
   * healthy fleet re-registered, its index rebuilt). So every lease moves by the stall first.
   */
  private catchUp(now: number): void {
    // Nothing to measure from before the first sweep (the sweep timer is what keeps time).
    if (this.awakeAt === undefined) return;
    const stalled = now - this.awakeAt - this.sweepPeriodMs;
    if (stalled > this.sweepPeriodMs) this.registry.extendLeases(stalled);
    this.awakeAt = Math.max(now, this.awakeAt);
  }

  register(body: unknown, now: number, peerHost?: string): Worker {
    this.catchUp(now);
    const { worker, replaced, repeated } = this.registry.register(body, now, peerHost);
    // The same process registering again: its worker, subscription and index stay as they are.
    if (repeated) return worker;
    if (replaced) this.purge(replaced, 'replaced');
    this.liveAt.set(worker.address, worker.id);
    if (worker.kvEvents && !this.closed) {
      const sub = new KvEventsSubscriber(worker, {
        client: this.opts.client,
        index: this.index,
        metrics: this.opts.metrics,
        log: this.opts.log,
        onUnreachable: (w) => this.remove(w.id, 'unreachable'),
      });
      this.subscribers.set(worker.id, sub);
      sub.start();
    } else this.approxWorkers.add(worker.id);
    this.opts.log.info(
      {
        event: 'worker_registered',
        worker_id: worker.id,
        role: worker.role,
        address: worker.address,
        model: worker.model,
        kv_events: worker.kvEvents,
      },
      'worker registered',
    );
    return worker;
  }

  /**
   * Renews a lease; throws worker_not_found (404) for an unknown id or a lease that ran out. Leases
   * that ran out are removed first, as the sweep would: the refused worker registers again at the
   * same address, which must find it gone (expired: its streams go on), not replace it (a
   * replaced worker's process is gone, and its streams are cut).
   */
  heartbeat(workerId: string, now: number): Worker {
    this.catchUp(now);
    this.expire(now);
    return this.registry.heartbeat(workerId, now);
  }

  /** Removes a worker; throws worker_not_found (404) for an unknown id. */
  deregister(workerId: string): Worker {
    const worker = this.registry.deregister(workerId);
    this.purge(worker, 'deregistered');
    return worker;
  }

  /** Removes a worker if it is still registered (no error otherwise). */
  remove(workerId: string, reason: RemovalReason): void {
    if (!this.registry.get(workerId)) return;
    this.purge(this.registry.deregister(workerId), reason);
  }

  expire(now: number): void {
    for (const worker of this.registry.expire(now)) this.purge(worker, 'lease_expired');
  }

  /**
   * One sweep at `now` (the interval runs it; tests call it with their own clock): leases moved by
   * a stall of the router (catchUp), lease expiry, then the request-plane pools of addresses no
   * registered worker uses and whose streams have ended since (a draining worker's, or one a late
   * call dialled), O(pools).
   */
  sweep(now: number): void {
    this.awakeAt ??= now;
    this.catchUp(now);
    this.expire(now);
    for (const worker of this.registry.reinstateDue(now)) {
      // At the ejection's level: an operator who saw it go must see it come back.
      this.opts.log.warn(
        { event: 'worker_reinstated', worker_id: worker.id, address: worker.address },
        'worker back in routing on probation',
      );
    }
    this.opts.client.closeIdlePools((address) => !this.liveAt.has(address));
  }

  /**
   * The outcome of one call to a worker: `failure` undefined for a success (its first chunk or its
   * answer came), else the error, which the caller has judged the worker's own fault. Enough
   * failures in a row take the worker out of routing (the registry's WorkerHealth); that is
   * logged and counted here. By id, not address: the streams a replaced worker's pool cuts fail
   * after its successor at the same address registered, and are not the successor's. A worker no
   * longer registered is ignored. A success costs one map lookup.
   */
  recordCall(workerId: string, failure: unknown, now: number = leaseClock()): void {
    if (failure === undefined) {
      this.registry.recordSuccess(workerId);
      return;
    }
    const verdict = this.registry.recordFailure(workerId, now);
    if (verdict === undefined || verdict.kind === 'counted') return;
    const worker = this.registry.get(workerId)!;
    const fields = {
      worker_id: workerId,
      address: worker.address,
      role: worker.role,
      failures: verdict.failures,
      error: String(failure),
    };
    if (verdict.kind === 'ejected') {
      this.opts.metrics.workerEjections.inc({ role: worker.role });
      this.opts.log.warn(
        { event: 'worker_ejected', ...fields, ejected_for_ms: verdict.forMs },
        'worker taken out of routing: it failed requests in a row',
      );
    } else if (verdict.failures === this.registry.health.failuresToEject) {
      // Once per run of failures: every further failure would say the same.
      this.opts.log.warn(
        { event: 'worker_failing', ...fields },
        'worker failing requests in a row, but kept in routing: it is the last decode-capable worker of its model',
      );
    }
  }

  /** Leading prompt blocks per worker from both indexes. Valid until either index next changes. */
  overlaps(keys: BlockKeys): OverlapSource {
    const exact = this.index.findMatches(keys);
    if (this.approxWorkers.size === 0) return exact;
    const approx = this.approx.findMatches(keys);
    // An index that matched nothing answers undefined for everyone: skip its lookup per candidate.
    if (approx.longest === 0) return exact;
    if (exact.longest === 0) return approx;
    return { get: (id) => exact.get(id) ?? approx.get(id) };
  }

  /** After routing: a worker without KV events is assumed to cache the prompt's blocks now. */
  credit(workerId: string, keys: BlockKeys): void {
    if (this.approxWorkers.has(workerId) && keys.length > 0) this.approx.credit(workerId, keys);
  }

  /**
   * Blocks indexed per worker (for GET /v1/workers), from one read of each index's statistics:
   * a read tabulates every indexed worker, so reading once per worker made the list O(workers²).
   */
  indexBlocksByWorker(): (workerId: string) => number {
    const exact = this.index.stats().blocksPerWorker;
    const approx = this.approxWorkers.size > 0 ? this.approx.stats().blocksPerWorker : {};
    return (workerId) => (this.approxWorkers.has(workerId) ? approx[workerId] : exact[workerId]) ?? 0;
  }

  /** Blocks held in both indexes (for the scrape-time gauge). */
  indexBlocks(): number {
    return this.index.stats().blocks + (this.approxWorkers.size > 0 ? this.approx.stats().blocks : 0);
  }

  /** Whether the worker's KV-event subscription is live (false: approximate mode). */
  subscribed(workerId: string): boolean {
    return this.subscribers.has(workerId);
  }

  static readonly NO_OVERLAP = NO_OVERLAP;

  async close(): Promise<void> {
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    const subs = [...this.subscribers.values()];
    this.subscribers.clear();
    await Promise.all(subs.map((s) => s.stop()));
  }

  private purge(worker: Worker, reason: RemovalReason): void {
    this.index.removeWorker(worker.id);
    this.approx.removeWorker(worker.id);
    this.approxWorkers.delete(worker.id);
    const sub = this.subscribers.get(worker.id);
    this.subscribers.delete(worker.id);
    void sub?.stop();
    if (this.liveAt.get(worker.address) === worker.id) {
      this.liveAt.delete(worker.address);
      // A dead or replaced process has nothing left to cut. A worker that deregistered (it is
      // draining) or whose lease ran out (maybe just slow) keeps its open streams: its pool
      // closes now if idle, else at the first sweep after its last stream ends. Left open, the
      // pools of departed addresses piled up (workers on --port 0 get a new one per restart).
      if (reason === 'unreachable' || reason === 'replaced')
        void this.opts.client.closeAddress(worker.address);
      else this.opts.client.closeIfIdle(worker.address);
    }
    // A lease that ran out means a worker went silent (hung, partitioned, overloaded): an operator
    // must hear of it at the default level, as of an unreachable one. Leaving on its own is routine.
    const level = reason === 'lease_expired' ? 'warn' : 'info';
    this.opts.log[level](
      { event: 'worker_removed', worker_id: worker.id, address: worker.address, reason },
      'worker removed',
    );
  }
}
