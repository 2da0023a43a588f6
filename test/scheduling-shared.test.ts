// The suite every policy must pass: it chooses from the candidate set, never a busy worker,
// answers overloaded / no_workers, handles one worker, and books exactly what it costed.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvrouteError } from '../src/errors.js';
import {
  type Candidate,
  createPolicy,
  decisionError,
  POLICY_NAMES,
  type PolicyName,
  seededRng,
} from '../src/router/scheduling/index.js';

const BLOCK = 16;

function worker(id: string, activePrefillTokens = 0, activeDecodeBlocks = 0, kvBlocks = 1000): Candidate {
  return {
    id,
    kvBlocks,
    load: { activePrefillTokens, activeDecodeBlocks, activeContextBlocks: activeDecodeBlocks },
  };
}

function policy(name: PolicyName, seed = 1) {
  return createPolicy({ policy: name, blockSize: BLOCK, busyPrefillTokens: 1000, rng: seededRng(seed) });
}

for (const name of POLICY_NAMES) {
  describe(`policy ${name}: shared behaviour`, () => {
    test('always returns a candidate from the set, with one score per candidate', () => {
      const p = policy(name);
      const candidates = [worker('w-1', 10, 3), worker('w-2', 0, 9), worker('w-3', 400, 0)];
      const overlaps = new Map([['w-2', 2]]);
      const seen = new Set<string>();
      for (let i = 0; i < 60; i++) {
        const d = p.select({ candidates, promptTokens: 100, outputTokens: 20, overlaps });
        assert.equal(d.outcome, 'selected');
        if (d.outcome !== 'selected') return;
        assert.ok(candidates.includes(d.worker));
        assert.equal(d.chosen.workerId, d.worker.id);
        assert.deepEqual(
          d.candidates.map((s) => s.workerId),
          ['w-1', 'w-2', 'w-3'],
        );
        assert.equal(d.policy, name);
        seen.add(d.worker.id);
      }
      assert.ok(seen.size >= 1);
    });

    test('never chooses a busy worker (prefill tokens or decode fraction over threshold)', () => {
      const p = policy(name);
      const candidates = [
        worker('prefill-busy', 1001, 0),
        worker('free', 900, 900, 1000),
        worker('decode-busy', 0, 951, 1000),
      ];
      for (let i = 0; i < 30; i++) {
        const d = p.select({ candidates, promptTokens: 64, overlaps: new Map([['prefill-busy', 4]]) });
        assert.equal(d.outcome, 'selected');
        if (d.outcome === 'selected') assert.equal(d.worker.id, 'free');
        assert.deepEqual(
          d.candidates.map((s) => s.busy),
          [true, false, true],
        );
      }
    });

    test('every candidate busy -> overloaded with retry-after, rendered as a 503 KvrouteError', () => {
      const p = policy(name);
      const d = p.select({ candidates: [worker('a', 5000), worker('b', 0, 999, 1000)], promptTokens: 32 });
      assert.equal(d.outcome, 'overloaded');
      if (d.outcome !== 'overloaded') return;
      assert.equal(d.retryAfterSeconds, 1);
      assert.equal(d.candidates.length, 2);
      const err = decisionError(d);
      assert.ok(err instanceof KvrouteError);
      assert.equal(err.code, 'overloaded');
      assert.equal(err.status, 503);
      assert.equal(err.retryAfterSeconds, 1);
    });

    test('never chooses a worker whose KV pool cannot hold the request; none can -> too_large (400)', () => {
      const p = policy(name);
      // 100 prompt + 20 output tokens = 120 tokens: 8 blocks of 16, as the engine counts them.
      // 'small' is idle (cheapest, least loaded) but holds 7; 'exact' holds exactly 8.
      const candidates = [worker('small', 0, 0, 7), worker('exact', 10, 2, 8)];
      for (let i = 0; i < 30; i++) {
        const d = p.select({ candidates, promptTokens: 100, outputTokens: 20 });
        assert.equal(d.outcome, 'selected');
        if (d.outcome === 'selected') assert.equal(d.worker.id, 'exact');
        assert.deepEqual(
          d.candidates.map((s) => s.fits),
          [false, true],
        );
      }
      // A worker that fits but is busy: overloaded (retry later), not the small one.
      const busyBig = p.select({
        candidates: [worker('small', 0, 0, 7), worker('big', 5000, 0, 100)],
        promptTokens: 100,
        outputTokens: 20,
      });
      assert.equal(busyBig.outcome, 'overloaded');
      // No pool holds 8 blocks, busy or not: the request is too large for this model's workers.
      const d = p.select({
        candidates: [worker('a', 0, 0, 7), worker('b', 5000, 0, 5)],
        promptTokens: 100,
        outputTokens: 20,
      });
      assert.equal(d.outcome, 'too_large');
      if (d.outcome !== 'too_large') return;
      assert.equal(d.requiredBlocks, 8);
      assert.equal(d.largestKvBlocks, 7);
      assert.equal(d.candidates.length, 2);
      const err = decisionError(d, 'decode workers');
      assert.equal(err.code, 'context_length_exceeded');
      assert.equal(err.status, 400);
      assert.equal(err.retryAfterSeconds, undefined);
      assert.match(err.message, /needs 8 KV blocks of 16 tokens/);
      assert.match(err.message, /largest KV pool among the 2 decode workers holds 7/);
    });

    test('one worker is always chosen', () => {
      const p = policy(name);
      const only = worker('solo', 500, 500);
      for (let i = 0; i < 5; i++) {
        const d = p.select({ candidates: [only], promptTokens: 1 });
        assert.equal(d.outcome, 'selected');
        if (d.outcome === 'selected') assert.equal(d.worker, only);
      }
    });

    test('figures that overflow or are NaN still select a candidate from the set', () => {
      // Cost = prompt + prompt blocks at block size 1 overflows to Infinity; a NaN load makes
      // NaN cost and load. Nothing compares below +Infinity, yet a choice must be a candidate.
      const p = createPolicy({ policy: name, blockSize: 1, rng: seededRng(5) });
      const nan = worker('nan', Number.NaN, Number.NaN);
      // A pool that holds any request: only the figures are extreme here.
      const huge = worker('huge', 0, 0, Number.POSITIVE_INFINITY);
      const cases: [Candidate[], number][] = [
        [[huge], Number.MAX_VALUE],
        [[nan], 16],
        [[nan, huge], Number.MAX_VALUE],
      ];
      for (const [candidates, promptTokens] of cases) {
        const d = p.select({ candidates, promptTokens });
        assert.equal(d.outcome, 'selected');
        if (d.outcome !== 'selected') return;
        assert.ok(candidates.includes(d.worker), `chose ${String(d.worker)} from ${candidates.length}`);
        assert.equal(d.chosen.workerId, d.worker.id);
      }
      // A finite figure beats a NaN one.
      const d = p.select({ candidates: [nan, worker('fine')], promptTokens: 16 });
      if (name === 'kv' || name === 'least-loaded')
        assert.equal(d.outcome === 'selected' && d.worker.id, 'fine');
    });

    test('no candidates -> no_workers (503)', () => {
      const d = policy(name).select({ candidates: [], promptTokens: 10 });
      assert.equal(d.outcome, 'no_workers');
      assert.deepEqual(d.candidates, []);
      if (d.outcome === 'no_workers') assert.equal(decisionError(d).status, 503);
    });

    test('booking is the chosen worker’s uncached tokens, its new blocks and its whole sequence', () => {
      const p = policy(name);
      const d = p.select({
        candidates: [worker('w-1')],
        promptTokens: 70, // 4 full blocks + 6 tokens
        outputTokens: 30, // 100 tokens -> 7 blocks in all
        overlaps: new Map([['w-1', 3]]),
      });
      assert.equal(d.outcome, 'selected');
      if (d.outcome !== 'selected') return;
      assert.deepEqual(d.booking, { prefillTokens: 70 - 48, decodeBlocks: 7 - 3, contextBlocks: 7 });
    });

    test('a decision serialises with every candidate’s score and stays valid after later selects', () => {
      const p = policy(name);
      const candidates = [worker('w-1', 16, 1), worker('w-2')];
      const first = p.select({ candidates, promptTokens: 64, overlaps: new Map([['w-1', 2]]) });
      p.select({ candidates, promptTokens: 999 });
      const json = JSON.parse(JSON.stringify(first));
      assert.equal(json.policy, name);
      assert.equal(json.candidateCount, 2);
      assert.equal(json.outcome, 'selected');
      assert.deepEqual(json.candidates, first.candidates);
      assert.equal(json.candidates[0].overlapBlocks, 2);
      assert.equal(json.candidates[0].uncachedTokens, 32);
      assert.equal(json.candidates[1].uncachedTokens, 64);
    });

    test('selection books nothing: candidate load is unchanged', () => {
      const c = worker('w-1', 7, 8);
      policy(name).select({ candidates: [c], promptTokens: 100 });
      assert.deepEqual(c.load, { activePrefillTokens: 7, activeDecodeBlocks: 8, activeContextBlocks: 8 });
    });
  });
}

test('factory rejects bad configs naming the field', () => {
  assert.throws(() => createPolicy({ policy: 'kv', blockSize: 0 }), /blockSize/);
  assert.throws(() => createPolicy({ policy: 'nope' as PolicyName, blockSize: 16 }), /policy/);
  assert.throws(() => createPolicy({ policy: 'kv', blockSize: 16, temperature: -1 }), /temperature/);
  assert.throws(
    () => createPolicy({ policy: 'kv', blockSize: 16, overlapWeight: Number.NaN }),
    /overlapWeight/,
  );
});

test('factory fills defaults', () => {
  const p = createPolicy({ policy: 'kv', blockSize: 16 });
  assert.equal(p.config.overlapWeight, 1);
  assert.equal(p.config.temperature, 0);
  assert.equal(p.config.busyDecodeFraction, 0.95);
  assert.equal(p.name, 'kv');
});
