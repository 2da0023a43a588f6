// `kvroute bench tracing`: what tracing costs the router. The same closed-loop workload (N
// concurrent clients, short prompts, non-streamed completions, zero-latency workers) against a
// router + workers fleet three ways: tracing off (OTEL_TRACES_EXPORTER=none), on but sampled out
// (ratio 0: spans are non-recording, the context still propagates), and fully sampled with every
// process exporting OTLP to a sink in this process that accepts and discards, and (--control, by
// default) a second untraced fleet whose "loss" shows what the run's noise makes of no difference.
// Each round starts new fleets (by default; --fleet-rounds) and loads them in short slices, in a
// random order each round (--seed), each right after a warm-up of its own, so the drift of a
// shared, noisy machine hits each mode alike and no one set of processes or place in a round
// decides the result; each mode's loss is the median over rounds of its slice against the same
// round's `off` slice, with a 95% interval for that median from the rounds themselves (so a run
// says when this machine's noise cannot tell a 3% loss from none). Goal: at most 15% throughput
// lost fully sampled, at most 3% sampled out.
// Prints a table, and with --json one JSON object as the last line.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Pool } from 'undici';
import type { CommandSpec, ParsedOptions } from '../src/cli/options.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import { createRouter } from '../src/router/service.js';
import { initTelemetry, resolveTelemetryConfig } from '../src/telemetry/index.js';
import { seededRng } from '../src/util/seeded-rng.js';
import { createLog } from '../src/worker/log.js';
import { startWorker } from '../src/worker/worker.js';
import { childDeathAsExit, childExited, firstLine, stopChild } from './lib/child.js';
import { startFleet } from './lib/fleet.js';
import {
  controlFailed,
  goalVerdict,
  median,
  medianConfidenceInterval,
  percentile,
  round,
} from './lib/stats.js';

/** The SDK's batch defaults, as the product reads them with no OTEL_BSP_* set (512 and 2048). */
const DEFAULT_BATCH = resolveTelemetryConfig('kvroute-bench', {}).batch;

