// Helpers for the worker process tests: a stand-in router (node:http) that records every control
// plane call and answers like the real one, and a spawner for `kvroute worker` child processes.

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';

export interface RecordedCall {
  method: string;
  url: string;
  body: unknown;
}

/** Answers POST /v1/workers (201), heartbeats (200, or 404 for an unknown id) and DELETE (204). */
export class StandInRouter {
  readonly calls: RecordedCall[] = [];
  private readonly known = new Set<string>();
  /** Worker id last given to each registered address. */
  readonly idByAddress = new Map<string, string>();
  private readonly waiters: { match: (c: RecordedCall) => boolean; resolve: (c: RecordedCall) => void }[] =
    [];
  private server: Server | undefined;
  private nextId = 0;
  /** While set, registrations are recorded (and take effect) but answered only once it resolves. */
  private registrationGate: Promise<void> | undefined;

  constructor(
    private readonly leaseTtlMs: number,
    private readonly idPrefix = 'w',
  ) {}

  async listen(port = 0): Promise<number> {
    const server = createServer((req, res) => void this.onRequest(req, res));
    this.server = server;
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    return (server.address() as AddressInfo).port;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  /** Stops answering: closes the listener and every open connection (a router crash). */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Holds the answers to registrations from now on; the returned function releases them. */
  holdRegistrations(): () => void {
    let release = () => {};
    this.registrationGate = new Promise<void>((resolve) => {
      release = resolve;
    });
    return () => {
      this.registrationGate = undefined;
      release();
    };
  }

  /** Resolves with the first call (already recorded or future) that matches. */
  waitFor(match: (c: RecordedCall) => boolean, from = 0): Promise<RecordedCall> {
    const seen = this.calls.slice(from).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const call: RecordedCall = {
      method: req.method ?? '',
      url: req.url ?? '',
      body: text ? JSON.parse(text) : undefined,
    };
    this.calls.push(call);
    const heartbeat = /^\/v1\/workers\/([^/]+)\/heartbeat$/.exec(call.url);
    const worker = /^\/v1\/workers\/([^/]+)$/.exec(call.url);
    if (call.method === 'POST' && call.url === '/v1/workers') {
      const id = `${this.idPrefix}${++this.nextId}`;
      this.known.add(id);
      this.idByAddress.set((call.body as { address: string }).address, id);
      await this.registrationGate;
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ worker_id: id, lease_ttl_ms: this.leaseTtlMs }));
    } else if (call.method === 'POST' && heartbeat) {
      res.writeHead(this.known.has(heartbeat[1]!) ? 200 : 404, { 'content-type': 'application/json' });
      res.end('{}');
    } else if (call.method === 'DELETE' && worker) {
      res.writeHead(this.known.delete(worker[1]!) ? 204 : 404);
      res.end();
    } else {
      res.writeHead(404);
      res.end();
    }
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.match(call)) {
        this.waiters.splice(i, 1);
        w.resolve(call);
      }
    }
  }
}

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

export interface WorkerProcess {
  child: ChildProcess;
  address: string;
  /** stdout so far, as received (the start line; console-exported spans). */
  stdout: string[];
  /** stderr lines so far (structured logs with --verbose). */
  stderr: string[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns `kvroute worker <args>` and resolves once it prints its address. Tracing is off unless `env` says. */
export async function spawnWorker(args: string[], env: NodeJS.ProcessEnv = {}): Promise<WorkerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'worker', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', ...env },
  });
  const stderr: string[] = [];
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    const lines = (partial + s).split('\n');
    partial = lines.pop()!;
    stderr.push(...lines);
  });
  const exit = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const stdout: string[] = [];
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout.push(s);
      const m = /listening on (\S+),/.exec(stdout.join(''));
      if (m) resolve(m[1]!);
    });
    void exit.then(({ code }) =>
      reject(new Error(`worker exited (${code}) before listening: ${stderr.join('\n')}`)),
    );
  });
  return { child, address, stdout, stderr, exit };
}

/** Runs `kvroute worker <args>` to completion and returns its exit code and output. */
export async function runWorkerCli(
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'worker', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}
