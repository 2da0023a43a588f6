// Worker failures seen from the router, with real worker processes: an unreachable worker is
// retried elsewhere, a SIGKILLed worker leaves the fleet and requests keep succeeding, a worker
// dying mid-stream ends the SSE stream with an error event, and a client that disconnects
// cancels the worker's stream and still gets its http-request span ended and its request counted.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LoadReport } from '../src/protocols/worker-plane.js';
import type { RouterService } from '../src/router/service.js';
import { decodeJson, encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import {
  closePlane,
  metricValue,
  prompt,
  spawnWorker,
  startRouter,
  type TestRouter,
  type TestWorker,
  waitFor,
} from './disagg-helpers.js';
import {
  postCompletion as complete,
  registeredWorkerId,
  useRouterWithFleet,
  waitForWorkers,
  waitUntil,
} from './helpers/fleet.js';

const MODEL = 'mock-llm';

async function retriesCounted(router: RouterService): Promise<number> {
  const values = (await router.metrics.retries.get()).values;
  return values.reduce((sum, v) => sum + v.value, 0);
}

describe('unreachable and killed workers', () => {
  const fixture = useRouterWithFleet({ policy: 'random' });

  test('a request routed to an unreachable worker is retried on another one', async () => {
    const { router, fleet } = fixture;
    const [live] = await fleet.spawn(1);
    await waitForWorkers(router.url, 1);
    // A registration whose address nobody listens on (no KV events: no subscription notices it).
    const ghostId = await registeredWorkerId(router.url, { address: '127.0.0.1:9', model: MODEL });
    const liveId = router.registry.list().find((w) => w.address === live!.address)!.id;
    try {
      // Random policy over [live, ghost]: within 40 requests one goes to the ghost (odds of
      // never: 2^-40); every one must be served by the live worker.
      for (let i = 0; i < 40 && (await retriesCounted(router)) === 0; i++) {
        const res = await complete(router.url, { prompt: `retry me ${i}` });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-kvroute-decode-worker'), liveId);
      }
      assert.equal(await retriesCounted(router), 1);
      assert.equal(router.registry.load.size, 0);
    } finally {
      await fetch(`${router.url}/v1/workers/${ghostId}`, { method: 'DELETE' });
    }
  });

  test('a SIGKILLed worker leaves the fleet and later requests still succeed', async () => {
    const { router, fleet } = fixture;
    const [victim] = await fleet.spawn(1);
    await waitForWorkers(router.url, 2);
    const victimId = router.registry.list().find((w) => w.address === victim!.address)!.id;
    // Give the victim something in the index first, so its purge is visible.
    for (let i = 0; i < 40 && !router.index.stats().blocksPerWorker[victimId]; i++) {
      await complete(router.url, { prompt: `warm the victim ${i} `.repeat(8) });
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.ok(router.index.stats().blocksPerWorker[victimId]! > 0);
    victim!.kill('SIGKILL');
    await victim!.exit;
    // Requests right after the kill: any routed to the dead worker are retried on the live one.
    for (let i = 0; i < 4; i++) {
      const res = await complete(router.url, { prompt: `after the kill ${i}` });
      assert.equal(res.status, 200, await res.clone().text());
    }
    // Its subscription fails (connection refused) or its lease runs out: either removes it.
    await waitUntil(
      () => !router.registry.list().some((w) => w.address === victim!.address),
      'the killed worker to be removed',
    );
    assert.equal(router.registry.size, 1);
    assert.equal(router.index.stats().blocksPerWorker[victimId], undefined);
    assert.equal(router.registry.load.loadOf(victimId), undefined);
    const res = await complete(router.url, { prompt: 'still served' });
    assert.equal(res.status, 200);
  });
});

describe('mid-stream failure and client disconnect', () => {
  const fixture = useRouterWithFleet({});
  const plane = new RequestPlaneClient();
  after(() => plane.close());

  test('a worker killed mid-stream ends the SSE stream with an error event (no [DONE])', async () => {
    const { router, fleet } = fixture;
    // Real-time speed: 2000 tokens take seconds, so the kill lands mid-stream.
    const [slow] = await fleet.spawn(1, ['--speedup', '1']);
    await waitForWorkers(router.url, 1, [slow!.address]);
    const res = await complete(router.url, { prompt: 'a long story', max_tokens: 2000, stream: true });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value);
    assert.match(text, /^data: \{/);
    slow!.kill('SIGKILL');
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
    const last = JSON.parse(events.at(-1)!.slice('data: '.length)) as { error?: { code: string } };
    assert.equal(last.error?.code, 'worker_disconnected');
    assert.ok(!text.includes('[DONE]'));
    await waitUntil(() => router.registry.load.size === 0, 'the booking to be released');
    await waitUntil(() => router.registry.size === 0, 'the killed worker to be removed');
  });

  test('a worker that deregisters on SIGTERM finishes the stream it is serving', async () => {
    const { router, fleet } = fixture;
    const [draining] = await fleet.spawn(1, ['--speedup', '2']);
    await waitForWorkers(router.url, 1, [draining!.address]);
    const res = await complete(router.url, {
      prompt: 'finish what you started',
      max_tokens: 300,
      stream: true,
    });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value);
    draining!.kill('SIGTERM');
    await waitUntil(() => router.registry.size === 0, 'the worker to deregister');
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    assert.ok(text.endsWith('data: [DONE]\n\n'), text.slice(-300));
    assert.ok(!text.includes('"error"'));
    assert.equal((await draining!.exit).code, 0);
  });

  test('a client that disconnects cancels the worker stream and releases the booking', async () => {
    const { router, fleet } = fixture;
    const [slow] = await fleet.spawn(1, ['--speedup', '1']);
    await waitForWorkers(router.url, 1, [slow!.address]);
    const abort = new AbortController();
    const res = await complete(
      router.url,
      { prompt: 'a story I will not finish reading', max_tokens: 3000, stream: true },
      { signal: abort.signal },
    );
    const reader = res.body!.getReader();
    await reader.read();
    const load = async () => decodeJson<LoadReport>(await plane.unary(slow!.address, 'load', encodeJson({})));
    assert.equal((await load()).running, 1);
    abort.abort();
    // 3000 tokens at real-time speed run for ~20 s: seeing the engine idle within the wait means
    // the router cancelled the stream.
    await waitUntil(async () => (await load()).running === 0, 'the worker to stop generating');
    await waitUntil(
      () => router.registry.load.size === 0 && router.inflight.active === 0,
      'the booking to be released',
    );
  });
});

describe('a client that leaves before its response finished', () => {
  let traced: TestRouter;
  let slow: TestWorker;
  before(async () => {
    traced = await startRouter({}, true);
    slow = await spawnWorker(traced, 'decode', ['--speedup', '1']);
  });
  after(async () => {
    await slow?.proc.stop();
    await traced?.router.close();
    await closePlane();
  });

  /** The router's ended `http-request` span of the request with this x-request-id. */
  const httpSpan = (requestId: string) =>
    traced.exporter
      .getFinishedSpans()
      .find((s) => s.name === 'http-request' && s.attributes['kvroute.request_id'] === requestId);

  test('mid-stream: the http-request span ends as cancelled, after the request recorded its worker', async () => {
    const abort = new AbortController();
    const res = await fetch(`${traced.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'leaves-mid-stream' },
      body: JSON.stringify({ model: MODEL, prompt: prompt(64, 1), max_tokens: 3000, stream: true }),
      signal: abort.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    abort.abort();
    const span = await waitFor(() => httpSpan('leaves-mid-stream'));
    assert.equal(span.attributes['kvroute.outcome'], 'cancelled');
    assert.equal(span.attributes['http.route'], '/v1/completions');
    assert.equal(span.attributes['http.response.status_code'], 200); // the stream had started
    assert.equal(span.attributes['kvroute.decode_worker_id'], slow.id);
    assert.ok(
      await waitFor(
        async () => (await metricValue(traced, 'kvroute_http_requests_total', { status: '499' })) === 1,
      ),
    );
  });

  test('before any byte of the answer: the span ends as cancelled', async () => {
    const abort = new AbortController();
    const answered = fetch(`${traced.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'leaves-early' },
      body: JSON.stringify({ model: MODEL, prompt: prompt(64, 2), max_tokens: 3000 }),
      signal: abort.signal,
    });
    // The non-streamed answer comes after 3000 tokens at real-time speed (~20 s): leave before.
    await waitFor(() => traced.router.inflight.active === 1);
    abort.abort();
    await assert.rejects(answered);
    const span = await waitFor(() => httpSpan('leaves-early'));
    assert.equal(span.attributes['kvroute.outcome'], 'cancelled');
    // No status, or the 499 the error handler wrote to the closed socket, if it ran first.
    assert.ok([undefined, 499].includes(span.attributes['http.response.status_code'] as number | undefined));
    assert.equal(await metricValue(traced, 'kvroute_http_requests_total', { status: '499' }), 2);
  });
});

describe('a request refused before it is routed', () => {
  let traced: TestRouter;
  before(async () => {
    traced = await startRouter({}, true);
  });
  after(async () => {
    await traced?.router.close();
  });

  test('its http-request span says how it ended (error) and for which model', async () => {
    const refused = [
      // No worker at all: 503 no_workers, from the routing stage.
      { id: 'refused-503', body: { model: 'nope', prompt: 'hi' }, status: 503 },
      // Bad input: 400 from the parse stage.
      { id: 'refused-400', body: { model: MODEL, prompt: 'hi', max_tokens: -1 }, status: 400 },
    ];
    for (const { id, body, status } of refused) {
      const res = await fetch(`${traced.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-request-id': id },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, status);
      const span = await waitFor(() =>
        traced.exporter
          .getFinishedSpans()
          .find((s) => s.name === 'http-request' && s.attributes['kvroute.request_id'] === id),
      );
      assert.equal(span.attributes['kvroute.outcome'], 'error', id);
      assert.equal(span.attributes['kvroute.model'], body.model, id);
      assert.equal(span.attributes['http.response.status_code'], status, id);
      assert.equal(span.events.filter((e) => e.name === 'exception').length, 1, id);
    }
  });
});
