// `kvroute bench tracing`: its median interval (exact coverage, checked against a direct binomial
// sum and by simulation) and one short run as a process (compiled, from dist/): three fleets
// loaded, every mode answered, the export batch size applied, and the JSON line the operator reads.
// Also `bench routing` and `bench transport` as processes: a child that dies (or a router that
// cannot start) is one line and exit 1 with no child left, and transport's JSON keys.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { goalVerdict, median, medianConfidenceInterval } from '../bench/lib/stats.js';
import { seededRng } from '../src/util/seeded-rng.js';
import { alive, CLI_MAIN } from './helpers/fleet.js';

function binomialCdfHalf(n: number, j: number): number {
  let sum = 0;
  let choose = 1;
  for (let i = 0; i <= j; i++) {
    sum += choose;
    choose = (choose * (n - i)) / (i + 1);
  }
  return sum / 2 ** n;
}

test('median: the middle value, or the mean of the two middle ones', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([]), 0);
});

test('medianConfidenceInterval: the widest-k order statistics whose exact coverage reaches the level', () => {
  for (let n = 1; n <= 40; n++) {
    const values = Array.from({ length: n }, (_, i) => n - i); // descending: the function must sort
    const got = medianConfidenceInterval(values, 0.95);
    // Reference: the largest k with 1 - 2·P(B(n, 1/2) <= k - 1) >= 0.95.
    let k = 0;
    for (let c = 1; 2 * c <= n; c++) if (1 - 2 * binomialCdfHalf(n, c - 1) >= 0.95) k = c;
    if (k === 0) {
      assert.equal(got, null, `n=${n}`);
      continue;
    }
    assert.ok(got, `n=${n}`);
    assert.equal(got.low, k, `n=${n}`);
    assert.equal(got.high, n + 1 - k, `n=${n}`);
    assert.ok(Math.abs(got.coverage - (1 - 2 * binomialCdfHalf(n, k - 1))) < 1e-12);
  }
  assert.equal(medianConfidenceInterval([1, 2, 3, 4, 5]), null); // 5 rounds cannot reach 95%
  assert.deepEqual(medianConfidenceInterval([5, 1, 4, 2, 6, 3]), { low: 1, high: 6, coverage: 1 - 2 / 64 });
});

test('medianConfidenceInterval covers the true median at least as often as it claims', () => {
  const rng = seededRng(99);
  // Skewed draws (exponential, median ln 2), 6 and 12 rounds.
  for (const n of [6, 12]) {
    let covered = 0;
    const trials = 4000;
    let claimed = 0;
    for (let t = 0; t < trials; t++) {
      const draws = Array.from({ length: n }, () => -Math.log(1 - rng()));
      const ci = medianConfidenceInterval(draws)!;
      claimed = ci.coverage;
      if (ci.low <= Math.LN2 && Math.LN2 <= ci.high) covered++;
    }
    // Binomial noise on 4000 trials is ~0.4%: allow 1.5%.
    assert.ok(covered / trials >= claimed - 0.015, `n=${n}: covered ${covered / trials}, claimed ${claimed}`);
  }
});

test('a goal verdict: met, not met or unresolved by the interval, and nothing when the control failed', () => {
  assert.equal(goalVerdict([18, 35], 15), 'not met');
  assert.equal(goalVerdict([-2, 1.1], 3), 'met');
  assert.equal(goalVerdict([-2, 3], 3), 'met'); // at the bound counts as met
  assert.equal(goalVerdict([1, 6], 3), 'unresolved');
  assert.equal(goalVerdict(null, 3), 'unresolved'); // too few rounds
  // A control whose interval holds zero changes nothing.
  assert.equal(goalVerdict([18, 35], 15, [-8.8, 21.4]), 'not met');
  assert.equal(goalVerdict([-2, 1.1], 3, [0, 4]), 'met');
  assert.equal(goalVerdict([-2, 1.1], 3, null), 'met');
  // One that leaves zero out (an A/A pair measured as different): the run judges nothing.
  assert.equal(goalVerdict([-13.2, 1.1], 3, [2, 12.4]), 'unresolved');
  assert.equal(goalVerdict([18, 35], 15, [-15.5, -0.1]), 'unresolved');
});

