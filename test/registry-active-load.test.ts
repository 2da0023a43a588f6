// Active-sequence tracking: book, first token, release; a booking lasts until its release.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ActiveLoad } from '../src/router/registry/index.js';

test('book adds load, first token releases the prefill tokens, release frees the rest', () => {
  const load = new ActiveLoad();
  const w = load.addWorker('w-1');
  assert.equal(load.book('w-1', 'r1', { prefillTokens: 300, decodeBlocks: 20, contextBlocks: 50 }), true);
  assert.equal(load.book('w-1', 'r2', { prefillTokens: 100, decodeBlocks: 7, contextBlocks: 9 }), true);
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 400, activeDecodeBlocks: 27, activeContextBlocks: 59, activeRequests: 2 },
  );
  assert.equal(load.firstToken('r1'), true);
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 100, activeDecodeBlocks: 27, activeContextBlocks: 59, activeRequests: 2 },
  );
  assert.equal(load.firstToken('r1'), true, 'a second first-token report is harmless');
  assert.equal(w.activePrefillTokens, 100);
  assert.equal(load.release('r1'), true);
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 100, activeDecodeBlocks: 7, activeContextBlocks: 9, activeRequests: 1 },
  );
  assert.equal(load.release('r2'), true);
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 0, activeDecodeBlocks: 0, activeContextBlocks: 0, activeRequests: 0 },
  );
  assert.equal(load.release('r2'), false, 'releasing twice changes nothing');
  assert.equal(load.firstToken('unknown'), false);
});

test('a request id can only be booked once while active', () => {
  const load = new ActiveLoad();
  load.addWorker('w-1');
  load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1, contextBlocks: 1 });
  assert.throws(
    () => load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1, contextBlocks: 1 }),
    /already booked/,
  );
  load.release('r1');
  assert.equal(load.book('w-1', 'r1', { prefillTokens: 1, decodeBlocks: 1, contextBlocks: 1 }), true);
});

test('booking an untracked worker is refused; negative amounts throw', () => {
  const load = new ActiveLoad();
  assert.equal(load.book('w-9', 'r1', { prefillTokens: 1, decodeBlocks: 1, contextBlocks: 1 }), false);
  load.addWorker('w-1');
  assert.throws(
    () => load.book('w-1', 'r2', { prefillTokens: -1, decodeBlocks: 1, contextBlocks: 1 }),
    /prefillTokens/,
  );
});

test('a booking lasts until its release, however long its stream runs', () => {
  // A stream still decoding 300 s after its first token used to be swept as stale by the next
  // book: its worker then looked idle while it still held the stream's KV blocks.
  const load = new ActiveLoad();
  const w = load.addWorker('w-1');
  load.book('w-1', 'long-stream', { prefillTokens: 100, decodeBlocks: 500, contextBlocks: 500 });
  load.firstToken('long-stream');
  // No call takes the time: nothing can age a booking out. Later admissions leave it alone.
  for (let i = 0; i < 3; i++) {
    load.book('w-1', `later-${i}`, { prefillTokens: 10, decodeBlocks: 1, contextBlocks: 1 });
    load.release(`later-${i}`);
  }
  assert.equal(load.workerOf('long-stream'), 'w-1');
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 0, activeDecodeBlocks: 500, activeContextBlocks: 500, activeRequests: 1 },
  );
  assert.equal(load.release('long-stream'), true);
  assert.deepEqual(
    { ...w },
    { activePrefillTokens: 0, activeDecodeBlocks: 0, activeContextBlocks: 0, activeRequests: 0 },
  );
  assert.equal(load.size, 0);
});

test('dropping a worker forgets its bookings but not other workers’', () => {
  const load = new ActiveLoad();
  load.addWorker('w-1');
  const w2 = load.addWorker('w-2');
  load.book('w-1', 'a', { prefillTokens: 5, decodeBlocks: 5, contextBlocks: 5 });
  load.book('w-2', 'b', { prefillTokens: 6, decodeBlocks: 6, contextBlocks: 6 });
  load.dropWorker('w-1');
  assert.equal(load.size, 1);
  assert.equal(load.release('a'), false);
  assert.equal(load.release('b'), true);
  assert.equal(w2.activeRequests, 0);
});
