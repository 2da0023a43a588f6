// The worker registry: validation, ids, leases, heartbeats, removal, role and model lookups.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyBaseLogger } from 'fastify';
import { ENGINE_DEFAULTS } from '../src/engine/engine.js';
import { KvrouteError } from '../src/errors.js';
import type { RegisterWorkerRequest } from '../src/protocols/registration.js';
import { Fleet } from '../src/router/fleet/fleet.js';
import { RouterMetrics } from '../src/router/metrics.js';
import { WorkerRegistry } from '../src/router/registry/index.js';
import { createRouter } from '../src/router/service.js';
import { RequestPlaneClient } from '../src/tcp/index.js';

const T0 = 1_000_000;

function body(overrides: Partial<RegisterWorkerRequest> = {}): RegisterWorkerRequest {
  return {
    role: 'both',
    address: '127.0.0.1:9001',
    model: 'mock',
    block_size: 16,
    kv_blocks: 1024,
    max_batched_tokens: 2048,
    ...overrides,
  };
}

function rejects(registry: WorkerRegistry, b: unknown, field: string): void {
  assert.throws(
    () => registry.register(b, T0),
    (err: unknown) =>
      err instanceof KvrouteError &&
      err.code === 'invalid_request' &&
      err.status === 400 &&
      err.param === field &&
      err.message.includes(field),
  );
}

test('register validates every field and names the bad one', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  rejects(r, null, 'body');
  rejects(r, body({ role: 'router' as never }), 'role');
  for (const address of [
    '',
    'localhost',
    'localhost:0',
    'localhost:70000',
    'a b:80',
    'http://x:80',
    '::1:80',
    9001,
  ]) {
    rejects(r, body({ address: address as string }), 'address');
  }
  rejects(r, body({ model: '' }), 'model');
  rejects(r, body({ block_size: 32 }), 'block_size');
  rejects(r, body({ kv_blocks: 0 }), 'kv_blocks');
  rejects(r, body({ max_batched_tokens: 1.5 }), 'max_batched_tokens');
  rejects(r, body({ kv_events: 'yes' as never }), 'kv_events');
  assert.equal(r.size, 0);
});

test('a registration is normalised: host and port split, IPv6 unbracketed, kv_events defaulted', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  const { worker } = r.register(body({ address: '[::1]:9002', kv_events: true }), T0);
  assert.equal(worker.host, '::1');
  assert.equal(worker.port, 9002);
  assert.equal(worker.address, '[::1]:9002');
  assert.equal(worker.kvEvents, true);
  assert.equal(worker.leaseExpiresAt, T0 + 10_000);
  assert.equal(r.register(body({ address: 'worker-3.local:80' }), T0).worker.kvEvents, false);
});

test('max_batched_tokens may be left out (CONTRACT.md §2 does not list it): the engine default', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  const { max_batched_tokens: _, ...contractOnly } = body();
  assert.equal(r.register(contractOnly, T0).worker.maxBatchedTokens, ENGINE_DEFAULTS.maxBatchedTokens);
  assert.equal(r.register(body({ address: '127.0.0.1:9003' }), T0).worker.maxBatchedTokens, 2048);
  rejects(r, body({ max_batched_tokens: null as never }), 'max_batched_tokens');
});

test('ids count up and are never reused, even after removal', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  const a = r.register(body({ address: 'h:1' }), T0).worker;
  const b = r.register(body({ address: 'h:2' }), T0).worker;
  r.deregister(a.id);
  r.deregister(b.id);
  const c = r.register(body({ address: 'h:1' }), T0).worker;
  assert.deepEqual([a.id, b.id, c.id], ['w-1', 'w-2', 'w-3']);
});

test('leases expire unless a heartbeat renews them', () => {
  const r = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  const a = r.register(body({ address: 'h:1' }), T0).worker;
  const b = r.register(body({ address: 'h:2' }), T0 + 100).worker;
  assert.deepEqual(r.expire(T0 + 999), []);
  r.heartbeat(a.id, T0 + 900); // a now lives until T0 + 1900, b until T0 + 1100
  assert.deepEqual(
    r.expire(T0 + 1100).map((w) => w.id),
    [b.id],
  );
  assert.equal(r.get(b.id), undefined);
  assert.equal(r.get(a.id)?.leaseExpiresAt, T0 + 1900);
  assert.deepEqual(
    r.expire(T0 + 5000).map((w) => w.id),
    [a.id],
  );
  assert.equal(r.size, 0);
});

test('heartbeat and deregister of an unknown or expired id answer 404 worker_not_found', () => {
  const r = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  const a = r.register(body(), T0).worker;
  r.expire(T0 + 1000);
  for (const call of [
    () => r.heartbeat(a.id, T0 + 1001),
    () => r.deregister(a.id),
    () => r.heartbeat('w-99', T0),
  ]) {
    assert.throws(
      call,
      (err: unknown) => err instanceof KvrouteError && err.code === 'worker_not_found' && err.status === 404,
    );
  }
});

