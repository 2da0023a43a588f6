// The router's Prometheus metrics, one registry per router instance (tests run several routers in
// one process). Per-worker and index gauges are read at scrape time from the live structures
// through `collect` callbacks, so the request path never writes them. prom-client's default process
// metrics (process_*, nodejs_*) are on every router's registry too.

import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from 'prom-client';
import { type HistogramSeries, RequestHistogram } from './request-histogram.js';

/** What the scrape-time gauges read. */
export interface MetricsSources {
  /** Every registered worker, ejected ones included. */
  workers(): Iterable<{
    id: string;
    model: string;
    role: string;
    activePrefillTokens: number;
    activeDecodeBlocks: number;
  }>;
  indexBlocks(): number;
  /** Workers out of routing now (outlier ejection); absent: none. */
  ejectedWorkers?(): number;
  /** Requests admitted and not finished (the --max-inflight count). */
  inflight(): number;
  /** The configured --max-inflight; absent: no kvroute_max_inflight. */
  maxInflight?: number;
  /** Whether GET /ready answers 200 now (its rule, http/ops.ts); absent: no kvroute_ready. */
  ready?(): boolean;
  /** Prompt texts tokenized since start, by path (the tokenizer's counters); absent: none. */
  tokenizer?(): Readonly<Record<TokenizePath, number>>;
}

/** How a prompt text was tokenized: on the event loop, in the pool, refused (queue full), dropped (client gone). */
export type TokenizePath = 'inline' | 'pooled' | 'rejected' | 'cancelled';
const TOKENIZE_PATHS: readonly TokenizePath[] = ['inline', 'pooled', 'rejected', 'cancelled'];

const LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const ITL_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
// From a cache-hot score (~1 µs) to tokenizing a long prompt in the pool (tens of ms for 20k tokens,
// more up to --max-prompt-tokens).
const ROUTING_BUCKETS_S = [
  1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
  0.25, 0.5,
];

let processMetrics: Registry | undefined;

/**
 * prom-client's default metrics, made once per process and shared by every router's registry: each
 * `collectDefaultMetrics` call starts an event-loop-delay monitor and a GC observer that nothing
 * ever stops, so one call per router would leave one of each behind for every router a test
 * process makes. The series describe the process, which all its routers share anyway.
 */
function defaultProcessMetrics(): Registry {
  if (processMetrics === undefined) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics });
  }
  return processMetrics;
}

export type RoutingPhase = 'tokenize' | 'hash' | 'match' | 'score';

