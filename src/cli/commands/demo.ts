// `kvroute demo`: the router plus N prefill and N decode mock workers, each a child process of
// this one, all on loopback. Prints the URL and a first request once the fleet is ready; Ctrl-C
// (or SIGTERM, SIGHUP) stops every process it started, each with one SIGTERM: the workers
// together, then the router. Each child drains for the demo's --drain-ms (handed to it as its own)
// and is SIGKILLed only if it still runs EXIT_GRACE_MS after that; a second signal while stopping
// kills them at once. If the router dies, or a worker before the fleet is ready, the demo stops
// with exit 1.
//
// The children run in their own process group (detached), so a terminal's Ctrl-C reaches the demo
// only: sent to the whole group it gave every child a SIGINT and then stopAll's SIGTERM, and a
// second signal is a worker's "force exit", which cut the streams it should have drained. In
// return the demo must end its children on every way out it controls: stopAll, a second signal,
// SIGQUIT, and the 'exit' event (an uncaught error, process.exit).
//
// The router's control plane is protected by default: the demo gives its router and workers one
// worker token (--worker-token / KVROUTE_WORKER_TOKEN, else a random one per run), so nothing
// else that reaches the port registers a worker. It reaches the children through their
// environment (KVROUTE_WORKER_TOKEN, the variable both read), not their arguments, which any user
// of the host can read in the process list; it is never printed.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { checkWorkerToken, MAX_TIMER_MS } from '../../router/config.js';
import { isUnspecifiedHost, parseAddress } from '../../router/registry/index.js';
import type { CommandModule } from '../command.js';
import { modelName } from '../model-name.js';
import { decimalText, envName, type ParsedOptions } from '../options.js';

/**
 * How long a child may take to exit after its drain (a worker deregistering, a router closing its
 * connections, either flushing its traces) before the demo SIGKILLs it.
 */
const EXIT_GRACE_MS = 5000;

export const spec: CommandModule['spec'] = {
  usage: 'kvroute demo',
  summary:
    'Router plus mock prefill and decode workers on loopback (child processes). Prints the URL; Ctrl-C stops everything.',
  options: [
    {
      name: 'host',
      type: 'string',
      default: '127.0.0.1',
      help: 'listen address of the router and of every worker',
    },
    {
      name: 'port',
      type: 'integer',
      default: 8000,
      min: 0,
      max: 65535,
      help: 'router HTTP port (0 = any free; the URL is printed)',
    },
    { name: 'prefill', type: 'integer', default: 2, min: 0, max: 64, help: 'prefill workers to start' },
    { name: 'decode', type: 'integer', default: 2, min: 1, max: 64, help: 'decode workers to start' },
    {
      name: 'speedup',
      type: 'number',
      default: 1,
      min: 0.001,
      help: 'mock engine time divisor for every worker',
    },
    { name: 'model', type: 'string', default: 'mock-llm', help: 'model name the workers serve' },
    {
      name: 'ready-timeout-ms',
      type: 'integer',
      default: 30_000,
      min: 1000,
      help: 'how long to wait for the router and every worker to come up',
    },
    {
      name: 'drain-ms',
      type: 'integer',
      default: 30_000,
      min: 0,
      // A Node timer runs a longer delay after 1 ms: the drain would cut every stream at once.
      max: MAX_TIMER_MS,
      help: `on Ctrl-C, how long requests in flight may finish: every child gets it as its --drain-ms, and is killed if still running ${EXIT_GRACE_MS / 1000} s later`,
    },
    {
      name: 'worker-token',
      type: 'string',
      refuseEmptyEnv: true,
      help: 'the worker token of the router and every worker (give it to add workers of your own) (default: a random one per run)',
    },
  ],
};

const CLI_MAIN = fileURLToPath(new URL('../main.js', import.meta.url));

/** One /health or /v1/workers poll: a port held by something that never answers must not hang us. */
const POLL_TIMEOUT_MS = 1000;

function startChild(
  name: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  children: Map<string, ChildProcess>,
): ChildProcess {
  // Children run the same entry point as this process (dist, or src under tsx via execArgv), in a
  // process group of their own (see the top of this file).
  const child = spawn(process.execPath, [...process.execArgv, CLI_MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
    detached: true,
  });
  child.stdout?.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line) process.stdout.write(`[${name}] ${line}\n`);
  });
  children.set(name, child);
  return child;
}

