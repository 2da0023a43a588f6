// Load and admission with real workers: requests sharing a cached prefix spread to another worker
// once the holder is loaded; when every candidate is busy the router answers 503 + Retry-After
// instead of queueing; the in-flight cap does the same. Nothing here waits on timing: bookings
// are made synchronously at routing time, so concurrent requests see each other's load.

import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Executor } from '../src/router/execute/types.js';
import { createRouter } from '../src/router/service.js';
import {
  postCompletion as complete,
  registeredWorkerId,
  useRouterWithFleet,
  waitUntil,
} from './helpers/fleet.js';

function prefixTokens(blocks: number): number[] {
  return Array.from({ length: blocks * 16 }, (_, i) => 2000 + ((i * 37) % 40_000));
}

describe('load spreads', () => {
  // Real-time speed: each 500-token stream runs for seconds, so the requests below overlap.
  const fixture = useRouterWithFleet({ maxLocalPrefill: 1_000_000 }, 2, ['--speedup', '1']);

  test('a saturated prefix holder gives work to the other worker', async () => {
    const { router } = fixture;
    const prefix = prefixTokens(24);
    const warm = await complete(router.url, { prompt: [...prefix, 1], max_tokens: 1 });
    const holder = warm.headers.get('x-kvroute-decode-worker')!;
    await waitUntil(
      () => (router.index.stats().blocksPerWorker[holder] ?? 0) >= 24,
      'the prefix in the index',
    );
    // A request costs the holder 32 blocks beside the decode work already running there (each
    // running sequence counts whole: ceil((385 + 500) / 16) = 56 blocks, 24 of them the cached
    // prefix it still reads every step), against 24 prefill + 56 decode blocks on the idle worker:
    // the holder costs 32, then 56 + 32 = 88 > 80. Streaming answers start at the first token, so
    // each request below is routed while the earlier ones still run.
    const streams: Response[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await complete(router.url, { prompt: [...prefix, 100 + i], max_tokens: 500, stream: true });
      assert.equal(res.status, 200);
      streams.push(res);
    }
    const workers = streams.map((r) => r.headers.get('x-kvroute-decode-worker'));
    assert.equal(workers[0], holder, `decode workers: ${workers.join(', ')}`);
    assert.notEqual(workers[1], holder, `decode workers: ${workers.join(', ')}`);
    // Abandoning the streams cancels them on the workers.
    await Promise.all(streams.map((r) => r.body!.cancel()));
    await waitUntil(() => router.registry.load.size === 0, 'the bookings to be released');
  });
});

describe('admission control', () => {
  // busyDecodeFraction 0: a worker with any booked decode block is busy.
  const fixture = useRouterWithFleet({ busyDecodeFraction: 0 }, 1, ['--speedup', '1']);

  test('every candidate busy -> 503 overloaded with Retry-After; served again once it is free', async () => {
    const { router } = fixture;
    const abort = new AbortController();
    const running = await complete(
      router.url,
      { prompt: 'keep the only worker busy', max_tokens: 3000, stream: true },
      { signal: abort.signal },
    );
    assert.equal(running.status, 200);
    const reader = running.body!.getReader();
    await reader.read();
    const refused = await complete(router.url, { prompt: 'no room for me' });
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('retry-after'), '1');
    const body = (await refused.json()) as { error: { code: string } };
    assert.equal(body.error.code, 'overloaded');
    abort.abort();
    await waitUntil(() => router.registry.load.size === 0, 'the running request to be released');
    assert.equal((await complete(router.url, { prompt: 'now there is room' })).status, 200);
  });
});

