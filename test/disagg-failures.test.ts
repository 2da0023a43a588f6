// Disaggregation when things go wrong, against real processes: a client cancelling mid-prefill, a
// prefill worker killed mid-prefill (local fallback), the only decode worker unreachable (the
// failure itself, not 503 no_workers), overlapped mode with a prefill leg that never answers
// (bounded failure), and a kv_handoff refused by the worker its generate waits on (delivered
// again). Run `npm run build` first.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpanStatusCode } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { KvHandoffBoard } from '../src/decode/handoff-board.js';
import { KvrouteError } from '../src/errors.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { LoadReport, PrefillResponse } from '../src/protocols/worker-plane.js';
import { encodeJson, RequestPlaneClient, RequestPlaneServer, TransportError } from '../src/tcp/index.js';
import { parseGenerateRequest, parseKvHandoff } from '../src/worker/payload.js';
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

const plane = new RequestPlaneClient();

after(async () => {
  await plane.close();
  await closePlane();
});

/** True once neither the router's bookings nor the worker's engine hold anything. */
async function idle(r: TestRouter, ...workers: TestWorker[]): Promise<boolean> {
  if (r.router.registry.load.size !== 0) return false;
  for (const w of workers) {
    const booked = r.router.registry.load.loadOf(w.id);
    if (
      booked &&
      (booked.activePrefillTokens !== 0 || booked.activeDecodeBlocks !== 0 || booked.activeRequests !== 0)
    )
      return false;
    const load = await workerCall<LoadReport>(w.address, 'load');
    if (load.running + load.waiting !== 0 || load.active_prefill_tokens !== 0) return false;
  }
  return true;
}

/**
 * The prefill tokens the router books on `workerId`, in order, read off its load table (the router
 * runs in this process) until `stop()`.
 */
function recordBookings(r: TestRouter, workerId: string): { prefillTokens: number[]; stop(): void } {
  const load = r.router.registry.load;
  const book = load.book.bind(load);
  const prefillTokens: number[] = [];
  load.book = (id, requestId, booking) => {
    if (id === workerId) prefillTokens.push(booking.prefillTokens);
    return book(id, requestId, booking);
  };
  return {
    prefillTokens,
    stop: () => {
      load.book = book;
    },
  };
}

/** The one `http-request` span with a `retry` event (the test router's exporter), and what the event says. */
function onlyRetry(r: TestRouter): {
  span: ReadableSpan;
  reason: unknown;
  from: unknown;
  to: unknown;
  attempt: unknown;
} {
  const withRetry = r.exporter
    .getFinishedSpans()
    .filter((s) => s.name === 'http-request' && s.events.some((e) => e.name === 'retry'));
  assert.equal(withRetry.length, 1);
  const span = withRetry[0]!;
  const event = span.events.find((e) => e.name === 'retry')!;
  return {
    span,
    reason: event.attributes?.['kvroute.retry.reason'],
    from: event.attributes?.['kvroute.retry.failed_worker_id'],
    to: event.attributes?.['kvroute.retry.worker_id'],
    attempt: event.attributes?.['kvroute.retry.attempt'],
  };
}

/** Resolves once the worker's engine is running a request (its prefill has started). */
function running(w: TestWorker): Promise<LoadReport> {
  return waitFor(async () => {
    const load = await workerCall<LoadReport>(w.address, 'load');
    return load.running > 0 && load;
  });
}

describe('sequential mode with a slow prefill worker', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  let decode: TestWorker;

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64 }, true);
    // 400 uncached tokens at speedup 0.01 take ~2.3 s to prefill: long enough to act mid-prefill.
    [prefill, decode] = await Promise.all([
      spawnWorker(r, 'prefill', ['--speedup', '0.01']),
      spawnWorker(r, 'decode', ['--speedup', '20']),
    ]);
  });

  after(async () => {
    prefill?.proc.child.kill('SIGKILL');
    await decode?.proc.stop();
    await r?.router.close();
  });

  test('a client cancelling mid-prefill leaves no load booked on the router or active on either worker', async () => {
    const ac = new AbortController();
    const pending = completion(r, { prompt: prompt(400, 11), max_tokens: 8 }, ac.signal);
    pending.catch(() => {});
    await running(prefill);
    // Booked while the prefill runs: the prefill worker's tokens and the decode worker's blocks.
    assert.ok(r.router.registry.load.loadOf(prefill.id)!.activePrefillTokens > 0);
    assert.ok(r.router.registry.load.loadOf(decode.id)!.activeDecodeBlocks > 0);
    // ...but no prefill tokens on decode: 400 tokens are 25 full blocks, all transferred.
    assert.equal(r.router.registry.load.loadOf(decode.id)!.activePrefillTokens, 0);
    ac.abort();
    await assert.rejects(pending);
    await waitFor(() => idle(r, prefill, decode));
    const stats = await workerCall<WorkerStats>(prefill.address, 'stats');
    assert.equal(stats.cancelled, 1, 'the prefill was cancelled on the worker, not run to the end');
    // The leg was cancelled, not failed: no ERROR status, marked as handle_payload marks it.
    const remote = await waitFor(() =>
      r.exporter.getFinishedSpans().find((s) => s.name === 'remote_prefill'),
    );
    assert.equal(remote.attributes['kvroute.cancelled'], true);
    assert.equal(remote.status.code, SpanStatusCode.UNSET);
    assert.equal(remote.events.length, 0);
  });

  test('a prefill worker killed mid-prefill: the request completes through local prefill and the fallback is counted', async () => {
    const before = await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'disconnect' });
    const decodeBefore = await workerCall<WorkerStats>(decode.address, 'stats');
    const decodeBookings = recordBookings(r, decode.id);
    const pending = completion(r, { prompt: prompt(400, 12), max_tokens: 4 });
    await running(prefill);
    prefill.proc.child.kill('SIGKILL');
    const res = await pending;
    decodeBookings.stop();
    // While the prompt was being transferred: only its partial tail (none: 400 tokens are 25 full
    // blocks). After the fallback the decode worker computes all 400, and is booked for them.
    assert.deepEqual(decodeBookings.prefillTokens, [0, 400]);
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(res.headers.get('x-kvroute-decode-worker'), decode.id);
    assert.equal(res.headers.get('x-kvroute-prefill-worker'), null, 'prefill ended up local');
    const body = (await res.json()) as { usage: { completion_tokens: number } };
    assert.equal(body.usage.completion_tokens, 4);
    assert.equal(
      await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'disconnect' }),
      before + 1,
    );
    const decodeAfter = await workerCall<WorkerStats>(decode.address, 'stats');
    assert.equal(decodeAfter.computed_tokens - decodeBefore.computed_tokens, 400);
    assert.equal(decodeAfter.transferred_tokens, decodeBefore.transferred_tokens);
    await waitFor(() => r.router.registry.load.size === 0);
    // Marked on the request's span: an event and an attribute naming the reason.
    const http = await waitFor(() =>
      r.exporter
        .getFinishedSpans()
        .find((s) => s.name === 'http-request' && s.attributes['kvroute.prefill.fallback']),
    );
    assert.equal(http.attributes['kvroute.prefill.fallback'], 'disconnect');
    const event = http.events.find((e) => e.name === 'prefill_fallback');
    assert.equal(event?.attributes?.['kvroute.prefill.worker_id'], prefill.id);
  });
});

