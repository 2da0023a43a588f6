// One worker process's assembly: the mock engine and its driver, the request-plane server with
// the endpoints of its role, and the router lease. Lifecycle: startWorker() listens, prints
// nothing, starts registering; stop() refuses new generate/prefill at once, deregisters (the
// router stops sending), lets waiting overlapped generates take their kv_handoff, ends KV-event
// subscriptions, lets in-flight streams finish, all up to the deadline, then stops the engine.

import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Tracer } from '@opentelemetry/api';
import { createGenerateHandler, createKvHandoffHandler } from '../decode/handler.js';
import { KvHandoffBoard } from '../decode/handoff-board.js';
import { type BlockHasher, type EngineConfig, MockEngine } from '../engine/index.js';
import { KvrouteError } from '../errors.js';
import { createPrefillHandler } from '../prefill/handler.js';
import type { WorkerRole } from '../protocols/registration.js';
import type { HealthReport } from '../protocols/worker-plane.js';
import { ENDPOINTS } from '../protocols/worker-plane.js';
import { encodeJson, type RequestHandler, RequestPlaneServer } from '../tcp/index.js';
import { EngineDriver } from './engine-driver.js';
import { KvEventsHub } from './kv-events-stream.js';
import type { Log } from './log.js';
import { parseKvEventsSubscribe } from './payload.js';
import { type RegistrationRefused, RouterLease } from './router-lease.js';
import { workerStats } from './stats.js';

export interface WorkerConfig {
  role: WorkerRole;
  routerUrl: string;
  /**
   * The router's --worker-token, sent on every control-plane call (RouterLeaseOptions.workerToken)
   * and required on every request-plane frame (RequestPlaneServerOptions.authToken).
   */
  workerToken?: string;
  host: string;
  port: number;
  model: string;
  engine: Partial<EngineConfig> &
    Pick<EngineConfig, 'blockSize' | 'kvBlocks' | 'maxBatchedTokens' | 'speedup'>;
  /** How long stop() lets in-flight streams run before cutting them. */
  drainDeadlineMs: number;
  /** Blocks' worth of live KV events one subscriber may fall behind before it is cut off. */
  kvEventsBacklog: number;
  log: Log;
  /** This process's tracer (telemetry.tracer): request-plane and engine spans. Default: the API global. */
  tracer?: Tracer;
  /** The router refused the registration for good (RouterLease): the worker will never be routed to. */
  onRegistrationRefused?: (err: RegistrationRefused) => void;
  /** Plain lines for the operator about reaching the router (RouterLeaseOptions.notice). */
  notice?: (line: string) => void;
}

export interface RunningWorker {
  /** Request-plane address, `host:port`. */
  readonly address: string;
  readonly engine: MockEngine;
  readonly lease: RouterLease;
  /** Deregisters, drains, closes. Idempotent. */
  stop(): Promise<void>;
}

