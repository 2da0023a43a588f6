// Disaggregated prefill/decode against real processes: an in-process router (with an in-memory
// span exporter) and compiled `kvroute worker` children (run `npm run build` first).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { LoadReport } from '../src/protocols/worker-plane.js';
import type { WorkerStats } from '../src/worker/stats.js';
import {
  closePlane,
  completion,
  metricValue,
  prompt,
  spawnWorker,
  startRouter,
  type TestRouter,
  type TestWorker,
  waitFor,
  workerCall,
} from './disagg-helpers.js';
import { registeredWorkerId } from './helpers/fleet.js';

let r: TestRouter;
let prefill: TestWorker;
let decode: TestWorker;

before(async () => {
  r = await startRouter({ maxLocalPrefill: 64 }, true);
  [prefill, decode] = await Promise.all([
    spawnWorker(r, 'prefill', ['--speedup', '20', '--kv-blocks', '512']),
    spawnWorker(r, 'decode', ['--speedup', '20', '--kv-blocks', '512']),
  ]);
});

after(async () => {
  await Promise.all([prefill?.proc.stop(), decode?.proc.stop()]);
  await r?.router.close();
  await closePlane();
});

async function route(tokens: number[]): Promise<{
  prefill: { worker_id: string } | null;
  prefill_reason: string;
  decode: { worker_id: string; overlap_blocks: number };
}> {
  const res = await fetch(`${r.url}/v1/route`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'mock-llm', prompt: tokens, max_tokens: 4 }),
  });
  assert.equal(res.status, 200);
  return (await res.json()) as never;
}

test('a long prompt is prefilled on the prefill worker and decoded on the decode worker without recomputing the transferred blocks', async () => {
  const tokens = prompt(200, 1); // 12 full blocks + 8 tokens
  const before = await workerCall<WorkerStats>(decode.address, 'stats');
  const prefillBefore = await workerCall<WorkerStats>(prefill.address, 'stats');
  const remoteBefore = await metricValue(r, 'kvroute_disagg_decisions_total', {
    decision: 'remote',
    reason: 'long_prompt',
  });

  const res = await completion(r, { prompt: tokens, max_tokens: 4 });
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id);
  assert.equal(res.headers.get('x-kvroute-decode-worker'), decode.id);
  const body = (await res.json()) as {
    usage: {
      prompt_tokens: number;
      completion_tokens: number;
      prompt_tokens_details: { cached_tokens: number };
    };
  };
  assert.equal(body.usage.prompt_tokens, 200);
  assert.equal(body.usage.completion_tokens, 4);
  // Nothing was in any cache: the transferred blocks are not reuse.
  assert.equal(body.usage.prompt_tokens_details.cached_tokens, 0);

  const after = await workerCall<WorkerStats>(decode.address, 'stats');
  const prefillAfter = await workerCall<WorkerStats>(prefill.address, 'stats');
  assert.equal(prefillAfter.computed_tokens - prefillBefore.computed_tokens, 200);
  assert.equal(after.transferred_tokens - before.transferred_tokens, 192);
  assert.equal(
    after.computed_tokens - before.computed_tokens,
    8,
    'only the partial tail is computed on decode',
  );
  assert.equal(
    await metricValue(r, 'kvroute_disagg_decisions_total', { decision: 'remote', reason: 'long_prompt' }),
    remoteBefore + 1,
  );
  // Both legs' bookings are released.
  await waitFor(() => r.router.registry.load.size === 0);

  // Once both workers' KV events reach the router, the prompt is mostly cached everywhere: it stays
  // on decode, and what is reported as reused is decode's own hits.
  const again = await waitFor(async () => {
    const e = await route(tokens);
    return e.decode.overlap_blocks === 12 && e;
  });
  assert.equal(again.prefill, null);
  assert.equal(again.prefill_reason, 'short_prompt');
  const res2 = await completion(r, { prompt: tokens, max_tokens: 4 });
  assert.equal(res2.headers.get('x-kvroute-prefill-worker'), null);
  const body2 = (await res2.json()) as typeof body;
  assert.equal(body2.usage.prompt_tokens_details.cached_tokens, 192);
});

test('a short prompt is prefilled locally on the decode worker; /v1/route says why', async () => {
  const tokens = prompt(30, 2);
  const explained = await route(tokens);
  assert.equal(explained.prefill, null);
  assert.equal(explained.prefill_reason, 'short_prompt');
  assert.equal(explained.decode.worker_id, decode.id);

  const before = await workerCall<WorkerStats>(decode.address, 'stats');
  const localBefore = await metricValue(r, 'kvroute_disagg_decisions_total', {
    decision: 'local',
    reason: 'short_prompt',
  });
  const res = await completion(r, { prompt: tokens, max_tokens: 3 });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-kvroute-prefill-worker'), null);
  assert.equal(res.headers.get('x-kvroute-decode-worker'), decode.id);
  await res.json();
  const after = await workerCall<WorkerStats>(decode.address, 'stats');
  assert.equal(after.computed_tokens - before.computed_tokens, 30);
  assert.equal(after.transferred_tokens, before.transferred_tokens);
  assert.equal(
    await metricValue(r, 'kvroute_disagg_decisions_total', { decision: 'local', reason: 'short_prompt' }),
    localBefore + 1,
  );
});

