// A worker process exporting OTLP/JSON to a receiver in this test: the request plane's
// handle_payload is the child of the caller's CLIENT span, the engine phases are children of
// handle_payload, and background calls (health, kv_events) never land in a caller's trace.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { context, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { decodeJson, encodeJson, RequestPlaneClient } from '../src/tcp/index.js';
import { registerGlobalContext } from '../src/telemetry/index.js';
import { eventually, exportTo, type KvrouteProcess, OtlpReceiver, spawnKvroute } from './trace-helpers.js';
import { StandInRouter } from './worker-helpers.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('test');
const receiver = new OtlpReceiver();
const router = new StandInRouter(1000);
const client = new RequestPlaneClient({ tracer });
let worker: KvrouteProcess;
let address: string;

before(async () => {
  registerGlobalContext();
  await Promise.all([receiver.listen(), router.listen()]);
  worker = spawnKvroute(
    'worker',
    ['worker', '--role', 'both', '--router', router.url, '--speedup', '1000', '--block-size', '16'],
    exportTo(receiver.url),
  );
  address = (await worker.waitForStdout(/listening on (\S+),/))[1]!;
});

after(async () => {
  await client.close();
  await worker?.stop();
  await router.close();
  await receiver.close();
  await provider.shutdown();
});

test('generate: caller -> request_plane generate -> handle_payload -> engine.prefill, engine.decode', async () => {
  const caller = tracer.startSpan('caller');
  const { traceId } = caller.spanContext();
  const chunks: { token_ids: number[] }[] = [];
  await context.with(trace.setSpan(ROOT_CONTEXT, caller), async () => {
    const body = {
      request_id: 'r-gen',
      token_ids: Array.from({ length: 40 }, (_, i) => i + 1),
      max_tokens: 5,
    };
    for await (const c of client.stream(address, 'generate', encodeJson(body), { requestId: 'r-gen' })) {
      chunks.push(decodeJson(c));
    }
  });
  caller.end();
  await client.unary(address, 'health', encodeJson({})); // a background call, no trace of ours
  assert.equal(chunks.flatMap((c) => c.token_ids).length, 5);

  const clientSpan = exporter.getFinishedSpans().find((s) => s.name === 'request_plane generate');
  assert.ok(clientSpan);
  const held = await eventually(
    () => receiver.byTrace(traceId).filter((s) => s.name.startsWith('engine.')).length === 2,
  );
  assert.ok(held, `engine spans arrived: ${JSON.stringify(receiver.byTrace(traceId).map((s) => s.name))}`);
  const spans = receiver.byTrace(traceId);
  const handler = spans.find((s) => s.name === 'handle_payload');
  assert.ok(handler);
  assert.equal(handler.service, 'kvroute-both-worker');
  assert.equal(handler.kind, 2);
  assert.equal(handler.parentSpanId, clientSpan.spanContext().spanId);
  assert.equal(handler.attributes['kvroute.request_id'], 'r-gen');
  assert.equal(handler.attributes['kvroute.endpoint'], 'generate');
  const prefill = spans.find((s) => s.name === 'engine.prefill');
  const decode = spans.find((s) => s.name === 'engine.decode');
  assert.equal(prefill?.parentSpanId, handler.spanId);
  assert.equal(decode?.parentSpanId, handler.spanId);
  assert.equal(prefill?.attributes['kvroute.prompt_tokens'], 40);
  assert.equal(prefill?.attributes['kvroute.computed_tokens'], 40);
  assert.equal(prefill?.attributes['kvroute.cached_tokens'], 0);
  assert.equal(decode?.attributes['kvroute.output_tokens'], 5);
  assert.equal(decode?.attributes['kvroute.finish_reason'], 'length');
  assert.equal(spans.length, 3, 'nothing else in the trace');

  // The health call made outside any span starts its own trace: a root CLIENT span here, its
  // handle_payload child on the worker.
  assert.ok(
    await eventually(() => receiver.spans.some((s) => s.attributes['kvroute.endpoint'] === 'health')),
  );
  const health = receiver.spans.find((s) => s.attributes['kvroute.endpoint'] === 'health')!;
  const healthClient = exporter.getFinishedSpans().find((s) => s.name === 'request_plane health')!;
  assert.notEqual(health.traceId, traceId);
  assert.equal(healthClient.parentSpanContext, undefined);
  assert.equal(health.parentSpanId, healthClient.spanContext().spanId);
});

test('prefill (one token) has an engine.prefill span and no engine.decode; a repeat prompt shows cached tokens', async () => {
  const tokens = Array.from({ length: 64 }, (_, i) => 1000 + i);
  const traceIds: string[] = [];
  for (const id of ['p-1', 'p-2']) {
    await tracer.startActiveSpan('caller', async (caller) => {
      traceIds.push(caller.spanContext().traceId);
      await client.unary(address, 'prefill', encodeJson({ request_id: id, token_ids: tokens }), {
        requestId: id,
      });
      caller.end();
    });
  }
  const ok = await eventually(() =>
    traceIds.every((t) => receiver.byTrace(t).some((s) => s.name === 'engine.prefill')),
  );
  assert.ok(ok);
  const [first, second] = traceIds.map((t) => receiver.byTrace(t));
  for (const spans of [first!, second!]) {
    assert.deepEqual(spans.map((s) => s.name).sort(), ['engine.prefill', 'handle_payload']);
  }
  const cached = (spans: typeof first) =>
    spans!.find((s) => s.name === 'engine.prefill')!.attributes['kvroute.cached_tokens'];
  assert.equal(cached(first), 0);
  assert.equal(cached(second), 64);
});

test('SIGTERM flushes: the worker exits 0 and sent only OTLP JSON', async () => {
  const { code } = await worker.stop();
  assert.equal(code, 0);
  assert.equal(receiver.rejected, 0);
});
