// A router restart with real workers: the new router (same port) does not know the workers, so
// their next heartbeat gets 404 and they register again; their KV-event subscriptions start from
// event 0 and the index refills from the workers' replay, without any new request. Prefix-aware
// placement works again across the restart.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { createRouter, type RouterService } from '../src/router/service.js';
import { TestFleet, waitForWorkers, waitUntil } from './helpers/fleet.js';

const MODEL = 'mock-llm';
let router: RouterService | undefined;
let fleet: TestFleet | undefined;
after(async () => {
  await fleet?.killAll();
  await router?.close();
});

function complete(url: string, prompt: number[]) {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
  });
}

test('after a router restart the workers register again and the index refills', async () => {
  const config = { port: 0, logger: false, leaseTtlMs: 1500, maxLocalPrefill: 1_000_000 } as const;
  router = await createRouter(config);
  const url = await router.listen();
  const port = Number(new URL(url).port);
  fleet = new TestFleet(url);
  const workers = await fleet.spawn(2);
  await waitForWorkers(url, 2);

  const prefix = Array.from({ length: 20 * 16 }, (_, i) => 3000 + ((i * 53) % 30_000));
  const first = await complete(url, [...prefix, 1]);
  assert.equal(first.status, 200);
  const holderId = first.headers.get('x-kvroute-decode-worker')!;
  const holderAddress = router.registry.get(holderId)!.address;
  await waitUntil(() => (router!.index.stats().blocksPerWorker[holderId] ?? 0) >= 20, 'the prefix indexed');

  const oldIds = router.registry.list().map((w) => w.id);
  await router.close();
  router = await createRouter({ ...config, port });
  assert.equal(await router.listen(), url);
  assert.equal(router.registry.size, 0);

  const rows = await waitForWorkers(
    url,
    2,
    workers.map((w) => w.address),
  );
  const newHolder = rows.find((r) => r.address === holderAddress)!;
  // A worker heartbeating with its old id must get 404, never renew another worker's lease.
  for (const r of rows) assert.ok(!oldIds.includes(r.worker_id), `${r.worker_id} reused`);
  // The replayed events rebuild what the holder caches, with no request sent to the new router.
  await waitUntil(
    () => (router!.index.stats().blocksPerWorker[newHolder.worker_id] ?? 0) >= 20,
    'the index to refill from the replay',
  );
  assert.ok(((await router.metrics.kvEventsApplied.get()).values[0]?.value ?? 0) > 0);

  const again = await complete(url, [...prefix, 2]);
  assert.equal(again.status, 200);
  assert.equal(again.headers.get('x-kvroute-decode-worker'), newHolder.worker_id);
  const body = (await again.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } };
  assert.ok(body.usage.prompt_tokens_details.cached_tokens >= 20 * 16);
});