/** A prefill worker that answers every `prefill` with an error. */
function failingPrefill(): RequestPlaneServer {
  return new RequestPlaneServer().handle('prefill', async () => {
    throw new Error('prefill stand-in fails on purpose');
  });
}

/** An address nothing listens on: every call sent there fails to connect (retryable). */
async function deadAddress(): Promise<string> {
  const gone = new RequestPlaneServer();
  await gone.listen(0);
  const address = gone.address;
  await gone.close();
  return address;
}

/** Registers a stand-in request-plane server as a prefill (or decode) worker (no KV events); returns its id. */
async function registerStandIn(
  r: TestRouter,
  address: string,
  role: 'prefill' | 'decode' = 'prefill',
): Promise<string> {
  return registeredWorkerId(r.url, { role, address });
}

describe('sequential mode, a prefill worker that accepts prefill calls and never answers', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  let decode: TestWorker;
  let silentCalls = 0;
  const silent = new RequestPlaneServer().handle('prefill', (req) => {
    silentCalls++;
    return new Promise<Uint8Array>((_, reject) =>
      req.signal.addEventListener('abort', () => reject(new Error('cancelled'))),
    );
  });
  let silentId = '';

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64, firstTokenTimeoutMs: 300 });
    [prefill, decode] = await Promise.all([
      spawnWorker(r, 'prefill', ['--speedup', '20']),
      spawnWorker(r, 'decode', ['--speedup', '20']),
    ]);
    await silent.listen(0);
    silentId = await registerStandIn(r, silent.address);
  });

  after(async () => {
    await Promise.all([prefill?.proc.stop(), decode?.proc.stop()]);
    await silent.close({ deadlineMs: 100 });
    await r?.router.close();
  });

  test('is taken out of routing after 3 timed-out legs (each request still served by a local fallback), and prefill goes to the other', async () => {
    const ejected = () => r.router.registry.health.isEjected(silentId);
    for (let i = 0; !ejected() && i < 40; i++) {
      const res = await completion(r, { prompt: prompt(200, 300 + i), max_tokens: 2 });
      assert.equal(res.status, 200, await res.clone().text());
      await res.json();
    }
    assert.ok(ejected(), `not ejected after ${silentCalls} silent legs`);
    assert.equal(silentCalls, 3);
    assert.equal(await metricValue(r, 'kvroute_worker_ejections_total', { role: 'prefill' }), 1);
    // From now on the prefill legs go to the real prefill worker, none times out.
    for (let i = 0; i < 5; i++) {
      const res = await completion(r, { prompt: prompt(200, 400 + i), max_tokens: 2 });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id);
      await res.json();
    }
    assert.equal(silentCalls, 3);
  });
});

describe('sequential mode, the only decode worker unreachable', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  let decodeId = '';

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64 });
    prefill = await spawnWorker(r, 'prefill', ['--speedup', '20']);
    decodeId = await registerStandIn(r, await deadAddress(), 'decode');
  });

  after(async () => {
    await prefill?.proc.stop();
    await r?.router.close();
  });

  test('no other decode worker to retry on: the client gets the failure itself (502), not 503 no_workers', async () => {
    const retries = await metricValue(r, 'kvroute_request_retries_total', { reason: 'connect_failed' });
    const res = await completion(r, { prompt: prompt(300, 51), max_tokens: 2 });
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(res.status, 502, JSON.stringify(body));
    assert.equal(body.error.code, 'worker_disconnected');
    assert.equal(res.headers.get('x-kvroute-decode-worker'), null);
    // The prefill went remote (so this was the disaggregated executor) and no retry took place.
    assert.equal(
      await metricValue(r, 'kvroute_disagg_decisions_total', { decision: 'remote', reason: 'long_prompt' }),
      1,
    );
    assert.equal(
      await metricValue(r, 'kvroute_request_retries_total', { reason: 'connect_failed' }),
      retries,
    );
    assert.ok(r.router.registry.get(decodeId), 'the decode worker is still registered');
    await waitFor(() => idle(r, prefill));
  });
});