test('a short run prints every mode and the JSON line', async () => {
  const { code, out, err } = await runCli(
    [
      'bench',
      'tracing',
      '--json',
      '--rounds',
      '2',
      '--fleet-rounds',
      '1',
      '--duration-ms',
      '500',
      '--warmup-ms',
      '200',
      '--in-process-ms',
      '0',
      '--concurrency',
      '4',
      '--workers',
      '1',
      '--export-batch-size',
      '16',
      '--control',
    ],
    { env: { CI: 'true' }, timeoutMs: 180_000 },
  );
  assert.equal(code, 0, err);
  // Progress goes to stderr, the table and the JSON to stdout.
  assert.match(err, /round 2\/2, full: \d+ req\/s, 0 errors/);
  // A new set of fleets for each round: each set of processes is one draw of its luck.
  assert.match(err, /round 2\/2, starting the off fleet/);
  const report = JSON.parse(out.trim().split('\n').at(-1)!);
  assert.equal(report.bench, 'tracing');
  assert.equal(report.fleet_sets, 2);
  assert.deepEqual(
    report.modes.map((m: { mode: string }) => m.mode),
    ['off', 'sampled_out', 'full', 'off_control'],
  );
  assert.equal(report.control, true);
  assert.match(err, /round 2\/2, off_control: \d+ req\/s, 0 errors, sink got 0 exports/);
  for (const m of report.modes) {
    assert.ok(m.requests > 0, `${m.mode} served nothing`);
    assert.equal(m.errors, 0);
    assert.equal(m.loss_ci95_pct, null); // two rounds: no interval
  }
  const full = report.modes[2];
  assert.ok(full.sink_exports > 0 && full.sink_bytes > 0, 'the fully sampled fleet exported nothing');
  // Six spans a request (router: http-request, kv_find_best_match, the request-plane call; worker:
  // handle_payload and the two engine phases), sent in batches of at most 16: the traced fleet
  // got the batch size. At the default 512 it would export ~32 times less often; half the count of
  // full batches leaves room for a slow machine's last partial batches arriving after the slice.
  assert.equal(report.export_batch_size, 16);
  assert.ok(
    full.sink_exports >= Math.floor((full.requests * 6) / 16 / 2),
    `${full.sink_exports} exports for ${full.requests} requests`,
  );
  assert.equal(report.modes[1].sink_exports, 0); // sampled out exports nothing
  assert.equal(report.modes[3].sink_exports, 0); // the control is untraced
  assert.equal(report.goals.full_verdict, 'unresolved');
  assert.equal(report.in_process, null);
});

test('the in-process part exports to a sink of its own and reports each mode', async () => {
  const { code, out, err } = await runCli(
    [
      'bench',
      'tracing',
      '--json',
      ...['--rounds', '1', '--duration-ms', '500', '--warmup-ms', '200', '--control', 'false'],
      ...['--concurrency', '2', '--workers', '1', '--in-process-ms', '300', '--export-batch-size', '16'],
    ],
    { env: { CI: 'true' }, timeoutMs: 180_000 },
  );
  assert.equal(code, 0, err);
  assert.match(err, /in-process CPU per request, round 1\/1, full/);
  // The in-process tracers send to a sink in a child process (so that receiving the spans is not
  // counted as the request path's CPU); a sink that never answered would leave the spans of the
  // `full` runs unsent, which the exporter reports on stderr when its tracer shuts down.
  assert.doesNotMatch(err, /not exported|dropped/);
  const report = JSON.parse(out.trim().split('\n').at(-1)!);
  assert.deepEqual(
    report.in_process.map((r: { mode: string }) => r.mode),
    ['off', 'sampled_out', 'full'],
  );
  for (const r of report.in_process) assert.ok(r.cpu_us_per_req > 0, `${r.mode}: ${r.cpu_us_per_req}`);
});

// ---- `bench routing` and `bench transport`: a child process that dies, and the JSON keys --------
// These benches have no test file of their own (test:unit lists its files by name); they run here
// beside the other bench-through-the-CLI test, each as small as the bench allows. A preload
// (NODE_OPTIONS --require, inherited by the bench's children) records or ends the child at issue.

interface BenchRun {
  code: number | null;
  out: string;
  err: string;
}

interface RunOptions {
  env?: Record<string, string>;
  onStderr?: (err: string) => void;
  /** A hang fails the test, not the run. */
  timeoutMs?: number;
}

