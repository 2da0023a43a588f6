import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffDelay, DEFAULT_BACKOFF } from '../src/util/backoff.js';

test('backoff doubles from the base up to the cap, with full jitter below the ceiling', () => {
  const policy = { baseMs: 100, capMs: 1000 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 10, 100].map((n) => backoffDelay(n, policy, 0.999999)),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  assert.equal(backoffDelay(3, policy, 0.5), 400);
  assert.equal(backoffDelay(3, policy, 0), 1, 'never a zero-delay spin');
  assert.ok(DEFAULT_BACKOFF.capMs >= DEFAULT_BACKOFF.baseMs);
});
