import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KvHandoffBoard, MAX_HELD_HANDOFFS } from '../src/decode/handoff-board.js';
import { MockEngine } from '../src/engine/index.js';
import { KvrouteError } from '../src/errors.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEventsChunk } from '../src/protocols/kv-events.js';
import type { GenerateChunk, LoadReport, PrefillResponse } from '../src/protocols/worker-plane.js';
import { decodeJson, encodeJson, RequestPlaneClient, TransportError } from '../src/tcp/index.js';
import { KvEventsHub } from '../src/worker/kv-events-stream.js';
import type { WorkerStats } from '../src/worker/stats.js';
import { runUntilIdle } from './engine-helpers.js';
import { StandInRouter, spawnWorker, type WorkerProcess } from './worker-helpers.js';

const router = new StandInRouter(600);
const client = new RequestPlaneClient();
let prefill: WorkerProcess;
let decode: WorkerProcess;
let prefillId: string;

const common = ['--kv-blocks', '64', '--block-size', '16', '--speedup', '10'];

before(async () => {
  await router.listen();
  [prefill, decode] = await Promise.all([
    spawnWorker(['--role', 'prefill', '--router', router.url, ...common]),
    spawnWorker(['--role', 'decode', '--router', router.url, ...common]),
  ]);
  // Both registered and heartbeating (so each knows its worker id).
  await router.waitFor((c) => c.url === '/v1/workers/w1/heartbeat');
  await router.waitFor((c) => c.url === '/v1/workers/w2/heartbeat');
  prefillId = router.idByAddress.get(prefill.address)!;
});

after(async () => {
  prefill?.child.kill('SIGKILL');
  decode?.child.kill('SIGKILL');
  await client.close();
  await router.close();
});

async function unary<T>(address: string, path: string, body: unknown): Promise<T> {
  return decodeJson<T>(await client.unary(address, path, encodeJson(body)));
}

async function generate(address: string, body: unknown, signal?: AbortSignal): Promise<GenerateChunk[]> {
  const chunks: GenerateChunk[] = [];
  for await (const buf of client.stream(address, 'generate', encodeJson(body), { signal })) {
    chunks.push(decodeJson<GenerateChunk>(buf));
  }
  return chunks;
}

async function remoteError(call: Promise<unknown>): Promise<TransportError> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof TransportError, String(err));
    assert.equal(err.kind, 'remote_error');
    return err;
  }
  assert.fail('expected an error response');
}

const prompt = Array.from({ length: 100 }, (_, i) => 1000 + i); // 6 full blocks + 4 tokens

test('prefill then generate with the transferred KV: the decode worker installs, not recomputes', async () => {
  const events = client
    .stream(prefill.address, 'kv_events', encodeJson({ after_event_id: 0 }))
    [Symbol.asyncIterator]();
  assert.deepEqual(decodeJson<KvEventsChunk>((await events.next()).value), { kind: 'events', events: [] });

  const pre = await unary<PrefillResponse>(prefill.address, 'prefill', {
    request_id: 'r1',
    token_ids: prompt,
    extra: 1,
  });
  const expected = Array.from(computeBlockHashes(prompt, 16).sequence, String);
  assert.equal(pre.prompt_tokens, 100);
  assert.equal(pre.cached_tokens, 0);
  assert.deepEqual(pre.kv_transfer, {
    prefill_worker_id: prefillId,
    block_size: 16,
    transferred_blocks: 6,
    block_hashes: expected,
    cached_tokens: 0,
  });
  const stored = decodeJson<KvEventsChunk>((await events.next()).value);
  assert.deepEqual(
    stored.events.flatMap((e) => (e.type === 'stored' ? e.blocks.map((b) => b.sequence_hash) : [])),
    expected,
  );
  await events.return!();

  const chunks = await generate(decode.address, {
    request_id: 'r1',
    token_ids: prompt,
    max_tokens: 8,
    kv_transfer: pre.kv_transfer,
    first_token: pre.first_token,
  });
  assert.equal(chunks[0]!.token_ids[0], pre.first_token);
  assert.equal(chunks[0]!.prompt_tokens, 100);
  assert.equal(chunks[0]!.cached_tokens, 96);
  assert.equal(chunks.flatMap((c) => c.token_ids).length, 8);
  assert.equal(chunks.at(-1)!.finish_reason, 'length');

  const decodeStats = await unary<WorkerStats>(decode.address, 'stats', {});
  assert.equal(decodeStats.installed_blocks, 6);
  assert.equal(decodeStats.transferred_tokens, 96);
  assert.equal(decodeStats.computed_tokens, 4, 'only the partial tail was prefilled on the decode worker');
  const prefillStats = await unary<WorkerStats>(prefill.address, 'stats', {});
  assert.equal(prefillStats.computed_tokens, 100);
  assert.equal(prefillStats.cached_blocks, 6, 'the prefill worker keeps the blocks cached');
  assert.equal(prefillStats.used_blocks, 0);

  // A second prompt sharing the 6-block prefix costs the prefill worker only its new tail.
  const again = await unary<PrefillResponse>(prefill.address, 'prefill', {
    request_id: 'r2',
    token_ids: [...prompt.slice(0, 96), 7, 7, 7],
  });
  assert.equal(again.cached_tokens, 96);
  assert.equal((await unary<WorkerStats>(prefill.address, 'stats', {})).computed_tokens, 103);
});