/** `kvroute <args>` from dist as a child process: its exit code, stdout and stderr. */
async function runCli(args: string[], opts: RunOptions = {}): Promise<BenchRun> {
  const child = spawn(process.execPath, [CLI_MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err += s;
    opts.onStderr?.(err);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const [code] = await once(child, 'exit');
  clearTimeout(timer);
  return { code, out, err };
}

/** `kvroute bench <args>` with `preload` required into it and its children ($DIR: `dir`). */
async function runBench(
  dir: string,
  args: string[],
  preload: string,
  opts: RunOptions = {},
): Promise<BenchRun> {
  const script = join(dir, 'preload.cjs');
  await writeFile(script, preload.replaceAll('$DIR', JSON.stringify(dir)));
  return runCli(['bench', ...args], {
    ...opts,
    env: { ...opts.env, NODE_OPTIONS: `--require ${script}`, OTEL_TRACES_EXPORTER: 'none' },
  });
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kvroute-bench-child-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** In the zero-latency workers' process: write its pid to $DIR/zero.pid. */
const RECORD_ZERO_PID = `if (/zero-worker\\.js$/.test(process.argv[1] ?? ''))
  require('node:fs').writeFileSync(require('node:path').join($DIR, 'zero.pid'), String(process.pid));\n`;
/** In the process of `script`: exit with code 3 before anything is printed. */
const dieIn = (script: string) => `if (process.argv[1]?.endsWith('/${script}')) process.exit(3);\n`;

const lastLine = (text: string) => text.trim().split('\n').at(-1)!;
const ROUTING = ['routing', '--parts', 'http', '--workers', '8', '--prompt-tokens', '1024', '--quick'];
const TINY_ROUTING = [...ROUTING, '--iterations', '10', '--concurrency', '2', '--json'];
const TINY_TRANSPORT = ['transport', '--duration-ms', '100', '--warmup-ms', '0', '--stream-chunks', '4'];

test('bench routing: throughput alone without 8 workers is a usage error (it measured nothing, exit 0)', async () => {
  const alone = await runCli(['bench', 'routing', '--parts', 'throughput', '--workers', '64']);
  assert.equal(alone.code, 2, alone.err);
  assert.equal(alone.out, '');
  assert.match(
    alone.err,
    /^kvroute bench: --parts throughput runs at 8 workers: add 8 to --workers \(got 64\)\n$/,
  );
});

test('bench tracing: a fleet whose router fails to start is one line, exit 1 (it was a stack trace)', async () => {
  const { code, out, err } = await runCli(
    ['bench', 'tracing', '--rounds', '1', '--in-process-ms', '0', '--control', 'false', '--workers', '1'],
    { env: { KVROUTE_MAX_INFLIGHT: 'abc' } },
  );
  assert.equal(code, 1, err);
  assert.match(lastLine(err), /^kvroute bench tracing: router exited \(code 2\): .*KVROUTE_MAX_INFLIGHT/);
  assert.doesNotMatch(err, /\n\s+at /, 'a stack trace, not one line');
  assert.equal(out, '');
});

test('bench routing: a router that fails to start is one line, exit 1, and no zero-worker left', async () => {
  await withDir(async (dir) => {
    const { code, out, err } = await runBench(dir, TINY_ROUTING, RECORD_ZERO_PID, {
      env: { KVROUTE_MAX_INFLIGHT: 'abc' },
    });
    assert.equal(code, 1, err);
    assert.match(lastLine(err), /^kvroute bench routing: router exited \(code 2\): .*KVROUTE_MAX_INFLIGHT/);
    assert.doesNotMatch(err, /\n\s+at /, 'a stack trace, not one line');
    assert.equal(out, '');
    const pid = Number(await readFile(join(dir, 'zero.pid'), 'utf8'));
    assert.ok(pid > 0);
    const left = alive(pid);
    if (left) process.kill(pid, 'SIGKILL'); // its stderr is ours: it would keep this file running
    assert.equal(left, false, `zero-worker ${pid} outlived the bench`);
  });
});

test('bench routing: zero-latency workers killed mid-run are one line, exit 1 (it was a silent exit 0)', async () => {
  await withDir(async (dir) => {
    let killed = false;
    const { code, out, err } = await runBench(dir, TINY_ROUTING, RECORD_ZERO_PID, {
      onStderr: (text) => {
        // Registered and warming up: kill the workers under the running bench.
        if (killed || !text.includes('warming the router')) return;
        killed = true;
        void readFile(join(dir, 'zero.pid'), 'utf8').then((pid) => process.kill(Number(pid), 'SIGKILL'));
      },
    });
    assert.ok(killed, err);
    assert.equal(code, 1, err);
    assert.equal(
      lastLine(err),
      'kvroute bench routing: the zero-latency workers exited (signal SIGKILL) during the run',
    );
    assert.equal(out, '');
  });
});

test('bench routing: zero-latency workers that die before their ports are one line, exit 1', async () => {
  await withDir(async (dir) => {
    const { code, err } = await runBench(dir, TINY_ROUTING, dieIn('zero-worker.js'));
    assert.equal(code, 1, err);
    assert.equal(
      lastLine(err),
      'kvroute bench routing: the zero-latency workers exited (code 3) at start-up',
    );
  });
});

test('bench transport: a server that dies before its port is one line, exit 1', async () => {
  await withDir(async (dir) => {
    const { code, out, err } = await runBench(
      dir,
      [...TINY_TRANSPORT, '--transports', 'tcp', '--json'],
      dieIn('transport-server.js'),
    );
    assert.equal(code, 1, err);
    assert.equal(lastLine(err), 'kvroute bench transport: the tcp server exited (code 3) at start-up');
    assert.equal(out, '');
  });
});

test('bench transport --json: the cN figures under stable keys, with the concurrency they were run at', async () => {
  await withDir(async (dir) => {
    const { code, out, err } = await runBench(
      dir,
      [...TINY_TRANSPORT, '--transports', 'tcp', '--concurrency', '3', '--json'],
      '',
    );
    assert.equal(code, 0, err);
    assert.match(out, /^round trips\/s, c3 +\d+$/m);
    const report = JSON.parse(lastLine(out));
    assert.deepEqual(Object.keys(report), ['tcp']);
    assert.deepEqual(Object.keys(report.tcp).sort(), [
      'concurrency',
      'p50_us_cn',
      'p99_us_cn',
      'rps_c1',
      'rps_cn',
      'stream_chunks_per_s',
    ]);
    assert.equal(report.tcp.concurrency, 3);
    assert.ok(report.tcp.rps_cn > 0 && report.tcp.p99_us_cn >= report.tcp.p50_us_cn, out);
  });
});
