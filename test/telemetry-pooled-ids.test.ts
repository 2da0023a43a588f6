// PooledIdGenerator: the SDK RandomIdGenerator's id format (lower-case hex, 32 / 16 digits, never
// all zeros), from pooled random bytes, across pool refills.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PooledIdGenerator } from '../src/telemetry/pooled-id-generator.js';
import { isValidSpanId, isValidTraceId } from '../src/telemetry/trace-context-propagator.js';

test('ids are lower-case hex of the right length, valid, and different', () => {
  const ids = new PooledIdGenerator();
  const seen = new Set<string>();
  // Enough ids to refill the pool several times, with trace and span ids interleaved.
  for (let i = 0; i < 3000; i++) {
    const traceId = ids.generateTraceId();
    const spanId = ids.generateSpanId();
    assert.match(traceId, /^[0-9a-f]{32}$/);
    assert.match(spanId, /^[0-9a-f]{16}$/);
    assert.ok(isValidTraceId(traceId) && isValidSpanId(spanId));
    seen.add(traceId);
    seen.add(spanId);
  }
  assert.equal(seen.size, 6000);
});

test('the hex digits are the pool bytes in order; a refill comes when the next id does not fit', () => {
  let fills = 0;
  const ids = new PooledIdGenerator((pool) => {
    fills++;
    for (let i = 0; i < pool.length; i++) pool[i] = (i * 37 + fills) & 0xff;
  });
  const hex = (from: number, bytes: number, fill: number) =>
    Array.from({ length: bytes }, (_, k) =>
      (((from + k) * 37 + fill) & 0xff).toString(16).padStart(2, '0'),
    ).join('');
  assert.equal(ids.generateSpanId(), hex(0, 8, 1));
  assert.equal(ids.generateTraceId(), hex(8, 16, 1));
  // 4096 bytes: 24 used, 4072 left = 509 span ids, then a trace id needs a new pool.
  for (let i = 0; i < 509; i++) ids.generateSpanId();
  assert.equal(fills, 1);
  assert.equal(ids.generateTraceId(), hex(0, 16, 2));
  assert.equal(fills, 2);
});

test('random bytes that are all zeros still make a valid id, ending in 1 as the SDK does', () => {
  const ids = new PooledIdGenerator((pool) => pool.fill(0));
  assert.equal(ids.generateTraceId(), `${'0'.repeat(31)}1`);
  assert.equal(ids.generateSpanId(), `${'0'.repeat(15)}1`);
  // The fix-up is not left behind for the next id.
  const mixed = new PooledIdGenerator((pool) => {
    pool.fill(0);
    pool[8] = 0xab;
  });
  assert.equal(mixed.generateSpanId(), `${'0'.repeat(15)}1`);
  assert.equal(mixed.generateSpanId(), `ab${'0'.repeat(14)}`);
});
