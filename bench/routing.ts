// `kvroute bench routing`: what routing costs. Three measurements, at 8, 64 and 512 registered
// workers and prompts of 1k, 8k and 32k tokens:
//  - decision in-process: the router's own stages (hashStage -> matchStage -> selectDecode from
//    src/router/pipeline) on a router service built by createRouter, its KV index fed with stored
//    events through the index API (a quarter of the workers hold a prefix of the prompt);
//  - decision over HTTP: `POST /v1/route` to a `kvroute router` child process;
//  - end to end: `POST /v1/completions` (16 output tokens) through the router, and the same
//    request straight to a worker's `generate` endpoint over the request plane; the difference is
//    the router's overhead. The workers are zero-latency: request-plane servers in a child process
//    (bench/zero-worker.ts) that answer `generate` at once, so nothing an engine does is counted.
// Then the sustained request rate at concurrency 64 (1k-token prompts, 16 output tokens) through
// the router to 8 zero-latency workers. Table on stdout, progress on stderr, --json last line.

import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { type CommandSpec, commaList, type ParsedOptions } from '../src/cli/options.js';
import { UsageError } from '../src/errors.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEvent } from '../src/protocols/kv-events.js';
import { ENDPOINTS } from '../src/protocols/worker-plane.js';
import { leaseClock } from '../src/router/fleet/fleet.js';
import type { PipelineDeps } from '../src/router/pipeline/deps.js';
import { hashStage, matchStage, selectDecode } from '../src/router/pipeline/route.js';
import { createPolicy, seededRng } from '../src/router/scheduling/index.js';
import { createRouter } from '../src/router/service.js';
import { encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import {
  ChildExited,
  childDeathAsExit,
  childExited,
  exitStatus,
  firstLine,
  hasExited,
  stopChild,
} from './lib/child.js';
import { startRouter } from './lib/fleet.js';
import { atMost, type Distribution, distribution, round } from './lib/stats.js';
import { hashIdTokens } from './lib/trace.js';

export const spec: CommandSpec = {
  usage: 'kvroute bench routing',
  summary:
    'Routing decision latency (in-process and POST /v1/route), router overhead end to end against zero-latency workers, and max request rate at c64.',
  options: [
    { name: 'iterations', type: 'integer', default: 2000, min: 10, help: 'timed calls per configuration' },
    { name: 'duration-ms', type: 'integer', default: 8000, min: 500, help: 'throughput run length' },
    { name: 'concurrency', type: 'integer', default: 64, min: 1, help: 'callers in the throughput run' },
    { name: 'quick', type: 'boolean', default: false, help: 'fewer iterations, shorter run' },
    {
      name: 'workers',
      type: 'string',
      default: '8,64,512',
      help: 'comma-separated worker counts (subset of 8,64,512)',
    },
    {
      name: 'prompt-tokens',
      type: 'string',
      default: '1024,8192,32768',
      help: 'comma-separated prompt sizes (subset of 1024,8192,32768)',
    },
    {
      name: 'parts',
      type: 'string',
      default: 'decision,http,throughput',
      help: 'comma-separated measurements to run: decision, http, throughput (throughput needs 8 workers)',
    },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

const WORKER_COUNTS = [8, 64, 512] as const;
const PROMPT_TOKENS = [1024, 8192, 32768] as const;
const OUTPUT_TOKENS = 16;
const BLOCK_SIZE = 16;
const MODEL = 'mock-llm';
/** Distinct prompts per size, rotated so no single prompt's path stays hot. */
const VARIANTS = 16;
const log = (msg: string) => process.stderr.write(`${msg}\n`);

/** Which configurations to run (all by default; a subset while iterating on one goal). */
interface Selection {
  workers: number[];
  promptTokens: number[];
  decision: boolean;
  http: boolean;
  throughput: boolean;
}

/** The picked values of a comma-separated option, in `allowed`'s order (the report's row order). */
function subset(option: unknown, allowed: readonly number[], name: string): number[] {
  const picked = commaList(option, name, allowed);
  return allowed.filter((v) => picked.includes(v));
}

/** The measurements asked for. Throughput runs at 8 workers only: without 8 it is left out. */
function selection(options: ParsedOptions): Selection {
  const parts = commaList(options.parts, 'parts', ['decision', 'http', 'throughput']);
  const workers = subset(options.workers, WORKER_COUNTS, 'workers');
  const sel = {
    workers,
    promptTokens: subset(options.promptTokens, PROMPT_TOKENS, 'prompt-tokens'),
    decision: parts.includes('decision'),
    http: parts.includes('http'),
    throughput: parts.includes('throughput') && workers.includes(8),
  };
  if (parts.includes('throughput') && !sel.throughput) {
    // Alone it would measure nothing and exit 0 with an empty report.
    if (!sel.decision && !sel.http) {
      throw new UsageError(
        `--parts throughput runs at 8 workers: add 8 to --workers (got ${workers.join(',')})`,
      );
    }
    log('routing: throughput left out: it runs at 8 workers, and --workers has no 8');
  }
  return sel;
}

/** Prompts of `tokens` tokens sharing a common first half (like a system prompt + document), distinct tails. */
function prompts(tokens: number): number[][] {
  const shared = Array.from({ length: Math.ceil(tokens / 2 / 512) }, (_, i) => 1_000_000 + i);
  return Array.from({ length: VARIANTS }, (_, v) => {
    const ids = [...shared];
    while (ids.length * 512 < tokens) ids.push(2_000_000 + v * 1000 + ids.length);
    const out: number[] = [];
    for (const id of ids) out.push(...hashIdTokens(id));
    return out.slice(0, tokens);
  });
}

const usSince = (t0: number) => (performance.now() - t0) * 1000;

// ---- decision, in-process ----------------------------------------------------------------------

interface DecisionRow {
  workers: number;
  promptTokens: number;
  totalUs: Distribution;
  hashUs: number;
  matchUs: number;
  selectUs: number;
}

async function inProcessDecisions(iterations: number, sel: Selection): Promise<DecisionRow[]> {
  const rows: DecisionRow[] = [];
  for (const workers of sel.workers) {
    const service = await createRouter({
      port: 0,
      policy: 'kv',
      blockSize: BLOCK_SIZE,
      leaseTtlMs: 3_600_000,
    });
    try {
      const ids: string[] = [];
      for (let i = 0; i < workers; i++) {
        // kv_events false: no subscription is dialled; the exact index below is fed directly.
        const w = service.fleet.register(
          {
            role: 'both',
            address: `127.0.0.1:${20000 + i}`,
            model: MODEL,
            block_size: BLOCK_SIZE,
            kv_blocks: 16384,
            max_batched_tokens: 8192,
            kv_events: false,
          },
          leaseClock(),
        );
        ids.push(w.id);
      }
      const deps = {
        config: service.config,
        metrics: service.metrics,
        fleet: service.fleet,
        policy: createPolicy({ policy: 'kv', blockSize: BLOCK_SIZE, rng: seededRng(1) }),
      } as unknown as PipelineDeps;
      const rng = seededRng(workers);
      const eventIds = new Map<string, number>();
      for (const promptTokens of sel.promptTokens) {
        const variants = prompts(promptTokens);
        // A quarter of the workers hold a random-depth prefix of each variant.
        for (const tokens of variants) {
          const { local, sequence } = computeBlockHashes(tokens, BLOCK_SIZE);
          for (const id of ids) {
            if (rng() >= 0.25) continue;
            const depth = 1 + Math.floor(rng() * local.length);
            const blocks = [];
            for (let b = 0; b < depth; b++)
              blocks.push({ local_hash: String(local[b]), sequence_hash: String(sequence[b]) });
            const eventId = (eventIds.get(id) ?? 0) + 1;
            eventIds.set(id, eventId);
            const event: KvEvent = { event_id: eventId, type: 'stored', parent_hash: null, blocks };
            service.index.applyEvent(id, event);
          }
        }
        const total = new Float64Array(iterations);
        const hash = new Float64Array(iterations);
        const match = new Float64Array(iterations);
        const select = new Float64Array(iterations);
        const once = (i: number, record: boolean) => {
          const tokenIds = variants[i % VARIANTS]!;
          const t0 = performance.now();
          const keys = hashStage(deps, tokenIds);
          const t1 = performance.now();
          const overlaps = matchStage(deps, keys);
          const t2 = performance.now();
          const d = selectDecode(deps, {
            model: MODEL,
            tokenIds,
            keys,
            overlaps,
            promptTokens: tokenIds.length,
            outputTokens: OUTPUT_TOKENS,
          });
          const t3 = performance.now();
          if (d.outcome !== 'selected') throw new Error('no worker selected');
          if (!record) return;
          total[i] = (t3 - t0) * 1000;
          hash[i] = (t1 - t0) * 1000;
          match[i] = (t2 - t1) * 1000;
          select[i] = (t3 - t2) * 1000;
        };
        // Warm up with as many calls as are timed: after only 500, V8 was still tiering the stages up
        // (optimising on the second core while the timed loop ran), which showed as a p99 of
        // 54-68 µs against ~40 µs once warm. A router runs these millions of times; the steady
        // state is what it costs. Every timed sample is kept.
        for (let i = 0; i < iterations; i++) once(i, false);
        for (let i = 0; i < iterations; i++) once(i, true);
        rows.push({
          workers,
          promptTokens,
          totalUs: distribution(total),
          hashUs: distribution(hash).p50,
          matchUs: distribution(match).p50,
          selectUs: distribution(select).p50,
        });
        log(`routing: in-process decision, ${workers} workers, ${promptTokens} tokens done`);
      }
    } finally {
      await service.close();
    }
  }
  return rows;
}

// ---- over HTTP and end to end -------------------------------------------------------------------

async function startZeroWorkers(count: number): Promise<{ child: ChildProcess; ports: number[] }> {
  const script = fileURLToPath(import.meta.url).replace(/routing\.(ts|js)$/, 'zero-worker.$1');
  const child = spawn(process.execPath, [...process.execArgv, script, String(count)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await firstLine(child, 'the zero-latency workers');
  child.stdout!.resume();
  return { child, ports: JSON.parse(line) as number[] };
}

/** One completions body per prompt variant. */
function completionBodies(variants: readonly number[][]): string[] {
  return variants.map((p) => JSON.stringify({ model: MODEL, prompt: p, max_tokens: OUTPUT_TOKENS }));
}

/** The same work the router's executor asks of a worker: encode the `generate` request, read the stream. */
async function generateDirect(
  client: RequestPlaneClient,
  address: string,
  requestId: string,
  tokenIds: readonly number[],
): Promise<void> {
  const payload = encodeJson({ request_id: requestId, token_ids: tokenIds, max_tokens: OUTPUT_TOKENS });
  for await (const _chunk of client.stream(address, ENDPOINTS.generate, payload)) {
    // drain
  }
}

async function postJson(agent: Agent, url: string, body: string): Promise<number> {
  const res = await request(url, {
    method: 'POST',
    dispatcher: agent,
    headers: { 'content-type': 'application/json' },
    body,
  });
  await res.body.dump();
  return res.statusCode;
}

interface HttpRow {
  workers: number;
  promptTokens: number;
  routeUs: Distribution;
  routerE2eUs: Distribution;
  directE2eUs: Distribution;
  /** routerE2e p50 − directE2e p50. */
  overheadP50Us: number;
}

async function timed(iterations: number, fn: (i: number) => Promise<void>): Promise<Distribution> {
  for (let i = 0; i < Math.min(200, iterations); i++) await fn(i);
  const samples = new Float64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    await fn(i);
    samples[i] = usSince(t0);
  }
  return distribution(samples, 1);
}

async function throughput(
  agent: Agent,
  url: string,
  concurrency: number,
  durationMs: number,
  bodies: string[],
): Promise<{ rps: number; p50Us: number; p99Us: number; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  let n = 0;
  const start = performance.now();
  const end = start + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        const status = await postJson(agent, `${url}/v1/completions`, bodies[n++ % bodies.length]!);
        if (status === 200) latencies.push(usSince(t0));
        else errors++;
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  const d = distribution(latencies, 1);
  return { rps: Math.round(latencies.length / seconds), p50Us: d.p50, p99Us: d.p99, errors };
}

export function run(options: ParsedOptions): Promise<number> {
  return childDeathAsExit('routing', () => measureAll(options));
}

async function measureAll(options: ParsedOptions): Promise<number> {
  const quick = options.quick === true;
  const iterations = quick ? Math.min(300, options.iterations as number) : (options.iterations as number);
  const durationMs = quick ? Math.min(3000, options.durationMs as number) : (options.durationMs as number);
  const concurrency = options.concurrency as number;

  const sel = selection(options);
  if (sel.decision) log('routing: in-process decisions…');
  const decisions = sel.decision ? await inProcessDecisions(iterations, sel) : [];
  const httpRows: HttpRow[] = [];
  let rate: Awaited<ReturnType<typeof throughput>> | undefined;
  if (sel.http || sel.throughput) {
    log('routing: starting a router and zero-latency workers…');
    const zero = await startZeroWorkers(Math.max(...sel.workers));
    let router: Awaited<ReturnType<typeof startRouter>> | undefined;
    const agent = new Agent({ connections: Math.max(64, concurrency), keepAliveTimeout: 30_000 });
    const client = new RequestPlaneClient();
    let failed: { err: unknown } | undefined;
    try {
      // Inside the try: a router that fails to start (a bad KVROUTE_* option, say) must still stop
      // the zero-latency workers, or their server handles keep this process (and them) alive.
      router = await startRouter([
        '--policy',
        'kv',
        '--lease-ttl-ms',
        '3600000',
        '--block-size',
        String(BLOCK_SIZE),
      ]).catch((err: unknown) => {
        throw childExited(err);
      });
      const routerUrl = router.url;
      let registered: string[] = [];
      for (const workers of sel.workers) {
        if (!sel.http && workers !== 8) continue;
        for (const id of registered)
          await request(`${routerUrl}/v1/workers/${id}`, { method: 'DELETE', dispatcher: agent }).then((r) =>
            r.body.dump(),
          );
        registered = [];
        for (let i = 0; i < workers; i++) {
          const res = await request(`${routerUrl}/v1/workers`, {
            method: 'POST',
            dispatcher: agent,
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({
              role: 'both',
              address: `127.0.0.1:${zero.ports[i]}`,
              model: MODEL,
              block_size: BLOCK_SIZE,
              kv_blocks: 16384,
              max_batched_tokens: 8192,
              kv_events: true,
            }),
          });
          const body = (await res.body.json()) as { worker_id: string };
          if (res.statusCode !== 201) throw new Error(`registration failed: ${JSON.stringify(body)}`);
          registered.push(body.worker_id);
        }
        if (sel.http) {
          // Steady state before each configuration's timed rows, as the decision part does: a
          // fresh router (and this process's request-plane client) still tiers up for thousands
          // of requests, which charged the first configuration alone (8 workers: ~300 µs overhead
          // vs ~170 at 64). So does a router whose fleet was just replaced (8 workers deleted, 64
          // registered, right after the c64 rate run): its first ~10k requests at the new size
          // cost ~20-50 µs more each (more CPU per request, a mark-compact every ~0.5 s), which
          // the 64-worker rows, timed in that window, charged to the router's overhead (a full
          // run read 213-245 µs at 64 / 1k where the same code reads ~160 with 64 workers
          // first). Two seconds of the c64 load, then as many direct calls, per configuration.
          log(`routing: warming the router and the direct path up at ${workers} workers…`);
          const warmPrompts = prompts(1024);
          const served = await throughput(
            agent,
            routerUrl,
            concurrency,
            quick ? 500 : 2000,
            completionBodies(warmPrompts),
          );
          for (let i = 0; i < Math.min(served.rps * 2, 20_000); i++) {
            const address = `127.0.0.1:${zero.ports[i % workers]}`;
            await generateDirect(client, address, `warm-${i}`, warmPrompts[i % VARIANTS]!);
          }
        }
        for (const promptTokens of sel.http ? sel.promptTokens : []) {
          const variants = prompts(promptTokens);
          const bodies = completionBodies(variants);
          const routeUs = await timed(iterations, async (i) => {
            const status = await postJson(agent, `${routerUrl}/v1/route`, bodies[i % VARIANTS]!);
            if (status !== 200) throw new Error(`/v1/route answered ${status}`);
          });
          const routerE2eUs = await timed(iterations, async (i) => {
            const status = await postJson(agent, `${routerUrl}/v1/completions`, bodies[i % VARIANTS]!);
            if (status !== 200) throw new Error(`/v1/completions answered ${status}`);
          });
          let seq = 0;
          const directE2eUs = await timed(iterations, (i) =>
            generateDirect(
              client,
              `127.0.0.1:${zero.ports[i % workers]}`,
              `bench-${++seq}`,
              variants[i % VARIANTS]!,
            ),
          );
          httpRows.push({
            workers,
            promptTokens,
            routeUs,
            routerE2eUs,
            directE2eUs,
            overheadP50Us: round(routerE2eUs.p50 - directE2eUs.p50, 1),
          });
          log(`routing: HTTP and end to end, ${workers} workers, ${promptTokens} tokens done`);
        }
        if (workers === 8 && sel.throughput) {
          log(`routing: throughput at c${concurrency} for ${durationMs} ms…`);
          const bodies = completionBodies(prompts(1024));
          await throughput(agent, routerUrl, concurrency, Math.min(1000, durationMs), bodies); // warm-up
          rate = await throughput(agent, routerUrl, concurrency, durationMs, bodies);
        }
      }
    } catch (err) {
      failed = { err };
    }
    await agent.close();
    await client.close();
    await router?.stop();
    // Workers that died mid-run are the cause of whatever failed above (refused connections,
    // 5xx answers): report that. Waiting for their 'exit' again would never settle.
    const died = hasExited(zero.child);
    await stopChild(zero.child);
    if (died)
      throw new ChildExited(
        `the zero-latency workers exited (${exitStatus(zero.child.exitCode, zero.child.signalCode)}) during the run`,
      );
    if (failed) throw failed.err;
  }

  const lines = [
    'decision in-process (hash -> match -> select), µs',
    `${'workers'.padStart(8)}${'tokens'.padStart(8)}${'p50'.padStart(9)}${'p90'.padStart(9)}${'p99'.padStart(9)}${'hash'.padStart(9)}${'match'.padStart(9)}${'select'.padStart(9)}`,
    ...decisions.map(
      (r) =>
        `${String(r.workers).padStart(8)}${String(r.promptTokens).padStart(8)}${[r.totalUs.p50, r.totalUs.p90, r.totalUs.p99, r.hashUs, r.matchUs, r.selectUs].map((v) => v.toFixed(2).padStart(9)).join('')}`,
    ),
    '',
    'over HTTP, µs p50/p90/p99: POST /v1/route | completions via router | generate direct | overhead p50',
    ...httpRows.map(
      (r) =>
        `${String(r.workers).padStart(8)}${String(r.promptTokens).padStart(8)}  ${[r.routeUs, r.routerE2eUs, r.directE2eUs].map((d) => `${d.p50}/${d.p90}/${d.p99}`.padStart(22)).join(' |')} |${String(r.overheadP50Us).padStart(9)}`,
    ),
    '',
    rate
      ? `throughput c${concurrency}, 1k prompts, ${OUTPUT_TOKENS} output tokens, 8 zero-latency workers: ${rate.rps} req/s (p50 ${rate.p50Us} µs, p99 ${rate.p99Us} µs, errors ${rate.errors})`
      : 'throughput: not measured',
  ];
  const decision8k64 = decisions.find((r) => r.workers === 64 && r.promptTokens === 8192);
  const overhead1k64 = httpRows.find((r) => r.workers === 64 && r.promptTokens === 1024);
  const goals = {
    decisionP99UsAt8k64Workers: 50,
    overheadP50UsAt1k64Workers: 200,
    requestsPerSecond: 10_000,
  };
  // null: that configuration was not selected (--workers, --prompt-tokens, --parts).
  const measured = {
    decisionP99UsAt8k64Workers: decision8k64?.totalUs.p99 ?? null,
    overheadP50UsAt1k64Workers: overhead1k64?.overheadP50Us ?? null,
    requestsPerSecond: rate?.rps ?? null,
  };
  const met = {
    decision: atMost(measured.decisionP99UsAt8k64Workers, goals.decisionP99UsAt8k64Workers),
    overhead: atMost(measured.overheadP50UsAt1k64Workers, goals.overheadP50UsAt1k64Workers),
    throughput:
      measured.requestsPerSecond === null ? null : measured.requestsPerSecond >= goals.requestsPerSecond,
  };
  lines.push(
    `goals ${JSON.stringify(goals)}`,
    `measured ${JSON.stringify(measured)} met ${JSON.stringify(met)}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify({
        bench: 'routing',
        quick,
        iterations,
        blockSize: BLOCK_SIZE,
        outputTokens: OUTPUT_TOKENS,
        zeroLatencyWorkers:
          'request-plane servers in a child process (bench/zero-worker.ts) answering generate at once',
        decisionInProcess: decisions,
        http: httpRows,
        throughput: rate ? { concurrency, promptTokens: 1024, workers: 8, ...rate } : null,
        goals,
        measured,
        met,
      })}\n`,
    );
  }
  return 0;
}
