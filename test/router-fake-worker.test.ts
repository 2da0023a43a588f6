// Router behaviour that needs a worker misbehaving on purpose: an in-process request-plane server
// stands in for the worker (real sockets, real router). Covers approximate mode (no KV events),
// KV-event resume + gap resync + dump, the first-token timeout and the stream idle timeout.

import assert from 'node:assert/strict';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEvent, KvEventsChunk, KvEventsSubscribe } from '../src/protocols/kv-events.js';
import type { GenerateChunk } from '../src/protocols/worker-plane.js';
import { createRouter, type RouterService } from '../src/router/service.js';
import { decodeJson, encodeJson, type IncomingRequest, RequestPlaneServer } from '../src/tcp/index.js';
import { registeredWorkerId, waitUntil } from './helpers/fleet.js';

const MODEL = 'fake-llm';

function register(router: RouterService, address: string, kvEvents: boolean): Promise<string> {
  return registeredWorkerId(router.url, { address, model: MODEL, kv_blocks: 4096, kv_events: kvEvents });
}

function post(router: RouterService, path: string, body: object) {
  return fetch(`${router.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, max_tokens: 2, ...body }),
  });
}

/** `stored` events for a token prompt, as a worker would publish them. */
function storedEvents(tokens: number[], firstId: number): KvEvent[] {
  const { local, sequence } = computeBlockHashes(tokens, 16);
  return Array.from(local, (l, i) => ({
    event_id: firstId + i,
    type: 'stored' as const,
    parent_hash: i === 0 ? null : sequence[i - 1]!.toString(),
    blocks: [{ local_hash: l.toString(), sequence_hash: sequence[i]!.toString() }],
  }));
}

const tokens = (seed: number, blocks: number) =>
  Array.from({ length: blocks * 16 }, (_, i) => 500 + ((seed * 131 + i * 17) % 9000));

describe('fake workers', () => {
  let router: RouterService;
  let server: RequestPlaneServer;
  let generate: (req: IncomingRequest) => AsyncIterable<Uint8Array>;
  let kvEvents: (req: IncomingRequest) => AsyncIterable<Uint8Array>;
  const subscriptions: KvEventsSubscribe[] = [];

  before(async () => {
    router = await createRouter({
      port: 0,
      logger: false,
      leaseTtlMs: 60_000,
      firstTokenTimeoutMs: 800,
      streamIdleTimeoutMs: 800,
      maxLocalPrefill: 1_000_000,
    });
    await router.listen();
    server = new RequestPlaneServer()
      .handle('generate', (req) => generate(req))
      .handle('kv_events', (req) => {
        subscriptions.push(decodeJson<KvEventsSubscribe>(req.payload));
        return kvEvents(req);
      });
    await server.listen(0);
  });
  after(async () => {
    await router.close();
    await server.close({ deadlineMs: 100 });
  });

  test('a worker without KV events is credited with the blocks routed to it (approximate mode)', async () => {
    generate = async function* () {
      const chunk: GenerateChunk = {
        token_ids: [290, 328],
        finish_reason: 'length',
        prompt_tokens: 64,
        cached_tokens: 0,
      };
      yield encodeJson(chunk);
    };
    const id = await register(router, server.address, false);
    const prompt = tokens(1, 4);
    const before = (await (await post(router, '/v1/route', { prompt })).json()) as {
      decode: { overlap_blocks: number };
    };
    assert.equal(before.decode.overlap_blocks, 0);
    const res = await post(router, '/v1/completions', { prompt });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { choices: { text: string }[] }).choices[0]!.text, ' the of');
    const after = (await (await post(router, '/v1/route', { prompt })).json()) as {
      decode: { worker_id: string; overlap_blocks: number };
    };
    assert.equal(after.decode.worker_id, id);
    assert.equal(after.decode.overlap_blocks, 4);
    const list = (await (await fetch(`${router.url}/v1/workers`)).json()) as {
      data: { index_mode: string; index_blocks: number }[];
    };
    assert.equal(list.data[0]!.index_mode, 'approximate');
    assert.equal(list.data[0]!.index_blocks, 4);
    assert.equal((await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' })).status, 204);
  });

  test('no first chunk within first-token-timeout-ms -> 504, and the worker call is cancelled', async () => {
    let cancelled = false;
    generate = async function* (req) {
      await new Promise<void>((resolve) => req.signal.addEventListener('abort', () => resolve()));
      cancelled = true;
    };
    const id = await register(router, server.address, false);
    const res = await post(router, '/v1/completions', { prompt: 'are you there?' });
    assert.equal(res.status, 504);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'timeout');
    await waitUntil(() => cancelled, 'the worker to see the cancel');
    assert.equal(router.registry.load.size, 0);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
  });

  test('a stream silent for longer than stream-idle-timeout-ms ends: 504, or an SSE timeout event', async () => {
    generate = async function* (req) {
      yield encodeJson({ token_ids: [290], finish_reason: null, prompt_tokens: 4, cached_tokens: 0 });
      await new Promise<void>((resolve) => req.signal.addEventListener('abort', () => resolve()));
    };
    const id = await register(router, server.address, false);
    const whole = await post(router, '/v1/completions', { prompt: 'then silence' });
    assert.equal(whole.status, 504);
    const streamed = await post(router, '/v1/completions', { prompt: 'then silence', stream: true });
    assert.equal(streamed.status, 200);
    const text = await streamed.text();
    const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
    assert.equal(events.length, 2);
    assert.equal((JSON.parse(events[1]!.slice(6)) as { error: { code: string } }).error.code, 'timeout');
    assert.equal(router.registry.load.size, 0);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
  });

  test('a token id outside the vocabulary from a worker is its fault: 502 worker_error, not a 400 for the client', async () => {
    generate = async function* () {
      yield encodeJson({
        token_ids: [290, 4_000_000_000],
        finish_reason: 'length',
        prompt_tokens: 4,
        cached_tokens: 0,
      });
    };
    const id = await register(router, server.address, false);
    const res = await post(router, '/v1/completions', { prompt: 'say something odd' });
    assert.equal(res.status, 502);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'worker_error');
    assert.match(body.error.message, /4000000000/);
    assert.equal(router.registry.load.size, 0);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
  });

  test('a client applying backpressure is not a silent worker: its stream waits and then finishes', async () => {
    // 64 tokens of 112 dashes (o200k_base id 182513): ~7 KB of SSE per chunk, so the sockets fill fast.
    const ids = new Array<number>(64).fill(182_513);
    let sent = 0;
    let resumed = false;
    generate = async function* (req) {
      while (!req.signal.aborted) {
        sent++;
        const last = resumed;
        yield encodeJson({ token_ids: ids, finish_reason: last ? 'length' : null, prompt_tokens: 4 });
        if (last) return;
      }
    };
    const id = await register(router, server.address, false);
    const body = JSON.stringify({ model: MODEL, prompt: 'flood', max_tokens: 8000, stream: true });
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest(`${router.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      });
      req.on('response', resolve).on('error', reject).end(body);
    });
    assert.equal(res.statusCode, 200);
    // The client reads nothing: the router's socket fills, the router stops pulling, and the
    // request plane's credit window stops the worker. Wait until it has.
    res.pause();
    let seen = -1;
    await waitUntil(async () => {
      const stalled = sent === seen;
      seen = sent;
      await sleep(200);
      return stalled && sent === seen;
    }, 'the worker to be held by backpressure');
    // Two and a half idle bounds (800 ms) with nothing pulled: the router used to call that silence.
    await sleep(2000);
    resumed = true;
    res.setEncoding('utf8');
    let text = '';
    res.on('data', (s: string) => {
      text += s;
    });
    res.resume();
    await new Promise((resolve) => res.on('end', resolve));
    assert.doesNotMatch(text, /data: \{"error"/);
    assert.match(text, /data: \[DONE\]\n\n$/);
    assert.equal(router.registry.load.size, 0);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
  });

  test('KV events: applied, a gap resubscribes from the last applied id, a dump resets the worker', async () => {
    const a = tokens(2, 3);
    const b = tokens(3, 2);
    subscriptions.length = 0;
    kvEvents = async function* (req) {
      const { after_event_id } = decodeJson<KvEventsSubscribe>(req.payload);
      if (after_event_id === 0) {
        // Events 1..3 (prompt a), then event 5: event 4 is missing.
        yield encodeJson({ kind: 'events', events: storedEvents(a, 1) } satisfies KvEventsChunk);
        yield encodeJson({ kind: 'events', events: storedEvents(b, 5).slice(0, 1) } satisfies KvEventsChunk);
      } else {
        // Too old for the ring: a dump holding only prompt b, as of event 6.
        const dump = storedEvents(b, 5);
        yield encodeJson({ kind: 'dump', as_of_event_id: 6, events: dump } satisfies KvEventsChunk);
      }
      await new Promise<void>((resolve) => req.signal.addEventListener('abort', () => resolve()));
    };
    const id = await register(router, server.address, true);
    await waitUntil(() => subscriptions.length >= 2 && router.index.lastEventId(id) === 6, 'the resync');
    assert.deepEqual(
      subscriptions.map((s) => s.after_event_id),
      [0, 3],
    );
    const resyncs = Object.fromEntries(
      (await router.metrics.kvResyncs.get()).values.map((v) => [v.labels.reason, v.value]),
    );
    assert.deepEqual(resyncs, { gap: 1, dump: 1 });
    // After the dump the worker holds b only.
    assert.equal(router.index.stats().blocksPerWorker[id], 2);
    const routeA = (await (await post(router, '/v1/route', { prompt: a })).json()) as {
      decode: { overlap_blocks: number };
    };
    const routeB = (await (await post(router, '/v1/route', { prompt: b })).json()) as {
      decode: { overlap_blocks: number };
    };
    assert.equal(routeA.decode.overlap_blocks, 0);
    assert.equal(routeB.decode.overlap_blocks, 2);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
    // Deregistration purges its index entries.
    assert.equal(router.index.stats().blocksPerWorker[id], undefined);
    await sleep(10);
  });

  test('KV events: a dump in parts resets the worker once, after its last part', async () => {
    const a = tokens(4, 3);
    const b = tokens(5, 2);
    const c = tokens(6, 2);
    subscriptions.length = 0;
    const resyncsOf = async () =>
      Object.fromEntries(
        (await router.metrics.kvResyncs.get()).values.map((v) => [v.labels.reason, v.value]),
      );
    const before = await resyncsOf();
    let dumps = 0;
    const dumpPart = (events: KvEvent[], more: boolean) =>
      encodeJson({
        kind: 'dump',
        as_of_event_id: 9,
        events,
        ...(more ? { more: true } : {}),
      } satisfies KvEventsChunk);
    kvEvents = async function* (req) {
      const { after_event_id } = decodeJson<KvEventsSubscribe>(req.payload);
      if (after_event_id === 0) {
        // Prompt c as events 1-2, then event 5: a gap.
        yield encodeJson({ kind: 'events', events: storedEvents(c, 1) } satisfies KvEventsChunk);
        yield encodeJson({ kind: 'events', events: storedEvents(b, 5).slice(0, 1) } satisfies KvEventsChunk);
      } else if (dumps++ === 0) {
        // A broken dump: live events before its last part. The router must not finish it.
        yield dumpPart(storedEvents(a, 7), true);
        yield encodeJson({ kind: 'events', events: [] } satisfies KvEventsChunk);
      } else {
        // The whole cache (a and b, not c) in two parts.
        yield dumpPart(storedEvents(a, 7), true);
        yield dumpPart(storedEvents(b, 8), false);
      }
      await new Promise<void>((resolve) => req.signal.addEventListener('abort', () => resolve()));
    };
    const id = await register(router, server.address, true);
    await waitUntil(() => router.index.lastEventId(id) === 9, 'the dump to finish');
    // The broken dump left the last applied id at 2, so the router asked again from there.
    assert.deepEqual(
      subscriptions.map((s) => s.after_event_id),
      [0, 2, 2],
    );
    const after = await resyncsOf();
    assert.equal((after.dump ?? 0) - (before.dump ?? 0), 1, 'one reset for the one finished dump');
    // The second part did not undo the first; c, which the dump does not mention, is gone.
    assert.equal(router.index.stats().blocksPerWorker[id], 5);
    const overlap = async (prompt: number[]) =>
      ((await (await post(router, '/v1/route', { prompt })).json()) as { decode: { overlap_blocks: number } })
        .decode.overlap_blocks;
    assert.deepEqual([await overlap(a), await overlap(b), await overlap(c)], [3, 2, 0]);
    await fetch(`${router.url}/v1/workers/${id}`, { method: 'DELETE' });
    await sleep(10);
  });

  // Last: it closes the router.
  test('close() ends open streams with a shutting_down event and resolves', async () => {
    generate = async function* (req) {
      while (!req.signal.aborted) {
        yield encodeJson({ token_ids: [290], finish_reason: null, prompt_tokens: 4, cached_tokens: 0 });
        await sleep(20);
      }
    };
    await register(router, server.address, false);
    const streamed = await post(router, '/v1/completions', {
      prompt: 'endless',
      stream: true,
      max_tokens: 8000,
    });
    const reader = streamed.body!.getReader();
    await reader.read();
    const closing = router.close();
    let text = '';
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value);
    }
    await closing;
    const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
    assert.equal(
      (JSON.parse(events.at(-1)!.slice(6)) as { error: { code: string } }).error.code,
      'shutting_down',
    );
    assert.equal(router.registry.load.size, 0);
  });
});