test('load, health and roles: a prefill worker does not serve generate', async () => {
  const load = await unary<LoadReport>(decode.address, 'load', {});
  assert.equal(load.total_blocks, 64);
  assert.equal(load.running, 0);
  assert.deepEqual(await unary(prefill.address, 'health', {}), {
    ok: true,
    worker_id: prefillId,
    role: 'prefill',
  });
  await remoteError(generate(prefill.address, { request_id: 'x', token_ids: [1], max_tokens: 1 }));
});

test('bad input answers with an error naming the field; a prompt larger than the pool fails at once', async () => {
  let err = await remoteError(generate(decode.address, { token_ids: [1, 2], max_tokens: 2 }));
  assert.equal(err.remoteCode, 'invalid_request');
  assert.match(err.message, /request_id/);
  err = await remoteError(generate(decode.address, { request_id: 'x', token_ids: [1, 2.5], max_tokens: 2 }));
  assert.match(err.message, /token_ids\[1\]/);
  err = await remoteError(unary(prefill.address, 'prefill', { request_id: 'x', token_ids: [-1] }));
  assert.match(err.message, /token_ids\[0\]/);
  err = await remoteError(unary(prefill.address, 'prefill', { request_id: 'x' }));
  assert.match(err.message, /missing field 'token_ids'/);
  err = await remoteError(
    unary(prefill.address, 'prefill', { request_id: 'x', token_ids: new Array(2000).fill(5) }),
  );
  assert.equal(err.remoteCode, 'context_length_exceeded');
  err = await remoteError(
    generate(decode.address, {
      request_id: 'x',
      token_ids: prompt,
      max_tokens: 2,
      kv_transfer: { prefill_worker_id: 'w1', block_size: 16, transferred_blocks: 1, block_hashes: ['12'] },
    }),
  );
  assert.match(err.message, /block_hashes\[0\] does not match/);
});

test('a field that is deeply nested or huge answers invalid_request naming it, in a short message', async () => {
  // JSON.stringify of a deeply nested value overflows the stack (an internal_error for the
  // caller's mistake), and of a long string makes the message its size: payload.ts describes
  // what it refuses as the router's validators do.
  const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
  const cases: [string, string, string][] = [
    ['generate', 'max_tokens', `{"request_id":"x","token_ids":[1],"max_tokens":${deep}}`],
    ['generate', 'request_id', `{"request_id":${deep},"token_ids":[1],"max_tokens":1}`],
    [
      'prefill',
      'max_tokens',
      JSON.stringify({ request_id: 'x', token_ids: [1], max_tokens: 'x'.repeat(1_000_000) }),
    ],
    [
      'generate',
      'max_tokens',
      JSON.stringify({ request_id: 'x', token_ids: [1], max_tokens: 'x'.repeat(1_000_000) }),
    ],
  ];
  for (const [path, field, text] of cases) {
    const payload = Buffer.from(text);
    const call =
      path === 'generate'
        ? (async () => {
            for await (const _ of client.stream(decode.address, path, payload));
          })()
        : client.unary(prefill.address, path, payload);
    const err = await remoteError(call);
    assert.equal(err.remoteCode, 'invalid_request', `${path} ${field}: ${err.message.slice(0, 200)}`);
    assert.match(err.message, new RegExp(field));
    assert.ok(err.message.length < 200, `${path} ${field}: a message of ${err.message.length} characters`);
  }
});

