// The replay bench's pure parts: the Mooncake trace parser (on the shared trace and on malformed
// lines), hash-id expansion, and the per-policy summary.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { type PolicySummary, summarizeReplay } from '../bench/lib/replay-metrics.js';
import { renderReport } from '../bench/lib/replay-report.js';
import { extent, percentile } from '../bench/lib/stats.js';
import { barChart, cdfPoints, lineChart, niceTicks } from '../bench/lib/svg-chart.js';
import {
  arrivalSchedule,
  expandPrompt,
  hashIdTokens,
  parseTrace,
  TOKEN_ID_BOUND,
  TOKENS_PER_HASH_ID,
} from '../bench/lib/trace.js';

const SHARED_TRACE = new URL('../../shared/traces/mooncake_synthetic_trace.jsonl', import.meta.url);

test('parses the shared Mooncake trace: every line a request, fields as in the file', {
  skip: !existsSync(SHARED_TRACE) && 'the shared trace is not checked out beside this repository',
}, () => {
  const text = readFileSync(SHARED_TRACE, 'utf8');
  const { requests, errors } = parseTrace(text);
  assert.deepEqual(errors, []);
  assert.equal(requests.length, text.trim().split('\n').length);
  const firstLine = JSON.parse(text.slice(0, text.indexOf('\n')));
  assert.deepEqual(requests[0], {
    line: 1,
    timestamp: firstLine.timestamp,
    inputLength: firstLine.input_length,
    outputLength: firstLine.output_length,
    hashIds: firstLine.hash_ids,
  });
});

test('reports malformed lines with their line numbers and keeps the valid ones', () => {
  const good = (ts: number) =>
    JSON.stringify({ timestamp: ts, input_length: 600, output_length: 3, hash_ids: [1, 2] });
  const text = [
    good(0),
    '{not json',
    '',
    JSON.stringify({ timestamp: 5, input_length: 600, output_length: 3, hash_ids: [1] }),
    JSON.stringify({ timestamp: -1, input_length: 10, output_length: 3, hash_ids: [1] }),
    '[1,2]',
    JSON.stringify({ timestamp: 7, input_length: 10, output_length: 0, hash_ids: [1] }),
    JSON.stringify({ timestamp: 8, input_length: 10, output_length: 2, hash_ids: ['x'] }),
    good(9),
  ].join('\n');
  const { requests, errors } = parseTrace(text);
  assert.deepEqual(
    requests.map((r) => [r.line, r.timestamp]),
    [
      [1, 0],
      [9, 9],
    ],
  );
  assert.deepEqual(
    errors.map((e) => e.line),
    [2, 4, 5, 6, 7, 8],
  );
  assert.match(errors[0]!.message, /not JSON/);
  assert.match(errors[1]!.message, /hash_ids has 1 ids, input_length 600 needs 2/);
  assert.match(errors[2]!.message, /timestamp/);
  assert.match(errors[3]!.message, /not a JSON object/);
  assert.match(errors[4]!.message, /output_length/);
  assert.match(errors[5]!.message, /hash_ids/);
});

test('the schedule replays by timestamp, from the earliest arrival, whatever the line order', () => {
  const line = (ts: number) =>
    JSON.stringify({ timestamp: ts, input_length: 10, output_length: 1, hash_ids: [ts] });
  // Out of order (lines 1 and 4 later than 2 and 3), and two equal timestamps.
  const { requests } = parseTrace([500, 200, 200, 900, 300].map(line).join('\n'));
  const schedule = arrivalSchedule(requests, 10);
  assert.deepEqual(
    schedule.map((s) => [s.request.line, s.dueMs]),
    [
      [2, 0],
      [3, 0],
      [5, 10],
      [1, 30],
      [4, 70],
    ],
  );
  // A trace in order (as the shared one is) is sent as it stands, the first line at 0.
  const sorted = parseTrace([40, 40, 1040].map(line).join('\n')).requests;
  assert.deepEqual(
    arrivalSchedule(sorted, 2).map((s) => s.dueMs),
    [0, 0, 500],
  );
});

test('hash-id expansion is deterministic, in range, and distinct ids give distinct blocks', () => {
  const a = hashIdTokens(42);
  assert.equal(a.length, TOKENS_PER_HASH_ID);
  assert.deepEqual(hashIdTokens(42), a);
  assert.notDeepEqual(hashIdTokens(43), a);
  assert.notDeepEqual(hashIdTokens(42 + 2 ** 32), a);
  for (const id of [0, 1, 42, 43924, 2 ** 40]) {
    for (const t of hashIdTokens(id)) assert.ok(Number.isInteger(t) && t >= 0 && t < TOKEN_ID_BOUND);
  }
  // Not degenerate: a block uses many different token ids.
  assert.ok(new Set(a).size > 400);
});

