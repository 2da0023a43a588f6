// `kvroute bench replay --trace FILE`: replays a Mooncake-format trace against a real router and
// N aggregated mock workers (child processes, fresh for every policy), sending each request in
// timestamp order at (its timestamp − the earliest) / (--speedup × --load-scale) (the workers'
// engines run --speedup times faster, so at load-scale 1 the offered load relative to capacity is
// the trace's own; above 1 the arrivals are compressed further to load the fleet). Measures TTFT,
// inter-token latency, output throughput, KV hit rate (usage cached_tokens / prompt_tokens) and the
// spread of requests over workers (x-kvroute-decode-worker). Prints a table, --out writes an HTML
// report with SVG charts, --json prints one JSON object as the last line.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent } from 'undici';
import { spec as workerSpec } from '../src/cli/commands/worker.js';
import { type CommandSpec, decimalText, type ParsedOptions } from '../src/cli/options.js';
import { UsageError } from '../src/errors.js';
import { makeDirectory } from '../src/util/make-directory.js';
import { childDeathAsExit, childExited } from './lib/child.js';
import { type CompletionTiming, streamCompletion } from './lib/completion-stream.js';
import { startFleet } from './lib/fleet.js';
import { Progress } from './lib/progress.js';
import { judgeReplay, type PolicySummary, type ReplayRecord, summarizeReplay } from './lib/replay-metrics.js';
import { type PolicyRun, renderReport } from './lib/replay-report.js';
import { extent } from './lib/stats.js';
import { arrivalSchedule, expandPrompt, parseTrace, type ScheduledRequest } from './lib/trace.js';

// least-loaded too: what an operator compares kv with first (load balancing without the cache).
const POLICIES = ['kv', 'round-robin', 'random', 'least-loaded'] as const;

/**
 * KV pool per worker. The engine's default (16,384 blocks = 262k tokens = 512 trace hash ids) holds
 * ~17 of the trace's mean 15k-token prompts: an LRU of that size reaches a prefix hit rate of ~4% on
 * the shared trace whatever the routing, so no policy could show caching. 131,072 blocks (2M
 * tokens per worker) put the ceiling at ~53% over 4 workers (LRU simulation of the trace), so the
 * hit rate measures routing affinity. See docs/benchmarks.md.
 */
const DEFAULT_KV_BLOCKS = 131_072;

/** The worker command's bound on an option (a value past it would make every worker exit 2). */
const workerMax = (name: string): number | undefined => workerSpec.options.find((o) => o.name === name)?.max;

