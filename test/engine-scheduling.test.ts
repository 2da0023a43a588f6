import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeStepMs, MockEngine, prefillMs, WORD_TOKEN_IDS } from '../src/engine/index.js';
import { KvrouteError } from '../src/errors.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import type { KvEvent } from '../src/protocols/kv-events.js';
import { createPolicy, seededRng } from '../src/router/scheduling/index.js';
import { range, runUntilIdle, tokensOf } from './engine-helpers.js';

const BS = 16;

test('step durations follow the prefill and decode formulas, divided by speedup', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 100, speedup: 2 }, computeBlockHashes);
  engine.submit({ id: 'a', tokenIds: range(0, 40), maxTokens: 3 }, 1000);
  assert.deepEqual(engine.tick(1000), []);
  const prefillEnd = 1000 + prefillMs(40, 2);
  assert.equal(engine.nextWakeAt(), prefillEnd);
  assert.equal(prefillMs(40, 2), (4.21e-7 * 1600 + 1.518e-2 * 40 + 16.5) / 2);

  const first = engine.tick(prefillEnd);
  assert.equal(first.length, 1, 'prefill yields the first token');
  // Decode step: 40 tokens of KV held in ceil(40/16) = 3 of 100 blocks.
  const p = 3 / 100;
  assert.equal(engine.kvUsage(), p);
  const decodeEnd = prefillEnd + decodeStepMs(p, 2);
  assert.equal(engine.nextWakeAt(), decodeEnd);
  assert.equal(decodeStepMs(p, 2), (-25.74 * p * p + 54.01 * p + 5.74) / 2);
  assert.equal(engine.tick(decodeEnd - 0.001).length, 0, 'nothing before the step ends');
  assert.equal(engine.tick(decodeEnd).length, 1);
  const { outputs } = runUntilIdle(engine, decodeEnd);
  assert.equal(outputs.at(-1)!.finishReason, 'length');
});

test('output tokens are deterministic, from the word list, and stop on max_tokens or a stop id', () => {
  const run = (stop?: number[]) => {
    const engine = new MockEngine({ blockSize: BS, kvBlocks: 100 }, computeBlockHashes);
    engine.submit({ id: 'a', tokenIds: range(3, 20), maxTokens: 30, stopTokenIds: stop }, 0);
    return runUntilIdle(engine).outputs;
  };
  const a = tokensOf(run(), 'a');
  assert.equal(a.length, 30);
  assert.deepEqual(tokensOf(run(), 'a'), a);
  assert.ok(a.every((t) => WORD_TOKEN_IDS.includes(t)));
  const stopAt = a.findIndex((t, i) => i > 0 && a.indexOf(t) === i);
  const stopped = run([a[stopAt]!]);
  assert.deepEqual(tokensOf(stopped, 'a'), a.slice(0, a.indexOf(a[stopAt]!) + 1));
  assert.equal(stopped.at(-1)!.finishReason, 'stop');
});

test('continuous batching: a newcomer joins between decode steps; max_batched_tokens chunks prefill', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 200, maxBatchedTokens: 64 }, computeBlockHashes);
  engine.submit({ id: 'a', tokenIds: range(0, 10), maxTokens: 50 }, 0);
  engine.tick(0);
  let now = engine.nextWakeAt()!;
  engine.tick(now); // a's prefill done; a decodes from here on
  engine.submit({ id: 'b', tokenIds: range(100, 150), maxTokens: 2 }, now);
  engine.tick(now); // nothing new: b waits for the step in progress to end
  assert.equal(engine.load().waiting, 1);
  now = engine.nextWakeAt()!;
  engine.tick(now);
  // b joined this step with a 63-token chunk (64 minus a's decode token).
  assert.equal(engine.load().waiting, 0);
  assert.equal(engine.load().running, 2);
  assert.equal(engine.load().active_prefill_tokens, 150);
  now = engine.nextWakeAt()!;
  engine.tick(now);
  assert.equal(engine.load().active_prefill_tokens, 150 - 63);
  const { outputs } = runUntilIdle(engine, now);
  assert.equal(tokensOf(outputs, 'b').length, 2);
  assert.equal(engine.totals().computedTokens, 160);
});

