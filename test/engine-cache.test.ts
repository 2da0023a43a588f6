import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventBlocks, KvEventLog, MockEngine } from '../src/engine/index.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEvent } from '../src/protocols/kv-events.js';
import { range, runUntilIdle } from './engine-helpers.js';

const BS = 16;

/** Replays events into the set of sequence hashes a router's index would hold. */
function applyEvents(set: Set<string>, events: readonly KvEvent[]): Set<string> {
  for (const e of events) {
    if (e.type === 'stored') for (const b of e.blocks) set.add(b.sequence_hash);
    else if (e.type === 'removed') for (const h of e.sequence_hashes) set.delete(h);
    else set.clear();
  }
  return set;
}

test('a second prompt sharing a prefix is served from cache: less prefill work, by accounting', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 64 }, computeBlockHashes);
  const shared = range(1000, 4 * BS);
  engine.submit({ id: 'a', tokenIds: [...shared, ...range(1, 8)], maxTokens: 2 }, 0);
  const first = runUntilIdle(engine);
  const a = first.outputs.find((o) => o.requestId === 'a' && o.prompt)!.prompt!.accounting;
  assert.deepEqual(a, {
    promptTokens: 72,
    cachedTokens: 0,
    transferredTokens: 0,
    installedBlocks: 0,
    computedTokens: 72,
  });

  engine.submit({ id: 'b', tokenIds: [...shared, ...range(500, 8)], maxTokens: 2 }, first.now);
  const second = runUntilIdle(engine, first.now);
  const b = second.outputs.find((o) => o.requestId === 'b' && o.prompt)!.prompt!.accounting;
  assert.equal(b.cachedTokens, 64);
  assert.equal(b.computedTokens, 8);
  const totals = engine.totals();
  assert.equal(totals.computedTokens, 80);
  assert.equal(totals.cachedTokens, 64);
  assert.equal(totals.finished, 2);
  // Both prompts' full blocks stay cached (unreferenced) after they finish; nothing is in use.
  assert.equal(engine.pool.cachedBlocks, 4);
  assert.equal(engine.pool.usedBlocks, 0);
});

test('evicting unreferenced blocks emits removed, tail first, and keeps the pool within capacity', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 8 }, computeBlockHashes);
  const seen: KvEvent[] = [];
  engine.events.subscribe((e) => seen.push(e));
  engine.submit({ id: 'a', tokenIds: range(0, 4 * BS), maxTokens: 1 }, 0);
  const first = runUntilIdle(engine);
  const stored = seen.filter((e) => e.type === 'stored').flatMap((e) => e.blocks.map((b) => b.sequence_hash));
  assert.equal(stored.length, 4);

  // 6 full blocks + 1 decode block = 7 of 8: three of a's four cached blocks must go.
  engine.submit({ id: 'b', tokenIds: range(5000, 6 * BS), maxTokens: 1 }, first.now);
  runUntilIdle(engine, first.now);
  const removed = seen.filter((e) => e.type === 'removed');
  assert.equal(removed.length, 1);
  assert.deepEqual(removed[0]!.type === 'removed' && removed[0]!.sequence_hashes, stored.slice(1).reverse());
  assert.equal(engine.pool.cachedBlocks, 7);
  assert.ok(engine.pool.usedBlocks <= 8);
});

test('the event log numbers events 1, 2, 3 and replays after an id until the ring forgets it', () => {
  const log = new KvEventLog(4);
  for (let i = 0; i < 6; i++) log.append({ type: 'removed', sequence_hashes: [String(i)] });
  assert.equal(log.lastEventId, 6);
  assert.equal(log.oldestEventId, 3);
  assert.deepEqual(
    log.since(3)!.map((e) => e.event_id),
    [4, 5, 6],
  );
  assert.deepEqual(
    log.since(2)!.map((e) => e.event_id),
    [3, 4, 5, 6],
  );
  assert.deepEqual(log.since(6), []);
  assert.equal(log.since(1), null, 'event 2 fell out of the ring');
  assert.equal(log.since(0), null);
  assert.equal(log.since(7), null, 'an id from the future means another incarnation');
});

test('the replay ring holds twice the pool in blocks by default: a subscriber further behind gets a dump', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 16 }, computeBlockHashes);
  assert.equal(engine.events.maxBlocks, 32);
  let now = 0;
  // 20 distinct prompts of 2 full blocks: 40 blocks stored, most of them evicted again.
  for (let r = 0; r < 20; r++) {
    engine.submit({ id: `r${r}`, tokenIds: range(r * 10_000, 2 * BS), maxTokens: 1 }, now);
    now = runUntilIdle(engine, now).now;
  }
  const held = engine.events.since(engine.events.oldestEventId - 1)!;
  assert.ok(held.reduce((sum, e) => sum + eventBlocks(e), 0) <= 32);
  assert.equal(engine.events.since(0), null, 'the first events fell out: a dump, not a replay');
  // Given explicitly, the budget is the caller's.
  assert.equal(
    new MockEngine({ kvBlocks: 16, eventRingBlocks: 1000 }, computeBlockHashes).events.maxBlocks,
    1000,
  );
});