test("kv_transfer.block_hashes past 2^64-1 are refused as not u64, as the router's index refuses them", async () => {
  // 20 digits is not enough to be a u64: the payload check and kv-index's parseU64Into must agree.
  for (const hash of ['18446744073709551616', '99999999999999999999']) {
    const err = await remoteError(
      generate(decode.address, {
        request_id: 'x',
        token_ids: Array.from({ length: 32 }, (_, i) => i),
        max_tokens: 1,
        kv_transfer: { prefill_worker_id: 'w1', block_size: 16, transferred_blocks: 1, block_hashes: [hash] },
      }),
    );
    assert.equal(err.remoteCode, 'invalid_request');
    assert.match(err.message, /must be an array of decimal u64 strings/, hash);
  }
});

test('cancelling a stream stops the work and frees its blocks', async () => {
  const abort = new AbortController();
  const chunks: GenerateChunk[] = [];
  await assert.rejects(async () => {
    for await (const buf of client.stream(
      decode.address,
      'generate',
      encodeJson({ request_id: 'long', token_ids: [9, 9, 9], max_tokens: 500 }),
      { signal: abort.signal },
    )) {
      chunks.push(decodeJson<GenerateChunk>(buf));
      if (chunks.length === 2) abort.abort();
    }
  });
  let stats = await unary<WorkerStats>(decode.address, 'stats', {});
  while (stats.cancelled === 0) stats = await unary<WorkerStats>(decode.address, 'stats', {});
  assert.equal(stats.used_blocks, 0);
  assert.ok(stats.generated_tokens < 8 + 500);
});