export const spec: CommandSpec = {
  usage: 'kvroute bench replay',
  summary:
    'Replay a Mooncake-format trace (JSONL: timestamp ms, input_length, output_length, hash_ids of 512 tokens) against a router and N mock workers; compare policies.',
  options: [
    { name: 'trace', type: 'string', help: 'trace file (JSONL, Mooncake format; required)' },
    {
      name: 'policy',
      type: 'string',
      default: 'kv',
      choices: [...POLICIES, 'all'],
      help: 'router policy; all = each in turn on fresh workers',
    },
    { name: 'workers', type: 'integer', default: 4, min: 1, max: 64, help: 'aggregated (role both) workers' },
    {
      // No default in the spec: --quick changes it, and only when not given (see QUICK).
      name: 'speedup',
      type: 'number',
      min: 0.001,
      help: 'divides trace time and the workers’ simulated time (default: 3.5; 20 with --quick)',
    },
    {
      name: 'load-scale',
      type: 'number',
      // 3: with 4 workers round-robin is loaded (TTFT p99 ~4 s) but serves every request.
      default: 3,
      min: 0.01,
      help: 'offered load multiplier: arrivals come this much faster than the workers run (1 = the trace’s own load)',
    },
    {
      name: 'kv-blocks',
      type: 'integer',
      default: DEFAULT_KV_BLOCKS,
      min: 1,
      max: workerMax('kv-blocks'),
      help: 'KV pool per worker in blocks of --block-size tokens',
    },
    {
      name: 'block-size',
      type: 'integer',
      default: 16,
      min: 1,
      max: workerMax('block-size'),
      help: 'tokens per KV block (router and workers)',
    },
    {
      name: 'limit',
      type: 'integer',
      min: 0,
      help: 'replay only the first N requests (0 = all) (default: all; 200 with --quick)',
    },
    { name: 'model', type: 'string', default: 'mock-llm', help: 'model name sent and served' },
    {
      name: 'seed',
      type: 'integer',
      default: 1,
      min: 0,
      max: 2 ** 32 - 1,
      help: "the router's --seed: the random policy (and ties) draw the same choices in every run",
    },
    { name: 'out', type: 'string', help: 'directory for report.html and the SVG charts' },
    { name: 'quick', type: 'boolean', default: false, help: 'first 200 requests at speedup 20' },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

/**
 * What --quick sets when the option is not given. Not given is undefined (the two options have no
 * spec default): comparing with the default read an explicit `--speedup 3.5` as not given (20
 * ran), and `--limit 0` (all) as 200.
 */
const QUICK = { speedup: 20, limit: 200 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One policy on a fresh fleet: every request sent when it is due, all answers awaited. */
async function replayPolicy(
  policy: string,
  schedule: readonly ScheduledRequest[],
  o: {
    workers: number;
    speedup: number;
    loadScale: number;
    kvBlocks: number;
    blockSize: number;
    model: string;
    seed: number;
  },
): Promise<{ run: PolicyRun; workerIds: string[] }> {
  const maxPrompt = extent(schedule.map((s) => s.request.inputLength))?.max ?? 0;
  // A router or worker that exits at start (a bad KVROUTE_ value in the environment it inherits,
  // say) is the operator's to fix: one line and exit 1 (childDeathAsExit), not a stack trace.
  const fleet = await startFleet({
    workers: o.workers,
    policy,
    routerArgs: [
      '--block-size',
      String(o.blockSize),
      '--seed',
      String(o.seed),
      // Trace prompts reach ~190k tokens; the router's default bound is lower.
      '--max-prompt-tokens',
      String(Math.max(131_072, maxPrompt)),
      '--body-limit',
      String(Math.max(4 << 20, maxPrompt * 8 + 4096)),
      // Every request is served and queues in a worker instead of a 503 from the busy check, so
      // all policies answer the same requests and TTFT shows the queueing each policy causes.
      '--busy-prefill-tokens',
      String(1e12),
      '--busy-decode-fraction',
      String(1e6),
    ],
    workerArgs: [
      '--speedup',
      decimalText(o.speedup),
      '--kv-blocks',
      String(o.kvBlocks),
      '--block-size',
      String(o.blockSize),
      '--model',
      o.model,
    ],
  }).catch((err: unknown) => {
    throw childExited(err);
  });
  const agent = new Agent({ connections: 1024, keepAliveTimeout: 30_000 });
  const progress = new Progress(`replay ${policy}`, schedule.length);
  const records: ReplayRecord[] = [];
  try {
    const t0 = performance.now();
    const pending: Promise<void>[] = [];
    let inFlight = 0;
    for (const { request: req, dueMs } of schedule) {
      const wait = dueMs - (performance.now() - t0);
      if (wait > 1) await sleep(wait);
      const sentAt = performance.now() - t0;
      const body = { model: o.model, prompt: expandPrompt(req), max_tokens: req.outputLength };
      inFlight++;
      pending.push(
        streamCompletion(agent, fleet.url, body).then((timing: CompletionTiming) => {
          inFlight--;
          records.push({ sentAt, timing });
          progress.tick(1, `in flight ${inFlight}`);
        }),
      );
    }
    await Promise.all(pending);
    progress.finish();
  } finally {
    await agent.close();
    await fleet.stop();
  }
  records.sort((a, b) => a.sentAt - b.sentAt);
  const summary = summarizeReplay(records, fleet.workerIds);
  const ttftSamples = records.flatMap((r) =>
    r.timing.ok && r.timing.ttftMs !== undefined ? [r.timing.ttftMs] : [],
  );
  return { run: { policy, summary, ttftSamples }, workerIds: fleet.workerIds };
}

function jsonSummary(s: PolicySummary) {
  const { timeline: _timeline, ...rest } = s;
  return rest;
}

function printTable(runs: readonly PolicyRun[]): void {
  const cols: Array<[string, (s: PolicySummary) => string | number]> = [
    ['done', (s) => s.completed],
    ['err', (s) => s.errors],
    ['TTFT mean', (s) => s.ttftMs.mean],
    ['p50', (s) => s.ttftMs.p50],
    ['p90', (s) => s.ttftMs.p90],
    ['p99', (s) => s.ttftMs.p99],
    ['ITL ms', (s) => s.itlMs.mean],
    ['out tok/s', (s) => s.outputTokensPerS],
    ['hit rate', (s) => `${(s.kvHitRate * 100).toFixed(1)}%`],
    ['CV req', (s) => s.cvRequests],
    ['CV tok', (s) => s.cvPromptTokens],
  ];
  const lines = [`${'policy'.padEnd(13)}${cols.map(([h]) => h.padStart(11)).join('')}`];
  for (const r of runs) {
    lines.push(`${r.policy.padEnd(13)}${cols.map(([, f]) => String(f(r.summary)).padStart(11)).join('')}`);
  }
  for (const r of runs) {
    lines.push(
      `${r.policy}: requests per worker ${r.summary.perWorker.map((w) => `${w.worker}=${w.requests}`).join(' ')}`,
    );
    if (r.summary.errorSamples.length > 0)
      lines.push(`${r.policy}: errors e.g. ${r.summary.errorSamples[0]}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

export function run(options: ParsedOptions): Promise<number> {
  return childDeathAsExit('replay', () => replay(options));
}

async function replay(options: ParsedOptions): Promise<number> {
  if (typeof options.trace !== 'string' || options.trace === '') {
    throw new UsageError('--trace is required (a Mooncake-format JSONL file)');
  }
  const quick = options.quick === true;
  const speedup = (options.speedup as number | undefined) ?? (quick ? QUICK.speedup : 3.5);
  const limit = (options.limit as number | undefined) ?? (quick ? QUICK.limit : 0);
  const text = await readFile(options.trace, 'utf8').catch((err: Error) => {
    throw new UsageError(`--trace: cannot read '${options.trace}': ${err.message}`);
  });
  const out = typeof options.out === 'string' && options.out !== '' ? options.out : undefined;
  // Made now, not after the replay: a directory that cannot be made was found only minutes later,
  // as a stack trace, with the results and the --json line lost.
  if (out !== undefined) {
    await makeDirectory(out).catch((err: Error) => {
      throw new UsageError(`--out: cannot create '${out}': ${err.message}`);
    });
  }
  const parsed = parseTrace(text);
  for (const e of parsed.errors.slice(0, 10)) {
    process.stderr.write(`${options.trace}:${e.line}: skipped: ${e.message}\n`);
  }
  if (parsed.errors.length > 10)
    process.stderr.write(`… and ${parsed.errors.length - 10} more malformed lines\n`);
  if (parsed.requests.length === 0) throw new UsageError(`--trace: no valid requests in '${options.trace}'`);
  // In arrival order, so --limit keeps the first N arrivals.
  const all = arrivalSchedule(parsed.requests, speedup * (options.loadScale as number));
  if (all.some((s, i) => s.request !== parsed.requests[i]))
    process.stderr.write(`${options.trace}: lines not in timestamp order: replayed in timestamp order\n`);
  const requests = limit > 0 ? all.slice(0, limit) : all;

  const policies = options.policy === 'all' ? [...POLICIES] : [options.policy as string];
  const settings = {
    workers: options.workers as number,
    speedup,
    loadScale: options.loadScale as number,
    kvBlocks: options.kvBlocks as number,
    blockSize: options.blockSize as number,
    model: options.model as string,
    seed: options.seed as number,
  };
  const runs: PolicyRun[] = [];
  for (const policy of policies) runs.push((await replayPolicy(policy, requests, settings)).run);

  printTable(runs);
  const byPolicy = Object.fromEntries(runs.map((r) => [r.policy, jsonSummary(r.summary)]));
  const { comparison, goals, met, incomplete } = judgeReplay(runs, requests.length);
  // Every figure of a policy covers the requests it completed: say so wherever some failed.
  for (const r of incomplete) {
    process.stdout.write(
      `${r.policy} failed ${r.summary.errors} of ${requests.length} requests: its TTFT, ITL, output tok/s and hit rate cover the ${r.summary.completed} it completed\n`,
    );
  }
  if (comparison && incomplete.some((r) => r.policy === 'kv' || r.policy === 'round-robin'))
    process.stdout.write('goals not met: kv and round-robin must both complete every request\n');
  if (comparison) {
    process.stdout.write(
      `kv / round-robin: mean TTFT ${comparison.kvMeanTtftOverRoundRobin} (goal ≤ 0.333), hit rate ${comparison.kvHitRateOverRoundRobin}x (goal ≥ 2)\n`,
    );
  }
  if (out !== undefined) {
    const files = renderReport({
      title: `kvroute replay: ${options.trace}`,
      settings: {
        trace: options.trace,
        requests: requests.length,
        'malformed lines': parsed.errors.length,
        ...settings,
      },
      runs,
    });
    for (const [name, content] of files) await writeFile(join(out, name), content);
    process.stdout.write(`report: ${join(out, 'report.html')}\n`);
  }
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify({
        bench: 'replay',
        trace: options.trace,
        quick,
        requests: requests.length,
        malformedLines: parsed.errors.length,
        ...settings,
        policies: byPolicy,
        comparison,
        goals,
        met,
      })}\n`,
    );
  }
  return runs.some((r) => r.summary.completed === 0) ? 1 : 0;
}
