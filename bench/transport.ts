// `kvroute bench transport`: the request plane against HTTP/1.1 keep-alive (undici Pool ->
// node:http) and a raw length-prefixed echo over `net` (the practical limit), on loopback, with
// each server in its own child process. Per transport: round trips/s at concurrency 1 and N,
// p50/p99 latency at N, and streamed chunks/s (responses of --stream-chunks small chunks). The
// request plane and the raw echo spread their calls over connections the same way (the plane's
// pool defaults); HTTP gets a connection per concurrent call (no multiplexing in HTTP/1.1).
// Prints a table; with --json the last line is {"tcp":{...},"http":{...},"raw":{...}}, each
// {concurrency, rps_c1, rps_cn, p50_us_cn, p99_us_cn, stream_chunks_per_s}: the cN figures are at
// `concurrency` (--concurrency), so the keys stay the same whatever N is.

import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { type CommandSpec, commaList, type ParsedOptions } from '../src/cli/options.js';
import { ByteQueue } from '../src/tcp/byte-queue.js';
import {
  DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
  DEFAULT_STREAMS_PER_CONNECTION,
  RequestPlaneClient,
} from '../src/tcp/index.js';
import { childDeathAsExit, firstLine, stopChild } from './lib/child.js';
import { percentile } from './lib/stats.js';

export const spec: CommandSpec = {
  usage: 'kvroute bench transport',
  summary:
    'Request plane vs HTTP/1.1 keep-alive (undici) vs raw length-prefixed TCP on loopback: round trips/s at c1 and cN, p50/p99 at cN, streamed chunks/s.',
  options: [
    { name: 'duration-ms', type: 'integer', default: 2000, min: 100, help: 'timed run per measurement' },
    { name: 'warmup-ms', type: 'integer', default: 500, min: 0, help: 'untimed run before each measurement' },
    { name: 'concurrency', type: 'integer', default: 64, min: 1, help: 'concurrent callers of the cN run' },
    { name: 'payload-bytes', type: 'integer', default: 64, min: 0, help: 'request and answer size' },
    { name: 'stream-chunks', type: 'integer', default: 256, min: 1, help: 'chunks per streamed answer' },
    { name: 'chunk-bytes', type: 'integer', default: 32, min: 1, help: 'bytes per streamed chunk' },
    {
      name: 'stream-concurrency',
      type: 'integer',
      default: 4,
      min: 1,
      help: 'concurrent streamed calls',
    },
    {
      name: 'transports',
      type: 'string',
      default: 'tcp,http,raw',
      help: 'comma-separated subset to run (the JSON holds only those)',
    },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

type Kind = 'tcp' | 'http' | 'raw';

export interface TransportResult {
  /** The cN run's concurrent callers (--concurrency); the *_cn figures are at this concurrency. */
  concurrency: number;
  rps_c1: number;
  rps_cn: number;
  p50_us_cn: number;
  p99_us_cn: number;
  stream_chunks_per_s: number;
}

/** One transport's client side: a small round trip, and a streamed answer (resolves its chunk count). */
interface BenchClient {
  echo(payload: Buffer): Promise<void>;
  stream(): Promise<number>;
  close(): Promise<void>;
}

async function startServer(kind: Kind, chunks: number, chunkBytes: number) {
  const self = fileURLToPath(import.meta.url);
  const script = self.replace(/transport\.(ts|js)$/, 'transport-server.$1');
  const child = spawn(
    process.execPath,
    [...process.execArgv, script, kind, String(chunks), String(chunkBytes)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const line = await firstLine(child, `the ${kind} server`);
  child.stdout!.resume();
  return { child, port: Number(line.trim()) };
}

function tcpClient(port: number): BenchClient {
  const client = new RequestPlaneClient();
  const address = `127.0.0.1:${port}`;
  const empty = Buffer.alloc(0);
  return {
    async echo(payload) {
      await client.unary(address, 'echo', payload);
    },
    async stream() {
      let n = 0;
      for await (const _ of client.stream(address, 'stream', empty)) n++;
      return n;
    },
    close: () => client.close(),
  };
}

function httpClient(port: number, connections: number, chunks: number): BenchClient {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections, pipelining: 1 });
  return {
    async echo(payload) {
      const res = await pool.request({ path: '/echo', method: 'POST', body: payload });
      await res.body.arrayBuffer();
    },
    async stream() {
      const res = await pool.request({ path: '/stream', method: 'POST', body: '' });
      await res.body.arrayBuffer();
      return chunks; // HTTP has no chunk boundaries of its own: count the chunks the server wrote
    },
    close: () => pool.close(),
  };
}

/** One raw connection: length-prefixed frames, pipelined, answered in order. */
function rawConnection(port: number, chunks: number) {
  const socket: Socket = connect({ port, host: '127.0.0.1', noDelay: true });
  const pending: Array<{ frames: number; resolve: (n: number) => void }> = [];
  let head = 0;
  const q = new ByteQueue();
  socket.on('data', (c: Buffer) => {
    q.push(c);
    while (q.length >= 4 && q.length >= 4 + q.readUInt32BE(0)) {
      q.skip(4 + q.readUInt32BE(0));
      const p = pending[head]!;
      if (--p.frames === 0) {
        pending[head++] = undefined as never;
        if (head > 1024) {
          pending.splice(0, head);
          head = 0;
        }
        p.resolve(chunks);
      }
    }
  });
  let corked = false;
  return {
    socket,
    get inFlight() {
      return pending.length - head;
    },
    send: (op: number, body: Buffer, frames: number) =>
      new Promise<number>((resolve) => {
        const frame = Buffer.allocUnsafe(5 + body.length);
        frame.writeUInt32BE(body.length, 0);
        frame[4] = op;
        body.copy(frame, 5);
        pending.push({ frames, resolve });
        if (!corked) {
          corked = true;
          socket.cork();
          process.nextTick(() => {
            corked = false;
            socket.uncork();
          });
        }
        socket.write(frame);
      }),
  };
}

/**
 * Raw length-prefixed frames, spread over connections exactly as the request plane's pool spreads
 * its streams (least busy; a new connection only when every open one carries
 * DEFAULT_STREAMS_PER_CONNECTION calls, up to DEFAULT_MAX_CONNECTIONS_PER_ADDRESS), so both are
 * measured with the same connection layout: at c64 both use 4 pipelined connections.
 */
function rawClient(port: number, chunks: number): BenchClient {
  const conns: Array<ReturnType<typeof rawConnection>> = [];
  const pick = () => {
    let best = conns[0];
    for (const c of conns) if (c.inFlight < best!.inFlight) best = c;
    if (
      best === undefined ||
      (best.inFlight >= DEFAULT_STREAMS_PER_CONNECTION && conns.length < DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
    ) {
      best = rawConnection(port, chunks);
      conns.push(best);
    }
    return best;
  };
  const empty = Buffer.alloc(0);
  return {
    async echo(payload) {
      await pick().send(1, payload, 1);
    },
    stream: () => pick().send(2, empty, chunks),
    close: async () => {
      for (const c of conns) c.socket.destroy();
    },
  };
}

/** Runs `concurrency` callers back to back for durationMs; returns completed calls, elapsed and latencies. */
async function drive(concurrency: number, durationMs: number, call: () => Promise<number | undefined>) {
  const latencies: number[] = [];
  let units = 0;
  const start = performance.now();
  const end = start + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let t0 = performance.now(); t0 < end; t0 = performance.now()) {
        const n = await call();
        latencies.push(performance.now() - t0);
        units += n ?? 1;
      }
    }),
  );
  return { units, seconds: (performance.now() - start) / 1000, latencies };
}