describe('a retry on another decode worker', () => {
  let r: TestRouter;
  let live: TestWorker;
  let ghostId = '';

  before(async () => {
    r = await startRouter({ policy: 'random' }, true);
    live = await spawnWorker(r, 'decode', ['--speedup', '20']);
    ghostId = await registerStandIn(r, await deadAddress(), 'decode');
  });

  after(async () => {
    await live?.proc.stop();
    await r?.router.close();
  });

  test('is a retry event on http-request: why, from which worker to which, which attempt', async () => {
    // Random policy over [live, ghost]: within 40 requests one goes to the ghost (odds of never:
    // 2^-40) and is retried on the live worker.
    const retried = () => metricValue(r, 'kvroute_request_retries_total', { reason: 'connect_failed' });
    for (let i = 0; i < 40 && (await retried()) === 0; i++) {
      const res = await completion(r, { prompt: `retry me ${i}`, max_tokens: 2 });
      assert.equal(res.status, 200);
    }
    assert.equal(await retried(), 1);
    const { span, ...retry } = onlyRetry(r);
    assert.deepEqual(retry, { reason: 'connect_failed', from: ghostId, to: live.id, attempt: 2 });
    assert.equal(span.attributes['kvroute.decode_worker_id'], live.id);
  });
});

for (const overlappedPrefill of [false, true]) {
  describe(`${overlappedPrefill ? 'overlapped' : 'sequential'} mode, --enforce-disagg, a prefill worker refusing as overloaded`, () => {
    let r: TestRouter;
    let prefill: TestWorker;
    let decode: TestWorker;
    let refuserId = '';
    let refusals = 0;
    // What a draining prefill worker answers a new prefill: overloaded, before computing anything.
    const refuser = new RequestPlaneServer().handle('prefill', async () => {
      refusals++;
      throw new KvrouteError('overloaded', 'worker is draining: it takes no new requests');
    });

    before(async () => {
      await refuser.listen(0);
      r = await startRouter(
        { maxLocalPrefill: 64, enforceDisagg: true, overlappedPrefill, policy: 'random' },
        true,
      );
      [prefill, decode] = await Promise.all([
        spawnWorker(r, 'prefill', ['--speedup', '20']),
        spawnWorker(r, 'decode', ['--speedup', '20']),
      ]);
      refuserId = await registerStandIn(r, refuser.address);
    });

    after(async () => {
      await Promise.all([prefill?.proc.stop(), decode?.proc.stop()]);
      await r?.router.close();
      await refuser.close({ deadlineMs: 0 });
    });

    test('the prefill moves to another prefill worker: a retry, not a fallback (a 502 here)', async () => {
      // Random policy over [prefill, refuser]: within 40 requests one goes to the refuser (odds of
      // never: 2^-40). Before, any failed prefill fell back, which --enforce-disagg makes a 502.
      for (let i = 0; i < 40 && refusals === 0; i++) {
        const res = await completion(r, { prompt: prompt(300, 200 + i), max_tokens: 2 });
        assert.equal(res.status, 200, await res.clone().text());
        assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id);
      }
      assert.equal(refusals, 1);
      assert.equal(await metricValue(r, 'kvroute_request_retries_total', { reason: 'overloaded' }), 1);
      const { span, ...retry } = onlyRetry(r);
      assert.deepEqual(retry, { reason: 'overloaded', from: refuserId, to: prefill.id, attempt: 2 });
      assert.equal(span.attributes['kvroute.prefill_worker_id'], prefill.id);
      await waitFor(() => idle(r, prefill, decode));
    });
  });
}

describe('--enforce-disagg', () => {
  let r: TestRouter;
  let decode: TestWorker;
  const failing = failingPrefill();

  before(async () => {
    await failing.listen(0);
    r = await startRouter({ maxLocalPrefill: 64, enforceDisagg: true }, true);
    decode = await spawnWorker(r, 'decode', ['--speedup', '20']);
    await registerStandIn(r, failing.address);
  });

  after(async () => {
    await decode?.proc.stop();
    await r?.router.close();
    await failing.close({ deadlineMs: 100 });
  });

  test('a failed remote prefill is a 502, not a local fallback; even a short prompt goes remote', async () => {
    const fallbacks = await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'remote_error' });
    const res = await completion(r, { prompt: prompt(20, 31), max_tokens: 2 });
    assert.equal(res.status, 502);
    // The spans say so once each: remote_prefill failed, and http-request (5xx) carries the
    // exception once (the HTTP error handler records it; the pipeline leaves it to that handler).
    const isCompletion = (s: { name: string; attributes: Record<string, unknown> }) =>
      s.name === 'http-request' && s.attributes['url.path'] === '/v1/completions';
    const spans = await waitFor(() => {
      const ended = r.exporter.getFinishedSpans();
      return ended.some(isCompletion) ? ended : undefined;
    });
    const http = spans.find(isCompletion)!;
    assert.equal(http.status.code, SpanStatusCode.ERROR);
    assert.equal(http.events.filter((e) => e.name === 'exception').length, 1);
    const remote = spans.find((s) => s.name === 'remote_prefill')!;
    assert.equal(remote.status.code, SpanStatusCode.ERROR);
    assert.equal(remote.events.filter((e) => e.name === 'exception').length, 1);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'worker_error');
    assert.match(body.error.message, /enforce-disagg/);
    assert.equal(
      await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'remote_error' }),
      fallbacks,
    );
    assert.equal(
      await metricValue(r, 'kvroute_disagg_decisions_total', { decision: 'remote', reason: 'enforced' }),
      1,
    );
    await waitFor(() => idle(r, decode));
  });
});