test('replay from an id gives exactly the events after it, in order', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 24 }, computeBlockHashes);
  const live: KvEvent[] = [];
  engine.events.subscribe((e) => live.push(e));
  let now = 0;
  for (let r = 0; r < 6; r++) {
    engine.submit({ id: `r${r}`, tokenIds: range(r * 10_000, 5 * BS + 3), maxTokens: 2 }, now);
    now = runUntilIdle(engine, now).now;
  }
  assert.ok(live.some((e) => e.type === 'removed'));
  assert.deepEqual(
    live.map((e) => e.event_id),
    range(1, live.length),
  );
  assert.deepEqual(engine.events.since(3), live.slice(3));
  assert.deepEqual(engine.events.since(0), live);
});

test('a dump reproduces the block set that replaying every event gives', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 40 }, computeBlockHashes);
  const live: KvEvent[] = [];
  engine.events.subscribe((e) => live.push(e));
  let now = 0;
  const root = range(7, 3 * BS);
  for (let r = 0; r < 8; r++) {
    // Branching prompts: a shared root, then per-request suffixes, so the cache is a tree.
    engine.submit(
      { id: `r${r}`, tokenIds: [...root, ...range(r * 1000, (r % 3) * BS + 5)], maxTokens: 3 },
      now,
    );
    now = runUntilIdle(engine, now).now;
  }
  const dump = engine.dump();
  assert.equal(dump.asOfEventId, engine.events.lastEventId);
  assert.ok(dump.events.every((e) => e.type === 'stored' && e.event_id === dump.asOfEventId));
  assert.deepEqual(applyEvents(new Set(), dump.events), applyEvents(new Set(), live));
  // Parents come before children: every stored run's parent is already known (or it is a root).
  const known = new Set<string>();
  for (const e of dump.events) {
    assert.ok(e.type === 'stored');
    if (e.parent_hash !== null) assert.ok(known.has(e.parent_hash));
    for (const b of e.blocks) known.add(b.sequence_hash);
  }
});

test('clearing an idle cache emits cleared and empties the pool', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 16 }, computeBlockHashes);
  engine.submit({ id: 'a', tokenIds: range(0, 2 * BS), maxTokens: 1 }, 0);
  runUntilIdle(engine);
  engine.pool.clear();
  assert.equal(engine.pool.cachedBlocks, 0);
  const last = engine.events.since(engine.events.lastEventId - 1)!;
  assert.equal(last[0]!.type, 'cleared');
});

test("the default event ring is bounded in blocks, not only in events: long prompts' events stay ~100 MB", () => {
  // 8000-token prompts, all different: each request stores 500 blocks and evicts about as many,
  // two events of ~45 KB of heap each. 65,536 such events (the ring's count) would be ~3 GB.
  const engine = new MockEngine({}, computeBlockHashes);
  let now = 0;
  for (let r = 0; r < 2500; r++) {
    engine.submit({ id: `r${r}`, tokenIds: range(r * 8000, 8000), maxTokens: 1 }, now);
    now = runUntilIdle(engine, now).now;
  }
  const log = engine.events;
  const held = log.since(log.oldestEventId - 1);
  assert.ok(held !== null && held.length > 0);
  assert.equal(held.at(-1)!.event_id, log.lastEventId);
  const blocks = held.reduce((n, e) => n + eventBlocks(e), 0);
  assert.ok(blocks <= 1 << 20, `the ring holds ${blocks} blocks' worth of events`);
  assert.equal(log.since(0), null, 'what fell out is served as a dump');
});

test('the event ring drops its oldest events once they pass its block budget; the newest always stays', () => {
  const log = new KvEventLog(100, 10);
  const removed = (n: number) => ({ type: 'removed' as const, sequence_hashes: range(0, n).map(String) });
  log.append(removed(4));
  log.append(removed(4));
  assert.deepEqual([log.oldestEventId, log.lastEventId], [1, 2]);
  log.append(removed(4)); // 12 blocks: event 1 goes
  assert.equal(log.oldestEventId, 2);
  assert.equal(log.since(0), null);
  assert.deepEqual(
    log.since(1)!.map((e) => e.event_id),
    [2, 3],
  );
  log.append(removed(25)); // over the budget alone: kept, alone
  assert.equal(log.oldestEventId, 4);
  assert.deepEqual(
    log.since(3)!.map((e) => e.event_id),
    [4],
  );
  log.append(removed(1));
  assert.deepEqual(
    log.since(4)!.map((e) => e.event_id),
    [5],
  );
});