function percentileUs(sorted: number[], q: number): number {
  return Math.round(percentile(sorted, q) * 1000);
}

async function measure(kind: Kind, o: Record<string, number>): Promise<TransportResult> {
  const { child, port } = await startServer(kind, o.streamChunks!, o.chunkBytes!);
  const client =
    kind === 'tcp'
      ? tcpClient(port)
      : kind === 'http'
        ? httpClient(port, Math.max(o.concurrency!, o.streamConcurrency!), o.streamChunks!)
        : rawClient(port, o.streamChunks!);
  try {
    const payload = Buffer.alloc(o.payloadBytes!, 0x62);
    const echo = async () => {
      await client.echo(payload);
      return 1;
    };
    const run = async (concurrency: number, call: () => Promise<number>) => {
      if (o.warmupMs! > 0) await drive(concurrency, o.warmupMs!, call);
      return drive(concurrency, o.durationMs!, call);
    };
    process.stderr.write(`${kind}: c1 `);
    const c1 = await run(1, echo);
    process.stderr.write(`c${o.concurrency} `);
    const cN = await run(o.concurrency!, echo);
    process.stderr.write('stream\n');
    const streamed = await run(o.streamConcurrency!, () => client.stream());
    const sorted = cN.latencies.sort((a, b) => a - b);
    return {
      concurrency: o.concurrency!,
      rps_c1: Math.round(c1.units / c1.seconds),
      rps_cn: Math.round(cN.units / cN.seconds),
      p50_us_cn: percentileUs(sorted, 0.5),
      p99_us_cn: percentileUs(sorted, 0.99),
      stream_chunks_per_s: Math.round(streamed.units / streamed.seconds),
    };
  } finally {
    await client.close();
    await stopChild(child);
  }
}

export function run(options: ParsedOptions): Promise<number> {
  return childDeathAsExit('transport', () => measureAll(options));
}

async function measureAll(options: ParsedOptions): Promise<number> {
  const o = options as Record<string, number>;
  const kinds = commaList<Kind>(options.transports, 'transports', ['tcp', 'http', 'raw']);
  const results = {} as Record<Kind, TransportResult>;
  for (const kind of kinds) results[kind] = await measure(kind, o);

  const n = o.concurrency;
  const rows: Array<[string, keyof TransportResult]> = [
    ['round trips/s, c1', 'rps_c1'],
    [`round trips/s, c${n}`, 'rps_cn'],
    [`p50 µs, c${n}`, 'p50_us_cn'],
    [`p99 µs, c${n}`, 'p99_us_cn'],
    [`streamed chunks/s (${o.streamChunks} x ${o.chunkBytes} B)`, 'stream_chunks_per_s'],
  ];
  const lines = [
    `${'measure'.padEnd(34)}${kinds.map((k) => k.padStart(12)).join('')}`,
    ...rows.map(
      ([label, key]) =>
        `${label.padEnd(34)}${kinds.map((k) => String(results[k][key]).padStart(12)).join('')}`,
    ),
  ];
  if (results.tcp && results.http && results.raw) {
    lines.push(
      '',
      `c${n}: tcp/http ${(results.tcp.rps_cn / results.http.rps_cn).toFixed(2)}x, tcp/raw ${(
        (100 * results.tcp.rps_cn) / results.raw.rps_cn
      ).toFixed(0)}%`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (options.json) process.stdout.write(`${JSON.stringify(results)}\n`);
  return 0;
}
