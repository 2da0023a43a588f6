// Shared helpers for router tests: spawn real `kvroute worker` processes (compiled,
// from dist/: run `npm run build` first; `npm test` does) against a router URL, wait until the
// router lists them, and kill them all at the end.
//
//   const fleet = new TestFleet(router.url);
//   after(() => fleet.killAll());
//   const [a, b] = await fleet.spawn(2);                 // --role both --port 0 --speedup 50
//   await fleet.spawn(1, ['--role', 'prefill']);         // extra args override the defaults
//   await waitForWorkers(router.url, 3);                 // GET /v1/workers lists 3
//   a.kill('SIGKILL');

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { RouterConfig } from '../../src/router/config.js';
import { createRouter, type RouterService } from '../../src/router/service.js';

/** The compiled CLI; workers run from dist/ so each starts in ~100 ms without tsx. */
export const CLI_MAIN = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));

/** Defaults for every spawned worker; later args of the same flag win (the parser keeps the last). */
export const DEFAULT_WORKER_ARGS = ['--role', 'both', '--port', '0', '--speedup', '50'];

export interface SpawnedWorker {
  child: ChildProcess;
  /** Request-plane address `host:port`, as registered with the router. */
  address: string;
  /** Resolves when the process has exited. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
}

/** Spawns one `kvroute worker --router <url> ...` and resolves once it listens. Tracing off unless env says. */
export async function spawnWorker(
  routerUrl: string,
  args: readonly string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<SpawnedWorker> {
  if (!existsSync(CLI_MAIN)) throw new Error(`${CLI_MAIN} not found: run \`npm run build\` first`);
  const child = spawn(
    process.execPath,
    [CLI_MAIN, 'worker', '--router', routerUrl, ...DEFAULT_WORKER_ARGS, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', ...env } },
  );
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    if (stderr.length < 10_000) stderr += s;
  });
  const exit = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  let stdout = '';
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      const m = /listening on (\S+),/.exec(stdout);
      if (m) resolve(m[1]!);
    });
    void exit.then(({ code }) => reject(new Error(`worker exited (${code}) before listening: ${stderr}`)));
  });
  return {
    child,
    address,
    exit,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** The workers of one test; `killAll()` in `after` so no process outlives the test file. */
export class TestFleet {
  readonly workers: SpawnedWorker[] = [];

  constructor(public routerUrl: string) {}

  /** Spawns `count` workers in parallel with the default args plus `args`. */
  async spawn(
    count: number,
    args: readonly string[] = [],
    env: NodeJS.ProcessEnv = {},
  ): Promise<SpawnedWorker[]> {
    const started = await Promise.all(
      Array.from({ length: count }, () => spawnWorker(this.routerUrl, args, env)),
    );
    this.workers.push(...started);
    return started;
  }

  /** SIGKILLs every worker still running and waits for them to exit. */
  async killAll(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    for (const w of this.workers) w.kill(signal);
    await Promise.all(this.workers.map((w) => w.exit));
  }
}

/** One row of `GET /v1/workers`. */
export interface ListedWorker {
  worker_id: string;
  role: string;
  address: string;
  model: string;
  kv_events: boolean;
  index_mode: 'events' | 'approximate';
  load: { active_prefill_tokens: number; active_decode_blocks: number; active_requests: number };
  index_blocks: number;
}

export async function listWorkers(routerUrl: string): Promise<ListedWorker[]> {
  const res = await fetch(`${routerUrl}/v1/workers`);
  if (!res.ok) throw new Error(`GET /v1/workers answered ${res.status}`);
  return ((await res.json()) as { data: ListedWorker[] }).data;
}

/** Polls `check` every 25 ms until it returns a value other than undefined/false; throws after `timeoutMs`. */
export async function waitUntil<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * Waits until the router lists exactly `count` workers (optionally: these addresses) and, for
 * workers with KV events, their subscription is up. Returns the rows.
 */
export function waitForWorkers(
  routerUrl: string,
  count: number,
  addresses?: readonly string[],
  timeoutMs = 10_000,
): Promise<ListedWorker[]> {
  return waitUntil(
    async () => {
      const rows = await listWorkers(routerUrl).catch(() => [] as ListedWorker[]);
      if (rows.length !== count) return undefined;
      if (addresses && !addresses.every((a) => rows.some((r) => r.address === a))) return undefined;
      return rows;
    },
    `${count} registered workers at ${routerUrl}`,
    timeoutMs,
  );
}

/**
 * `POST /v1/workers` for a worker the test stands in for (no process behind it unless the test
 * runs one): role `both`, model `mock-llm`, block size 16, 1024 KV blocks, unless `fields` say
 * otherwise. Returns the response: a test of refusals reads its status.
 */
export function registerWorker(routerUrl: string, fields: Record<string, unknown>): Promise<Response> {
  return fetch(`${routerUrl}/v1/workers`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'both', model: 'mock-llm', block_size: 16, kv_blocks: 1024, ...fields }),
  });
}

/** The id of a worker registered with `registerWorker`'s defaults and `fields`; asserts the 201. */
export async function registeredWorkerId(
  routerUrl: string,
  fields: Record<string, unknown>,
): Promise<string> {
  const res = await registerWorker(routerUrl, fields);
  if (res.status !== 201) throw new Error(`registration refused: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { worker_id: string }).worker_id;
}

/** Whether a process with this pid is running (signal 0 probes without signalling). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `POST /v1/completions` with model `mock-llm` and 4 output tokens unless `body` says otherwise. */
export function postCompletion(routerUrl: string, body: object, init: RequestInit = {}): Promise<Response> {
  return fetch(`${routerUrl}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mock-llm', max_tokens: 4, ...body }),
    ...init,
  });
}

/** A router and its worker processes, filled in by the `before` hook of `useRouterWithFleet`. */
export interface RouterWithFleet {
  router: RouterService;
  fleet: TestFleet;
}

/**
 * Inside a `describe`: before its tests, an in-process router (`createRouter(config)`, no log, a
 * 1.5 s lease) with `workers` spawned workers (default args plus `workerArgs`) that it lists;
 * after them, the workers killed and the router closed.
 */
export function useRouterWithFleet(
  config: Partial<RouterConfig>,
  workers = 0,
  workerArgs: readonly string[] = [],
): RouterWithFleet {
  const fixture = {} as RouterWithFleet;
  before(async () => {
    fixture.router = await createRouter({ port: 0, logger: false, leaseTtlMs: 1500, ...config });
    fixture.fleet = new TestFleet(await fixture.router.listen());
    if (workers > 0) {
      await fixture.fleet.spawn(workers, workerArgs);
      await waitForWorkers(fixture.router.url, workers);
    }
  });
  after(async () => {
    await fixture.fleet?.killAll();
    await fixture.router?.close();
  });
  return fixture;
}