describe('overlapped mode', () => {
  const WAIT_MS = 400;
  let r: TestRouter;
  let decode: TestWorker;
  let prefill: TestWorker | undefined;
  // A prefill worker that accepts `prefill` and never answers (until cancelled).
  const silent = new RequestPlaneServer().handle(
    'prefill',
    (req) =>
      new Promise<Uint8Array>((_, reject) =>
        req.signal.addEventListener('abort', () => reject(new Error('cancelled'))),
      ),
  );
  let silentId = '';
  const failing = failingPrefill();

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, prefillWaitMs: WAIT_MS });
    decode = await spawnWorker(r, 'decode', ['--speedup', '20']);
    await Promise.all([silent.listen(0), failing.listen(0)]);
    silentId = await registerStandIn(r, silent.address);
  });

  after(async () => {
    await Promise.all([decode?.proc.stop(), prefill?.proc.stop()]);
    await Promise.all([silent.close({ deadlineMs: 100 }), failing.close({ deadlineMs: 100 })]);
    await r?.router.close();
  });

  test('the decode worker bounds its own wait: a generate whose handoff never comes fails with timeout', async () => {
    const body = {
      request_id: 'no-handoff',
      token_ids: prompt(40, 24),
      max_tokens: 2,
      await_kv_handoff: { timeout_ms: 50 },
    };
    await assert.rejects(
      (async () => {
        for await (const _ of plane.stream(decode.address, 'generate', encodeJson(body))) {
          /* nothing arrives */
        }
      })(),
      (err: unknown) =>
        err instanceof TransportError && err.kind === 'remote_error' && err.remoteCode === 'timeout',
    );
    // A handoff that comes first is held for its generate, which then runs on the handed-over KV.
    const handoff = await workerCall<{ delivered: string }>(decode.address, 'kv_handoff', {
      request_id: 'early',
    });
    assert.equal(handoff.delivered, 'held');
    const chunks: unknown[] = [];
    for await (const c of plane.stream(
      decode.address,
      'generate',
      encodeJson({ ...body, request_id: 'early', await_kv_handoff: { timeout_ms: 5000 } }),
    ))
      chunks.push(c);
    assert.equal(chunks.length, 2);
  });

  test('a prefill leg that never answers fails the request with 504 within --prefill-wait-ms, and decode is released', async () => {
    const res = await completion(r, { prompt: prompt(300, 21), max_tokens: 4 });
    assert.equal(res.status, 504);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'timeout');
    assert.match(body.error.message, /prefill/);
    await waitFor(() => idle(r, decode));
    // Charged to the prefill worker that never answered, not to the decode worker that waited for
    // its handoff (before: the decode worker's failure, the prefill worker's never counted).
    const { health } = r.router.registry;
    assert.equal(health.view(silentId, 0).consecutiveFailures, 1);
    assert.equal(health.view(decode.id, 0).consecutiveFailures, 0);
  });

  test('a prefill leg that fails at once falls back: the waiting decode is told to prefill locally', async () => {
    await fetch(`${r.url}/v1/workers/${silentId}`, { method: 'DELETE' });
    const failingId = await registerStandIn(r, failing.address);
    const before = await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'remote_error' });
    const decodeBefore = await workerCall<WorkerStats>(decode.address, 'stats');
    const res = await completion(r, { prompt: prompt(300, 23), max_tokens: 4 });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(res.headers.get('x-kvroute-prefill-worker'), null);
    await res.json();
    assert.equal(
      await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'remote_error' }),
      before + 1,
    );
    const decodeAfter = await workerCall<WorkerStats>(decode.address, 'stats');
    assert.equal(decodeAfter.computed_tokens - decodeBefore.computed_tokens, 300);
    await fetch(`${r.url}/v1/workers/${failingId}`, { method: 'DELETE' });
    await waitFor(() => idle(r, decode));
  });

  test('with a real prefill worker, decode starts at once and takes the KV through kv_handoff', async () => {
    prefill = await spawnWorker(r, 'prefill', ['--speedup', '20']);
    const before = await workerCall<WorkerStats>(decode.address, 'stats');
    const res = await completion(r, { prompt: prompt(300, 22), max_tokens: 4, stream: true });
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id);
    assert.equal(res.headers.get('x-kvroute-decode-worker'), decode.id);
    assert.match(await res.text(), /data: \[DONE\]/);
    const after = await workerCall<WorkerStats>(decode.address, 'stats');
    assert.equal(after.transferred_tokens - before.transferred_tokens, 288);
    assert.equal(after.computed_tokens - before.computed_tokens, 12);
    await waitFor(() => idle(r, decode, prefill!));
  });
});