test('shared hash ids give shared token prefixes; the last block is cut to input_length', () => {
  const p1 = expandPrompt({ inputLength: 1100, hashIds: [7, 8, 9] });
  const p2 = expandPrompt({ inputLength: 1500, hashIds: [7, 8, 10] });
  const p3 = expandPrompt({ inputLength: 1024, hashIds: [11, 8] });
  assert.equal(p1.length, 1100);
  assert.equal(p2.length, 1500);
  assert.deepEqual(p1.slice(0, 1024), p2.slice(0, 1024));
  assert.notDeepEqual(p1.slice(1024), p2.slice(1024, 1100));
  assert.deepEqual(p1.slice(1024), Array.from(hashIdTokens(9).subarray(0, 76)));
  assert.notDeepEqual(p3.slice(0, 512), p1.slice(0, 512));
  assert.deepEqual(expandPrompt({ inputLength: 1100, hashIds: [7, 8, 9] }), p1);
});

test('replay summary: hit rate, per-worker spread with idle workers, ITL, timeline', () => {
  const timing = (worker: string, prompt: number, cached: number, ttft: number, total: number) => ({
    ok: true,
    status: 200,
    ttftMs: ttft,
    totalMs: total,
    decodeMs: total - ttft,
    contentChunks: 5,
    promptTokens: prompt,
    completionTokens: 5,
    cachedTokens: cached,
    decodeWorker: worker,
  });
  const s = summarizeReplay(
    [
      { sentAt: 0, timing: timing('w-1', 1000, 0, 10, 50) },
      { sentAt: 10, timing: timing('w-1', 1000, 800, 2, 42) },
      { sentAt: 20, timing: { ok: false, status: 503, error: 'HTTP 503', totalMs: 1, contentChunks: 0 } },
    ],
    ['w-1', 'w-2'],
    3,
  );
  assert.equal(s.completed, 2);
  assert.equal(s.errors, 1);
  assert.deepEqual(s.errorSamples, ['HTTP 503']);
  assert.equal(s.kvHitRate, 0.4);
  assert.deepEqual(
    s.perWorker.map((w) => [w.worker, w.requests, w.promptTokens]),
    [
      ['w-1', 2, 2000],
      ['w-2', 0, 0],
    ],
  );
  assert.equal(s.cvRequests, 1); // [2, 0]: stddev 1 over mean 1
  assert.equal(s.ttftMs.mean, 6);
  assert.equal(s.itlMs.mean, 10); // (40 / 4 + 40 / 4) / 2
  assert.equal(s.outputTokens, 10);
  assert.equal(s.durationMs, 52);
  assert.deepEqual(s.timeline.times, [0, 26, 52]);
  assert.deepEqual(s.timeline.inFlight['w-1'], [1, 2, 0]);
});

test('stats and charts: nearest-rank percentile, nice ticks, SVG with title, axes and legend', () => {
  // Nearest rank: ceil(q · n), 1-based. p50 of 4 is the 2nd; p99 of 100 is the 99th, not the max.
  assert.equal(percentile([1, 2, 3, 4], 0.5), 2);
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(hundred, 0.99), 99);
  assert.equal(percentile(hundred, 0.9), 90);
  assert.equal(percentile(hundred, 1), 100);
  assert.equal(percentile(hundred, 0), 1);
  assert.equal(percentile([7], 0.5), 7);
  assert.equal(percentile([], 0.5), 0);
  // extent: one loop, so a large trace's 200k values do not overflow the stack as a spread did.
  const many = Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 200_003);
  assert.deepEqual(extent(many), { min: 0, max: many.reduce((a, b) => Math.max(a, b)) });
  assert.equal(extent([]), undefined);
  assert.deepEqual(extent([3]), { min: 3, max: 3 });
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  const svg = lineChart({
    title: 'T <1>',
    xLabel: 'x axis',
    yLabel: 'y axis',
    series: [
      {
        name: 'kv',
        points: [
          [1, 0.5],
          [10, 1],
        ],
      },
    ],
  });
  assert.match(svg, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  for (const text of ['T &lt;1&gt;', 'x axis', 'y axis', '>kv<', '<path'])
    assert.ok(svg.includes(text), text);
  const bars = barChart({ title: 'B', xLabel: 'p', yLabel: 'v', bars: [{ label: 'rr', value: 2 }] });
  assert.ok(bars.includes('<rect') && bars.includes('>rr<') && bars.trim().endsWith('</svg>'));
});

test('the TTFT CDF is a fraction of all requests: failed ones never reach it', () => {
  assert.deepEqual(cdfPoints([30, 10]), [
    [10, 0.5],
    [30, 1],
    [30, 1],
  ]);
  // 2 of 4 requests completed: at most half of the requests had a first token by any time.
  assert.deepEqual(cdfPoints([30, 10], 200, 4).at(-1), [30, 0.5]);
  const summary = {
    requests: 4,
    ttftMs: { count: 2, mean: 20, p50: 10, p90: 30, p99: 30, max: 30 },
    itlMs: { count: 2, mean: 1, p50: 1, p90: 1, p99: 1, max: 1 },
    kvHitRate: 0,
    perWorker: [],
    timeline: { times: [0], inFlight: {} },
  } as unknown as PolicySummary;
  const svg = renderReport({
    title: 't',
    settings: {},
    runs: [{ policy: 'kv', summary, ttftSamples: [10, 30] }],
  }).get('ttft-cdf.svg')!;
  // The plot spans y 40 (fraction 1) to 330 (0): the curve ends at 0.5, y 185.
  assert.match(svg, /<path d="M[^"]*,185\.0"/);
});
