// The contract both prefix indexes keep (the scheduler uses either through PrefixIndex): one
// suite, run against RadixIndex and ApproxIndex.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { localBlockKeys } from '../src/kv-index/index.js';
import { approxHarness, type IndexHarness, radixHarness, tokensOf } from './kv-index-helpers.js';

const keys = (tokens: number[]) => localBlockKeys(tokens, 16);

function sharedSuite(make: () => IndexHarness) {
  const h = make();
  describe(`${h.name} (PrefixIndex contract)`, () => {
    test('an empty index matches nobody', () => {
      const index = h.create();
      const scores = index.findMatches(keys(tokensOf(1, 8)));
      assert.equal(scores.longest, 0);
      assert.equal(scores.get('w-1'), undefined);
      assert.deepEqual(scores.toMap(), new Map());
      assert.equal(index.findMatches(new Uint32Array(0)).longest, 0);
      assert.deepEqual(index.stats().blocks, 0);
    });

    test('counts leading blocks only: prefix, extension, divergence', () => {
      const index = h.create();
      const prompt = tokensOf(2, 8);
      h.give(index, 'w-1', prompt);
      assert.equal(index.findMatches(keys(prompt)).get('w-1'), 8);
      assert.equal(index.findMatches(keys([...prompt, ...tokensOf(3, 4)])).get('w-1'), 8);
      assert.equal(index.findMatches(keys(prompt.slice(0, 3 * 16 + 5))).get('w-1'), 3);
      const diverged = [...prompt.slice(0, 5 * 16), ...tokensOf(4, 3)];
      assert.equal(index.findMatches(keys(diverged)).get('w-1'), 5);
      // Same later blocks after a different first block: nothing leads.
      const shifted = [...tokensOf(5, 1), ...prompt.slice(16)];
      assert.equal(index.findMatches(keys(shifted)).get('w-1'), undefined);
    });

    test('scores each worker by its own depth; branching conversations', () => {
      const index = h.create();
      const system = tokensOf(10, 6);
      const turn1 = [...system, ...tokensOf(11, 4)];
      const turn2 = [...turn1, ...tokensOf(12, 4)];
      const branch = [...system, ...tokensOf(13, 5)];
      h.give(index, 'w-1', system.slice(0, 2 * 16));
      h.give(index, 'w-2', turn2);
      h.give(index, 'w-3', branch);
      h.give(index, 'w-4', tokensOf(99, 10));
      const scores = index.findMatches(keys([...turn2, ...tokensOf(14, 2)]));
      assert.deepEqual(
        scores.toMap(),
        new Map([
          ['w-1', 2],
          ['w-2', 14],
          ['w-3', 6],
        ]),
      );
      assert.equal(scores.longest, 14);
      assert.deepEqual(
        index.findMatches(keys(branch)).toMap(),
        new Map([
          ['w-1', 2],
          ['w-2', 6],
          ['w-3', 11],
        ]),
      );
      const stats = index.stats();
      assert.equal(stats.workers, 4);
      assert.equal(stats.blocks, 2 + 14 + 11 + 10);
      assert.deepEqual(stats.blocksPerWorker, { 'w-1': 2, 'w-2': 14, 'w-3': 11, 'w-4': 10 });
      assert.equal(stats.nodes, 14 + 5 + 10);
      assert.ok(stats.approxBytes > 0);
    });

    test('100 workers on one system prompt, each with its own tail (wide holder sets)', () => {
      const index = h.create();
      const system = tokensOf(20, 12);
      for (let w = 0; w < 100; w++) h.give(index, `w-${w}`, [...system, ...tokensOf(1000 + w, 1 + (w % 7))]);
      const scores = index.findMatches(keys([...system, ...tokensOf(1037, 8)]));
      for (let w = 0; w < 100; w++)
        assert.equal(scores.get(`w-${w}`), w === 37 ? 12 + 1 + (37 % 7) : 12, `w-${w}`);
      // A subset shares a longer prefix: the still-matching set shrinks step by step.
      const long = tokensOf(30, 40);
      for (let w = 0; w < 70; w++) h.give(index, `w-${w}`, long.slice(0, (w + 1) * 16 * 0.5 + 16));
      const deep = index.findMatches(keys(long));
      for (let w = 0; w < 100; w++) {
        const expected = w < 70 ? Math.floor(((w + 1) * 16 * 0.5 + 16) / 16) : undefined;
        assert.equal(deep.get(`w-${w}`), expected, `w-${w}`);
      }
    });

    test('removeWorker forgets the worker and frees blocks only it held', () => {
      const index = h.create();
      const shared = tokensOf(40, 4);
      h.give(index, 'a', [...shared, ...tokensOf(41, 3)]);
      h.give(index, 'b', shared);
      index.removeWorker('a');
      index.removeWorker('never-seen');
      const scores = index.findMatches(keys([...shared, ...tokensOf(41, 3)]));
      assert.deepEqual(scores.toMap(), new Map([['b', 4]]));
      assert.equal(index.stats().nodes, 4);
      assert.equal(index.stats().workers, 1);
      index.removeWorker('b');
      assert.deepEqual(index.stats().nodes, 0);
      // A slot freed by removal is reused by a new worker without leaking old holdings.
      h.give(index, 'c', tokensOf(42, 2));
      assert.deepEqual(index.findMatches(keys(shared)).toMap(), new Map());
      assert.equal(index.findMatches(keys(tokensOf(42, 2))).get('c'), 2);
    });
  });
}

sharedSuite(radixHarness);
sharedSuite(approxHarness);