test('a heartbeat after the lease ran out is refused, also before the sweep removed the worker', () => {
  // The sweep runs every TTL/4 (at most 1 s): a heartbeat arriving in between renewed a lease that
  // had run out, so whether a silent worker was dropped depended on the sweep's phase.
  const r = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  const a = r.register(body(), T0).worker;
  assert.equal(r.heartbeat(a.id, T0 + 999).leaseExpiresAt, T0 + 1999);
  assert.throws(
    () => r.heartbeat(a.id, T0 + 1999),
    (err: unknown) => err instanceof KvrouteError && err.code === 'worker_not_found',
  );
  assert.deepEqual(
    r.expire(T0 + 1999).map((w) => w.id),
    [a.id],
  );
});

test('the fleet removes a worker whose late heartbeat it refuses, as lease expiry', async () => {
  // Removed as expired (its streams keep their pool), not left for its re-registration at the
  // same address to replace, which cuts every stream the live worker still serves.
  const removed: unknown[] = [];
  const log = {
    info: (fields: { event?: string; reason?: string }) =>
      fields.event === 'worker_removed' && removed.push(fields.reason),
    warn: (fields: { event?: string; reason?: string }) =>
      fields.event === 'worker_removed' && removed.push(fields.reason),
  } as unknown as FastifyBaseLogger;
  const client = new RequestPlaneClient();
  const registry = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  const metrics = new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 });
  const fleet = new Fleet({ registry, client, metrics, log, approxTtlMs: 60_000 });
  try {
    const a = fleet.register(body({ kv_events: false }), T0);
    assert.throws(
      () => fleet.heartbeat(a.id, T0 + 1000),
      (err: unknown) => err instanceof KvrouteError && err.code === 'worker_not_found',
    );
    assert.equal(registry.size, 0);
    assert.deepEqual(removed, ['lease_expired']);
  } finally {
    await fleet.close();
    await client.close();
  }
});

test('candidates by phase and model: prefill = dedicated prefill workers, decode = decode|both', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  const p = r.register(body({ role: 'prefill', address: 'h:1' }), T0).worker;
  const d = r.register(body({ role: 'decode', address: 'h:2' }), T0).worker;
  const both = r.register(body({ role: 'both', address: 'h:3' }), T0).worker;
  const other = r.register(body({ role: 'decode', address: 'h:4', model: 'other' }), T0).worker;
  assert.deepEqual(r.candidates('mock', 'prefill'), [p]);
  assert.deepEqual(r.candidates('mock', 'decode'), [d, both]);
  assert.deepEqual(r.candidates('other', 'decode'), [other]);
  assert.deepEqual(r.candidates('other', 'prefill'), []);
  assert.deepEqual(r.candidates('missing', 'decode'), []);
  assert.equal(r.candidates('mock', 'decode'), r.candidates('mock', 'decode'), 'the list is cached');
  r.deregister(both.id);
  assert.deepEqual(r.candidates('mock', 'decode'), [d]);
});

test('models lists each served model once, sorted, and drops a model with its last worker', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  r.register(body({ address: 'h:1', model: 'zeta' }), T0);
  const a = r.register(body({ address: 'h:2', model: 'alpha' }), T0).worker;
  r.register(body({ address: 'h:3', model: 'zeta' }), T0);
  assert.deepEqual(r.models(), ['alpha', 'zeta']);
  r.deregister(a.id);
  assert.deepEqual(r.models(), ['zeta']);
});

test('re-registering a live address replaces the old worker and returns it for purging', () => {
  const r = new WorkerRegistry({ blockSize: 16 });
  const first = r.register(body(), T0).worker;
  const again = r.register(body({ role: 'decode' }), T0 + 5);
  assert.equal(again.replaced, first);
  assert.equal(again.worker.id, 'w-2');
  assert.equal(r.get(first.id), undefined);
  assert.equal(r.size, 1);
  assert.deepEqual(r.candidates('mock', 'prefill'), []);
});

