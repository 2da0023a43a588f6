import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MockEngine } from '../src/engine/index.js';
import { KvrouteError } from '../src/errors.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEventsChunk } from '../src/protocols/kv-events.js';
import { KvEventsHub } from '../src/worker/kv-events-stream.js';
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
