// `kvroute bench replay --quick` end to end on a tiny trace: a real router and two real workers as
// child processes; the JSON line carries every reported field and the report files are written.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { judgeReplay, type PolicySummary } from '../bench/lib/replay-metrics.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

test('replay --quick on a 10-line trace completes and reports every field', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kvroute-replay-'));
  try {
    // Requests 2..9 reuse the first request's two leading blocks; one malformed line (line 11).
    const lines = Array.from({ length: 10 }, (_, i) =>
      JSON.stringify({
        timestamp: i * 5000,
        input_length: 1100 + i,
        output_length: 4 + i,
        hash_ids: i === 0 ? [0, 1, 2] : [0, 1, 100 + i],
      }),
    );
    lines.push('{"timestamp": 1, "input_length": 5}');
    const trace = join(dir, 'trace.jsonl');
    await writeFile(trace, `${lines.join('\n')}\n`);
    const out = join(dir, 'report');
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        MAIN,
        'bench',
        'replay',
        '--trace',
        trace,
        '--quick',
        '--workers',
        '2',
        '--speedup',
        '50',
        '--json',
        '--out',
        out,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, stderr);
    assert.match(stderr, /trace\.jsonl:11: skipped: .*output_length/);
    const result = JSON.parse(stdout.trim().split('\n').at(-1)!);
    assert.equal(result.bench, 'replay');
    assert.equal(result.requests, 10);
    assert.equal(result.malformedLines, 1);
    assert.equal(result.workers, 2);
    const kv = result.policies.kv;
    assert.equal(kv.completed, 10, JSON.stringify(kv.errorSamples));
    assert.equal(kv.errors, 0);
    for (const key of ['mean', 'p50', 'p90', 'p99', 'max']) {
      assert.equal(typeof kv.ttftMs[key], 'number', `ttftMs.${key}`);
      assert.equal(typeof kv.itlMs[key], 'number', `itlMs.${key}`);
    }
    assert.ok(kv.ttftMs.p50 > 0);
    assert.equal(
      kv.outputTokens,
      lines.slice(0, 10).reduce((n, l) => n + JSON.parse(l).output_length, 0),
    );
    assert.ok(kv.outputTokensPerS > 0);
    assert.equal(
      kv.promptTokens,
      lines.slice(0, 10).reduce((n, l) => n + JSON.parse(l).input_length, 0),
    );
    assert.ok(kv.cachedTokens > 0, 'shared leading blocks are served from the KV cache');
    assert.equal(kv.kvHitRate, Math.round((kv.cachedTokens / kv.promptTokens) * 1e4) / 1e4);
    assert.equal(kv.perWorker.length, 2);
    assert.equal(
      kv.perWorker.reduce((n: number, w: { requests: number }) => n + w.requests, 0),
      10,
    );
    assert.equal(typeof kv.cvRequests, 'number');
    assert.equal(typeof kv.cvPromptTokens, 'number');
    const html = await readFile(join(out, 'report.html'), 'utf8');
    for (const svg of ['ttft-cdf.svg', 'hit-rate.svg', 'ttft-mean.svg', 'load-kv.svg']) {
      assert.ok(html.includes(svg), svg);
      assert.match(await readFile(join(out, svg), 'utf8'), /^<svg[\s\S]*<\/svg>\n$/);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('judgeReplay: a policy that failed requests does not meet the goals on the ones it served', () => {
  const summary = (over: Partial<PolicySummary>): PolicySummary =>
    ({
      requests: 10,
      completed: 10,
      errors: 0,
      ttftMs: { count: 10, mean: 100, p50: 100, p90: 100, p99: 100, max: 100 },
      kvHitRate: 0.1,
      ...over,
    }) as PolicySummary;
  const rr = { policy: 'round-robin', summary: summary({}) };
  const fastKv = {
    policy: 'kv',
    summary: summary({ ttftMs: { count: 10, mean: 20, p50: 20, p90: 20, p99: 20, max: 20 }, kvHitRate: 0.5 }),
  };
  assert.deepEqual(judgeReplay([fastKv, rr], 10).met, { ttft: true, hitRate: true });
  // The same numbers over the 4 requests kv did not fail: not met, and said why.
  const failingKv = { policy: 'kv', summary: { ...fastKv.summary, completed: 4, errors: 6 } };
  const judged = judgeReplay([failingKv, rr], 10);
  assert.deepEqual(judged.met, { ttft: false, hitRate: false });
  assert.deepEqual(
    judged.incomplete.map((r) => r.policy),
    ['kv'],
  );
  // Nothing served at all read as a mean TTFT of 0: infinitely better, before.
  const deadKv = {
    policy: 'kv',
    summary: summary({
      completed: 0,
      errors: 10,
      ttftMs: { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0 },
    }),
  };
  assert.equal(judgeReplay([deadKv, rr], 10).met?.ttft, false);
  assert.equal(judgeReplay([fastKv], 10).met, null, 'no round-robin run: nothing to judge');
  // Without a comparison the figures still cover only what was served: said for every policy.
  const alone = judgeReplay([failingKv], 10);
  assert.equal(alone.met, null);
  assert.deepEqual(
    alone.incomplete.map((r) => r.policy),
    ['kv'],
  );
  const failingRandom = { policy: 'random', summary: { ...rr.summary, completed: 9, errors: 1 } };
  const withRandom = judgeReplay([fastKv, rr, failingRandom], 10);
  assert.deepEqual(
    withRandom.incomplete.map((r) => r.policy),
    ['random'],
  );
  assert.deepEqual(withRandom.met, { ttft: true, hitRate: true }, 'random is not part of the goals');
});

/** `kvroute bench replay <args>` under tsx: exit code, stdout and stderr. */
async function replayCli(
  args: string[],
  env: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'bench', 'replay', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', ...env },
    // A test that times out kills its bench instead of leaving it running.
    signal,
    killSignal: 'SIGKILL',
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const [code] = await once(child, 'exit');
  return { code, stdout, stderr };
}

/** One 40-token request, the smallest trace a replay runs. */
const ONE_REQUEST = { timestamp: 0, input_length: 40, output_length: 2, hash_ids: [0] };

/** Runs `use` with `trace.jsonl` of `lines` in a temporary directory, removed afterwards. */
async function withTrace(
  lines: readonly object[],
  use: (trace: string, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kvroute-replay-'));
  try {
    const trace = join(dir, 'trace.jsonl');
    await writeFile(trace, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
    await use(trace, dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('replay hands its options to the workers in a form they take, within their bounds', async () => {
  await withTrace([ONE_REQUEST], async (trace, dir) => {
    const base = ['--trace', trace, '--workers', '1', '--out', join(dir, 'report')];
    // 1e21 reached the workers as '1e+21' (String of a large number), which they refuse (exit 2):
    // the fleet never started.
    const fast = await replayCli([...base, '--speedup', '1000000000000000000000', '--policy', 'kv']);
    assert.equal(fast.code, 0, fast.stderr);
    // Past the worker's bound, every worker would exit 2: the bench's own option says so first.
    const huge = await replayCli([...base, '--kv-blocks', '100000000']);
    assert.equal(huge.code, 2, huge.stderr);
    assert.match(huge.stderr, /^kvroute bench: --kv-blocks: must be <= 16777216, got 100000000\n$/);
  });
});

test('a worker that cannot start is one line on stderr and exit 1, not a stack trace', async () => {
  await withTrace([ONE_REQUEST], async (trace) => {
    // The workers inherit the environment: a bad KVROUTE_ value makes every one exit 2 at start.
    const { code, stderr } = await replayCli(['--trace', trace, '--workers', '1'], {
      KVROUTE_MAX_BATCHED_TOKENS: 'abc',
    });
    assert.equal(code, 1, stderr);
    assert.match(
      stderr,
      /^kvroute bench replay: worker-1 exited \(code 2\): .*KVROUTE_MAX_BATCHED_TOKENS.*\n$/,
    );
  });
});

test('a policy that failed some requests is told to leave them out of its figures', async () => {
  // 10 blocks of 16 tokens per worker: the 40-token prompt fits, the 600-token one is refused.
  await withTrace(
    [ONE_REQUEST, { timestamp: 10, input_length: 600, output_length: 3, hash_ids: [0, 1] }],
    async (trace) => {
      const { code, stdout, stderr } = await replayCli([
        ...['--trace', trace, '--workers', '1', '--kv-blocks', '10', '--json'],
      ]);
      assert.equal(code, 0, stderr);
      const result = JSON.parse(stdout.trim().split('\n').at(-1)!);
      assert.equal(result.policies.kv.errors, 1);
      assert.match(stdout, /^kv failed 1 of 2 requests: its TTFT, .* cover the 1 it completed$/m);
    },
  );
});

test('--quick fills in only the options not given: an explicit --speedup 3.5 or --limit 0 stands', async () => {
  // 201 requests: one more than --quick keeps.
  await withTrace(
    Array(201).fill({ timestamp: 0, input_length: 16, output_length: 1, hash_ids: [0] }),
    async (trace) => {
      const base = ['--trace', trace, '--workers', '1', '--json', '--quick'];
      const quick = await replayCli(base);
      assert.equal(quick.code, 0, quick.stderr);
      const q = JSON.parse(quick.stdout.trim().split('\n').at(-1)!);
      assert.deepEqual([q.speedup, q.requests], [20, 200]);
      // 3.5 is the default without --quick: given, it read as not given and became 20.
      const given = await replayCli([...base, '--speedup', '3.5', '--limit', '0']);
      assert.equal(given.code, 0, given.stderr);
      const g = JSON.parse(given.stdout.trim().split('\n').at(-1)!);
      assert.deepEqual([g.speedup, g.requests], [3.5, 201]);
    },
  );
});

test('an --out that cannot be made is a usage error before the replay, not a stack trace after it', {
  timeout: 60_000,
}, async (t) => {
  await withTrace([ONE_REQUEST], async (trace) => {
    // A file where the directory's parent should be.
    const { code, stdout, stderr } = await replayCli([
      ...['--trace', trace, '--workers', '1', '--out', join(trace, 'report')],
    ]);
    assert.equal(code, 2, stderr);
    assert.match(stderr, /^kvroute bench: --out: cannot create '.*trace\.jsonl\/report': ENOTDIR.*\n$/);
    assert.equal(stdout, '', 'nothing was replayed');
    // /proc answers ENOENT under a parent that exists: node's recursive mkdir looped on that
    // forever, and the bench hung before its first request.
    const proc = await replayCli(
      ['--trace', trace, '--workers', '1', '--out', '/proc/kvroute-no/report'],
      {},
      t.signal,
    );
    assert.equal(proc.code, 2, proc.stderr);
    assert.match(
      proc.stderr,
      /^kvroute bench: --out: cannot create '\/proc\/kvroute-no\/report': ENOENT.*\n$/,
    );
  });
});