test('removal drops the worker’s load and bookings (deregister and expiry)', () => {
  const r = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  const a = r.register(body({ address: 'h:1' }), T0).worker;
  const b = r.register(body({ address: 'h:2' }), T0).worker;
  r.load.book(a.id, 'req-1', { prefillTokens: 100, decodeBlocks: 9, contextBlocks: 9 });
  r.load.book(b.id, 'req-2', { prefillTokens: 50, decodeBlocks: 4, contextBlocks: 4 });
  assert.equal(a.load.activePrefillTokens, 100);
  const removed = r.deregister(a.id);
  assert.equal(removed, a);
  assert.equal(r.load.loadOf(a.id), undefined);
  assert.equal(r.load.workerOf('req-1'), undefined);
  assert.equal(r.load.release('req-1'), false);
  assert.equal(r.load.book(a.id, 'req-3', { prefillTokens: 1, decodeBlocks: 1, contextBlocks: 1 }), false);
  r.heartbeat(b.id, T0);
  assert.deepEqual(
    r.expire(T0 + 1000).map((w) => w.id),
    [b.id],
  );
  assert.equal(r.load.size, 0);
});

test('the registry refuses workers beyond maxWorkers with overloaded (503)', () => {
  const r = new WorkerRegistry({ blockSize: 16, maxWorkers: 2 });
  r.register(body({ address: 'h:1' }), T0);
  r.register(body({ address: 'h:2' }), T0);
  assert.throws(
    () => r.register(body({ address: 'h:3' }), T0),
    (err: unknown) => err instanceof KvrouteError && err.code === 'overloaded' && err.status === 503,
  );
  // Replacing a live address is not growth.
  assert.equal(r.register(body({ address: 'h:2' }), T0).replaced?.id, 'w-2');
});

test('4,096 workers: lookups return every one, expiry removes them all', () => {
  const r = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 1000 });
  for (let i = 0; i < 4096; i++) {
    r.register(
      body({ address: `10.0.${i >> 8}.${i & 255}:8000`, role: i % 2 ? 'decode' : 'prefill' }),
      T0 + i,
    );
  }
  assert.equal(r.candidates('mock', 'decode').length, 2048);
  assert.equal(r.candidates('mock', 'prefill').length, 2048);
  assert.equal(r.expire(T0 + 999 + 100).length, 100);
  assert.equal(r.expire(T0 + 10_000).length, 3996);
});

test('a wall-clock step does not expire a lease its worker keeps: leases run on a monotonic clock', async () => {
  // An NTP correction or a VM resumed from a pause moves Date.now() by any amount at once. Leases
  // measured on it all ran out together on the next sweep (every live worker removed, its index
  // purged) after a step forward, and lasted an hour too long after a step back.
  const router = await createRouter({ port: 0, logger: false, leaseTtlMs: 10_000 });
  const wallClock = Date.now;
  try {
    const url = await router.listen();
    const res = await fetch(`${url}/v1/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body({ kv_events: false })),
    });
    assert.equal(res.status, 201);
    const { worker_id } = (await res.json()) as { worker_id: string };
    Date.now = () => wallClock() + 3_600_000;
    // The sweep runs every second (TTL/4, at most 1000 ms): two of them, well within the 10 s lease.
    await sleep(2_500);
    const beat = await fetch(`${url}/v1/workers/${worker_id}/heartbeat`, { method: 'POST' });
    assert.equal(beat.status, 200, 'the lease was still live');
    assert.equal(router.registry.size, 1);
    const list = (await (await fetch(`${url}/v1/workers`)).json()) as {
      data: { lease_expires_in_ms: number }[];
    };
    const left = list.data[0]!.lease_expires_in_ms;
    assert.ok(Number.isInteger(left) && left > 0 && left <= 10_000, `lease_expires_in_ms ${left}`);
  } finally {
    Date.now = wallClock;
    await router.close();
  }
});

test('GET /v1/workers reads the index statistics once per list, not once per worker', async () => {
  // Each read builds a per-worker table of every indexed worker: once per row made the list
  // O(workers²), an event-loop stall of ~1 s at 4,096 workers (heartbeats and streams waited).
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const ids: string[] = [];
    for (let i = 0; i < 64; i++) {
      const events = i % 2 === 0;
      const w = router.fleet.register(body({ address: `127.0.0.1:${20_000 + i}`, kv_events: events }), 0);
      ids.push(w.id);
    }
    await router.fleet.close(); // no subscription dials the made-up addresses
    let reads = 0;
    for (const index of [router.fleet.index, router.fleet.approx]) {
      const stats = index.stats.bind(index);
      index.stats = (() => {
        reads++;
        return stats();
      }) as typeof index.stats;
    }
    const res = await fetch(`${url}/v1/workers`);
    const list = (await res.json()) as { data: { worker_id: string; index_blocks: number }[] };
    assert.deepEqual(list.data.map((w) => w.worker_id).sort(), [...ids].sort());
    assert.ok(list.data.every((w) => w.index_blocks === 0));
    assert.ok(reads <= 2, `${reads} reads of the index statistics for 64 workers`);
  } finally {
    await router.close();
  }
});

test('a worker listening on every interface (0.0.0.0, ::) is dialled at the address it registered from', () => {
  // 0.0.0.0:port is no address to dial: a router elsewhere would reach itself, and two hosts'
  // workers on one port would register the same address and keep replacing each other.
  const r = new WorkerRegistry({ blockSize: 16 });
  const at = (address: string, peer?: string) => r.register(body({ address }), T0, peer).worker;
  assert.equal(at('0.0.0.0:9100', '10.1.2.3').address, '10.1.2.3:9100');
  assert.equal(at('0.0.0.0:9100', '10.1.2.4').address, '10.1.2.4:9100', 'another host, same port');
  assert.equal(r.size, 2, 'two workers, not one replacing the other');
  assert.equal(at('[::]:9101', '::ffff:10.1.2.5').address, '10.1.2.5:9101');
  const v6 = at('[::]:9102', 'fd00::7');
  assert.deepEqual([v6.address, v6.host, v6.port], ['[fd00::7]:9102', 'fd00::7', 9102]);
  // A concrete address is kept whoever sends it; without a peer (in-process callers) nothing changes.
  assert.equal(at('worker-3.local:9103', '10.1.2.3').address, 'worker-3.local:9103');
  assert.equal(at('0.0.0.0:9104').address, '0.0.0.0:9104');
});

test('over HTTP, a registration of 0.0.0.0:port is listed (and dialled) at the peer address', async () => {
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const res = await fetch(`${url}/v1/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body({ address: '0.0.0.0:9200' })),
    });
    assert.equal(res.status, 201, await res.clone().text());
    const list = (await (await fetch(`${url}/v1/workers`)).json()) as { data: { address: string }[] };
    assert.deepEqual(
      list.data.map((w) => w.address),
      ['127.0.0.1:9200'],
    );
  } finally {
    await router.close();
  }
});

