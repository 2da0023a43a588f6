import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { context, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { MockEngine } from '../src/engine/index.js';
import { computeBlockHashes } from '../src/kv-index/index.js';
import { encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import { registerGlobalContext } from '../src/telemetry/index.js';
import { EngineDriver } from '../src/worker/engine-driver.js';
import { RouterLease } from '../src/worker/router-lease.js';
import { markersSeenByNewResources } from './trace-helpers.js';
import { StandInRouter, spawnWorker } from './worker-helpers.js';

test('the worker exports a handle_payload span in the trace of the caller', async () => {
  const router = new StandInRouter(300);
  await router.listen();
  const worker = await spawnWorker(['--role', 'both', '--router', router.url], {
    OTEL_TRACES_EXPORTER: 'console',
  });
  const client = new RequestPlaneClient();
  const traceId = '0af7651916cd43dd8448eb211c80319c';
  try {
    await client.unary(worker.address, 'health', encodeJson({}), {
      headers: { traceparent: `00-${traceId}-b7ad6b7169203331-01` },
    });
    while (!worker.stdout.join('').includes("name: 'handle_payload'")) await sleep(20);
    const out = worker.stdout.join('');
    assert.match(out, new RegExp(`traceId: '${traceId}'`));
    assert.match(
      out,
      /parentSpanId: 'b7ad6b7169203331'|parentSpanContext: \{[^}]*spanId: 'b7ad6b7169203331'/,
    );
  } finally {
    worker.child.kill('SIGKILL');
    await client.close();
    await router.close();
  }
});

test('registration and heartbeats run in the ROOT context even when started inside a request trace', async () => {
  const router = new StandInRouter(150);
  await router.listen();
  const seen: (string | undefined)[] = [];
  const lease = new RouterLease({
    routerUrl: router.url,
    registration: {
      role: 'decode',
      address: '127.0.0.1:1',
      model: 'm',
      block_size: 16,
      kv_blocks: 16,
      max_batched_tokens: 16,
    },
    fetch: (input: string | URL | Request, init?: RequestInit) => {
      seen.push(trace.getSpanContext(context.active())?.traceId);
      return fetch(input, init);
    },
  });
  registerGlobalContext();
  const requestSpan = trace.wrapSpanContext({
    traceId: '0af7651916cd43dd8448eb211c80319c',
    spanId: 'b7ad6b7169203331',
    traceFlags: 1,
  });
  context.with(trace.setSpan(ROOT_CONTEXT, requestSpan), () => lease.start());
  await router.waitFor((c) => c.url.endsWith('/heartbeat'));
  await lease.stop();
  assert.ok(seen.length >= 3, 'register, heartbeat, deregister');
  assert.deepEqual(new Set(seen), new Set([undefined]));
  await router.close();
});

test("the engine's wake-up timer is armed in the root context, not in the request that woke it", async () => {
  const driver = new EngineDriver(
    new MockEngine({ blockSize: 16, kvBlocks: 64, maxBatchedTokens: 256, speedup: 1 }, computeBlockHashes),
  );
  let outputs: AsyncIterable<unknown> | undefined;
  const seen = await markersSeenByNewResources(['Timeout'], () => {
    outputs = driver.run({ tokenIds: Array.from({ length: 40 }, (_, i) => i + 1), maxTokens: 3 });
  });
  assert.ok(seen.length > 0, 'the engine armed a timer for its next step');
  assert.deepEqual(new Set(seen.map((s) => s.marker)), new Set([undefined]));
  let n = 0;
  for await (const _ of outputs!) n++;
  assert.ok(n > 0);
  driver.close();
});