describe('overlapped mode, client cancelling while prefill runs', () => {
  let r: TestRouter;
  let decode: TestWorker;
  let prefillCalls = 0;
  let prefillCancelled = 0;
  // Accepts `prefill` and answers only when cancelled (long --prefill-wait-ms: the client goes first).
  const silent = new RequestPlaneServer().handle('prefill', (req) => {
    prefillCalls++;
    return new Promise<Uint8Array>((_, reject) =>
      req.signal.addEventListener('abort', () => {
        prefillCancelled++;
        reject(new Error('cancelled'));
      }),
    );
  });

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, prefillWaitMs: 30_000 });
    decode = await spawnWorker(r, 'decode', ['--speedup', '20']);
    await silent.listen(0);
    await registerStandIn(r, silent.address);
  });

  after(async () => {
    await decode?.proc.stop();
    await silent.close({ deadlineMs: 100 });
    await r?.router.close();
  });

  test('both legs are cancelled: the prefill call and the decode worker waiting for its handoff', async () => {
    const ac = new AbortController();
    const pending = completion(r, { prompt: prompt(300, 41), max_tokens: 4 }, ac.signal);
    pending.catch(() => {});
    await waitFor(async () => {
      const stats = await workerCall<WorkerStats>(decode.address, 'stats');
      return prefillCalls === 1 && stats.handoffs_waiting === 1;
    });
    ac.abort();
    await assert.rejects(pending);
    await waitFor(() => prefillCancelled === 1);
    await waitFor(
      async () => (await workerCall<WorkerStats>(decode.address, 'stats')).handoffs_waiting === 0,
    );
    await waitFor(() => idle(r, decode));
  });
});

/** The answer a correct prefill worker gives for `tokens` (block size 16, nothing cached). */
function rightAnswer(tokens: number[]): PrefillResponse {
  const hashes = [...computeBlockHashes(tokens, 16).sequence].map(String);
  return {
    first_token: 7,
    prompt_tokens: tokens.length,
    cached_tokens: 0,
    kv_transfer: {
      prefill_worker_id: 'stand-in',
      block_size: 16,
      transferred_blocks: hashes.length,
      block_hashes: hashes,
      cached_tokens: 0,
    },
  };
}

/** Prefill answers a worker must not be trusted with: each is the worker's fault, never the client's. */
const BAD_ANSWERS: Record<string, (tokens: number[]) => unknown> = {
  'an empty kv_transfer': (tokens) => ({ ...rightAnswer(tokens), kv_transfer: {} }),
  'a negative first token': (tokens) => ({ ...rightAnswer(tokens), first_token: -1 }),
  'no cached_tokens': (tokens) => ({ ...rightAnswer(tokens), cached_tokens: undefined }),
  "another request's blocks": (tokens) => rightAnswer(tokens.map((t) => t + 1)),
  'more blocks than the prompt has': (tokens) => {
    const answer = rightAnswer(tokens);
    answer.kv_transfer.block_hashes.push('1');
    answer.kv_transfer.transferred_blocks++;
    return answer;
  },
};

for (const overlappedPrefill of [false, true]) {
  describe(`${overlappedPrefill ? 'overlapped' : 'sequential'} mode, a prefill worker answering nonsense`, () => {
    let r: TestRouter;
    let decode: TestWorker;
    let answer = BAD_ANSWERS['an empty kv_transfer']!;
    const liar = new RequestPlaneServer().handle('prefill', async (req) => {
      const { token_ids } = JSON.parse(Buffer.from(req.payload).toString('utf8')) as { token_ids: number[] };
      return encodeJson(answer(token_ids));
    });

    before(async () => {
      await liar.listen(0);
      // Ejection off: five bad answers in a row would take the liar out of routing after three.
      r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill, ejectAfterFailures: 0 });
      decode = await spawnWorker(r, 'decode', ['--speedup', '20']);
      await registerStandIn(r, liar.address);
    });

    after(async () => {
      await decode?.proc.stop();
      await r?.router.close();
      await liar.close({ deadlineMs: 100 });
    });

    let seed = 60;
    for (const [what, make] of Object.entries(BAD_ANSWERS)) {
      test(`${what}: the answer is refused as invalid_answer and the decode worker prefills locally`, async () => {
        answer = make;
        const fallbacks = await metricValue(r, 'kvroute_prefill_fallbacks_total', {
          reason: 'invalid_answer',
        });
        const decodeBefore = await workerCall<WorkerStats>(decode.address, 'stats');
        const res = await completion(r, { prompt: prompt(300, seed++), max_tokens: 3 });
        const text = await res.text();
        assert.equal(res.status, 200, text);
        assert.equal(res.headers.get('x-kvroute-prefill-worker'), null, 'prefill ended up local');
        const body = JSON.parse(text) as { usage: { prompt_tokens_details: { cached_tokens: number } } };
        assert.equal(body.usage.prompt_tokens_details.cached_tokens, 0);
        assert.equal(
          await metricValue(r, 'kvroute_prefill_fallbacks_total', { reason: 'invalid_answer' }),
          fallbacks + 1,
        );
        const decodeAfter = await workerCall<WorkerStats>(decode.address, 'stats');
        assert.equal(decodeAfter.computed_tokens - decodeBefore.computed_tokens, 300);
        assert.equal(decodeAfter.transferred_tokens, decodeBefore.transferred_tokens);
        await waitFor(() => idle(r, decode));
      });
    }
  });
}

