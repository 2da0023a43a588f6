// Helpers for the disaggregation tests: an in-process router (optionally with an in-memory span
// exporter) and compiled `kvroute worker` child processes registered with it.

import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import type { RouterConfig } from '../src/router/config.js';
import { createRouter, type RouterService } from '../src/router/service.js';
import { decodeJson, encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import { registerGlobalContext, resolveTelemetryConfig, type Telemetry } from '../src/telemetry/index.js';
import { type KvrouteProcess, spawnKvroute } from './trace-helpers.js';

export interface TestRouter {
  router: RouterService;
  url: string;
  /** Spans the router ended (only with `traced`). */
  exporter: InMemorySpanExporter;
}

/** A router on a free port; with `traced`, every span goes to an in-memory exporter. */
export async function startRouter(config: Partial<RouterConfig>, traced = false): Promise<TestRouter> {
  const exporter = new InMemorySpanExporter();
  let telemetry: Telemetry | undefined;
  if (traced) {
    registerGlobalContext();
    const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    telemetry = {
      tracer: provider.getTracer('kvroute-test'),
      enabled: true,
      config: resolveTelemetryConfig('kvroute-router', { OTEL_TRACES_EXPORTER: 'console' }),
      shutdown: () => provider.shutdown(),
    };
  }
  const router = await createRouter(
    { port: 0, logger: false, blockSize: 16, ...config },
    telemetry ? { telemetry } : {},
  );
  const url = await router.listen();
  return { router, url, exporter };
}

export interface TestWorker {
  proc: KvrouteProcess;
  address: string;
  /** The router's id for it. */
  id: string;
}

/** Spawns `kvroute worker` from dist and waits until the router lists it. */
export async function spawnWorker(
  router: TestRouter,
  role: 'prefill' | 'decode',
  args: string[] = [],
): Promise<TestWorker> {
  const proc = spawnKvroute(
    `${role}-worker`,
    ['worker', '--role', role, '--router', router.url, '--block-size', '16', ...args],
    {
      OTEL_TRACES_EXPORTER: 'none',
    },
  );
  const [, address] = await proc.waitForStdout(/listening on (\S+),/);
  const id = await waitFor(() => router.router.registry.list().find((w) => w.address === address)?.id);
  return { proc, address: address!, id };
}

/** Polls `probe` every 10 ms until it returns something truthy (or throws after `timeoutMs`). */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms: ${probe}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const plane = new RequestPlaneClient();

/** Unary call to a worker's endpoint (`stats`, `load`). */
export async function workerCall<T>(address: string, endpoint: string, body: unknown = {}): Promise<T> {
  return decodeJson<T>(await plane.unary(address, endpoint, encodeJson(body)));
}

export async function closePlane(): Promise<void> {
  await plane.close();
}

/** A prompt of `n` token ids that shares no block with prompts of another `seed`. */
export function prompt(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 1000 + seed * 10_000 + i);
}

/** Value of one labelled sample in the router's /metrics text (0 when absent). */
export async function metricValue(
  router: TestRouter,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const text = await router.router.metrics.registry.metrics();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !(want.length === 0 && line.startsWith(`${name} `))) continue;
    if (want.every((l) => line.includes(l))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

export async function completion(
  router: TestRouter,
  body: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(`${router.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mock-llm', ...body }),
    ...(signal ? { signal } : {}),
  });
}
