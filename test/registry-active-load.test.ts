// Active-sequence tracking: book, first token, release, stale expiry after 300 s.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ActiveLoad } from '../src/router/registry/index.js';

const T0 = 50_000;

test('book adds load, first token releases the prefill tokens, release frees the rest', () => {
  const load = new ActiveLoad();
  const w = load.addWorker('w-1');
  assert.equal(load.book('w-1', 'r1', { prefillTokens: 300, decodeBlocks: 20 }, T0), true);
  assert.equal(load.book('w-1', 'r2', { prefillTokens: 100, decodeBlocks: 7 }, T0), true);
  assert.deepEqual({ ...w }, { activePrefillTokens: 400, activeDecodeBlocks: 27, activeRequests: 2 });
  assert.equal(load.firstToken('r1', T0 + 10), true);
  assert.deepEqual({ ...w }, { activePrefillTokens: 100, activeDecodeBlocks: 27, activeRequests: 2 });
  assert.equal(load.firstToken('r1', T0 + 11), true, 'a second first-token report is harmless');
  assert.equal(w.activePrefillTokens, 100);
  assert.equal(load.release('r1'), true);
  assert.deepEqual({ ...w }, { activePrefillTokens: 100, activeDecodeBlocks: 7, activeRequests: 1 });
  assert.equal(load.release('r2'), true);
  assert.deepEqual({ ...w }, { activePrefillTokens: 0, activeDecodeBlocks: 0, activeRequests: 0 });
  assert.equal(load.release('r2'), false, 'releasing twice changes nothing');
  assert.equal(load.firstToken('unknown', T0), false);
});

test('a request id can only be booked once while active', () => {
  const load = new ActiveLoad();
  load.addWorker('w-1');
  load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1 }, T0);
  assert.throws(() => load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1 }, T0), /already booked/);
  load.release('r1');
  assert.equal(load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1 }, T0), true);
});

test('booking an untracked worker is refused; negative amounts throw', () => {
  const load = new ActiveLoad();
  assert.equal(load.book('w-9', 'r1', { prefillTokens: 1, decodeBlocks: 1 }, T0), false);
  load.addWorker('w-1');
  assert.throws(() => load.book('w-1', 'r2', { prefillTokens: -1, decodeBlocks: 1 }, T0), /prefillTokens/);
});

test('entries not updated for 300 s expire; a first token restarts the clock', () => {
  const load = new ActiveLoad();
  const w = load.addWorker('w-1');
  load.book('w-1', 'old', { prefillTokens: 10, decodeBlocks: 1 }, T0);
  load.book('w-1', 'refreshed', { prefillTokens: 20, decodeBlocks: 2 }, T0);
  load.book('w-1', 'young', { prefillTokens: 40, decodeBlocks: 4 }, T0 + 100_000);
  load.firstToken('refreshed', T0 + 200_000);
  assert.equal(load.sweep(T0 + 299_999), 0);
  assert.equal(load.sweep(T0 + 300_000), 1);
  assert.equal(load.workerOf('old'), undefined);
  assert.deepEqual({ ...w }, { activePrefillTokens: 40, activeDecodeBlocks: 6, activeRequests: 2 });
  assert.equal(load.sweep(T0 + 400_000), 1, 'young goes next');
  assert.equal(load.workerOf('refreshed'), 'w-1');
  assert.equal(load.sweep(T0 + 500_000), 1);
  assert.deepEqual({ ...w }, { activePrefillTokens: 0, activeDecodeBlocks: 0, activeRequests: 0 });
});

test('book sweeps stale entries lazily, a bounded number per call', () => {
  const load = new ActiveLoad({ sweepPerCall: 2 });
  load.addWorker('w-1');
  for (let i = 0; i < 5; i++) load.book('w-1', `stale-${i}`, { prefillTokens: 1, decodeBlocks: 1 }, T0);
  const later = T0 + 300_000;
  load.book('w-1', 'fresh-1', { prefillTokens: 1, decodeBlocks: 1 }, later);
  assert.equal(load.size, 4, 'two stale retired, one booked');
  load.book('w-1', 'fresh-2', { prefillTokens: 1, decodeBlocks: 1 }, later);
  load.book('w-1', 'fresh-3', { prefillTokens: 1, decodeBlocks: 1 }, later);
  assert.equal(load.size, 3);
  assert.deepEqual(
    ['fresh-1', 'fresh-2', 'fresh-3'].map((id) => load.workerOf(id)),
    ['w-1', 'w-1', 'w-1'],
  );
  assert.equal(load.loadOf('w-1')?.activeRequests, 3);
});

test('dropping a worker forgets its bookings but not other workers’', () => {
  const load = new ActiveLoad();
  load.addWorker('w-1');
  const w2 = load.addWorker('w-2');
  load.book('w-1', 'a', { prefillTokens: 5, decodeBlocks: 5 }, T0);
  load.book('w-2', 'b', { prefillTokens: 6, decodeBlocks: 6 }, T0);
  load.dropWorker('w-1');
  assert.equal(load.size, 1);
  assert.equal(load.release('a'), false);
  assert.equal(load.release('b'), true);
  assert.equal(w2.activeRequests, 0);
});