for (const overlappedPrefill of [false, true]) {
  describe(`${overlappedPrefill ? 'overlapped' : 'sequential'} mode, the router shutting down during a remote prefill`, () => {
    let r: TestRouter;
    let prefill: TestWorker;
    let decode: TestWorker;

    before(async () => {
      r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill, prefillWaitMs: 30_000 });
      // ~2.3 s of prefill: the router closes while it runs.
      [prefill, decode] = await Promise.all([
        spawnWorker(r, 'prefill', ['--speedup', '0.01']),
        spawnWorker(r, 'decode', ['--speedup', '20']),
      ]);
    });

    after(async () => {
      await Promise.all([prefill?.proc.stop(), decode?.proc.stop()]);
      await r?.router.close();
    });

    test('the client gets 503 shutting_down with Retry-After (not a 499 that blames it), and the prefill is cancelled', async () => {
      const pending = completion(r, { prompt: prompt(400, 71), max_tokens: 4 });
      await running(prefill);
      const closed = r.router.close();
      const res = await pending;
      const body = (await res.json()) as { error: { code: string } };
      assert.equal(res.status, 503, JSON.stringify(body));
      assert.equal(body.error.code, 'shutting_down');
      assert.equal(res.headers.get('retry-after'), '1');
      await closed;
      await waitFor(async () => (await workerCall<WorkerStats>(prefill.address, 'stats')).cancelled === 1);
    });
  });
}

describe('overlapped mode, a decode worker gone but still registered', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  let live: TestWorker;
  let ghostId = '';

  before(async () => {
    r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, policy: 'random' });
    [prefill, live] = await Promise.all([
      // Fast (~1 ms for 300 tokens): the prefill often answers before the generate's refused
      // connect is known, so the handoff goes to the gone worker first and must follow the move.
      spawnWorker(r, 'prefill', ['--speedup', '20']),
      spawnWorker(r, 'decode', ['--speedup', '20']),
    ]);
    ghostId = await registerStandIn(r, await deadAddress(), 'decode');
  });

  after(async () => {
    await Promise.all([prefill?.proc.stop(), live?.proc.stop()]);
    await r?.router.close();
  });

  test('a generate that never reached it is retried on another decode worker, and the handoff follows it', async () => {
    // Random policy over [live, ghost]: within 40 requests one goes to the ghost (odds of never:
    // 2^-40). Nothing waits on the ghost for a handoff: the generate could not even connect.
    const retried = () => metricValue(r, 'kvroute_request_retries_total', { reason: 'connect_failed' });
    // The prefill tokens booked on the live decode worker, first choice or retry.
    const liveBookings = recordBookings(r, live.id);
    try {
      for (let i = 0; i < 40 && (await retried()) === 0; i++) {
        const res = await completion(r, { prompt: prompt(300, 80 + i), max_tokens: 2 });
        assert.equal(res.status, 200, await res.clone().text());
        assert.equal(res.headers.get('x-kvroute-decode-worker'), live.id);
        assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id, 'the remote prefill was used');
      }
    } finally {
      liveBookings.stop();
    }
    assert.equal(await retried(), 1);
    // The retried request too: the blocks come by transfer, so only the 12-token partial tail of
    // the 300-token prompt is the decode worker's to compute (a retry booked all 300).
    assert.ok(liveBookings.prefillTokens.length > 0);
    assert.deepEqual(
      liveBookings.prefillTokens.filter((tokens) => tokens !== 300 % 16),
      [],
    );
    assert.ok(r.router.registry.get(ghostId));
    await waitFor(() => idle(r, prefill, live));
    assert.equal((await workerCall<WorkerStats>(live.address, 'stats')).handoffs_waiting, 0);
  });
});

/**
 * Stand-in decode workers whose overlapped generate never runs, so it must move to the live decode
 * worker with its handoff. `hits` counts the generates (or handoffs) that reached the stand-in.
 */
const MOVING_DECODE_STAND_INS: {
  what: string;
  expectation: string;
  retryReason: string;
  make(): { server: RequestPlaneServer; hits(): number };
}[] = [
  {
    what: 'takes the handoff and then drops the waiting generate',
    // Before, the delivered handoff pinned the generate there: 502 worker_disconnected.
    expectation:
      'the handoff follows the generate to its new worker (it was delivered to the old one already)',
    retryReason: 'disconnected_before_response',
    make() {
      // Takes the generate and the kv_handoff, answers the handoff, then closes at once: the
      // waiting generate is cut before any answer (disconnected_before_response).
      let handoffs = 0;
      const server: RequestPlaneServer = new RequestPlaneServer()
        .handle('generate', async function* (req) {
          await new Promise<void>((resolve) => {
            req.signal.addEventListener('abort', () => resolve(), { once: true });
          });
        })
        .handle('kv_handoff', async () => {
          handoffs++;
          setImmediate(() => void server.close({ deadlineMs: 0 }));
          return encodeJson({ delivered: 'waiting' });
        });
      return { server, hits: () => handoffs };
    },
  },
  {
    what: 'refuses the generate as overloaded',
    // Before, only a refusal by the plane itself moved an overlapped generate: 503 overloaded.
    expectation: 'the generate moves to another decode worker and the handoff follows it (not a 503)',
    retryReason: 'overloaded',
    make() {
      // What a draining decode worker, or one whose --max-waiting is taken, answers a new
      // overlapped generate: overloaded, before the generate waits for anything. Its kv_handoff
      // holds a handoff no generate waits for, as a real worker's does.
      let refusals = 0;
      const server = new RequestPlaneServer()
        .handle('generate', async () => {
          refusals++;
          throw new KvrouteError('overloaded', 'worker is draining: it takes no new requests');
        })
        .handle('kv_handoff', async () => encodeJson({ delivered: 'held' }));
      return { server, hits: () => refusals };
    },
  },
];