test('over HTTP, a registration field that is deeply nested or huge is refused with 400 naming it, in a short message', async () => {
  // The rejected value is described as request.ts describes it: JSON.stringify of a deeply nested
  // array overflows the stack (a 500 for the client's mistake), and of a long string makes the
  // message its size.
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    const cases: [string, string][] = [
      [
        'block_size',
        `{"role":"both","address":"127.0.0.1:9001","model":"m","block_size":${deep},"kv_blocks":8}`,
      ],
      [
        'kv_events',
        `{"role":"both","address":"127.0.0.1:9001","model":"m","block_size":16,"kv_blocks":8,"kv_events":${deep}}`,
      ],
      ['role', `{"role":${deep}}`],
      ['address', `{"role":"both","address":${deep}}`],
      ['kv_blocks', JSON.stringify(body({ kv_blocks: 'x'.repeat(1_000_000) as never }))],
    ];
    for (const [field, text] of cases) {
      const res = await fetch(`${url}/v1/workers`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: text,
      });
      const answer = await res.text();
      assert.equal(res.status, 400, `${field}: ${answer.slice(0, 200)}`);
      const { error } = JSON.parse(answer) as { error: { code: string; param: string; message: string } };
      assert.equal(error.code, 'invalid_request');
      assert.equal(error.param, field);
      assert.ok(error.message.length < 200, `${field}: a message of ${error.message.length} characters`);
    }
  } finally {
    await router.close();
  }
});

test('heartbeat and deregister take an empty body sent with content-type: application/json', async () => {
  // A worker written elsewhere may set that header on every call; a 400 there would be retried
  // forever while its lease ran out. A route that reads a body still refuses an empty one.
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const json = { 'content-type': 'application/json' };
    const res = await fetch(`${url}/v1/workers`, {
      method: 'POST',
      headers: json,
      body: JSON.stringify(body()),
    });
    const { worker_id } = (await res.json()) as { worker_id: string };
    const beat = await fetch(`${url}/v1/workers/${worker_id}/heartbeat`, {
      method: 'POST',
      headers: json,
      body: '',
    });
    assert.equal(beat.status, 200, await beat.text());
    const gone = await fetch(`${url}/v1/workers/${worker_id}`, { method: 'DELETE', headers: json, body: '' });
    assert.equal(gone.status, 204, await gone.text());
    const empty = await fetch(`${url}/v1/completions`, { method: 'POST', headers: json, body: '' });
    assert.equal(empty.status, 400);
    assert.equal(((await empty.json()) as { error: { code: string } }).error.code, 'invalid_json');
  } finally {
    await router.close();
  }
});