test('admission: a request waits for room; one that can never fit fails at once; the queue is bounded', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 10, maxWaiting: 1 }, computeBlockHashes);
  engine.submit({ id: 'a', tokenIds: range(0, 6 * BS), maxTokens: 10 }, 0); // 7 blocks
  engine.tick(0);
  engine.submit({ id: 'b', tokenIds: range(1000, 6 * BS), maxTokens: 10 }, 0); // 7 blocks: waits
  engine.tick(0);
  assert.deepEqual([engine.load().running, engine.load().waiting], [1, 1]);
  assert.throws(
    () => engine.submit({ id: 'c', tokenIds: range(0, 8), maxTokens: 1 }, 0),
    (err: unknown) => err instanceof KvrouteError && err.code === 'overloaded',
  );
  assert.throws(
    () => engine.submit({ id: 'huge', tokenIds: range(0, 10 * BS), maxTokens: 1 }, 0),
    (err: unknown) =>
      err instanceof KvrouteError &&
      err.code === 'context_length_exceeded' &&
      /pool holds only 10/.test(err.message),
  );
  const { outputs } = runUntilIdle(engine);
  assert.equal(tokensOf(outputs, 'a').length, 10);
  assert.equal(tokensOf(outputs, 'b').length, 10, 'b ran once a finished');
  const bFirst = outputs.findIndex((o) => o.requestId === 'b');
  const aLast = outputs.findLastIndex((o) => o.requestId === 'a');
  assert.ok(bFirst > aLast);
  assert.equal(engine.totals().rejected, 2);
});

test('reserved places share the waiting bound; a request submitted with its place is not refused; released places come back', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 10, maxWaiting: 2 }, computeBlockHashes);
  const overloaded = (err: unknown) => err instanceof KvrouteError && err.code === 'overloaded';
  const first = engine.reserveWaiting();
  const second = engine.reserveWaiting();
  assert.throws(() => engine.reserveWaiting(), overloaded);
  assert.throws(() => engine.submit({ id: 'plain', tokenIds: range(0, 8), maxTokens: 1 }, 0), overloaded);
  // A waiter that gave up: its place is free for the next request.
  second.release();
  second.release();
  engine.submit({ id: 'b', tokenIds: range(100, 8), maxTokens: 1 }, 0);
  assert.throws(() => engine.reserveWaiting(), overloaded);
  // The reserved request joins the queue on its own place even though the queue is full now.
  engine.submit({ id: 'a', tokenIds: range(0, 8), maxTokens: 1 }, 0, first);
  assert.equal(engine.load().waiting, 2);
  assert.throws(() => engine.reserveWaiting(), overloaded);
  const { outputs } = runUntilIdle(engine);
  assert.deepEqual([tokensOf(outputs, 'a').length, tokensOf(outputs, 'b').length], [1, 1]);
  // Taken over by submit, released twice: neither hands a place back twice.
  first.release();
  engine.reserveWaiting();
  engine.reserveWaiting();
  assert.throws(() => engine.reserveWaiting(), overloaded);
  assert.equal(engine.totals().rejected, 5);
});

test('cancellation stops a request at once and frees its blocks; uncomputed blocks are never announced', () => {
  const engine = new MockEngine({ blockSize: BS, kvBlocks: 50, maxBatchedTokens: 32 }, computeBlockHashes);
  const events: KvEvent[] = [];
  engine.events.subscribe((e) => events.push(e));
  engine.submit({ id: 'a', tokenIds: range(0, 8 * BS), maxTokens: 100 }, 0);
  engine.tick(0);
  engine.tick(engine.nextWakeAt()!); // first 32-token chunk done: 2 blocks stored
  assert.equal(engine.accountingOf('a')!.computedTokens, 32);
  assert.ok(engine.pool.usedBlocks > 0);
  assert.equal(engine.cancel('a'), true);
  assert.equal(engine.pool.usedBlocks, 0);
  assert.equal(engine.pool.availableBlocks, 50);
  assert.equal(engine.pool.cachedBlocks, 2, 'the computed prefix stays cached');
  const stored = events.flatMap((e) => (e.type === 'stored' ? e.blocks : []));
  assert.equal(stored.length, 2);
  const { outputs } = runUntilIdle(engine, engine.nextWakeAt() ?? 0);
  assert.deepEqual(tokensOf(outputs, 'a'), []);
  assert.equal(engine.cancel('a'), false);
  assert.equal(engine.totals().cancelled, 1);
});

