// round-robin, random and least-loaded: the policies that ignore the cache.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Candidate, createPolicy, type PolicyName, seededRng } from '../src/router/scheduling/index.js';

function worker(id: string, activePrefillTokens = 0, activeDecodeBlocks = 0): Candidate {
  return {
    id,
    kvBlocks: 1000,
    load: { activePrefillTokens, activeDecodeBlocks, activeContextBlocks: activeDecodeBlocks },
  };
}

function picks(
  name: PolicyName,
  candidates: Candidate[],
  n: number,
  overlaps?: Map<string, number>,
): string[] {
  const p = createPolicy({ policy: name, blockSize: 16, busyPrefillTokens: 1000, rng: seededRng(9) });
  return Array.from({ length: n }, () => {
    const d = p.select({ candidates, promptTokens: 64, overlaps });
    assert.equal(d.outcome, 'selected');
    return d.outcome === 'selected' ? d.worker.id : '';
  });
}

test('round-robin cycles in candidate order, whatever the cache says', () => {
  const candidates = [worker('a'), worker('b'), worker('c')];
  assert.deepEqual(picks('round-robin', candidates, 7, new Map([['c', 4]])), [
    'a',
    'b',
    'c',
    'a',
    'b',
    'c',
    'a',
  ]);
});

test('round-robin skips busy workers without losing its place', () => {
  const candidates = [worker('a'), worker('busy', 5000), worker('c')];
  assert.deepEqual(picks('round-robin', candidates, 5), ['a', 'c', 'a', 'c', 'a']);
});

test('least-loaded picks the minimum current load and ignores overlap', () => {
  const candidates = [worker('a', 160, 5), worker('b', 0, 12), worker('c', 32, 9)];
  // Loads in blocks: a 10 + 5 = 15, b 12, c 2 + 9 = 11.
  assert.deepEqual(picks('least-loaded', candidates, 3, new Map([['a', 4]])), ['c', 'c', 'c']);
});

test('least-loaded breaks ties at random', () => {
  const ids = new Set(picks('least-loaded', [worker('a', 0, 2), worker('b', 0, 2), worker('c', 0, 3)], 200));
  assert.deepEqual([...ids].sort(), ['a', 'b']);
});

test('random reaches every free worker, roughly evenly', () => {
  const counts = new Map<string, number>();
  for (const id of picks('random', [worker('a'), worker('b'), worker('c'), worker('busy', 5000)], 3000)) {
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  assert.equal(counts.get('busy'), undefined);
  for (const id of ['a', 'b', 'c']) assert.ok(Math.abs(counts.get(id)! / 3000 - 1 / 3) < 0.05, id);
});
