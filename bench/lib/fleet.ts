// A router and N aggregated (`--role both`) workers as child processes of the bench, on loopback.
// Children run the same CLI entry point as this process (dist, or src under tsx via execArgv).
// Their stdout is drained and their stderr kept as a short tail for error messages, so the bench's
// own stdout (results) and stderr (progress) stay clean.

import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { exitStatus, hasExited, stopChild } from './child.js';

const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const TAIL_BYTES = 4096;

export interface FleetOptions {
  workers: number;
  policy: string;
  /** Extra `kvroute router` flags, e.g. ['--max-prompt-tokens', '262144']. */
  routerArgs?: string[];
  /** Extra `kvroute worker` flags, e.g. ['--speedup', '50', '--kv-blocks', '16384']. */
  workerArgs?: string[];
  readyTimeoutMs?: number;
}

export interface Fleet {
  url: string;
  /** Worker ids as the router assigned them, in registration order. */
  workerIds: string[];
  stop(): Promise<void>;
}

interface Child {
  name: string;
  proc: ChildProcess;
  tail: () => string;
}

/** A TCP port that was free a moment ago (listen on 0, read it, close). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function startChild(name: string, args: string[]): Child {
  const proc = spawn(process.execPath, [...process.execArgv, CLI_MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env,
  });
  let tail = '';
  proc.stdout?.resume();
  proc.stderr?.on('data', (chunk: Buffer) => {
    tail = (tail + chunk.toString()).slice(-TAIL_BYTES);
  });
  return { name, proc, tail: () => tail.trim() };
}

function deathMessage(c: Child): string {
  return `${c.name} exited (${exitStatus(c.proc.exitCode, c.proc.signalCode)})${c.tail() ? `: ${c.tail()}` : ''}`;
}

async function stopChildren(children: readonly Child[]): Promise<void> {
  // Workers first (they deregister from the live router), then the router (first in the list).
  for (const c of [...children].reverse()) await stopChild(c.proc);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Worker ids listed by `GET /v1/workers` (accepts `{data: [...]}` or `{workers: [...]}`). */
export async function listWorkerIds(url: string): Promise<string[]> {
  const res = await fetch(`${url}/v1/workers`);
  if (!res.ok) return [];
  const body = (await res.json()) as { data?: unknown[]; workers?: unknown[] };
  return (body.data ?? body.workers ?? []).map((w) => {
    const r = w as { worker_id?: string; id?: string };
    return String(r.worker_id ?? r.id);
  });
}

export interface RouterProcess {
  url: string;
  stop(): Promise<void>;
}

/** Starts `kvroute router` on a free port with `args` and waits for /health. */
export async function startRouter(args: readonly string[], readyTimeoutMs = 30_000): Promise<RouterProcess> {
  const started = await launchRouter(args, Date.now() + readyTimeoutMs);
  return { url: started.url, stop: () => stopChildren([started.router]) };
}

async function launchRouter(
  args: readonly string[],
  deadline: number,
): Promise<{ url: string; router: Child }> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  // Host and port on the command line: a KVROUTE_HOST/KVROUTE_PORT in the environment must not move
  // the bench's own router (nor, below, put a worker on the router's port).
  const router = startChild('router', ['router', '--host', '127.0.0.1', '--port', String(port), ...args]);
  for (;;) {
    if (hasExited(router.proc)) throw new Error(deathMessage(router));
    if (Date.now() > deadline) {
      await stopChildren([router]);
      throw new Error(`the router did not answer /health in time: ${router.tail()}`);
    }
    if (
      await fetch(`${url}/health`).then(
        (r) => r.ok,
        () => false,
      )
    )
      return { url, router };
    await sleep(50);
  }
}

/** Starts the router, waits for /health, starts the workers, waits until all are registered. */
export async function startFleet(o: FleetOptions): Promise<Fleet> {
  const deadline = Date.now() + (o.readyTimeoutMs ?? 30_000);
  const { url, router } = await launchRouter(['--policy', o.policy, ...(o.routerArgs ?? [])], deadline);
  const children: Child[] = [router];
  const fail = async (why: string): Promise<never> => {
    await stopChildren(children);
    throw new Error(why);
  };
  for (let i = 0; i < o.workers; i++) {
    children.push(
      startChild(`worker-${i + 1}`, [
        'worker',
        ...['--role', 'both', '--router', url, '--host', '127.0.0.1', '--port', '0'],
        ...(o.workerArgs ?? []),
      ]),
    );
  }
  for (;;) {
    const dead = children.find((c) => hasExited(c.proc));
    if (dead) return fail(deathMessage(dead));
    const ids = await listWorkerIds(url).catch(() => []);
    if (ids.length >= o.workers) return { url, workerIds: ids, stop: () => stopChildren(children) };
    if (Date.now() > deadline) return fail(`only ${ids.length} of ${o.workers} workers registered in time`);
    await sleep(50);
  }
}
