import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import { StandInRouter, spawnWorker } from './worker-helpers.js';

test('the worker exports a handle_payload span in the caller trace; control-plane calls carry no trace', async () => {
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
    // Registration and heartbeats reached the router without trace headers.
    await router.waitFor((c) => c.url.endsWith('/heartbeat'));
    assert.ok(router.calls.length >= 2);
    assert.ok(router.calls.every((c) => c.traceparent === undefined));
  } finally {
    worker.child.kill('SIGKILL');
    await client.close();
    await router.close();
  }
});