export const spec: CommandSpec = {
  usage: 'kvroute bench tracing',
  summary:
    'Router throughput with tracing off, sampled out (ratio 0) and fully sampled to a local OTLP sink.',
  options: [
    { name: 'concurrency', type: 'integer', default: 32, min: 1, help: 'requests in flight' },
    {
      name: 'duration-ms',
      type: 'integer',
      default: 2000,
      min: 500,
      help: 'measured time per mode and round (one slice)',
    },
    {
      name: 'warmup-ms',
      type: 'integer',
      default: 4000,
      min: 0,
      help: 'unmeasured load on a fleet right before each of its slices (a new fleet takes ~3 s to reach its pace)',
    },
    {
      name: 'rounds',
      type: 'integer',
      default: 6,
      min: 1,
      help: 'slices of each mode, one per round, the modes in a random order each round (6 or more give a 95% interval)',
    },
    { name: 'seed', type: 'integer', default: 1, min: 0, help: "seed of the rounds' random orders" },
    {
      name: 'fleet-rounds',
      type: 'integer',
      default: 1,
      min: 1,
      help: 'rounds each set of fleets serves before new ones replace it (1 = new processes every round)',
    },
    { name: 'workers', type: 'integer', default: 2, min: 1, help: 'aggregated (--role both) workers' },
    {
      name: 'in-process-ms',
      type: 'integer',
      default: 1000,
      min: 0,
      help: 'also time CPU per request with router, worker and client in this one process (0 = skip)',
    },
    { name: 'max-tokens', type: 'integer', default: 4, min: 1, help: 'output tokens per request' },
    {
      name: 'protocol',
      type: 'string',
      default: 'http/protobuf',
      choices: ['http/protobuf', 'http/json'],
      help: 'OTLP encoding of the fully sampled mode',
    },
    {
      name: 'export-batch-size',
      type: 'integer',
      default: DEFAULT_BATCH.maxExportBatchSize,
      min: 1,
      max: 65536,
      help: 'spans per OTLP export in the traced fleets (OTEL_BSP_MAX_EXPORT_BATCH_SIZE; the span queue is 4x, at least 2048)',
    },
    {
      name: 'control',
      type: 'boolean',
      default: true,
      help: "also load a second untraced fleet, off_control: its loss against off is what this machine's noise makes of no difference, and when its interval leaves out 0 the run gives no verdict (--control false: a quarter less time, no such check)",
    },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

/** The three modes measured, and with --control a second untraced fleet (an A/A check). */
type Mode = 'off' | 'sampled_out' | 'full' | 'off_control';
type TracingMode = Exclude<Mode, 'off_control'>;
const MODES: readonly TracingMode[] = ['off', 'sampled_out', 'full'];

/**
 * A collector that accepts every export and throws it away; counts what it was sent per mode
 * (each mode exports to `<base>/<mode>/v1/traces`, so a late batch is counted for its own mode).
 */
class OtlpSink {
  readonly received = new Map<string, { requests: number; bytes: number }>();
  private server: Server | undefined;

  /** Exports received so far from `mode`'s processes. */
  count(mode: Mode): { requests: number; bytes: number } {
    return { ...(this.received.get(mode) ?? { requests: 0, bytes: 0 }) };
  }

  async listen(): Promise<string> {
    const server = createServer((req, res) => {
      const mode = req.url?.split('/')[1] ?? '';
      let count = this.received.get(mode);
      if (count === undefined) {
        count = { requests: 0, bytes: 0 };
        this.received.set(mode, count);
      }
      const c = count;
      req.on('data', (chunk: Buffer) => {
        c.bytes += chunk.length;
      });
      req.on('end', () => {
        c.requests++;
        res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/json' }).end();
      });
    });
    this.server = server;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/**
 * The span batch's schedule delay in the traced fleets. Under load a batch fills (512 spans) in
 * milliseconds and leaves at once, so this only decides when a slice's last, partial batch goes:
 * within the slice's settle pause (SETTLE_MS), charged to its own fleet, instead of after the
 * default 5 s, during another mode's slice.
 */
const SCHEDULE_DELAY_MS = 200;

/** How the traced modes export: `--protocol` and `--export-batch-size`. */
interface ExportSettings {
  protocol: string;
  batchSize: number;
}

/** The OTEL_* variables of one mode (every other OTEL_* variable of this process is cleared). */
function modeEnv(mode: Mode, sinkBase: string, exporting: ExportSettings): Record<string, string> {
  if (mode === 'off' || mode === 'off_control') return { OTEL_TRACES_EXPORTER: 'none' };
  const base = {
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${sinkBase}/${mode}/v1/traces`,
    OTEL_EXPORTER_OTLP_PROTOCOL: exporting.protocol,
    OTEL_BSP_SCHEDULE_DELAY: String(SCHEDULE_DELAY_MS),
    // A batch may not exceed the queue: the queue keeps room for 4 batches in flight, as at the
    // defaults (512 and 2048), so a larger batch changes how often a process exports, not what it drops.
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: String(exporting.batchSize),
    OTEL_BSP_MAX_QUEUE_SIZE: String(Math.max(DEFAULT_BATCH.maxQueueSize, 4 * exporting.batchSize)),
  };
  return mode === 'sampled_out'
    ? { ...base, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }
    : { ...base, OTEL_TRACES_SAMPLER: 'parentbased_always_on' };
}

function exportSettings(o: ParsedOptions): ExportSettings {
  return { protocol: o.protocol as string, batchSize: o.exportBatchSize as number };
}

/** Children of the fleet take process.env at spawn time: set exactly this mode's OTEL_* there. */
function applyEnv(env: Record<string, string>): void {
  for (const key of Object.keys(process.env)) if (key.startsWith('OTEL_')) delete process.env[key];
  Object.assign(process.env, env);
}

/**
 * CPU time (ms) used so far by the processes of the fleet at `url`, by role, from /proc: the
 * router is the child started with `--port <port>`, its workers the ones given `<url>` as
 * `--router`. Throughput on a shared 2-core machine swings with whatever else runs; CPU time per
 * request is the steadier measure of what tracing adds. Zeros where /proc is missing.
 */
function fleetCpuMs(url: string): { router: number; worker: number } {
  const out = { router: 0, worker: 0 };
  const port = new URL(url).port;
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  const ticksMs = 10; // USER_HZ is 100 on Linux
  for (const tid of tasks) {
    let pids: string[];
    try {
      pids = readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ').filter(Boolean);
    } catch {
      continue;
    }
    for (const pid of pids) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        const role =
          cmd.includes('router') && cmd[cmd.indexOf('--port') + 1] === port
            ? 'router'
            : cmd.includes('worker') && cmd.includes(url)
              ? 'worker'
              : undefined;
        if (role === undefined) continue;
        // Fields after the ')' closing the command name: utime and stime are the 12th and 13th.
        const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        out[role] += (Number(fields[11]) + Number(fields[12])) * ticksMs;
      } catch {}
    }
  }
  return out;
}

interface SliceResult {
  mode: Mode;
  requests: number;
  errors: number;
  seconds: number;
  latenciesMs: number[];
  sinkRequests: number;
  sinkBytes: number;
  routerCpuMs: number;
  workerCpuMs: number;
}

async function load(
  pool: Pool,
  concurrency: number,
  maxTokens: number,
  ms: number,
  latencies: number[] | undefined,
): Promise<{ requests: number; errors: number; seconds: number }> {
  let requests = 0;
  let errors = 0;
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  const client = async () => {
    while (performance.now() < end) {
      const body = JSON.stringify({
        model: 'mock-llm',
        prompt: `Hello router, request ${n++}`,
        max_tokens: maxTokens,
      });
      const t0 = performance.now();
      try {
        const res = await pool.request({
          method: 'POST',
          path: '/v1/completions',
          headers: { 'content-type': 'application/json' },
          body,
        });
        await res.body.dump();
        if (res.statusCode === 200) {
          requests++;
          latencies?.push(performance.now() - t0);
        } else errors++;
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, client));
  const seconds = (performance.now() - start) / 1000;
  return { requests, errors, seconds };
}

/** One mode's fleet, started once and loaded slice by slice through its own connection pool. */
interface ModeFleet {
  mode: Mode;
  url: string;
  pool: Pool;
  stop(): Promise<void>;
}

async function startModeFleet(mode: Mode, o: ParsedOptions, sinkBase: string): Promise<ModeFleet> {
  const saved = { ...process.env };
  applyEnv(modeEnv(mode, sinkBase, exportSettings(o)));
  const fleet = await startFleet({
    workers: o.workers as number,
    policy: 'kv',
    workerArgs: ['--speedup', '100000'],
  })
    // A fleet that cannot start (a bad KVROUTE_ value it inherits, say) is the operator's to fix:
    // one line and exit 1 (childDeathAsExit), not a stack trace.
    .catch((err: unknown) => {
      throw childExited(err);
    })
    .finally(() => {
      for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
      Object.assign(process.env, saved);
    });
  const concurrency = o.concurrency as number;
  const pool = new Pool(fleet.url, { connections: concurrency, pipelining: 1 });
  return {
    mode,
    url: fleet.url,
    pool,
    stop: async () => {
      await pool.close();
      await fleet.stop();
    },
  };
}

/**
 * A pause after each slice: what a slice's requests leave behind (span batches being exported,
 * garbage collection) is charged to its own mode's processes, not to the next slice.
 */
const SETTLE_MS = 300;

async function runSlice(f: ModeFleet, o: ParsedOptions, sink: OtlpSink): Promise<SliceResult> {
  const sinkBefore = sink.count(f.mode);
  const cpuBefore = fleetCpuMs(f.url);
  const latenciesMs: number[] = [];
  const r = await load(
    f.pool,
    o.concurrency as number,
    o.maxTokens as number,
    o.durationMs as number,
    latenciesMs,
  );
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  const cpuAfter = fleetCpuMs(f.url);
  return {
    mode: f.mode,
    ...r,
    latenciesMs,
    routerCpuMs: cpuAfter.router - cpuBefore.router,
    workerCpuMs: cpuAfter.worker - cpuBefore.worker,
    sinkRequests: sink.count(f.mode).requests - sinkBefore.requests,
    sinkBytes: sink.count(f.mode).bytes - sinkBefore.bytes,
  };
}

/** A copy of `items` in a random order (Fisher-Yates, from `rng`). */
function shuffled<T>(items: readonly T[], rng: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** A full GC now: node's `gc()`, made available without starting the bench with --expose-gc. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/**
 * An OTLP sink (accepts and discards) in a child process, for the in-process measurement: the
 * sink in this process would put the work of receiving the exports into `full`'s CPU, which is
 * meant to count the request path only. Plain node code (-e), so it runs from dist and under tsx.
 */
const CHILD_SINK_SOURCE = `
  const server = require('node:http').createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': req.headers['content-type'] || 'application/json' }).end());
  });
  server.listen(0, '127.0.0.1', () => console.log(server.address().port));
  process.on('SIGTERM', () => process.exit(0));
`;

async function withChildSink<T>(use: (sinkBase: string) => Promise<T>): Promise<T> {
  const child = spawn(process.execPath, ['-e', CHILD_SINK_SOURCE], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const port = await firstLine(child, "the in-process measurement's OTLP sink");
    return await use(`http://127.0.0.1:${port}`);
  } finally {
    await stopChild(child);
  }
}

/**
 * CPU µs per request with the router, one worker and the client all in this process, each with
 * its own tracer of `mode`: process.cpuUsage counts exactly the work of one request path, without
 * the cross-process feedback (fewer requests per socket write when throughput drops) that skews
 * per-process figures on a busy machine. The spans go to a sink in another process
 * (withChildSink), so receiving them is not counted.
 */
async function inProcessCpuPerRequest(
  mode: TracingMode,
  sinkBase: string,
  exporting: ExportSettings,
  ms: number,
): Promise<number> {
  const env = modeEnv(mode, sinkBase, exporting);
  const routerTelemetry = initTelemetry({ serviceName: 'kvroute-router', env });
  const workerTelemetry = initTelemetry({ serviceName: 'kvroute-both-worker', env });
  const router = await createRouter({ port: 0, logger: false }, { telemetry: routerTelemetry });
  const url = await router.listen();
  const worker = await startWorker(
    {
      role: 'both',
      routerUrl: url,
      host: '127.0.0.1',
      port: 0,
      model: 'mock-llm',
      engine: { blockSize: 16, kvBlocks: 16_384, maxBatchedTokens: 8192, speedup: 100_000 },
      drainDeadlineMs: 1000,
      kvEventsBacklog: 100_000,
      log: createLog(false),
      tracer: workerTelemetry.tracer,
    },
    computeBlockHashes,
  );
  const pool = new Pool(url, { connections: 16, pipelining: 1 });
  try {
    while (router.registry.size === 0) await new Promise((r) => setTimeout(r, 20));
    await load(pool, 16, 4, 300, undefined);
    const before = process.cpuUsage();
    const { requests } = await load(pool, 16, 4, ms, undefined);
    const used = process.cpuUsage(before);
    return (used.user + used.system) / Math.max(1, requests);
  } finally {
    await pool.close();
    await worker.stop();
    await router.close();
    await Promise.all([routerTelemetry.shutdown(), workerTelemetry.shutdown()]);
  }
}

export function run(options: ParsedOptions): Promise<number> {
  return childDeathAsExit('tracing', () => measureAll(options));
}

async function measureAll(options: ParsedOptions): Promise<number> {
  const sink = new OtlpSink();
  const sinkBase = await sink.listen();
  const rounds = options.rounds as number;
  const runs: SliceResult[] = [];
  const inProcess: Record<TracingMode, number[]> = { off: [], sampled_out: [], full: [] };
  const fleetModes: readonly Mode[] = options.control ? [...MODES, 'off_control'] : MODES;
  const fleets: ModeFleet[] = [];
  const fleetRounds = options.fleetRounds as number;
  const orderRng = seededRng(options.seed as number);
  let fleetSets = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      // A random order for each round, for the starts of a new set and for the slices. With a
      // fixed pattern (ABCD, DCBA) some modes always had the same neighbours: the control, always
      // the slice after `full` or the first one, read 6.6-10% slower than `off` in four of seven
      // runs. Drawn at random, such effects of place are one more noise the interval covers.
      const roundModes = shuffled(fleetModes, orderRng);
      if (r % fleetRounds === 0) {
        // New processes for every mode: a set of processes has its own luck (where the scheduler
        // puts them, what the JIT made of them), a few percent between two identical fleets here.
        // Kept for the whole run it would be a fixed error in every round; new fleets make it one
        // more noise that the rounds, and so the interval, sample.
        await Promise.all(fleets.splice(0).map((f) => f.stop()));
        fleetSets++;
        for (const mode of roundModes) {
          process.stderr.write(`tracing: round ${r + 1}/${rounds}, starting the ${mode} fleet…\n`);
          fleets.push(await startModeFleet(mode, options, sinkBase));
        }
      }
      for (const mode of roundModes) {
        const f = fleets.find((fleet) => fleet.mode === mode)!;
        // Warmed right before its slice, every slice follows the same thing: its own fleet under
        // the same load. Warmed all at the start of the round, a fleet idled the longer the later
        // its slice came, and `off` (first to be warmed, never the first slice after the last
        // warm-up) idled longest: in two runs a second untraced fleet (--control) read 14% and 11%
        // faster than `off`, which made every mode's loss look smaller than it was.
        await load(
          f.pool,
          options.concurrency as number,
          options.maxTokens as number,
          options.warmupMs as number,
          undefined,
        );
        const result = await runSlice(f, options, sink);
        process.stderr.write(
          `tracing: round ${r + 1}/${rounds}, ${f.mode}: ${round(result.requests / result.seconds, 0)} req/s, ${result.errors} errors, sink got ${result.sinkRequests} exports\n`,
        );
        runs.push(result);
      }
    }
    await Promise.all(fleets.splice(0).map((f) => f.stop()));
    const inProcessMs = options.inProcessMs as number;
    if (inProcessMs > 0) {
      await withChildSink(async (childSinkBase) => {
        // Unmeasured: the first run in this process also compiles the router and worker code.
        await inProcessCpuPerRequest('full', childSinkBase, exportSettings(options), inProcessMs);
        for (let r = 0; r < rounds; r++) {
          const order = r % 2 === 0 ? MODES : [...MODES].reverse();
          for (const mode of order) {
            process.stderr.write(`tracing: in-process CPU per request, round ${r + 1}/${rounds}, ${mode}…\n`);
            // The previous run's router, worker and spans are garbage now: collect it here, or the
            // next run pays for it (a run after `full` inherited its retained spans).
            collectGarbage();
            inProcess[mode].push(
              await inProcessCpuPerRequest(mode, childSinkBase, exportSettings(options), inProcessMs),
            );
          }
        }
      });
    }
  } finally {
    await Promise.all(fleets.map((f) => f.stop()));
    await sink.close();
  }

  const summary = fleetModes.map((mode) => {
    const mine = runs.filter((r) => r.mode === mode);
    const requests = mine.reduce((a, r) => a + r.requests, 0);
    const seconds = mine.reduce((a, r) => a + r.seconds, 0);
    const latencies = mine.flatMap((r) => r.latenciesMs).sort((a, b) => a - b);
    return {
      mode,
      requests,
      errors: mine.reduce((a, r) => a + r.errors, 0),
      rps: round(requests / seconds, 1),
      rps_per_round: mine.map((r) => round(r.requests / r.seconds, 1)),
      p50_ms: round(percentile(latencies, 0.5), 2),
      p99_ms: round(percentile(latencies, 0.99), 2),
      router_cpu_us_per_req: round((1000 * mine.reduce((a, r) => a + r.routerCpuMs, 0)) / requests, 1),
      workers_cpu_us_per_req: round((1000 * mine.reduce((a, r) => a + r.workerCpuMs, 0)) / requests, 1),
      // Router + workers CPU per request of each slice (from /proc, 10 ms ticks).
      fleet_cpu_us_per_round: mine.map((r) =>
        round((1000 * (r.routerCpuMs + r.workerCpuMs)) / Math.max(1, r.requests), 1),
      ),
      sink_exports: mine.reduce((a, r) => a + r.sinkRequests, 0),
      sink_bytes: mine.reduce((a, r) => a + r.sinkBytes, 0),
    };
  });
  // Each mode is compared with the `off` run of the same round (minutes apart at most, so the
  // same background load), and the headline is the median of those paired losses: one noisy run
  // moves it less than it moves the totals.
  // The interval says how far this machine's noise lets that median be trusted: the true median
  // loss lies in it with ≥95% confidence (distribution-free, from the rounds' order statistics;
  // null below 6 rounds).
  const offPerRound = summary[0]!.rps_per_round;
  const offCpuPerRound = summary[0]!.fleet_cpu_us_per_round;
  const rows = summary.map((s) => {
    const paired = s.rps_per_round.map((rps, i) => (100 * (offPerRound[i]! - rps)) / offPerRound[i]!);
    const interval = s.mode === 'off' ? null : medianConfidenceInterval(paired);
    return {
      ...s,
      loss_vs_off_pct: s.mode === 'off' ? 0 : round(median(paired), 1),
      loss_ci95_pct: interval && [round(interval.low, 1), round(interval.high, 1)],
      loss_per_round_pct: paired.map((x) => round(x, 1)),
      loss_of_totals_pct: round((100 * (summary[0]!.rps - s.rps)) / summary[0]!.rps, 1),
      // The same pairing for the fleet's CPU per request: what tracing adds to each request's work.
      fleet_cpu_vs_off_pct: round(
        median(
          s.fleet_cpu_us_per_round.map((us, i) => (100 * (us - offCpuPerRound[i]!)) / offCpuPerRound[i]!),
        ),
        1,
      ),
    };
  });
  const inProcessRows = MODES.map((mode) => {
    const us = median(inProcess[mode]);
    const off = median(inProcess.off);
    return {
      mode,
      cpu_us_per_req: round(us, 1),
      cpu_us_per_round: inProcess[mode].map((x) => round(x, 1)),
      overhead_vs_off_pct: mode === 'off' || off === 0 ? 0 : round((100 * (us - off)) / off, 1),
    };
  });
  const sampledOut = rows.find((r) => r.mode === 'sampled_out')!;
  const control = rows.find((r) => r.mode === 'off_control');
  const controlInterval = control?.loss_ci95_pct ?? null;
  const full = rows.find((r) => r.mode === 'full')!;

  process.stdout.write(
    `\nrouter throughput, concurrency ${options.concurrency}, ${options.workers} workers, ${rounds} interleaved slice(s) of ${options.durationMs} ms per mode, new fleets every ${options.fleetRounds} round(s), OTLP ${options.protocol} in batches of ${options.exportBatchSize} spans\n`,
  );
  process.stdout.write(
    "loss = median over rounds of (off - mode) / off, each slice against the same round's off slice;\n" +
      'its 95% interval from the rounds (none below 6 rounds)\n',
  );
  process.stdout.write(
    'mode          req/s     loss    95% interval   p50 ms   p99 ms  router µs/req  workers µs/req  CPU vs off  errors  exports to sink\n',
  );
  for (const r of rows) {
    const interval = r.loss_ci95_pct ? `${r.loss_ci95_pct[0]}..${r.loss_ci95_pct[1]}%` : '-';
    process.stdout.write(
      `${r.mode.padEnd(12)}${String(r.rps).padStart(7)}  ${`${r.loss_vs_off_pct}%`.padStart(7)}  ${interval.padStart(14)}  ${String(r.p50_ms).padStart(7)}  ${String(r.p99_ms).padStart(7)}  ${String(r.router_cpu_us_per_req).padStart(13)}  ${String(r.workers_cpu_us_per_req).padStart(14)}  ${`${r.fleet_cpu_vs_off_pct > 0 ? '+' : ''}${r.fleet_cpu_vs_off_pct}%`.padStart(10)}  ${String(r.errors).padStart(6)}  ${r.sink_exports} (${r.sink_bytes} B)\n`,
    );
  }
  if (inProcess.off.length > 0) {
    process.stdout.write('\nCPU per request, router + worker + client in one process (median over rounds)\n');
    for (const r of inProcessRows) {
      process.stdout.write(
        `${r.mode.padEnd(12)}${String(r.cpu_us_per_req).padStart(8)} µs  ${`${r.overhead_vs_off_pct > 0 ? '+' : ''}${r.overhead_vs_off_pct}%`.padStart(8)}\n`,
      );
    }
  }
  const goals = {
    sampled_out_max_loss_pct: 3,
    full_max_loss_pct: 15,
    sampled_out_met: sampledOut.loss_vs_off_pct <= 3,
    full_met: full.loss_vs_off_pct <= 15,
    // What the interval allows one to say: met or not met only when all of it is on one side.
    // With --control, a run whose A/A pair came out different judges nothing.
    sampled_out_verdict: goalVerdict(sampledOut.loss_ci95_pct, 3, controlInterval),
    full_verdict: goalVerdict(full.loss_ci95_pct, 15, controlInterval),
    // The same bounds on the in-process CPU per request (null when skipped).
    sampled_out_cpu_met: inProcess.off.length > 0 ? inProcessRows[1]!.overhead_vs_off_pct <= 3 : null,
    full_cpu_met: inProcess.off.length > 0 ? inProcessRows[2]!.overhead_vs_off_pct <= 15 : null,
  };
  process.stdout.write(
    `goals: sampled out ≤ 3% (median ${goals.sampled_out_met ? 'met' : 'NOT met'}; ${goals.sampled_out_verdict}), fully sampled ≤ 15% (median ${goals.full_met ? 'met' : 'NOT met'}; ${goals.full_verdict})\n`,
  );
  if (control && controlInterval) {
    const [low, high] = controlInterval;
    process.stdout.write(
      `control: off_control, untraced like off, ${control.loss_vs_off_pct}% (${low}..${high}%): ${controlFailed(controlInterval) ? 'its interval leaves out 0, so this run made a difference out of none: no verdict' : 'its interval holds 0'}\n`,
    );
  }
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify({
        bench: 'tracing',
        concurrency: options.concurrency,
        workers: options.workers,
        rounds,
        duration_ms: options.durationMs,
        fleet_rounds: options.fleetRounds,
        control: options.control,
        seed: options.seed,
        fleet_sets: fleetSets,
        warmup_ms: options.warmupMs,
        protocol: options.protocol,
        export_batch_size: options.exportBatchSize,
        modes: rows,
        in_process: inProcess.off.length > 0 ? inProcessRows : null,
        goals,
      })}\n`,
    );
  }
  return 0;
}
