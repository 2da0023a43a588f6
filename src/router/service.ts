// The router service: one fastify app, one request-plane client, one fleet (registry + indexes +
// KV-event subscriptions), one policy, one tokenizer, one metrics registry. `createRouter` builds
// them; `listen()` starts serving; `close()` refuses new requests, ends open streams, stops the
// fleet and releases threads and sockets. Used in-process by tests and benches and by the CLI.

import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { KvrouteError } from '../errors.js';
import type { RadixIndex } from '../kv-index/index.js';
import { RequestPlaneClient } from '../tcp/index.js';
import { initTelemetry, type Telemetry, withRootContext } from '../telemetry/index.js';
import { checkWorkerToken, type RouterConfig, resolveRouterConfig } from './config.js';
import { aggregatedExecutor } from './execute/aggregated.js';
import { DisaggregatedExecutor } from './execute/disaggregated.js';
import { KvPrefillPlanner } from './execute/prefill-planner.js';
import type { RequestAbort } from './execute/request-abort.js';
import type { Executor, PrefillPlanner } from './execute/types.js';
import { Fleet } from './fleet/fleet.js';
import { createApp } from './http/app.js';
import { registerInferenceRoutes } from './http/inference.js';
import { notReady, registerOpsRoutes } from './http/ops.js';
import { registerWorkerRoutes } from './http/workers.js';
import { RouterMetrics } from './metrics.js';
import { DEFAULT_LIMITS } from './openai/request.js';
import { InflightLimit } from './pipeline/admission.js';
import type { PipelineDeps } from './pipeline/deps.js';
import { WorkerRegistry } from './registry/index.js';
import { createPolicy, seededRng } from './scheduling/index.js';
import { Tokenizer } from './tokenizer/index.js';

/** How long close() lets open connections finish after ending the streams. */
const CLOSE_GRACE_MS = 500;

export interface RouterService {
  readonly app: FastifyInstance;
  readonly config: RouterConfig;
  /** Base URL once listening (`http://host:port`), else ''. */
  readonly url: string;
  listen(): Promise<string>;
  /**
   * Stops taking inference requests (503 shutting_down, `/ready` 503) and resolves once none is in
   * flight or `drainMs` has passed. The control plane and /health, /metrics still answer. Then
   * call close(). Idempotent.
   */
  drain(): Promise<void>;
  /** Ends what is in flight (503 shutting_down), stops listening, releases workers. Idempotent. */
  close(): Promise<void>;
  readonly registry: WorkerRegistry;
  /** The KV-event fed index (workers in approximate mode live in `fleet.approx`). */
  readonly index: RadixIndex;
  readonly fleet: Fleet;
  readonly metrics: RouterMetrics;
  readonly telemetry: Telemetry;
  /** Requests admitted and not finished. */
  readonly inflight: InflightLimit;
}

/** Extension points for other areas (disaggregation); defaults run everything aggregated. */
export interface RouterExtensions {
  prefillPlanner?: PrefillPlanner;
  disaggregatedExecutor?: Executor;
  /** The router's telemetry (tests inject one with an in-memory exporter); default from OTEL_*. */
  telemetry?: Telemetry;
}