test('the same worker process registering again (same instance_id) keeps its worker; another process replaces it', () => {
  // A worker whose registration answer was lost (its POST timed out after the router took it)
  // sends it again: that is no restart, and replacing it purged its index and cut its streams.
  const r = new WorkerRegistry({ blockSize: 16 });
  const first = r.register(body({ instance_id: 'proc-a' }), T0);
  const again = r.register(body({ instance_id: 'proc-a' }), T0 + 4_000);
  assert.equal(again.repeated, true);
  assert.equal(again.replaced, undefined);
  assert.equal(again.worker.id, first.worker.id);
  assert.equal(again.worker.leaseExpiresAt, T0 + 4_000 + 10_000, 'renewed');
  assert.equal(r.size, 1);
  // A restart (a new process) at the same address, or a worker without instance_id: replaced.
  const restarted = r.register(body({ instance_id: 'proc-b' }), T0 + 5_000);
  assert.equal(restarted.replaced?.id, first.worker.id);
  assert.notEqual(restarted.worker.id, first.worker.id);
  assert.equal(r.register(body(), T0 + 6_000).replaced?.id, restarted.worker.id);
  // Same process, other figures (it cannot be, but then it is not the same registration): replaced.
  const a = r.register(body({ address: '127.0.0.1:9500', instance_id: 'proc-c' }), T0);
  const changed = r.register(body({ address: '127.0.0.1:9500', instance_id: 'proc-c', kv_blocks: 2048 }), T0);
  assert.equal(changed.replaced?.id, a.worker.id);
  rejects(r, body({ instance_id: '' }), 'instance_id');
  rejects(r, body({ instance_id: 'x'.repeat(129) }), 'instance_id');
  rejects(r, { ...body(), instance_id: 7 }, 'instance_id');
});

test('over HTTP, a repeated registration answers the same worker_id and leaves one worker', async () => {
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const post = async () => {
      const res = await fetch(`${url}/v1/workers`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body({ instance_id: 'c0ffee' })),
      });
      assert.equal(res.status, 201);
      return ((await res.json()) as { worker_id: string }).worker_id;
    };
    const id = await post();
    assert.equal(await post(), id);
    const list = (await (await fetch(`${url}/v1/workers`)).json()) as { data: { worker_id: string }[] };
    assert.deepEqual(
      list.data.map((w) => w.worker_id),
      [id],
    );
  } finally {
    await router.close();
  }
});

test('a router that stalled longer than the lease keeps the workers that kept heartbeating; a silent one still expires', async () => {
  // Paused (SIGSTOP, a VM freeze) or with its event loop blocked, the router hears no heartbeat:
  // on resuming, every lease had run out, and the whole healthy fleet was dropped and re-registered
  // with its index rebuilt (seen in a fleet soak). Leases measure the workers' silence instead.
  const client = new RequestPlaneClient();
  const registry = new WorkerRegistry({ blockSize: 16, leaseTtlMs: 2000 });
  const metrics = new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 });
  const log = { info: () => {}, warn: () => {} } as unknown as FastifyBaseLogger;
  const fleet = new Fleet({ registry, client, metrics, log, approxTtlMs: 60_000, sweepIntervalMs: 250 });
  try {
    const a = fleet.register(body({ address: '127.0.0.1:9601', kv_events: false }), T0);
    const b = fleet.register(body({ address: '127.0.0.1:9602', kv_events: false }), T0);
    let t = T0;
    for (; t <= T0 + 1000; t += 250) fleet.sweep(t);
    fleet.heartbeat(a.id, t);
    // The router stalls for 4 s (twice the lease); a's heartbeat, queued meanwhile, arrives first.
    t += 4000;
    assert.equal(fleet.heartbeat(a.id, t).id, a.id, 'renewed, not 404');
    fleet.sweep(t);
    assert.ok(registry.get(b.id), 'b was heard 1 s before the stall: not expired by it');
    // Awake again, b stays silent: its lease runs out on the router's clock as usual.
    for (let i = 0; i < 12; i++) {
      t += 250;
      fleet.sweep(t);
      if (i % 4 === 0) fleet.heartbeat(a.id, t);
    }
    assert.equal(registry.get(b.id), undefined, 'b expired');
    assert.ok(registry.get(a.id));
  } finally {
    await fleet.close();
    await client.close();
  }
});

test('GET /v1/models lists the models a request can be served for: a model with only prefill workers is not one', async () => {
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const models = async () =>
      ((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);
    router.fleet.register(body({ role: 'prefill', model: 'prefill-only', address: '127.0.0.1:20101' }), 0);
    await router.fleet.close(); // no subscription dials the made-up addresses
    // A request for it would be a 503 no_workers: a client choosing from this list must not see it.
    assert.deepEqual(await models(), []);
    assert.equal((await fetch(`${url}/ready`)).status, 503);
    router.fleet.register(body({ role: 'decode', model: 'served', address: '127.0.0.1:20102' }), 0);
    router.fleet.register(body({ role: 'both', model: 'also-served', address: '127.0.0.1:20103' }), 0);
    assert.deepEqual(await models(), ['also-served', 'served']);
    assert.equal((await fetch(`${url}/ready`)).status, 200);
  } finally {
    await router.close();
  }
});