test('kv_transfer: blocks are installed (stored events), not recomputed; output matches aggregated serving', () => {
  const prompt = range(42, 5 * BS + 7);
  const aggregated = new MockEngine({ blockSize: BS, kvBlocks: 100 }, computeBlockHashes);
  aggregated.submit({ id: 'x', tokenIds: prompt, maxTokens: 6 }, 0);
  const agg = runUntilIdle(aggregated).outputs;

  const prefill = new MockEngine({ blockSize: BS, kvBlocks: 100 }, computeBlockHashes);
  prefill.submit({ id: 'x', tokenIds: prompt, maxTokens: 1 }, 0);
  const pre = runUntilIdle(prefill).outputs;
  assert.equal(pre.length, 1);
  const hashes = pre[0]!.prompt!.sequenceHashes.map(String);
  assert.equal(hashes.length, 5);
  assert.equal(prefill.pool.cachedBlocks, 5, 'prefill keeps the blocks cached after answering');
  assert.equal(prefill.pool.usedBlocks, 0);

  const decode = new MockEngine({ blockSize: BS, kvBlocks: 100 }, computeBlockHashes);
  const events: KvEvent[] = [];
  decode.events.subscribe((e) => events.push(e));
  decode.submit(
    {
      id: 'x',
      tokenIds: prompt,
      maxTokens: 6,
      firstToken: pre[0]!.tokenIds[0],
      transfer: { blockSize: BS, blockHashes: hashes },
    },
    0,
  );
  const dec = runUntilIdle(decode).outputs;
  assert.deepEqual(dec[0]!.prompt!.accounting, {
    promptTokens: 87,
    cachedTokens: 0,
    transferredTokens: 80,
    installedBlocks: 5,
    computedTokens: 7,
  });
  assert.deepEqual(
    events.flatMap((e) => (e.type === 'stored' ? e.blocks.map((b) => b.sequence_hash) : [])),
    hashes,
  );
  assert.deepEqual(tokensOf(dec, 'x'), tokensOf(agg, 'x'));
  assert.equal(dec[0]!.tokenIds[0], pre[0]!.tokenIds[0], 'the remote first token is emitted first');

  assert.throws(
    () =>
      decode.submit(
        {
          id: 'y',
          tokenIds: prompt,
          maxTokens: 2,
          transfer: { blockSize: BS, blockHashes: ['1', ...hashes.slice(1)] },
        },
        0,
      ),
    /block_hashes\[0\] does not match/,
  );
  assert.throws(
    () =>
      decode.submit(
        { id: 'z', tokenIds: prompt, maxTokens: 2, transfer: { blockSize: 32, blockHashes: [] } },
        0,
      ),
    /block size/,
  );
});

test("the router's fit and the engine's admission agree on every size at the pool's edge (seeded)", () => {
  // The scheduler sends a request only to a worker whose pool holds it: a request it says fits must
  // never be refused as too large by that worker's engine, nor one it says does not fit accepted.
  const random = seededRng(53);
  for (let i = 0; i < 400; i++) {
    const blockSize = [1, 7, 16, 64][i % 4]!;
    const promptTokens = 1 + Math.floor(random() * 300);
    const maxTokens = Math.floor(random() * 100);
    const needed = Math.ceil((promptTokens + maxTokens) / blockSize);
    const kvBlocks = Math.max(1, needed - 1 + Math.floor(random() * 3));
    const decision = createPolicy({ policy: 'kv', blockSize }).select({
      candidates: [
        {
          id: 'w',
          kvBlocks,
          load: { activePrefillTokens: 0, activeDecodeBlocks: 0, activeContextBlocks: 0 },
        },
      ],
      promptTokens,
      outputTokens: maxTokens,
    });
    const engine = new MockEngine({ blockSize, kvBlocks }, computeBlockHashes);
    let admitted = true;
    try {
      engine.submit({ id: 'r', tokenIds: range(0, promptTokens), maxTokens }, 0);
    } catch (err) {
      assert.ok(err instanceof KvrouteError && err.code === 'context_length_exceeded', String(err));
      admitted = false;
    }
    const label = `${promptTokens} + ${maxTokens} tokens, blocks of ${blockSize}, pool ${kvBlocks}`;
    assert.equal(decision.outcome === 'selected', admitted, label);
    assert.equal(decision.outcome === 'selected' ? 'selected' : 'too_large', decision.outcome, label);
  }
});