export async function createRouter(
  overrides: Partial<RouterConfig> = {},
  extensions: RouterExtensions = {},
): Promise<RouterService> {
  const config = resolveRouterConfig(overrides);
  checkWorkerToken(config.workerToken);
  const telemetry = extensions.telemetry ?? initTelemetry({ serviceName: 'kvroute-router' });
  const registry = new WorkerRegistry({
    blockSize: config.blockSize,
    leaseTtlMs: config.leaseTtlMs,
    health: { failuresToEject: config.ejectAfterFailures, baseEjectionMs: config.ejectionMs },
    // Ids unique across router restarts: `w-1` of the old router must not name a new router's worker.
    idPrefix: `w${randomBytes(3).toString('hex')}-`,
  });
  let fleet: Fleet | undefined;
  const metrics = new RouterMetrics({
    workers: () =>
      registry.list().map((w) => ({
        id: w.id,
        model: w.model,
        role: w.role,
        activePrefillTokens: w.load.activePrefillTokens,
        activeDecodeBlocks: w.load.activeDecodeBlocks,
      })),
    indexBlocks: () => fleet?.indexBlocks() ?? 0,
    ejectedWorkers: () => registry.health.ejectedCount,
    inflight: () => inflight.active,
    maxInflight: config.maxInflight,
    ready: () => notReady(registry, draining) === undefined,
    tokenizer: () => tokenizer.stats,
  });
  let closing = false;
  let draining = false;
  const app = createApp({
    config,
    metrics,
    tracer: telemetry.tracer,
    isClosing: () => closing,
    isDraining: () => draining,
  });
  const client = new RequestPlaneClient({
    firstResponseTimeoutMs: config.firstTokenTimeoutMs,
    tracer: telemetry.tracer,
    // Workers with the token serve only frames that carry it: every call (generate, prefill,
    // kv_handoff, kv_events, load, health, stats) goes through this one client.
    ...(config.workerToken !== undefined ? { authToken: config.workerToken } : {}),
  });
  fleet = new Fleet({ registry, client, metrics, log: app.log, approxTtlMs: config.approxTtlMs });
  const tokenizer = new Tokenizer();
  await tokenizer.warmup();
  const schedulerConfig = {
    policy: config.policy,
    blockSize: config.blockSize,
    overlapWeight: config.overlapWeight,
    temperature: config.temperature,
    busyPrefillTokens: config.busyPrefillTokens,
    busyDecodeFraction: config.busyDecodeFraction,
    // One random source for both policies, so a seeded router repeats its choices exactly.
    ...(config.rng ? { rng: config.rng } : config.seed !== undefined ? { rng: seededRng(config.seed) } : {}),
  };
  const policy = createPolicy(schedulerConfig);
  // Prefill placement gets its own instance: sharing one would advance round-robin's cursor twice
  // per request, and with `both` workers in both lists every decode pick landed on the same worker.
  const prefillPolicy = createPolicy(schedulerConfig);
  const pipeline: PipelineDeps = {
    config,
    limits: {
      ...DEFAULT_LIMITS,
      maxOutputTokens: config.maxOutputTokens,
      maxPromptTokens: config.maxPromptTokens,
    },
    fleet,
    policy,
    prefillPolicy,
    tokenizer,
    metrics,
    tracer: telemetry.tracer,
    log: app.log,
    client,
    executors: {
      aggregated: aggregatedExecutor,
      // Disaggregation (docs/disaggregation.md) is always on: with no prefill worker it plans local.
      disaggregated:
        extensions.disaggregatedExecutor ??
        new DisaggregatedExecutor({
          tracer: telemetry.tracer,
          local: aggregatedExecutor,
          overlapped: config.overlappedPrefill,
          enforceDisagg: config.enforceDisagg,
        }),
    },
    prefillPlanner:
      extensions.prefillPlanner ??
      new KvPrefillPlanner({
        registry,
        policy: prefillPolicy,
        tracer: telemetry.tracer,
        metrics,
        maxLocalPrefill: config.maxLocalPrefill,
        enforceDisagg: config.enforceDisagg,
      }),
  };
  const inflight = new InflightLimit(config.maxInflight);
  const active = new Set<RequestAbort>();
  registerOpsRoutes(app, fleet, metrics, () => draining);
  registerWorkerRoutes(app, fleet, config.workerToken);
  registerInferenceRoutes(app, {
    pipeline,
    limit: inflight,
    active,
    isDraining: () => draining,
    clientStallTimeoutMs: config.clientStallTimeoutMs,
  });

  // A connection flood (or slow clients, which node's request timeout bounds only at 30-60 s per
  // socket) is bounded in sockets: past the limit node closes a new connection at once.
  app.server.maxConnections = config.maxConnections;
  const sockets = new Set<Socket>();
  app.server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  let url = '';
  let drained: Promise<void> | undefined;
  let closed: Promise<void> | undefined;
  const theFleet = fleet;
  return {
    app,
    config,
    get url() {
      return url;
    },
    async listen() {
      // Root context: the listening socket (and each connection it accepts) keeps the context it
      // is made in, whoever called listen() (an embedder may be inside a span).
      await withRootContext(() => app.listen({ host: config.host, port: config.port }));
      const { port } = app.server.address() as { port: number };
      const host = config.host.includes(':') ? `[${config.host}]` : config.host;
      url = `http://${host}:${port}`;
      theFleet.start();
      return url;
    },
    drain() {
      drained ??= (async () => {
        draining = true;
        const until = performance.now() + config.drainMs;
        while (active.size > 0 && performance.now() < until) await sleep(20);
      })();
      return drained;
    },
    close() {
      closed ??= (async () => {
        closing = true;
        const reason = new KvrouteError('shutting_down', 'the router is shutting down', {
          retryAfterSeconds: 1,
        });
        for (const ac of active) ac.abort(reason);
        // Let the aborted responses finish first: server.close() only ends connections idle at
        // the moment it is called.
        const drainBy = Date.now() + CLOSE_GRACE_MS;
        while (active.size > 0 && Date.now() < drainBy) await sleep(5);
        // The aborted requests answer at once; a socket still open after a short grace (seen:
        // a client's spare connection that never sent a request) would hold close() until the
        // keep-alive timeout, so it is cut.
        const cut = setTimeout(() => {
          for (const socket of sockets) socket.destroy();
        }, CLOSE_GRACE_MS);
        await app.close();
        clearTimeout(cut);
        await theFleet.close();
        await client.close();
        await tokenizer.close();
        await telemetry.shutdown();
      })();
      return closed;
    },
    registry,
    index: fleet.index,
    fleet,
    metrics,
    telemetry,
    inflight,
  };
}