describe('a long stream', () => {
  // A lease far longer than the 301 s the clock jumps below, so that jump expires no worker.
  const fixture = useRouterWithFleet({ leaseTtlMs: 3_600_000 }, 1, ['--speedup', '1']);

  test('keeps its booking past 300 s: a request arriving then still sees its load', async (t) => {
    const { router } = fixture;
    const abort = new AbortController();
    const running = await complete(
      router.url,
      { prompt: 'a long answer', max_tokens: 3000, stream: true },
      { signal: abort.signal },
    );
    assert.equal(running.status, 200);
    await running.body!.getReader().read();
    const [worker] = router.registry.list();
    const booked = { ...router.registry.load.loadOf(worker!.id)! };
    assert.equal(booked.activeRequests, 1);
    assert.ok(booked.activeDecodeBlocks > 0);
    // The next request is admitted 301 s after the stream's first token, by the router's clock
    // (only Date moves: timers and sockets run on). Its booking used to sweep the stream's away.
    t.mock.timers.enable({ apis: ['Date'], now: Date.now() + 301_000 });
    const later = await complete(router.url, { prompt: 'five minutes later', max_tokens: 1 });
    t.mock.timers.reset();
    assert.equal(later.status, 200);
    await later.text();
    assert.deepEqual({ ...router.registry.load.loadOf(worker!.id) }, booked);
    abort.abort();
    await waitUntil(() => router.registry.load.size === 0, 'the long stream to be released');
  });
});

describe('in-flight cap', () => {
  const fixture = useRouterWithFleet({ maxInflight: 1 }, 1, ['--speedup', '1']);

  test('past max-inflight requests -> 503 overloaded with Retry-After, nothing queues', async () => {
    const { router } = fixture;
    const abort = new AbortController();
    const running = await complete(
      router.url,
      { prompt: 'hold the only slot', max_tokens: 3000, stream: true },
      { signal: abort.signal },
    );
    const reader = running.body!.getReader();
    await reader.read();
    assert.equal(router.inflight.active, 1);
    const scrape = async () =>
      (await (await fetch(`${router.url}/metrics`)).text()).match(/^kvroute_requests_in_flight (\d+)$/m)?.[1];
    assert.equal(await scrape(), '1', 'the gauge an operator reads');
    const refused = await complete(router.url, { prompt: 'over the cap' });
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('retry-after'), '1');
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'overloaded');
    abort.abort();
    await waitUntil(() => router.inflight.active === 0, 'the slot to be released');
    assert.equal(await scrape(), '0');
    assert.equal((await complete(router.url, { prompt: 'under the cap again' })).status, 200);
  });
});

describe('round-robin', () => {
  const fixture = useRouterWithFleet({ policy: 'round-robin' }, 2);

  test('alternates decode workers (prefill placement keeps its own cursor)', async () => {
    const { router } = fixture;
    const seen: (string | null)[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await complete(router.url, { prompt: `turn ${i}`, max_tokens: 1 });
      assert.equal(res.status, 200);
      seen.push(res.headers.get('x-kvroute-decode-worker'));
    }
    assert.notEqual(seen[0], seen[1]);
    assert.deepEqual(seen.slice(2), seen.slice(0, 2));
  });
});