describe('outlier ejection', () => {
  test('a worker that accepts requests but never answers is taken out of routing after 3 first-token timeouts, and comes back on probation', {
    timeout: 60_000,
  }, async () => {
    // Before: it heartbeats and accepts connections, so neither its lease nor the KV subscription
    // notice; its load looked free once each timeout released it, and it kept drawing requests
    // into the timeout (5 of 12 here, for the whole run).
    const router = await createRouter({
      port: 0,
      logger: false,
      leaseTtlMs: 2_000, // sweeps every 500 ms: the ejection runs out within one
      firstTokenTimeoutMs: 300,
      ejectionMs: 1_500,
      maxLocalPrefill: 1_000_000,
    });
    await router.listen();
    const answering = new RequestPlaneServer().handle('generate', async function* () {
      const chunk: GenerateChunk = {
        token_ids: [290],
        finish_reason: 'length',
        prompt_tokens: 4,
        cached_tokens: 0,
      };
      yield encodeJson(chunk);
    });
    let hungCalls = 0;
    const hung = new RequestPlaneServer().handle('generate', async function* (req) {
      hungCalls++;
      await new Promise((resolve) => req.signal.addEventListener('abort', resolve, { once: true }));
    });
    await answering.listen(0);
    await hung.listen(0);
    // Both keep their leases, as a hung worker's heartbeat does.
    const ids = [
      await register(router, answering.address, false),
      await register(router, hung.address, false),
    ];
    const renew = setInterval(() => {
      for (const id of ids) void fetch(`${router.url}/v1/workers/${id}/heartbeat`, { method: 'POST' });
    }, 300);
    const hungId = ids[1]!;
    const listed = async () => {
      const { data } = (await (await fetch(`${router.url}/v1/workers`)).json()) as {
        data: {
          worker_id: string;
          health: { consecutive_failures: number; ejected_for_ms: number; on_probation: boolean };
        }[];
      };
      return data.find((w) => w.worker_id === hungId)!.health;
    };
    const metric = async (name: string) => {
      const text = await (await fetch(`${router.url}/metrics`)).text();
      return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
    };
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) {
        const res = await post(router, '/v1/completions', {
          prompt: `request ${i} `.repeat(8),
          max_tokens: 1,
        });
        statuses.push(res.status);
        await res.text();
      }
      assert.equal(hungCalls, 3, `statuses ${statuses.join(' ')}`);
      assert.equal(statuses.filter((s) => s === 504).length, 3);
      assert.equal(statuses.filter((s) => s === 200).length, 9);
      const out = await listed();
      assert.ok(out.ejected_for_ms > 0 && out.ejected_for_ms <= 1_500, JSON.stringify(out));
      assert.equal(await metric('kvroute_worker_ejections_total'), 1);
      assert.equal(await metric('kvroute_workers_ejected'), 1);
      // Back on probation: the first request sent to it that fails ejects it again, for 3 s.
      await waitUntil(async () => (await listed()).ejected_for_ms === 0, 'the ejection to run out');
      assert.equal((await listed()).on_probation, true);
      assert.equal(await metric('kvroute_workers_ejected'), 0);
      for (let i = 0; hungCalls === 3 && i < 20; i++) {
        const res = await post(router, '/v1/completions', {
          prompt: `probation ${i} `.repeat(8),
          max_tokens: 1,
        });
        await res.text();
      }
      assert.equal(hungCalls, 4);
      const again = await listed();
      assert.ok(again.ejected_for_ms > 1_500 && again.ejected_for_ms <= 3_000, JSON.stringify(again));
      assert.equal(await metric('kvroute_worker_ejections_total'), 2);
    } finally {
      clearInterval(renew);
      await router.close();
      await answering.close({ deadlineMs: 100 });
      await hung.close({ deadlineMs: 100 });
    }
  });
});