/** Each poll ends after POLL_TIMEOUT_MS, or at once when the demo starts stopping. */
function pollSignal(stopping: AbortSignal): AbortSignal {
  return AbortSignal.any([stopping, AbortSignal.timeout(POLL_TIMEOUT_MS)]);
}

/**
 * The first match of `pattern` (its first group) in `child`'s stdout lines: what the child says
 * about itself once it listens. Rejects if the child exits first, at the deadline, or once the
 * demo starts stopping.
 */
function announced(
  child: ChildProcess,
  what: string,
  pattern: RegExp,
  deadline: number,
  stopping: AbortSignal,
): Promise<string> {
  return new Promise((resolve, reject) => {
    let partial = '';
    const onData = (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        const found = pattern.exec(line)?.[1];
        if (found !== undefined) return settle(() => resolve(found));
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      settle(() => reject(new Error(`the ${what} exited (${signal ?? code}) before it listened`)));
    const onAbort = () => settle(() => reject(stopping.reason));
    const timer = setTimeout(
      () => settle(() => reject(new Error(`the ${what} did not start listening in time`))),
      // A longer delay would run after 1 ms (see --drain-ms): --ready-timeout-ms has no maximum.
      Math.min(Math.max(0, deadline - Date.now()), MAX_TIMER_MS),
    );
    function settle(end: () => void): void {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      stopping.removeEventListener('abort', onAbort);
      end();
    }
    if (stopping.aborted) return onAbort();
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
    stopping.addEventListener('abort', onAbort);
  });
}

/**
 * The router's URL, from its own "listening on" line (src/cli/commands/router.ts), whatever the
 * port: a fixed --port may be served by another process, whose /health would answer all the same,
 * while this router fails to listen there and exits.
 */
function routerUrl(router: ChildProcess, deadline: number, stopping: AbortSignal): Promise<string> {
  return announced(router, 'router', /^kvroute router listening on (\S+)$/, deadline, stopping);
}

/** A worker's request-plane address (`host:port`), from its own "listening on" line (src/cli/commands/worker.ts). */
function workerAddress(
  worker: ChildProcess,
  name: string,
  deadline: number,
  stopping: AbortSignal,
): Promise<string> {
  return announced(
    worker,
    `worker ${name}`,
    /^kvroute worker \(\w+\) listening on (\S+),/,
    deadline,
    stopping,
  );
}

/**
 * Whether the router lists the worker that announced `announced` at `listed`. A worker on every
 * interface (--host 0.0.0.0 or ::) is listed at the address it registered from (its peer
 * address, validate-registration.ts), so only its port can be matched.
 */
function sameWorker(announced: string, listed: unknown): boolean {
  if (listed === announced) return true;
  if (typeof listed !== 'string') return false;
  const mine = parseAddress(announced);
  if (!isUnspecifiedHost(mine.host)) return false;
  try {
    return parseAddress(listed).port === mine.port;
  } catch {
    return false;
  }
}

/** Waits until the router at `url` lists a worker at each of `addresses`: the demo's own, no others. */
async function waitForWorkers(
  url: string,
  addresses: readonly string[],
  deadline: number,
  stopping: AbortSignal,
): Promise<void> {
  while (Date.now() < deadline) {
    stopping.throwIfAborted();
    const listed = await fetch(`${url}/v1/workers`, { signal: pollSignal(stopping) }).then(
      async (r) => (r.ok ? ((await r.json()) as { data?: { address?: unknown }[] }).data : undefined),
      () => undefined,
    );
    const registered = (listed ?? []).map((w) => w.address);
    if (addresses.every((a) => registered.some((r) => sameWorker(a, r)))) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`fewer than ${addresses.length} workers registered in time`);
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGKILLs every child still running. Synchronous, so it also works in an 'exit' listener. */
function killAll(children: Map<string, ChildProcess>): void {
  for (const child of children.values()) if (running(child)) child.kill('SIGKILL');
}

/** SIGTERMs `child` and waits for it to exit; SIGKILLs it if it outlives its drain by EXIT_GRACE_MS. */
async function stopChild(child: ChildProcess, drainMs: number): Promise<void> {
  if (!running(child)) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), Math.min(drainMs + EXIT_GRACE_MS, MAX_TIMER_MS));
  await exited;
  clearTimeout(timer);
}

async function stopAll(children: Map<string, ChildProcess>, drainMs: number): Promise<void> {
  // The workers first, all at once (each deregisters from the live router, which relays their
  // streams to the end), then the router: a stop takes at most two drains, not one per process.
  const workers = [...children.entries()].filter(([name]) => name !== 'router').map(([, c]) => c);
  await Promise.all(workers.map((w) => stopChild(w, drainMs)));
  const router = children.get('router');
  if (router) await stopChild(router, drainMs);
}

