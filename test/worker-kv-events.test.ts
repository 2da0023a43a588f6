import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyBaseLogger } from 'fastify';
import { MockEngine } from '../src/engine/index.js';
import { KvrouteError } from '../src/errors.js';
import { computeBlockHashes, RadixIndex } from '../src/kv-index/index.js';
import type { KvEvent, KvEventsChunk, KvEventsSubscribe } from '../src/protocols/kv-events.js';
import { KvEventsSubscriber } from '../src/router/kv-events/subscriber.js';
import { RouterMetrics } from '../src/router/metrics.js';
import type { Worker } from '../src/router/registry/index.js';
import { decodeJson, encodeJson, RequestPlaneClient, RequestPlaneServer } from '../src/tcp/index.js';
import { KvEventsHub, splitEvents } from '../src/worker/kv-events-stream.js';
import { range, runUntilIdle } from './engine-helpers.js';

function engineWithHistory(requests: number): MockEngine {
  const engine = new MockEngine({ blockSize: 16, kvBlocks: 64, eventRingCapacity: 4 }, computeBlockHashes);
  let now = 0;
  for (let r = 0; r < requests; r++) {
    engine.submit({ id: `r${r}`, tokenIds: range(r * 1000, 40), maxTokens: 1 }, now);
    now = runUntilIdle(engine, now).now;
  }
  return engine;
}

test('a subscription replays after the given id, then follows live events', async () => {
  const engine = engineWithHistory(3);
  const hub = new KvEventsHub(engine);
  const it = hub.subscribe({ afterEventId: 1, maxBacklog: 100 })[Symbol.asyncIterator]();
  const first = (await it.next()).value as KvEventsChunk;
  assert.equal(first.kind, 'events');
  assert.deepEqual(
    first.events.map((e) => e.event_id),
    [2, 3],
  );
  engine.submit({ id: 'live', tokenIds: range(9000, 32), maxTokens: 1 }, 1e6);
  runUntilIdle(engine, 1e6);
  const live = (await it.next()).value as KvEventsChunk;
  assert.deepEqual(
    live.events.map((e) => e.event_id),
    [4],
  );
  assert.equal(hub.subscribers, 1);
  await it.return!();
  assert.equal(hub.subscribers, 0);
});

test('an id older than the ring gets a dump first, saying so', async () => {
  const engine = engineWithHistory(6); // 6 stored events, ring of 4: ids 1 and 2 are gone
  const hub = new KvEventsHub(engine);
  const it = hub.subscribe({ afterEventId: 1, maxBacklog: 100 })[Symbol.asyncIterator]();
  const first = (await it.next()).value as KvEventsChunk;
  assert.equal(first.kind, 'dump');
  assert.ok(first.kind === 'dump' && first.as_of_event_id === 6);
  assert.equal(first.events.flatMap((e) => (e.type === 'stored' ? e.blocks : [])).length, 12);
  hub.endAll();
  assert.equal((await it.next()).done, true);
});

test('a subscriber that falls too far behind is cut off with overloaded; abort ends it too', async () => {
  const engine = engineWithHistory(0);
  const hub = new KvEventsHub(engine);
  const it = hub.subscribe({ afterEventId: 0, maxBacklog: 3 })[Symbol.asyncIterator]();
  await it.next(); // the (empty) replay
  for (let r = 0; r < 5; r++) {
    engine.submit({ id: `r${r}`, tokenIds: range(r * 1000, 20), maxTokens: 1 }, r * 1000);
    runUntilIdle(engine, r * 1000);
  }
  assert.equal(hub.subscribers, 0, 'unsubscribed as soon as it fell behind');
  await assert.rejects(it.next(), (err: unknown) => err instanceof KvrouteError && err.code === 'overloaded');

  const abort = new AbortController();
  const it2 = hub.subscribe({ afterEventId: 0, maxBacklog: 3, signal: abort.signal })[Symbol.asyncIterator]();
  await it2.next();
  const pending = it2.next();
  abort.abort();
  await assert.rejects(
    pending,
    (err: unknown) => err instanceof KvrouteError && err.code === 'client_closed',
  );
  assert.equal(hub.subscribers, 0);
});