test('with --worker-token, register, heartbeat and deregister need Authorization: Bearer <token> (401 without or with another); the list stays open', async () => {
  const token = 'tok-3f9a1c7e5b2d';
  const router = await createRouter({ port: 0, logger: false, workerToken: token });
  try {
    const url = await router.listen();
    const call = (method: string, path: string, authorization?: string, payload?: unknown) =>
      fetch(`${url}${path}`, {
        method,
        headers: {
          ...(authorization === undefined ? {} : { authorization }),
          ...(payload === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
      });
    const refused = async (res: Response, what: string) => {
      const text = await res.text();
      assert.equal(res.status, 401, `${what}: ${text}`);
      assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/, what);
      const { error } = JSON.parse(text) as { error: { code: string; type: string; message: string } };
      assert.equal(error.code, 'unauthorized', what);
      assert.equal(error.type, 'authentication_error', what);
      assert.ok(!text.includes(token) && !text.includes('wrong-token'), `${what}: no token in the answer`);
    };
    const wrong = ['wrong-token', `Bearer wrong-token`, `Bearer ${token}x`, `Basic ${token}`, token];
    await refused(await call('POST', '/v1/workers', undefined, body()), 'register without a token');
    for (const authorization of wrong) {
      await refused(
        await call('POST', '/v1/workers', authorization, body()),
        `register with '${authorization}'`,
      );
    }
    assert.equal(router.registry.size, 0, 'no refused registration took effect');
    // The scheme is case-insensitive (RFC 9110).
    const ok = await call('POST', '/v1/workers', `bearer ${token}`, body());
    assert.equal(ok.status, 201, await ok.clone().text());
    const { worker_id } = (await ok.json()) as { worker_id: string };

    const beat = `/v1/workers/${worker_id}/heartbeat`;
    await refused(await call('POST', beat), 'heartbeat without a token');
    await refused(await call('POST', beat, 'Bearer wrong-token'), 'heartbeat with another token');
    assert.equal((await call('POST', beat, `Bearer ${token}`)).status, 200);

    await refused(await call('DELETE', `/v1/workers/${worker_id}`), 'deregister without a token');
    await refused(
      await call('DELETE', `/v1/workers/${worker_id}`, 'Bearer wrong-token'),
      'deregister, other token',
    );
    assert.equal(router.registry.size, 1, 'a refused deregistration removes nothing');
    // Read-only, like /metrics: open without a token.
    const list = await call('GET', '/v1/workers');
    assert.equal(list.status, 200);
    assert.equal(((await list.json()) as { data: unknown[] }).data.length, 1);
    assert.equal((await call('DELETE', `/v1/workers/${worker_id}`, `Bearer ${token}`)).status, 204);
    assert.equal(router.registry.size, 0);
  } finally {
    await router.close();
  }
});

test('without --worker-token the control plane is open to workers that send no token, and refuses one that sends a Bearer token (it could not be called)', async () => {
  const router = await createRouter({ port: 0, logger: false });
  try {
    const url = await router.listen();
    const post = (headers: Record<string, string>, address: string) =>
      fetch(`${url}/v1/workers`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify(body({ address })),
      });
    // No token, or an Authorization of another scheme (a proxy's): registered, renewed.
    for (const [i, headers] of (
      [{}, { authorization: 'Basic dXNlcjpwdw==' }] as Record<string, string>[]
    ).entries()) {
      const res = await post(headers, `127.0.0.1:${9300 + i}`);
      assert.equal(res.status, 201, await res.clone().text());
      const { worker_id } = (await res.json()) as { worker_id: string };
      assert.equal((await fetch(`${url}/v1/workers/${worker_id}/heartbeat`, { method: 'POST' })).status, 200);
    }
    assert.equal(router.registry.size, 2);
    // A worker with a token serves its request plane only to callers with that token: this router
    // has none, so it could list the worker and never call it. Before, it was registered (201).
    for (const authorization of ['Bearer tok-1', 'bearer tok-1']) {
      const res = await post({ authorization }, '127.0.0.1:9310');
      assert.equal(res.status, 401);
      const text = await res.text();
      assert.match(text, /"code":"unauthorized"/);
      assert.match(text, /this router has no worker token, so it cannot call a worker that requires one/);
      assert.ok(!text.includes('tok-1'), 'the token is not quoted');
    }
    const [listed] = router.registry.list();
    const beat = await fetch(`${url}/v1/workers/${listed!.id}/heartbeat`, {
      method: 'POST',
      headers: { authorization: 'Bearer tok-1' },
    });
    assert.equal(beat.status, 401);
    assert.equal(router.registry.size, 2);
  } finally {
    await router.close();
  }
});