test('generates waiting for their kv_handoff count against --max-waiting with the engine queue; the excess is refused with overloaded', {
  timeout: 60_000,
}, async () => {
  const worker = await spawnWorker([
    '--role',
    'decode',
    '--router',
    router.url,
    ...common,
    '--max-waiting',
    '2',
  ]);
  const overlapped = (id: string, timeoutMs: number) =>
    generate(worker.address, {
      request_id: id,
      token_ids: [1, 2, 3],
      max_tokens: 2,
      await_kv_handoff: { timeout_ms: timeoutMs },
    });
  const waitingCount = async () => (await unary<WorkerStats>(worker.address, 'stats', {})).handoffs_waiting;
  const untilWaiting = async (n: number) => {
    while ((await waitingCount()) < n) await sleep(20);
  };
  const tokens = (chunks: GenerateChunk[]) => chunks.flatMap((c) => c.token_ids).length;
  try {
    const first = [overlapped('q1', 30_000), overlapped('q2', 30_000)];
    for (const p of first) p.catch(() => {});
    await untilWaiting(2);
    // The queue is full: a third waiter and a plain generate are refused at once. (A third
    // waiter used to be taken, and here would fail only when its own short bound ran out.)
    const third = await remoteError(overlapped('q3', 2_000));
    assert.equal(third.remoteCode, 'overloaded', third.message);
    assert.match(third.message, /queue is full \(2 requests waiting/);
    const plain = await remoteError(
      generate(worker.address, { request_id: 'p1', token_ids: [4, 5], max_tokens: 1 }),
    );
    assert.equal(plain.remoteCode, 'overloaded', plain.message);
    // Waiters that get their handoff run (on the places they hold).
    for (const id of ['q1', 'q2']) await unary(worker.address, 'kv_handoff', { request_id: id });
    assert.deepEqual((await Promise.all(first)).map(tokens), [2, 2]);
    // Places come back when a waiter gives up (here its bound runs out): two fit again.
    const gaveUp = await remoteError(overlapped('q4', 1));
    assert.equal(gaveUp.remoteCode, 'timeout');
    const again = [overlapped('q5', 30_000), overlapped('q6', 30_000)];
    for (const p of again) p.catch(() => {});
    await untilWaiting(2);
    for (const id of ['q5', 'q6']) await unary(worker.address, 'kv_handoff', { request_id: id });
    assert.deepEqual((await Promise.all(again)).map(tokens), [2, 2]);
    assert.equal(
      tokens(await generate(worker.address, { request_id: 'p2', token_ids: [4, 5], max_tokens: 1 })),
      1,
    );
  } finally {
    worker.child.kill('SIGKILL');
  }
});

test('the handoff board holds a bounded number of unclaimed handoffs, dropping the oldest', async () => {
  const board = new KvHandoffBoard();
  try {
    // Handoffs whose generate never comes (it timed out, or was cancelled, before they arrived).
    for (let i = 0; i <= MAX_HELD_HANDOFFS; i++)
      assert.equal(board.deliver({ request_id: `orphan${i}` }), 'held');
    assert.equal(board.heldCount, MAX_HELD_HANDOFFS);
    await assert.rejects(
      board.wait('orphan0', 1),
      (err: unknown) => err instanceof KvrouteError && err.code === 'timeout',
    );
    assert.deepEqual(await board.wait(`orphan${MAX_HELD_HANDOFFS}`, 1), {
      request_id: `orphan${MAX_HELD_HANDOFFS}`,
    });
  } finally {
    board.close();
  }
});

test("a stalled kv_events subscriber is cut off by its backlog's blocks, not only its count of events", async () => {
  // Long distinct prompts: each request stores 500 blocks and evicts about as many, in two events
  // of ~45 KB of heap. A backlog counted in events held 100,000 of those (~4.5 GB) before the cut.
  const engine = new MockEngine({}, computeBlockHashes);
  const hub = new KvEventsHub(engine);
  const it = hub.subscribe({ afterEventId: 0, maxBacklog: 100_000 })[Symbol.asyncIterator]();
  await it.next(); // the (empty) replay; then the subscriber stops pulling
  let now = 0;
  for (let r = 0; r < 150 && hub.subscribers > 0; r++) {
    engine.submit(
      { id: `r${r}`, tokenIds: Array.from({ length: 8000 }, (_, i) => r * 8000 + i), maxTokens: 1 },
      now,
    );
    now = runUntilIdle(engine, now).now;
  }
  assert.ok(engine.events.lastEventId < 300, `${engine.events.lastEventId} events`);
  assert.equal(hub.subscribers, 0, 'cut off once 100,000 blocks wait');
  await assert.rejects(it.next(), (err: unknown) => err instanceof KvrouteError && err.code === 'overloaded');
});

test('a draining decode worker refuses a generate with overloaded while its in-flight streams finish, not shutting_down', {
  timeout: 60_000,
}, async () => {
  // In disaggregated serving the router picks the decode worker before the prefill leg and sends
  // the generate after it: a worker that deregistered meanwhile still gets it. Refused with
  // `shutting_down` by the closing request plane, the client got a 502 worker_error when no other
  // decode worker was left (a chaos soak); `overloaded` is the drain's answer (503, Retry-After).
  const worker = await spawnWorker(['--role', 'decode', '--router', router.url, '--drain-ms', '20000']);
  try {
    const stream = client.stream(
      worker.address,
      'generate',
      encodeJson({ request_id: 'long', token_ids: [1, 2, 3, 4, 5], max_tokens: 2000 }),
    );
    const it = stream[Symbol.asyncIterator]();
    await it.next(); // streaming (2000 steps of ~6 ms: still running below)
    worker.child.kill('SIGTERM');
    await router.waitFor(
      (c) => c.method === 'DELETE' && c.url === `/v1/workers/${router.idByAddress.get(worker.address)}`,
    );
    await sleep(200); // past the deregistration, into the drain
    const refused = await remoteError(
      generate(worker.address, { request_id: 'late', token_ids: [7, 8, 9], max_tokens: 1 }),
    );
    assert.equal(refused.remoteCode, 'overloaded', refused.message);
    await it.return?.();
  } finally {
    worker.child.kill('SIGKILL');
  }
});