describe('a client gone before its stream is sent', () => {
  test('releases the in-flight slot and the bookings, though its event stream is never read', async () => {
    // A prefill leg that does not stop when the client leaves: its first token comes 200 ms later.
    // The pipeline then hands the HTTP layer an SSE stream for a reply whose client is gone, and
    // fastify destroys that stream unread: the events' generator never starts.
    const lateFirstToken: Executor = {
      async *run() {
        await sleep(200);
        yield { token_ids: [290], finish_reason: null, prompt_tokens: 4, cached_tokens: 0 };
        yield { token_ids: [328], finish_reason: 'length', prompt_tokens: 4, cached_tokens: 0 };
      },
    };
    const router = await createRouter(
      { port: 0, logger: false },
      {
        prefillPlanner: { choosePrefill: (_routing, decode) => ({ prefill: decode, reason: 'test' }) },
        disaggregatedExecutor: lateFirstToken,
      },
    );
    try {
      await router.listen();
      await registeredWorkerId(router.url, { address: '127.0.0.1:9' });
      const body = JSON.stringify({ model: 'mock-llm', prompt: 'gone early', max_tokens: 2, stream: true });
      const { port } = new URL(router.url);
      const socket = connect(Number(port), '127.0.0.1', () => {
        socket.write(
          `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
      });
      await waitUntil(() => router.inflight.active === 1, 'the request to be admitted');
      assert.equal(router.registry.load.size, 2, 'decode and prefill bookings');
      socket.destroy();
      await sleep(300); // the first token has come and gone
      await waitUntil(
        () => router.inflight.active === 0 && router.registry.load.size === 0,
        'the slot and the bookings to be released',
      );
    } finally {
      await router.close();
    }
  });
});

describe('a streaming client that takes no data', () => {
  /** A router whose (fake) worker streams what `run` yields; prefill placed on the decode worker. */
  async function routerStreaming(run: Executor['run'], clientStallTimeoutMs: number) {
    const router = await createRouter(
      { port: 0, logger: false, clientStallTimeoutMs },
      {
        prefillPlanner: { choosePrefill: (_routing, decode) => ({ prefill: decode, reason: 'test' }) },
        disaggregatedExecutor: { run },
      },
    );
    await router.listen();
    await registeredWorkerId(router.url, { address: '127.0.0.1:9' });
    return router;
  }
  const streamBody = (prompt: string) =>
    JSON.stringify({ model: 'mock-llm', prompt, max_tokens: 8192, stream: true });
  // ~1,000 tokens a chunk: the socket's buffers fill within a second when nobody reads.
  const bigChunk = Array.from({ length: 1000 }, (_, i) => 290 + (i % 500));

  test('is cut after --client-stall-timeout-ms: its slot, its bookings and the worker stream are freed', async () => {
    let workerStreamEnded = false;
    const router = await routerStreaming(async function* () {
      try {
        for (;;) {
          yield { token_ids: bigChunk, finish_reason: null, prompt_tokens: 4, cached_tokens: 0 };
          await new Promise((r) => setImmediate(r));
        }
      } finally {
        workerStreamEnded = true;
      }
    }, 500);
    try {
      const body = streamBody('never read');
      const { port } = new URL(router.url);
      const socket = connect(Number(port), '127.0.0.1', () => {
        socket.write(
          `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
        );
      });
      socket.pause(); // takes nothing, keeps the connection open
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.on('error', () => {});
      await waitUntil(() => router.inflight.active === 1, 'the request to be admitted');
      await waitUntil(
        () => router.inflight.active === 0 && router.registry.load.size === 0 && workerStreamEnded,
        'the slot, the bookings and the worker stream to be released',
        20_000,
      );
      socket.resume();
      await closed; // the router closed the connection
      const metrics = await (await fetch(`${router.url}/metrics`)).text();
      assert.match(
        metrics,
        /kvroute_http_requests_total\{route="\/v1\/completions",status="499",code="client_closed"\} 1/,
      );
    } finally {
      await router.close();
    }
  });

  test('a client that reads is not cut, though the stream lasts longer than the bound', async () => {
    const router = await routerStreaming(async function* () {
      for (let i = 0; i < 30; i++) {
        yield { token_ids: bigChunk, finish_reason: null, prompt_tokens: 4, cached_tokens: 0 };
        await sleep(50);
      }
      yield { token_ids: [290], finish_reason: 'length', prompt_tokens: 4, cached_tokens: 0 };
    }, 600);
    try {
      const res = await fetch(`${router.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: streamBody('read slowly'),
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      let text = '';
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        await sleep(20); // reads in small steps, never stopping for long
      }
      assert.ok(text.trimEnd().endsWith('data: [DONE]'), text.slice(-200));
      assert.equal(router.inflight.active, 0);
    } finally {
      await router.close();
    }
  });

  test('a worker slower than the bound is not taken for a stalled client', async () => {
    const router = await routerStreaming(async function* () {
      yield { token_ids: [290], finish_reason: null, prompt_tokens: 4, cached_tokens: 0 };
      await sleep(1500); // nothing to hand over: the client is waiting, not stalled
      yield { token_ids: [328], finish_reason: 'length', prompt_tokens: 4, cached_tokens: 0 };
    }, 300);
    try {
      const res = await fetch(`${router.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: streamBody('slow worker'),
      });
      const text = await res.text();
      assert.equal(res.status, 200);
      assert.ok(text.trimEnd().endsWith('data: [DONE]'), text.slice(-200));
    } finally {
      await router.close();
    }
  });
});