test('a worker token that cannot travel in an HTTP header is refused at start, without quoting it', async () => {
  for (const workerToken of ['has space', 'caf\u00e9', 'line\nbreak']) {
    await assert.rejects(createRouter({ port: 0, logger: false, workerToken }), (err: Error) => {
      assert.match(err.message, /--worker-token \(KVROUTE_WORKER_TOKEN\): must be visible ASCII/);
      assert.ok(!err.message.includes(workerToken));
      return true;
    });
  }
});

// Outlier ejection (worker-health.ts): a worker that keeps failing is taken out of routing.

test('failures in a row eject a worker from its candidates; a success between them resets the count', () => {
  const r = new WorkerRegistry({ blockSize: 16, health: { failuresToEject: 3, baseEjectionMs: 1000 } });
  const a = r.register(body({ address: '127.0.0.1:9001' }), T0).worker;
  const b = r.register(body({ address: '127.0.0.1:9002' }), T0).worker;
  const ids = () => r.candidates('mock', 'decode').map((w) => w.id);
  assert.deepEqual(r.recordFailure(a.id, T0), { kind: 'counted', failures: 1 });
  r.recordFailure(a.id, T0);
  r.recordSuccess(a.id);
  assert.deepEqual(r.recordFailure(a.id, T0), { kind: 'counted', failures: 1 }, 'the success reset it');
  r.recordFailure(a.id, T0);
  assert.deepEqual(r.recordFailure(a.id, T0 + 5), { kind: 'ejected', failures: 3, forMs: 1000 });
  assert.deepEqual(ids(), [b.id]);
  assert.deepEqual(r.health.view(a.id, T0 + 505), {
    consecutiveFailures: 0,
    ejectedForMs: 500,
    onProbation: false,
  });
  // Calls begun before the ejection that end now change nothing: it is out already.
  assert.deepEqual(r.recordFailure(a.id, T0 + 10), { kind: 'counted', failures: 0 });
  r.recordSuccess(a.id);
  assert.deepEqual(ids(), [b.id], 'an old stream succeeding does not end the ejection');
  assert.deepEqual(r.reinstateDue(T0 + 1004), []);
  assert.deepEqual(
    r.reinstateDue(T0 + 1005).map((w) => w.id),
    [a.id],
  );
  assert.deepEqual(ids(), [a.id, b.id]);
  // On probation, and GET /v1/workers says so: it looked like any healthy worker (0/0).
  assert.deepEqual(r.health.view(a.id, T0 + 1005), {
    consecutiveFailures: 0,
    ejectedForMs: 0,
    onProbation: true,
  });
  r.recordSuccess(a.id);
  assert.equal(r.health.view(a.id, T0 + 1006).onProbation, false);
});

test('back from an ejection a worker is on probation: one failure ejects it for twice as long (capped), one success clears it', () => {
  const r = new WorkerRegistry({
    blockSize: 16,
    health: { failuresToEject: 2, baseEjectionMs: 1000, maxEjectionMs: 3000 },
  });
  const a = r.register(body({ address: '127.0.0.1:9001' }), T0).worker;
  r.register(body({ address: '127.0.0.1:9002' }), T0);
  let now = T0;
  const ejectOnce = (failures: number) => {
    let verdict = r.recordFailure(a.id, now);
    for (let i = 1; i < failures; i++) verdict = r.recordFailure(a.id, now);
    assert.equal(verdict?.kind, 'ejected');
    const forMs = verdict?.kind === 'ejected' ? verdict.forMs : 0;
    now += forMs;
    assert.equal(r.reinstateDue(now).length, 1);
    return forMs;
  };
  assert.equal(ejectOnce(2), 1000);
  assert.equal(ejectOnce(1), 2000, 'on probation one failure is enough');
  assert.equal(ejectOnce(1), 3000, 'capped');
  assert.equal(ejectOnce(1), 3000);
  r.recordSuccess(a.id);
  assert.deepEqual(r.recordFailure(a.id, now), { kind: 'counted', failures: 1 }, 'a success ends probation');
  assert.equal(ejectOnce(1), 1000, 'and forgets past ejections');
});