/** Blocks an event stores or removes (the unit of the chunk budget). */
function blocksOf(events: readonly KvEvent[]): number {
  return events.reduce(
    (n, e) =>
      n + (e.type === 'stored' ? e.blocks.length : e.type === 'removed' ? e.sequence_hashes.length : 1),
    0,
  );
}

test('every chunk stays within the block budget: the replay, a dump in parts, a live backlog', async () => {
  // 6 prompts of 4 blocks each: one 4-block stored event per prompt; a budget of 6 blocks fits one.
  const engine = new MockEngine({ blockSize: 16, kvBlocks: 256, eventRingCapacity: 64 }, computeBlockHashes);
  let now = 0;
  const prompt = (r: number) => {
    engine.submit({ id: `p${r}`, tokenIds: range(r * 1000, 64), maxTokens: 1 }, now);
    now = runUntilIdle(engine, now).now;
  };
  for (let r = 0; r < 6; r++) prompt(r);
  const hub = new KvEventsHub(engine, { chunkBlocks: 6 });
  const lastId = engine.events.since(0)!.at(-1)!.event_id;

  const replay = hub.subscribe({ afterEventId: 0, maxBacklog: 100 })[Symbol.asyncIterator]();
  const replayed: KvEventsChunk[] = [];
  while (replayed.flatMap((c) => c.events).length < lastId)
    replayed.push((await replay.next()).value as KvEventsChunk);
  assert.ok(replayed.length >= 6, `the replay came in ${replayed.length} chunks`);
  for (const c of replayed) {
    assert.equal(c.kind, 'events');
    assert.ok(c.events.length === 1 || blocksOf(c.events) <= 6);
  }
  assert.deepEqual(
    replayed.flatMap((c) => c.events),
    engine.events.since(0),
  );
  await replay.return!();

  // An id from another incarnation: a dump, in parts, every part but the last saying more.
  const dumped = hub.subscribe({ afterEventId: lastId + 1000, maxBacklog: 100 })[Symbol.asyncIterator]();
  const parts: KvEventsChunk[] = [];
  for (;;) {
    const c = (await dumped.next()).value as KvEventsChunk;
    parts.push(c);
    if (c.kind !== 'dump' || c.more !== true) break;
  }
  const dump = engine.dump();
  assert.ok(parts.length > 1);
  for (const c of parts) {
    assert.ok(c.kind === 'dump' && c.as_of_event_id === dump.asOfEventId);
    assert.ok(c.events.length === 1 || blocksOf(c.events) <= 6);
  }
  assert.equal((parts.at(-1) as { more?: true }).more, undefined);
  assert.deepEqual(
    parts.flatMap((c) => c.events),
    dump.events,
  );
  await dumped.return!();

  // Live: a backlog of three prompts' events leaves in budget-sized chunks, in order.
  const live = hub.subscribe({ afterEventId: lastId, maxBacklog: 100 })[Symbol.asyncIterator]();
  assert.deepEqual(((await live.next()).value as KvEventsChunk).events, []);
  for (let r = 6; r < 9; r++) prompt(r);
  const backlog = engine.events.since(lastId)!;
  const got: KvEvent[] = [];
  while (got.length < backlog.length) {
    const c = (await live.next()).value as KvEventsChunk;
    assert.ok(c.events.length === 1 || blocksOf(c.events) <= 6);
    got.push(...c.events);
  }
  assert.deepEqual(got, backlog);
  await live.return!();
  assert.equal(hub.subscribers, 0);
});

test('splitEvents: in order, an event over the budget alone, and always at least one run', () => {
  const stored = (id: number, blocks: number): KvEvent => ({
    event_id: id,
    type: 'stored',
    parent_hash: null,
    blocks: Array.from({ length: blocks }, (_, i) => ({
      local_hash: String(i + 1),
      sequence_hash: String(id * 100 + i),
    })),
  });
  const cleared: KvEvent = { event_id: 4, type: 'cleared' };
  const events = [stored(1, 2), stored(2, 9), stored(3, 1), cleared, stored(5, 3)];
  assert.deepEqual(
    splitEvents(events, 4).map((run) => run.map((e) => e.event_id)),
    [[1], [2], [3, 4], [5]],
  );
  assert.deepEqual(splitEvents([], 4), [[]]);
  assert.equal(splitEvents(events, 100)[0], events, 'one run is the array itself');
});