MOVING_DECODE_STAND_INS.forEach(({ what, expectation, retryReason, make }, n) => {
  describe(`overlapped mode, a decode worker that ${what}`, () => {
    let r: TestRouter;
    let prefill: TestWorker;
    let live: TestWorker;
    const standIn = make();

    before(async () => {
      await standIn.server.listen(0);
      r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, policy: 'random' });
      [prefill, live] = await Promise.all([
        spawnWorker(r, 'prefill', ['--speedup', '20']),
        spawnWorker(r, 'decode', ['--speedup', '20']),
      ]);
      await registerStandIn(r, standIn.server.address, 'decode');
    });

    after(async () => {
      await Promise.all([prefill?.proc.stop(), live?.proc.stop()]);
      await r?.router.close();
      await standIn.server.close({ deadlineMs: 0 });
    });

    test(expectation, async () => {
      // Random policy over [live, stand-in]: within 40 requests one goes to the stand-in (odds of
      // never: 2^-40).
      for (let i = 0; i < 40 && standIn.hits() === 0; i++) {
        const res = await completion(r, { prompt: prompt(300, 120 + 40 * n + i), max_tokens: 2 });
        assert.equal(res.status, 200, await res.clone().text());
        assert.equal(res.headers.get('x-kvroute-decode-worker'), live.id);
        assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id, 'the remote prefill was used');
      }
      assert.equal(standIn.hits(), 1);
      assert.equal(await metricValue(r, 'kvroute_request_retries_total', { reason: retryReason }), 1);
      await waitFor(() => idle(r, prefill, live));
      assert.equal((await workerCall<WorkerStats>(live.address, 'stats')).handoffs_waiting, 0);
    });
  });
});

/**
 * A decode stand-in with the real handoff board whose connections hold at most one stream until
 * `open()`: its overlapped generate holds the only one and waits, so a kv_handoff sent meanwhile is
 * refused by the plane as `overloaded` before any handler runs (retryable: it never arrived), as a
 * worker's connection at its stream limit refuses one.
 */
function crowdedDecode(): {
  server: RequestPlaneServer;
  delivered(): number;
  open(): void;
  crowd(): void;
} {
  const board = new KvHandoffBoard();
  let delivered = 0;
  const server = new RequestPlaneServer({ maxStreamsPerConnection: 1 })
    .handle('generate', async function* (req) {
      const body = parseGenerateRequest(req.payload);
      const handoff = await board.wait(body.request_id, body.await_kv_handoff!.timeout_ms, req.signal);
      const prefilled = handoff.prefill!;
      yield encodeJson({
        token_ids: [prefilled.first_token],
        finish_reason: null,
        prompt_tokens: body.token_ids.length,
        cached_tokens: prefilled.kv_transfer.transferred_blocks * 16,
      });
      yield encodeJson({ token_ids: [12], finish_reason: 'length' });
    })
    .handle('kv_handoff', async (req) => {
      const where = board.deliver(parseKvHandoff(req.payload));
      if (where === 'waiting') delivered++;
      return encodeJson({ delivered: where });
    });
  return {
    server,
    delivered: () => delivered,
    open: () => {
      server.limits.maxStreamsPerConnection = 4096;
    },
    crowd: () => {
      server.limits.maxStreamsPerConnection = 1;
    },
  };
}