test('the last decode-capable worker of a model in routing is never ejected; the last prefill worker is; with failuresToEject 0 none is', () => {
  const r = new WorkerRegistry({ blockSize: 16, health: { failuresToEject: 2 } });
  const decode = r.register(body({ address: '127.0.0.1:9001', role: 'decode' }), T0).worker;
  const prefill = r.register(body({ address: '127.0.0.1:9002', role: 'prefill' }), T0).worker;
  const other = r.register(body({ address: '127.0.0.1:9003', role: 'decode', model: 'other' }), T0).worker;
  for (const w of [decode, other]) {
    r.recordFailure(w.id, T0);
    assert.deepEqual(r.recordFailure(w.id, T0), { kind: 'kept_last', failures: 2 }, w.role);
  }
  assert.equal(r.candidates('mock', 'decode').length, 1);
  // Without a prefill worker prefill is local: no reason to keep waiting out a hung one's timeouts
  // (before, kept as the last of its role).
  r.recordFailure(prefill.id, T0);
  assert.equal(r.recordFailure(prefill.id, T0)?.kind, 'ejected');
  assert.equal(r.candidates('mock', 'prefill').length, 0);
  // Another decode worker of the model joins: the failing one can go now.
  r.register(body({ address: '127.0.0.1:9004', role: 'both' }), T0);
  assert.equal(r.recordFailure(decode.id, T0)?.kind, 'ejected');
  assert.deepEqual(
    r.candidates('mock', 'decode').map((w) => w.address),
    ['127.0.0.1:9004'],
  );
  // Removal forgets the record; an unknown worker has none.
  r.deregister(decode.id);
  assert.equal(r.health.ejectedCount, 1, 'the prefill worker');
  assert.equal(r.recordFailure(decode.id, T0), undefined);

  const never = new WorkerRegistry({ blockSize: 16, health: { failuresToEject: 0 } });
  const n = never.register(body({ address: '127.0.0.1:9001' }), T0).worker;
  never.register(body({ address: '127.0.0.1:9002' }), T0);
  for (let i = 0; i < 50; i++) assert.equal(never.recordFailure(n.id, T0)?.kind, 'counted');
  assert.equal(never.candidates('mock', 'decode').length, 2);
});

test('when the healthy decode workers leave, an ejected one is a candidate again: the model is never left without one', () => {
  // Before: the last-worker rule held only at ejection time; the other worker deregistering then
  // left the healthy-again ejected one out of routing, and every request got 503 no_workers (and
  // /ready said none registered) for the rest of its ejection, up to 5 minutes.
  const r = new WorkerRegistry({ blockSize: 16, health: { failuresToEject: 1, baseEjectionMs: 60_000 } });
  const a = r.register(body({ address: '127.0.0.1:9001' }), T0).worker;
  const b = r.register(body({ address: '127.0.0.1:9002' }), T0).worker;
  assert.equal(r.recordFailure(a.id, T0)?.kind, 'ejected');
  assert.deepEqual(
    r.candidates('mock', 'decode').map((w) => w.id),
    [b.id],
  );
  r.deregister(b.id);
  assert.deepEqual(
    r.candidates('mock', 'decode').map((w) => w.id),
    [a.id],
  );
  assert.ok(r.health.isEjected(a.id), 'still ejected: the healthy one is preferred as soon as one joins');
  const c = r.register(body({ address: '127.0.0.1:9003' }), T0).worker;
  assert.deepEqual(
    r.candidates('mock', 'decode').map((w) => w.id),
    [c.id],
  );
});

test("the fleet charges a call's failure to the worker it was sent to, not to a successor at the same address", async () => {
  // The streams a replaced worker's pool cuts fail after its successor registered at the same
  // address; charged by address, a restart under load could eject the fresh worker at once.
  const events: string[] = [];
  const log = {
    info: (fields: { event?: string }) => events.push(String(fields.event)),
    warn: (fields: { event?: string }) => events.push(String(fields.event)),
  } as unknown as FastifyBaseLogger;
  const client = new RequestPlaneClient();
  const registry = new WorkerRegistry({ blockSize: 16, health: { failuresToEject: 2 } });
  const metrics = new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 });
  const fleet = new Fleet({ registry, client, metrics, log, approxTtlMs: 60_000 });
  try {
    fleet.register(body({ address: '127.0.0.1:9001', kv_events: false }), T0);
    const old = fleet.register(body({ address: '127.0.0.1:9002', kv_events: false }), T0);
    const successor = fleet.register(
      body({ address: '127.0.0.1:9002', kv_events: false, kv_blocks: 2048 }),
      T0,
    );
    assert.notEqual(successor.id, old.id);
    for (let i = 0; i < 3; i++) fleet.recordCall(old.id, new Error('cut with its pool'), T0);
    assert.deepEqual(registry.health.view(successor.id, T0), {
      consecutiveFailures: 0,
      ejectedForMs: 0,
      onProbation: false,
    });
    assert.ok(!events.includes('worker_ejected'));
    // Its own failures do count.
    fleet.recordCall(successor.id, new Error('timeout'), T0);
    fleet.recordCall(successor.id, new Error('timeout'), T0);
    assert.ok(registry.health.isEjected(successor.id));
    assert.ok(events.includes('worker_ejected'));
  } finally {
    await fleet.close();
    await client.close();
  }
});