test('the spawned prefill task runs inside the request trace: remote_prefill is a child of http-request', async () => {
  r.exporter.reset();
  const res = await completion(r, { prompt: prompt(300, 3), max_tokens: 2, stream: true });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id);
  assert.match(await res.text(), /data: \[DONE\]/);
  const spans = await waitFor(() => {
    const s = r.exporter.getFinishedSpans();
    return s.some((x) => x.name === 'http-request') && s;
  });
  const byName = (name: string) => spans.filter((s) => s.name === name);
  const [http] = byName('http-request');
  const [remote] = byName('remote_prefill');
  const [prefillRouting] = byName('prefill_routing');
  assert.ok(http && remote && prefillRouting, spans.map((s) => s.name).join(','));
  const traceId = http.spanContext().traceId;
  assert.equal(remote.spanContext().traceId, traceId);
  assert.equal(remote.parentSpanContext?.spanId, http.spanContext().spanId);
  assert.equal(remote.attributes['kvroute.prefill.worker_id'], prefill.id);
  // prefill_routing holds the prefill candidate's kv_find_best_match.
  const inner = byName('kv_find_best_match').find(
    (s) => s.parentSpanContext?.spanId === prefillRouting.spanContext().spanId,
  );
  assert.ok(inner, 'kv_find_best_match inside prefill_routing');
  assert.equal(inner.attributes['kvroute.worker_id'], prefill.id);
  assert.equal(prefillRouting.spanContext().traceId, traceId);
});

test('a decode worker answers `load` with nothing active after the flows above', async () => {
  const load = await workerCall<LoadReport>(decode.address, 'load');
  assert.equal(load.running + load.waiting, 0);
});