test('router subscriber: a gap the worker cannot fill (the same hole on every replay) backs off', async () => {
  // A worker whose log skips an id: every subscription, from any id, answers with last + 2. The
  // first gap resubscribes at once; resubscribing again and again into the same hole must not
  // become a tight loop of subscriptions (and gap log lines) against the worker.
  const afterIds: number[] = [];
  const server = new RequestPlaneServer().handle('kv_events', async function* (req) {
    const { after_event_id = 0 } = decodeJson<KvEventsSubscribe>(req.payload);
    afterIds.push(after_event_id);
    const events: KvEvent[] = [{ event_id: after_event_id + 2, type: 'cleared' }];
    yield encodeJson({ kind: 'events', events } satisfies KvEventsChunk);
    await new Promise<void>((resolve) => req.signal.addEventListener('abort', () => resolve()));
  });
  await server.listen(0);
  const client = new RequestPlaneClient();
  const quiet = () => {};
  const log = { info: quiet, warn: quiet, error: quiet, debug: quiet } as unknown as FastifyBaseLogger;
  const worker = { id: 'w-1', address: server.address } as unknown as Worker;
  const sub = new KvEventsSubscriber(worker, {
    client,
    index: new RadixIndex(),
    metrics: new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 }),
    log,
    onUnreachable: quiet,
  });
  try {
    sub.start();
    await sleep(500);
  } finally {
    await sub.stop();
    await client.close();
    await server.close({ deadlineMs: 100 });
  }
  assert.ok(afterIds.length >= 2, 'the first gap resubscribed');
  assert.ok(afterIds.every((id) => id === 0));
  // Backing off (50 ms doubling, full jitter) allows a handful in 500 ms; a slower machine only
  // fewer. Without it: hundreds.
  assert.ok(afterIds.length <= 25, `${afterIds.length} subscriptions in 500 ms`);
});

test('router subscriber: a subscription that made progress before it failed retries at the first backoff step', async () => {
  // A worker that cuts its subscriber off (overloaded: the backlog bound) after live events, as a
  // busy router sees now and then. Progress resets the backoff, as it does for a stream the worker
  // ended; without that, every cut over the router's lifetime waited longer (up to 2 s of not
  // following the worker), though each subscription had worked.
  const afterIds: number[] = [];
  const server = new RequestPlaneServer().handle('kv_events', async function* (req) {
    const { after_event_id = 0 } = decodeJson<KvEventsSubscribe>(req.payload);
    afterIds.push(after_event_id);
    yield encodeJson({ kind: 'events', events: [] } satisfies KvEventsChunk);
    for (const id of [after_event_id + 1, after_event_id + 2]) {
      yield encodeJson({
        kind: 'events',
        events: [{ event_id: id, type: 'cleared' }],
      } satisfies KvEventsChunk);
    }
    throw new KvrouteError('overloaded', 'kv_events subscriber fell behind; resubscribe');
  });
  await server.listen(0);
  const client = new RequestPlaneClient();
  const attempts: number[] = [];
  const quiet = () => {};
  const log = {
    info: (fields: { event?: string; attempt?: number }) => {
      if (fields.event === 'kv_events_reconnect') attempts.push(fields.attempt!);
    },
    warn: quiet,
    error: quiet,
    debug: quiet,
  } as unknown as FastifyBaseLogger;
  const worker = { id: 'w-1', address: server.address } as unknown as Worker;
  const index = new RadixIndex();
  const sub = new KvEventsSubscriber(worker, {
    client,
    index,
    metrics: new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 }),
    log,
    onUnreachable: quiet,
  });
  try {
    sub.start();
    for (let waited = 0; attempts.length < 5 && waited < 20_000; waited += 25) await sleep(25);
  } finally {
    await sub.stop();
    await client.close();
    await server.close({ deadlineMs: 100 });
  }
  assert.ok(attempts.length >= 5, `${attempts.length} reconnects`);
  assert.deepEqual(attempts.slice(0, 5), [1, 1, 1, 1, 1]);
  // Each subscription resumed after the events the previous one applied.
  assert.deepEqual(afterIds.slice(0, 5), [0, 2, 4, 6, 8]);
});