export async function run(o: ParsedOptions): Promise<number> {
  const host = o.host as string;
  const model = modelName(o.model);
  const drainMs = o.drainMs as number;
  const workerToken = (o.workerToken as string | undefined) ?? randomBytes(32).toString('base64url');
  checkWorkerToken(workerToken);
  // Every child reads the token from the variable the router and the worker both take.
  const childEnv = { ...process.env, [envName('worker-token')]: workerToken };
  const children = new Map<string, ChildProcess>();
  let stopping = false;
  /** Every worker registered: from then on a worker that exits is reported, and the demo runs on. */
  let ready = false;
  // Aborted when stopping starts: ends the readiness polls at once.
  const stopPolls = new AbortController();
  // The children are out of the terminal's reach: whatever ends this process ends them too.
  process.once('exit', () => killAll(children));
  const stopped = new Promise<number>((resolve) => {
    const stop = (code: number) => {
      if (stopping) return;
      stopping = true;
      stopPolls.abort();
      process.stderr.write(
        `kvroute demo: stopping every process (requests in flight may finish for up to ${drainMs} ms; Ctrl-C again to kill them now)...\n`,
      );
      void stopAll(children, drainMs).then(() => resolve(code));
    };
    const force = () => {
      process.stderr.write('kvroute demo: killing every process now\n');
      killAll(children);
      process.exit(1);
    };
    // A second signal while stopping (a child slow to drain, a poll stuck) means "now".
    const onSignal = () => (stopping ? force() : stop(0));
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
    // Ctrl-\ no longer reaches the children either: quit means quit, for them too.
    process.on('SIGQUIT', force);
    const router = startChild(
      'router',
      ['router', '--host', host, '--port', String(o.port), '--drain-ms', String(drainMs)],
      childEnv,
      children,
    );
    router.once('exit', (code) => {
      if (!stopping) process.stderr.write(`kvroute demo: the router exited (code ${code}); stopping\n`);
      stop(1);
    });
    const deadline = Date.now() + (o.readyTimeoutMs as number);
    void (async () => {
      const url = await routerUrl(router, deadline, stopPolls.signal);
      // An explicit --host/--port 0: a KVROUTE_PORT meant for the router must not reach the workers.
      const common = [
        '--router',
        url,
        '--host',
        host,
        '--port',
        '0',
        '--speedup',
        decimalText(o.speedup as number),
        '--model',
        model,
        '--drain-ms',
        String(drainMs),
      ];
      const roles = [
        ...Array.from({ length: o.prefill as number }, (_, i) => [`prefill-${i + 1}`, 'prefill'] as const),
        ...Array.from({ length: o.decode as number }, (_, i) => [`decode-${i + 1}`, 'decode'] as const),
      ];
      const addresses: Promise<string>[] = [];
      for (const [name, role] of roles) {
        if (stopping) return;
        const worker = startChild(name, ['worker', '--role', role, ...common], childEnv, children);
        addresses.push(workerAddress(worker, name, deadline, stopPolls.signal));
        worker.once('exit', (code, signal) => {
          if (stopping) return;
          if (ready) {
            process.stderr.write(`kvroute demo: ${name} exited (${signal ?? code})\n`);
            return;
          }
          // The fleet can no longer be complete: waiting out --ready-timeout-ms would only hide why.
          process.stderr.write(
            `kvroute demo: ${name} exited (${signal ?? code}) before the demo was ready; stopping\n`,
          );
          stop(1);
        });
      }
      await waitForWorkers(url, await Promise.all(addresses), deadline, stopPolls.signal);
      ready = true;
      process.stdout.write(
        `\nkvroute demo ready: ${url}  (${o.prefill} prefill + ${o.decode} decode workers)\n` +
          `Try:\n  curl -s ${url}/v1/completions -H 'content-type: application/json' \\\n` +
          `    -d '{"model":"${model}","prompt":"Hello, router","max_tokens":16}'\n` +
          'Press Ctrl-C to stop.\n',
      );
    })().catch((err: unknown) => {
      // Polls aborted because the demo is stopping are not a failure to report.
      if (stopping) return;
      process.stderr.write(`kvroute demo: ${err instanceof Error ? err.message : String(err)}\n`);
      stop(1);
    });
  });
  return stopped;
}