describe('overlapped mode, a kv_handoff that never reached the decode worker its generate waits on', () => {
  const WAIT_MS = 3000;
  let r: TestRouter;
  let prefill: TestWorker;
  let crowdedId = '';
  const crowded = crowdedDecode();
  /** The router's kv_handoff calls the stand-in refused as overloaded, so far. */
  const refusedHandoffs = () =>
    r.exporter
      .getFinishedSpans()
      .filter(
        (s) => s.name === 'request_plane kv_handoff' && s.attributes['kvroute.remote_code'] === 'overloaded',
      );

  before(async () => {
    await crowded.server.listen(0);
    r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, prefillWaitMs: WAIT_MS }, true);
    prefill = await spawnWorker(r, 'prefill', ['--speedup', '20']);
    crowdedId = await registerStandIn(r, crowded.server.address, 'decode');
  });

  after(async () => {
    await prefill?.proc.stop();
    await r?.router.close();
    await crowded.server.close({ deadlineMs: 0 });
  });

  test('is delivered again to the same worker once it can take it: the request succeeds (before, a 504 at the wait bound)', async () => {
    const pending = completion(r, { prompt: prompt(300, 301), max_tokens: 2 });
    await waitFor(() => refusedHandoffs().length > 0);
    // The generate is still waiting there: the worker can take the handoff now.
    crowded.open();
    const res = await pending;
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.equal(res.headers.get('x-kvroute-decode-worker'), crowdedId);
    assert.equal(res.headers.get('x-kvroute-prefill-worker'), prefill.id, 'the remote prefill was used');
    assert.equal((JSON.parse(text) as { usage: { completion_tokens: number } }).usage.completion_tokens, 2);
    assert.equal(crowded.delivered(), 1);
    // Each redelivery is an event on the request's span: why, to which worker, which one.
    const http = await waitFor(() =>
      r.exporter
        .getFinishedSpans()
        .find((s) => s.name === 'http-request' && s.attributes['url.path'] === '/v1/completions'),
    );
    const redeliveries = http.events.filter((e) => e.name === 'kv_handoff_redelivery');
    assert.equal(redeliveries.length, refusedHandoffs().length);
    assert.equal(redeliveries[0]?.attributes?.['kvroute.handoff.reason'], 'overloaded');
    assert.equal(redeliveries[0]?.attributes?.['kvroute.handoff.worker_id'], crowdedId);
    assert.equal(redeliveries[0]?.attributes?.['kvroute.handoff.attempt'], 2);
    // ... and counted, by the same failure kind.
    assert.equal(
      await metricValue(r, 'kvroute_handoff_redeliveries_total', { reason: 'overloaded' }),
      redeliveries.length,
    );
    await waitFor(() => idle(r, prefill));
  });

  test('is not delivered past the wait bound: a worker that never takes it is a 504 timeout, and the deliveries end with the request', async () => {
    crowded.crowd();
    const handoffCalls = () =>
      r.exporter.getFinishedSpans().filter((s) => s.name === 'request_plane kv_handoff');
    const callsBefore = handoffCalls().length;
    const res = await completion(r, { prompt: prompt(300, 302), max_tokens: 2 });
    const body = (await res.json()) as { error: { code: string } };
    assert.equal(res.status, 504, JSON.stringify(body));
    assert.equal(body.error.code, 'timeout');
    assert.ok(handoffCalls().length - callsBefore > 1, 'delivered again while the bound had time left');
    await waitFor(() => idle(r, prefill));
    // Longer than the longest pause between two deliveries: one still going would show.
    await sleep(300);
    const calls = handoffCalls().length;
    await sleep(600);
    assert.equal(handoffCalls().length, calls, 'no delivery outlives its request');
    assert.equal(crowded.delivered(), 1, "only the first test's handoff was ever taken");
  });
});

describe('overlapped mode, a decode worker whose plane refuses every kv_handoff for good (no handler)', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  let deaf = 0;
  // Takes the generate and waits, but has no kv_handoff endpoint: every delivery is refused
  // not_found, before any handler runs, and would be again.
  const handoffless = new RequestPlaneServer().handle('generate', async function* (req) {
    deaf++;
    await new Promise((resolve) => req.signal.addEventListener('abort', resolve, { once: true }));
    yield encodeJson({ token_ids: [11], finish_reason: 'length' });
  });

  before(async () => {
    await handoffless.listen(0);
    r = await startRouter({ maxLocalPrefill: 64, overlappedPrefill: true, prefillWaitMs: 3000 }, true);
    prefill = await spawnWorker(r, 'prefill', ['--speedup', '20']);
    await registerStandIn(r, handoffless.address, 'decode');
  });

  after(async () => {
    await prefill?.proc.stop();
    await r?.router.close();
    await handoffless.close({ deadlineMs: 0 });
  });

  test('fails the request with the refusal at once, neither redelivered nor left to the 504 at the wait bound', async () => {
    const res = await completion(r, { prompt: prompt(300, 303), max_tokens: 2 });
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(res.status, 502, JSON.stringify(body));
    assert.equal(body.error.code, 'worker_error');
    assert.match(body.error.message, /kv_handoff/);
    assert.equal(deaf, 1);
    const handoffCalls = r.exporter.getFinishedSpans().filter((s) => s.name === 'request_plane kv_handoff');
    assert.equal(handoffCalls.length, 1, 'delivered once: the same payload would be refused the same way');
    await waitFor(() => idle(r, prefill));
  });
});

describe('a decode worker ending its stream before finish_reason', () => {
  let r: TestRouter;
  let prefill: TestWorker;
  // Streams two tokens, then ends the stream cleanly without ever saying why it finished.
  const cut = new RequestPlaneServer().handle('generate', async function* () {
    yield encodeJson({ token_ids: [11], finish_reason: null, prompt_tokens: 300, cached_tokens: 0 });
    yield encodeJson({ token_ids: [12], finish_reason: null });
  });

  before(async () => {
    await cut.listen(0);
    r = await startRouter({ maxLocalPrefill: 64 });
    prefill = await spawnWorker(r, 'prefill', ['--speedup', '20']);
    await registerStandIn(r, cut.address, 'decode');
  });

  after(async () => {
    await prefill?.proc.stop();
    await r?.router.close();
    await cut.close({ deadlineMs: 100 });
  });

  test('is a failure the client hears about (502, or an SSE error event), never a 200 cut short', async () => {
    const res = await completion(r, { prompt: prompt(300, 91), max_tokens: 8 });
    const body = (await res.json()) as { error?: { code: string } };
    assert.equal(res.status, 502, JSON.stringify(body));
    assert.equal(body.error?.code, 'worker_error');
    const streamed = await completion(r, { prompt: prompt(300, 92), max_tokens: 8, stream: true });
    assert.equal(streamed.status, 200);
    const text = await streamed.text();
    assert.match(text, /data: \{"error":\{[^\n]*"code":"worker_error"/);
    assert.doesNotMatch(text, /\[DONE\]/);
    await waitFor(() => idle(r, prefill));
  });
});