test('with prefill workers registered, decode is chosen by load (overlap weight 0) while no decode worker holds the prompt', async () => {
  const r2 = await startRouter({});
  try {
    const register = (role: string, port: number) =>
      registeredWorkerId(r2.url, { role, address: `127.0.0.1:${port}`, kv_blocks: 10_000 });
    const a = await register('decode', 1);
    const b = await register('decode', 2);
    // a: a long prefill queue, no decode blocks; b: no prefill queue, some decode blocks.
    r2.router.registry.load.book(a, 'busy-a', { prefillTokens: 1600, decodeBlocks: 0, contextBlocks: 0 });
    r2.router.registry.load.book(b, 'busy-b', { prefillTokens: 0, decodeBlocks: 10, contextBlocks: 10 });
    const explain = async () => {
      const res = await fetch(`${r2.url}/v1/route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'mock-llm', prompt: prompt(600, 9), max_tokens: 4 }),
      });
      return (await res.json()) as { decode: { worker_id: string }; prefill_reason: string };
    };
    // Aggregated fleet: the configured weight counts a's prefill queue, so b.
    assert.equal((await explain()).decode.worker_id, b);
    const p = await register('prefill', 3);
    // Disaggregated fleet: decode does not prefill, so its prefill queue does not count: a.
    const e = await explain();
    assert.equal(e.decode.worker_id, a);
    assert.equal(e.prefill_reason, 'long_prompt');
    await fetch(`${r2.url}/v1/workers/${p}`, { method: 'DELETE' });
  } finally {
    await r2.router.close();
  }
});

/** Prefill fallbacks the router counted, over every reason. */
async function fallbacks(router: TestRouter): Promise<number> {
  const { values } = await router.router.metrics.prefillFallbacks.get();
  return values.reduce((sum, v) => sum + v.value, 0);
}

test('mixed prefill pools: a prompt only the large pool holds goes there; with only the small one it is prefilled locally, never a fallback', async () => {
  const r3 = await startRouter({ maxLocalPrefill: 64 }, true);
  const workers: TestWorker[] = [];
  try {
    // 200 prompt tokens and the prefill's first token: 13 blocks of 16. The small pool holds 8.
    const [decodeW, small] = await Promise.all([
      spawnWorker(r3, 'decode', ['--speedup', '20', '--kv-blocks', '512']),
      spawnWorker(r3, 'prefill', ['--speedup', '20', '--kv-blocks', '8']),
    ]);
    workers.push(decodeW!, small!);
    const localBefore = await metricValue(r3, 'kvroute_disagg_decisions_total', {
      decision: 'local',
      reason: 'prefill_pool_too_small',
    });
    const res = await completion(r3, { prompt: prompt(200, 31), max_tokens: 4 });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(res.headers.get('x-kvroute-prefill-worker'), null);
    assert.equal(res.headers.get('x-kvroute-decode-worker'), decodeW!.id);
    await res.json();
    assert.equal(
      await metricValue(r3, 'kvroute_disagg_decisions_total', {
        decision: 'local',
        reason: 'prefill_pool_too_small',
      }),
      localBefore + 1,
    );
    const routing = r3.exporter.getFinishedSpans().filter((s) => s.name === 'prefill_routing');
    assert.equal(routing.at(-1)?.attributes['kvroute.prefill.reason'], 'prefill_pool_too_small');
    assert.equal(routing.at(-1)?.attributes['kvroute.prefill.placement'], 'local');

    // A large prefill worker joins, made dearer by other work booked on it: cost alone would pick
    // the small one, which refuses the prompt (a fallback before this check).
    const large = await spawnWorker(r3, 'prefill', ['--speedup', '20', '--kv-blocks', '512']);
    workers.push(large);
    r3.router.registry.load.book(large.id, 'other-work', {
      prefillTokens: 3200,
      decodeBlocks: 0,
      contextBlocks: 0,
    });
    for (let seed = 32; seed < 35; seed++) {
      const remote = await completion(r3, { prompt: prompt(200, seed), max_tokens: 4 });
      assert.equal(remote.status, 200, await remote.clone().text());
      assert.equal(remote.headers.get('x-kvroute-prefill-worker'), large.id);
      await remote.json();
    }
    r3.router.registry.load.release('other-work');
    assert.equal(await fallbacks(r3), 0);
    const smallStats = await workerCall<WorkerStats>(small!.address, 'stats');
    assert.deepEqual([smallStats.requests, smallStats.rejected], [0, 0], 'the small pool was never asked');
  } finally {
    await Promise.all(workers.map((w) => w.proc.stop()));
    await r3.router.close();
  }
});

test('mixed decode pools: a request only the large pool holds goes there; when no pool holds it, a 400 naming the largest pool and no worker call', async () => {
  const r4 = await startRouter({});
  const workers: TestWorker[] = [];
  try {
    const [small, large] = await Promise.all([
      spawnWorker(r4, 'decode', ['--speedup', '20', '--kv-blocks', '8']),
      spawnWorker(r4, 'decode', ['--speedup', '20', '--kv-blocks', '512']),
    ]);
    workers.push(small!, large!);
    // 200 prompt tokens + max_tokens 8: 13 blocks. Other work booked on the large one makes the
    // small one the cheaper and less loaded choice (the worker refused it with a 400 before).
    r4.router.registry.load.book(large!.id, 'other-work', {
      prefillTokens: 3200,
      decodeBlocks: 0,
      contextBlocks: 0,
    });
    for (let seed = 41; seed < 44; seed++) {
      const res = await completion(r4, { prompt: prompt(200, seed), max_tokens: 8 });
      assert.equal(res.status, 200, await res.clone().text());
      assert.equal(res.headers.get('x-kvroute-decode-worker'), large!.id);
      await res.json();
    }
    r4.router.registry.load.release('other-work');
    // /v1/route says why: each candidate's score carries whether its pool holds the request.
    const explained = await fetch(`${r4.url}/v1/route`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-llm', prompt: prompt(200, 45), max_tokens: 8 }),
    });
    const { candidates } = (await explained.json()) as { candidates: { worker_id: string; fits: boolean }[] };
    assert.deepEqual(Object.fromEntries(candidates.map((c) => [c.worker_id, c.fits])), {
      [small!.id]: false,
      [large!.id]: true,
    });

    // Only the small pool left: the client's request is too large for this model's workers.
    await large!.proc.stop();
    await waitFor(() => r4.router.registry.candidates('mock-llm', 'decode').length === 1);
    const res = await completion(r4, { prompt: prompt(200, 44), max_tokens: 8 });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { code: string; message: string; type: string } };
    assert.equal(body.error.code, 'context_length_exceeded');
    assert.equal(body.error.type, 'invalid_request_error');
    assert.match(body.error.message, /needs 13 KV blocks of 16 tokens/);
    assert.match(body.error.message, /largest KV pool among the 1 decode workers holds 8/);
    const stats = await workerCall<WorkerStats>(small!.address, 'stats');
    assert.deepEqual([stats.requests, stats.rejected], [0, 0], 'the small pool was never asked');
  } finally {
    await Promise.all(workers.map((w) => w.proc.stop()));
    await r4.router.close();
  }
});