export class RouterMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'status' | 'code'>;
  readonly ttft: RequestHistogram;
  readonly itl: RequestHistogram;
  readonly routingPhase: Record<RoutingPhase, HistogramSeries>;
  readonly promptTokens: Counter;
  readonly cachedTokens: Counter;
  readonly kvEventsApplied: Counter;
  readonly kvEventsRejected: Counter<'reason'>;
  readonly kvResyncs: Counter<'reason'>;
  readonly retries: Counter<'reason'>;
  readonly disaggDecisions: Counter<'decision' | 'reason'>;
  readonly prefillFallbacks: Counter<'reason'>;
  readonly handoffRedeliveries: Counter<'reason'>;
  readonly workerEjections: Counter<'role'>;

  constructor(sources: MetricsSources) {
    // The array holds the metric objects themselves (typed as their plain-object view).
    for (const metric of defaultProcessMetrics().getMetricsAsArray()) {
      this.registry.registerMetric(metric as unknown as Metric);
    }
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'kvroute_http_requests_total',
      help: 'HTTP requests by route, status and error code (src/errors.ts; empty for a success)',
      labelNames: ['route', 'status', 'code'],
      registers,
    });
    this.ttft = new RequestHistogram({
      name: 'kvroute_time_to_first_token_seconds',
      help: 'Time from request arrival to the first output token',
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.itl = new RequestHistogram({
      name: 'kvroute_inter_token_latency_seconds',
      help: 'Time between consecutive output chunks of a stream',
      buckets: ITL_BUCKETS_S,
      registers,
    });
    const routing = new RequestHistogram({
      name: 'kvroute_routing_decision_seconds',
      help: 'Routing decision time by phase: tokenize, hash, match (index lookup), score (policy)',
      labelNames: ['phase'],
      buckets: ROUTING_BUCKETS_S,
      registers,
    });
    // Series resolved once: observing through them is a bucket search and three additions.
    this.routingPhase = {
      tokenize: routing.labels({ phase: 'tokenize' }),
      hash: routing.labels({ phase: 'hash' }),
      match: routing.labels({ phase: 'match' }),
      score: routing.labels({ phase: 'score' }),
    };
    this.promptTokens = new Counter({
      name: 'kvroute_prompt_tokens_total',
      help: 'Prompt tokens of completed requests',
      registers,
    });
    this.cachedTokens = new Counter({
      name: 'kvroute_cached_tokens_total',
      help: 'Prompt tokens that workers reported as reused from KV cache',
      registers,
    });
    const prompt = this.promptTokens;
    const cached = this.cachedTokens;
    new Gauge({
      name: 'kvroute_cache_hit_ratio',
      help: 'Cached prompt tokens over prompt tokens, since start',
      registers,
      async collect() {
        const p = (await prompt.get()).values[0]?.value ?? 0;
        const c = (await cached.get()).values[0]?.value ?? 0;
        this.set(p === 0 ? 0 : c / p);
      },
    });
    new Gauge({
      name: 'kvroute_workers',
      help: 'Registered workers by model and role, ejected ones included',
      labelNames: ['model', 'role'],
      registers,
      collect() {
        this.reset();
        for (const w of sources.workers()) this.inc({ model: w.model, role: w.role });
      },
    });
    const ready = sources.ready;
    if (ready !== undefined) {
      new Gauge({
        name: 'kvroute_ready',
        help: '1 when GET /ready answers 200 (a decode-capable worker registered, not draining), else 0',
        registers,
        collect() {
          this.set(ready() ? 1 : 0);
        },
      });
    }
    new Gauge({
      name: 'kvroute_worker_info',
      help: 'Always 1, one series per registered worker: its role and model, to join onto the per-worker gauges by worker_id',
      labelNames: ['worker_id', 'role', 'model'],
      registers,
      collect() {
        this.reset();
        for (const w of sources.workers()) this.set({ worker_id: w.id, role: w.role, model: w.model }, 1);
      },
    });
    new Gauge({
      name: 'kvroute_worker_active_prefill_tokens',
      help: 'Prefill tokens booked on each worker and not yet done',
      labelNames: ['worker_id'],
      registers,
      collect() {
        this.reset();
        for (const w of sources.workers()) this.set({ worker_id: w.id }, w.activePrefillTokens);
      },
    });
    new Gauge({
      name: 'kvroute_worker_active_decode_blocks',
      help: 'KV blocks booked on each worker by running streams',
      labelNames: ['worker_id'],
      registers,
      collect() {
        this.reset();
        for (const w of sources.workers()) this.set({ worker_id: w.id }, w.activeDecodeBlocks);
      },
    });
    new Gauge({
      name: 'kvroute_requests_in_flight',
      help: 'Inference requests admitted and not finished (bounded by --max-inflight)',
      registers,
      collect() {
        this.set(sources.inflight());
      },
    });
    if (sources.maxInflight !== undefined) {
      // Fixed for the router's life: set once, so a ratio needs no threshold copied from its flags.
      new Gauge({
        name: 'kvroute_max_inflight',
        help: 'The configured --max-inflight: past it new inference requests get 503 overloaded',
        registers,
      }).set(sources.maxInflight);
    }
    // A counter read from the tokenizer's own counts at scrape time: incremented by what they grew.
    const tokenizeSeen: Record<TokenizePath, number> = { inline: 0, pooled: 0, rejected: 0, cancelled: 0 };
    new Counter({
      name: 'kvroute_tokenize_total',
      help: 'Prompt texts tokenized, by path: inline (event loop), pooled (worker thread), rejected (pool queue full, 503), cancelled (client left while it waited)',
      labelNames: ['path'],
      registers,
      collect() {
        const now = sources.tokenizer?.();
        for (const path of TOKENIZE_PATHS) {
          const grown = Math.max(0, (now?.[path] ?? 0) - tokenizeSeen[path]);
          // By 0 too: every path is listed from the first scrape.
          this.inc({ path }, grown);
          tokenizeSeen[path] += grown;
        }
      },
    });
    new Gauge({
      name: 'kvroute_index_blocks',
      help: 'Blocks held in the KV prefix index (all workers)',
      registers,
      collect() {
        this.set(sources.indexBlocks());
      },
    });
    this.kvEventsApplied = new Counter({
      name: 'kvroute_kv_events_applied_total',
      help: 'KV events applied to the index',
      registers,
    });
    this.kvEventsRejected = new Counter({
      name: 'kvroute_kv_events_rejected_total',
      help: 'KV events the index rejected, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.kvResyncs = new Counter({
      name: 'kvroute_kv_resyncs_total',
      help: 'Times a worker was resynchronised from a dump, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.retries = new Counter({
      name: 'kvroute_request_retries_total',
      help: 'Requests retried on another worker, by failure kind',
      labelNames: ['reason'],
      registers,
    });
    this.disaggDecisions = new Counter({
      name: 'kvroute_disagg_decisions_total',
      help: 'Prefill placement decisions: remote or local, by reason',
      labelNames: ['decision', 'reason'],
      registers,
    });
    this.prefillFallbacks = new Counter({
      name: 'kvroute_prefill_fallbacks_total',
      help: 'Remote prefills that failed before the handoff and were redone locally, by failure kind',
      labelNames: ['reason'],
      registers,
    });
    this.handoffRedeliveries = new Counter({
      name: 'kvroute_handoff_redeliveries_total',
      help: 'KV handoffs delivered again to the decode worker they never reached, by failure kind',
      labelNames: ['reason'],
      registers,
    });
    this.workerEjections = new Counter({
      name: 'kvroute_worker_ejections_total',
      help: 'Workers taken out of routing for failing requests in a row (--eject-after-failures), by role',
      labelNames: ['role'],
      registers,
    });
    new Gauge({
      name: 'kvroute_workers_ejected',
      help: 'Workers out of routing now for failing requests in a row; back on probation when their time runs out',
      registers,
      collect() {
        this.set(sources.ejectedWorkers?.() ?? 0);
      },
    });
  }
}
