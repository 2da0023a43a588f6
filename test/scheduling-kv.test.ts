// The kv policy: cache affinity, load spreading, random tie-breaks, softmax sampling, and the
// admission path through the registry.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WorkerRegistry } from '../src/router/registry/index.js';
import {
  type Candidate,
  createPolicy,
  decodeOverlapWeight,
  type SchedulerConfig,
  seededRng,
} from '../src/router/scheduling/index.js';

const BLOCK = 16;

function worker(id: string, activePrefillTokens = 0, activeDecodeBlocks = 0): Candidate {
  return {
    id,
    kvBlocks: 10_000,
    load: { activePrefillTokens, activeDecodeBlocks, activeContextBlocks: activeDecodeBlocks },
  };
}

function kv(extra: Partial<SchedulerConfig> = {}, seed = 7) {
  return createPolicy({ policy: 'kv', blockSize: BLOCK, rng: seededRng(seed), ...extra });
}

function chosenId(d: ReturnType<ReturnType<typeof kv>['select']>): string {
  assert.equal(d.outcome, 'selected');
  return d.outcome === 'selected' ? d.worker.id : '';
}

test('equal loads: the worker holding the most prompt blocks wins', () => {
  const candidates = [worker('a'), worker('b'), worker('c')];
  const overlaps = new Map([
    ['a', 1],
    ['b', 5],
    ['c', 3],
  ]);
  for (let seed = 0; seed < 20; seed++) {
    assert.equal(chosenId(kv({}, seed).select({ candidates, promptTokens: 128, overlaps })), 'b');
  }
});

test('cost breakdown follows overlapWeight × prefillBlocks + decodeBlocks', () => {
  const d = kv({ overlapWeight: 2 }).select({
    candidates: [worker('a', 32, 10), worker('b')],
    promptTokens: 100, // 6 full blocks + 4 tokens
    outputTokens: 28, // 128 tokens = 8 blocks in all
    overlaps: new Map([['a', 4]]),
  });
  const [a, b] = d.candidates;
  assert.deepEqual(a, {
    workerId: 'a',
    overlapBlocks: 4,
    cachedTokens: 64,
    uncachedTokens: 36,
    newBlocks: 4,
    prefillBlocks: (32 + 36) / 16,
    decodeBlocks: 14,
    cost: 2 * ((32 + 36) / 16) + 14,
    load: 32 / 16 + 10,
    busy: false,
    fits: true,
  });
  assert.equal(b!.cost, 2 * (100 / 16) + 8);
  assert.equal(d.overlapWeight, 2);
});

test('an overlap larger than the prompt’s full blocks is clamped', () => {
  const d = kv().select({ candidates: [worker('a')], promptTokens: 40, overlaps: new Map([['a', 9]]) });
  assert.equal(d.candidates[0]!.overlapBlocks, 2);
  assert.equal(d.candidates[0]!.uncachedTokens, 8);
});

test('load spreads: a saturated cache holder loses to an idle worker once its load costs more', () => {
  const overlaps = new Map([['holder', 6]]);
  const request = { promptTokens: 128, overlaps };
  // Idle holder: 2 uncached blocks + 2 new blocks = 4, against 8 + 8 = 16 for the idle other.
  assert.equal(
    chosenId(kv().select({ ...request, candidates: [worker('holder'), worker('other')] })),
    'holder',
  );
  // 320 tokens queued for prefill on the holder: (320 + 32) / 16 + 2 = 24 > 16.
  assert.equal(
    chosenId(kv().select({ ...request, candidates: [worker('holder', 320), worker('other')] })),
    'other',
  );
  // Decode blocks saturate it the same way: 2 + 2 + 13 = 17 > 16.
  assert.equal(
    chosenId(kv().select({ ...request, candidates: [worker('holder', 0, 13), worker('other')] })),
    'other',
  );
});

test('overlap weight is per call: at 0 the prefill term vanishes, only blocks held count', () => {
  const candidates = [worker('holder', 480, 0), worker('other', 0, 3)];
  const request = { candidates, promptTokens: 128, overlaps: new Map([['holder', 6]]) };
  // Weight 1: holder (480 + 32) / 16 + 2 = 34, other 8 + 11 = 19 -> other.
  assert.equal(chosenId(kv().select(request)), 'other');
  // Weight 0: holder 0 + 2 = 2, other 3 + 8 = 11 -> holder.
  const d = kv().select({ ...request, overlapWeight: 0 });
  assert.equal(chosenId(d), 'holder');
  assert.equal(d.overlapWeight, 0);
});