export async function startWorker(config: WorkerConfig, hasher: BlockHasher): Promise<RunningWorker> {
  const engine = new MockEngine(config.engine, hasher);
  const driver = new EngineDriver(engine, undefined, config.tracer);
  const hub = new KvEventsHub(engine);
  const server = new RequestPlaneServer({
    ...(config.tracer ? { tracer: config.tracer } : {}),
    ...(config.workerToken !== undefined ? { authToken: config.workerToken } : {}),
  });
  let address = '';
  let lease: RouterLease | undefined;
  let draining = false;
  const workerId = () => lease?.workerId ?? address;

  // New work is refused as soon as stop() begins, before the deregistration reaches the router:
  // served, it would extend the drain and risk being cut at its deadline. `overloaded` is the
  // handler error the router retries on another worker (src/router/execute/worker-call.ts).
  const unlessDraining =
    (handler: RequestHandler): RequestHandler =>
    async (req) => {
      if (draining) {
        throw new KvrouteError('overloaded', 'worker is draining: it takes no new requests', {
          retryAfterSeconds: 1,
        });
      }
      return handler(req);
    };
  if (config.role !== 'decode') {
    server.handle(ENDPOINTS.prefill, unlessDraining(createPrefillHandler({ driver, workerId })));
  }
  const handoffs = new KvHandoffBoard();
  if (config.role !== 'prefill') {
    server.handle(ENDPOINTS.generate, unlessDraining(createGenerateHandler(driver, handoffs)));
    // Not refused while draining: a generate already waiting gets its handoff as a new request.
    server.handle(ENDPOINTS.kvHandoff, createKvHandoffHandler(handoffs));
  }
  server.handle(ENDPOINTS.kvEvents, async (req) => {
    const { after_event_id } = parseKvEventsSubscribe(req.payload);
    const chunks = hub.subscribe({
      afterEventId: after_event_id ?? 0,
      maxBacklog: config.kvEventsBacklog,
      signal: req.signal,
    });
    return mapChunks(chunks);
  });
  server.handle(ENDPOINTS.load, async () => encodeJson(engine.load()));
  server.handle(ENDPOINTS.health, async () => {
    const report: HealthReport = { ok: !draining, worker_id: lease?.workerId ?? null, role: config.role };
    return encodeJson(report);
  });
  server.handle(ENDPOINTS.stats, async () =>
    encodeJson(workerStats(engine, hub.subscribers, handoffs.waitingCount)),
  );

  await server.listen(config.port, config.host);
  address = server.address;
  lease = new RouterLease({
    routerUrl: config.routerUrl,
    registration: {
      role: config.role,
      address,
      model: config.model,
      block_size: engine.config.blockSize,
      kv_blocks: engine.config.kvBlocks,
      max_batched_tokens: engine.config.maxBatchedTokens,
      kv_events: true,
      // This process: a registration it repeats (its answer lost) renews its worker at the router
      // instead of replacing it as a restart would.
      instance_id: randomUUID(),
    },
    log: config.log,
    ...(config.workerToken !== undefined ? { workerToken: config.workerToken } : {}),
    ...(config.onRegistrationRefused ? { onRefused: config.onRegistrationRefused } : {}),
    ...(config.notice ? { notice: config.notice } : {}),
  });
  lease.start();
  const activeLease = lease;

  let stopping: Promise<void> | undefined;
  return {
    address,
    engine,
    lease: activeLease,
    stop() {
      stopping ??= (async () => {
        draining = true;
        await activeLease.stop();
        const deadline = performance.now() + config.drainDeadlineMs;
        config.log('draining', { in_flight: driver.inFlight, handoffs_waiting: handoffs.waitingCount });
        // A generate waiting for its kv_handoff gets it as a new request, which the closed server
        // would refuse: the server stays open until none waits (each wait is bounded, and so is this).
        // It also stays open while requests run: late requests (a generate sent after its prefill
        // leg, to a decode worker chosen before it) then get the handlers' drain answer,
        // `overloaded`, not the closing server's `shutting_down`. A waiter that got its handoff
        // joins the requests in flight, so both are waited for until neither is left.
        while ((handoffs.waitingCount > 0 || driver.inFlight > 0) && performance.now() < deadline) {
          await untilDeadline(handoffs.whenNoneWaiting(), deadline);
          await untilDeadline(driver.whenIdle(), deadline);
        }
        hub.endAll();
        await server.close({ deadlineMs: Math.max(0, deadline - performance.now()) });
        handoffs.close();
        driver.close();
        config.log('stopped', {});
      })();
      return stopping;
    },
  };
}

/** Resolves when `promise` does or at `deadline` (performance.now() time), whichever comes first. */
async function untilDeadline(promise: Promise<void>, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, deadline - performance.now()));
  });
  await Promise.race([promise, expired]);
  clearTimeout(timer);
}

async function* mapChunks(chunks: AsyncIterable<unknown>): AsyncGenerator<Uint8Array> {
  for await (const chunk of chunks) yield encodeJson(chunk);
}
