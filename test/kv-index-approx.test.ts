// ApproxIndex specifics: credits expire after the TTL (injected clock), re-credits refresh them,
// and the size budget prunes the oldest credits first, tails before prefixes.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ApproxIndex, localBlockKeys } from '../src/kv-index/index.js';
import { tokensOf } from './kv-index-helpers.js';

const keys = (tokens: number[]) => localBlockKeys(tokens, 16);

describe('ApproxIndex', () => {
  test('a credit lasts exactly one TTL; a re-credit restarts it', () => {
    let now = 1_000;
    const index = new ApproxIndex({ ttlMs: 120_000, now: () => now });
    const prompt = tokensOf(1, 6);
    index.credit('w-1', keys(prompt));
    now += 119_999;
    assert.equal(index.findMatches(keys(prompt)).get('w-1'), 6);
    // Extending the conversation re-credits the shared prefix too.
    const longer = [...prompt, ...tokensOf(2, 2)];
    index.credit('w-2', keys(prompt.slice(0, 3 * 16)));
    index.credit('w-1', keys(longer.slice(0, 4 * 16)));
    now += 1;
    const scores = index.findMatches(keys(longer));
    assert.equal(scores.get('w-1'), 4, 'blocks 4 and 5 expired, 0..3 were refreshed');
    assert.equal(scores.get('w-2'), 3);
    assert.equal(index.stats().expiredBlocks, 2);
    now += 120_000;
    assert.deepEqual(index.findMatches(keys(longer)).toMap(), new Map());
    const stats = index.stats();
    assert.equal(stats.blocks, 0);
    assert.equal(stats.nodes, 0);
    assert.equal(stats.expiredBlocks, 2 + 4 + 3);
  });

  test('over the budget, the oldest credits go first, tails before prefixes, down to 80%', () => {
    let now = 0;
    const index = new ApproxIndex({ maxBlocks: 100, now: () => now });
    const prompts = [1, 2, 3, 4].map((seed) => tokensOf(seed, 30));
    for (const [i, prompt] of prompts.entries()) {
      now += 10;
      index.credit(`w-${i}`, keys(prompt));
    }
    const stats = index.stats();
    assert.equal(stats.blocks, 80);
    assert.equal(stats.evictedBlocks, 40);
    assert.equal(stats.evictedNodes, 40);
    assert.deepEqual(stats.blocksPerWorker, { 'w-0': 0, 'w-1': 20, 'w-2': 30, 'w-3': 30 });
    assert.equal(index.findMatches(keys(prompts[1]!)).get('w-1'), 20);
    assert.equal(index.findMatches(keys(prompts[0]!)).get('w-0'), undefined);
  });

  test('removeWorker drops its credits so they never expire into a reused slot', () => {
    let now = 0;
    const index = new ApproxIndex({ ttlMs: 100, now: () => now });
    const prompt = tokensOf(5, 3);
    index.credit('old', keys(prompt));
    index.removeWorker('old');
    now = 50;
    index.credit('new', keys(prompt));
    now = 120;
    assert.equal(index.findMatches(keys(prompt)).get('new'), 3);
    assert.equal(index.stats().expiredBlocks, 0);
    now = 150;
    assert.equal(index.findMatches(keys(prompt)).get('new'), undefined);
  });

  test('rejects nonsensical options', () => {
    assert.throws(() => new ApproxIndex({ ttlMs: 0 }), RangeError);
    assert.throws(() => new ApproxIndex({ maxBlocks: 0 }), RangeError);
    assert.throws(() => new ApproxIndex({ pruneToFraction: 1.5 }), RangeError);
  });
});