test('ties break at random over exactly the tied set', () => {
  const candidates = [worker('a'), worker('b'), worker('c', 0, 1)];
  const p = kv({}, 42);
  const counts = new Map<string, number>();
  for (let i = 0; i < 400; i++) {
    const id = chosenId(p.select({ candidates, promptTokens: 64 }));
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  assert.equal(counts.get('c'), undefined, 'the dearer worker is never chosen');
  assert.ok((counts.get('a') ?? 0) > 120, `a chosen ${counts.get('a')} times`);
  assert.ok((counts.get('b') ?? 0) > 120, `b chosen ${counts.get('b')} times`);
});

test('same seed, same choices', () => {
  const candidates = [worker('a'), worker('b'), worker('c')];
  const run = () => Array.from({ length: 50 }, () => chosenId(p.select({ candidates, promptTokens: 64 })));
  let p = kv({}, 3);
  const first = run();
  p = kv({}, 3);
  assert.deepEqual(run(), first);
});

test('softmax: non-best workers are picked in proportion to exp(-normalised cost / T)', () => {
  const temperature = 0.5;
  const p = kv({ temperature }, 11);
  // Costs 8, 12, 16 (prompt 128 = 8 blocks; extra decode blocks 0, 4, 8).
  const candidates = [worker('a'), worker('b', 0, 4), worker('c', 0, 8)];
  const costs = [8, 12, 16];
  const weights = costs.map((c) => Math.exp(-(c - 8) / 8 / temperature));
  const total = weights.reduce((x, y) => x + y, 0);
  const trials = 20_000;
  const counts = [0, 0, 0];
  for (let i = 0; i < trials; i++) {
    const d = p.select({ candidates, promptTokens: 128 });
    assert.equal(d.outcome, 'selected');
    if (d.outcome === 'selected') counts[candidates.indexOf(d.worker)]! += 1;
  }
  for (let k = 0; k < 3; k++) {
    const expected = weights[k]! / total;
    const observed = counts[k]! / trials;
    // 20k draws: binomial sd <= 0.0036; 0.02 is > 5 sd.
    assert.ok(
      Math.abs(observed - expected) < 0.02,
      `worker ${k}: observed ${observed}, expected ${expected}`,
    );
  }
  assert.ok(counts[1]! > 0 && counts[2]! > 0, 'non-best workers are picked sometimes');
});

test('softmax with equal costs is uniform, and never picks a busy worker', () => {
  const p = kv({ temperature: 1, busyPrefillTokens: 100 }, 5);
  const candidates = [worker('a'), worker('b'), worker('busy', 101)];
  const counts = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const id = chosenId(p.select({ candidates, promptTokens: 64 }));
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  assert.equal(counts.get('busy'), undefined);
  assert.ok(Math.abs(counts.get('a')! / 3000 - 0.5) < 0.05);
});

test('decode weight: 0 unless a decode candidate holds part of the prompt', () => {
  const candidates = [worker('a'), worker('b')];
  assert.equal(decodeOverlapWeight(candidates, undefined, 1.5), 0);
  assert.equal(decodeOverlapWeight(candidates, new Map([['elsewhere', 3]]), 1.5), 0);
  assert.equal(decodeOverlapWeight(candidates, new Map([['b', 1]]), 1.5), 1.5);
});

/** A registry with two idle `both` workers of model `m`, each with a pool of `kvBlocks`. */
function twoWorkerRegistry(kvBlocks: number): WorkerRegistry {
  const registry = new WorkerRegistry({ blockSize: BLOCK });
  for (const port of [1, 2]) {
    registry.register(
      {
        role: 'both',
        address: `h:${port}`,
        model: 'm',
        block_size: BLOCK,
        kv_blocks: kvBlocks,
        max_batched_tokens: 4096,
      },
      0,
    );
  }
  return registry;
}

test('admission path: registry workers are candidates, booked load steers the next decision', () => {
  const registry = twoWorkerRegistry(4096);
  const p = kv({}, 1);
  const request = () => ({
    candidates: registry.candidates('m', 'decode'),
    promptTokens: 256,
    outputTokens: 64,
  });
  const first = p.select(request());
  assert.equal(first.outcome, 'selected');
  if (first.outcome !== 'selected') return;
  registry.load.book(first.worker.id, 'r1', first.booking);
  assert.deepEqual(first.booking, { prefillTokens: 256, decodeBlocks: 20, contextBlocks: 20 });
  const second = p.select(request());
  assert.equal(second.outcome, 'selected');
  if (second.outcome !== 'selected') return;
  assert.notEqual(second.worker.id, first.worker.id, 'the idle worker is now cheaper');
  registry.deregister(first.worker.id);
  assert.equal(registry.load.release('r1'), false, 'its booking went with it');
});

test('many requests sharing one long prefix spread out: the holder counts the whole context its running sequences read', () => {
  // Before: a cache hit booked only its new blocks, so the holder of a 64-block prefix looked
  // nearly idle with any number of such requests running (its cost grew 2 blocks per request
  // against the other worker's 130), and took 64 of them before the idle worker got one.
  const registry = twoWorkerRegistry(100_000);
  const [holder, idle] = registry.candidates('m', 'decode');
  const p = kv({}, 1);
  const placed: string[] = [];
  for (let i = 0; i < 8; i++) {
    const d = p.select({
      candidates: registry.candidates('m', 'decode'),
      promptTokens: 64 * BLOCK,
      outputTokens: 32,
      overlaps: new Map([[holder!.id, 64]]),
    });
    assert.equal(d.outcome, 'selected');
    if (d.outcome !== 'selected') return;
    registry.load.book(d.worker.id, `r${i}`, d.booking);
    placed.push(d.worker.id);
  }
  // The holder's two running sequences read 132 blocks a step: as dear as prefilling elsewhere.
  assert.deepEqual(placed.slice(0, 2), [holder!.id, holder!.id]);
  assert.ok(placed.includes(idle!.id), placed.join(' '));
  assert.equal(
    registry.load.loadOf(holder!.id)!.activeDecodeBlocks,
    2 * placed.filter((w) => w === holder!.id).length,
  );
});
