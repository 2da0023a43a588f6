// Trace propagation across the request plane: the caller's active context at call time travels in
// the frame headers, and the handler (and every step of its async iterable) runs inside a
// `handle_payload` SERVER span parented by it, even when many contexts share one pooled socket.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { decodeJson, encodeJson, RequestPlaneClient, RequestPlaneServer } from '../src/tcp/index.js';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('test');
const server = new RequestPlaneServer();
const client = new RequestPlaneClient({ maxConnectionsPerAddress: 1 });

interface Seen {
  traceparent: string | undefined;
  requestId: string | undefined;
  /** Trace id of the active span in the handler and at each step of its iterable. */
  activeTraceIds: string[];
}

before(async () => {
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  server.handle('whoami', async function* (req) {
    const active = () => trace.getActiveSpan()?.spanContext().traceId ?? 'none';
    const seen: Seen = {
      traceparent: req.headers.traceparent,
      requestId: req.requestId,
      activeTraceIds: [active()],
    };
    for (let i = 0; i < 3; i++) {
      await sleep(Math.random() * 5); // interleave with the other streams on the socket
      seen.activeTraceIds.push(active());
      yield encodeJson(seen);
    }
  });
  server.handle('fails', async () => {
    throw new Error('handler broke');
  });
  await server.listen();
});

after(async () => {
  await client.close();
  await server.close({ deadlineMs: 500 });
  await provider.shutdown();
  trace.disable();
  context.disable();
  propagation.disable();
});

test('a call made inside a span arrives with its traceparent; the handler span is its child', async () => {
  exporter.reset();
  const caller = tracer.startSpan('caller');
  const { traceId, spanId } = caller.spanContext();
  const answer = await context.with(trace.setSpan(context.active(), caller), () =>
    client.unary(server.address, 'whoami', Buffer.alloc(0), { requestId: 'req-1' }),
  );
  caller.end();
  // unary() concatenates the three chunks; the last one is what the handler saw at the end.
  const seen = decodeJson<Seen>(answer.subarray(answer.lastIndexOf('{"traceparent"')));
  assert.equal(seen.traceparent, `00-${traceId}-${spanId}-01`);
  assert.equal(seen.requestId, 'req-1');
  assert.deepEqual(seen.activeTraceIds, [traceId, traceId, traceId, traceId]);

  const spans = exporter.getFinishedSpans().filter((s) => s.name === 'handle_payload');
  assert.equal(spans.length, 1);
  const [span] = spans;
  assert.equal(span!.kind, SpanKind.SERVER);
  assert.equal(span!.spanContext().traceId, traceId);
  assert.equal(span!.parentSpanContext?.spanId, spanId);
  assert.equal(span!.attributes['kvroute.endpoint'], 'whoami');
  assert.equal(span!.attributes['kvroute.request_id'], 'req-1');
});

test('many concurrent calls from different contexts on one pooled connection keep their own trace', async () => {
  exporter.reset();
  const N = 50;
  const results = await Promise.all(
    Array.from({ length: N }, (_, i) =>
      tracer.startActiveSpan(`caller-${i}`, async (caller) => {
        const mine = caller.spanContext().traceId;
        const seen: Seen[] = [];
        for await (const chunk of client.stream(server.address, 'whoami', Buffer.alloc(0))) {
          seen.push(decodeJson<Seen>(chunk));
          // The consumer resumes in its own context, not the socket's.
          assert.equal(trace.getActiveSpan()?.spanContext().traceId, mine);
        }
        caller.end();
        return { mine, spanId: caller.spanContext().spanId, seen };
      }),
    ),
  );
  assert.equal(server.stats().connections, 1);
  assert.equal(new Set(results.map((r) => r.mine)).size, N);
  for (const r of results) {
    assert.equal(r.seen.length, 3);
    for (const s of r.seen) {
      assert.equal(s.traceparent, `00-${r.mine}-${r.spanId}-01`);
      for (const id of s.activeTraceIds) assert.equal(id, r.mine);
    }
  }
  const serverSpans = exporter.getFinishedSpans().filter((s) => s.name === 'handle_payload');
  assert.equal(serverSpans.length, N);
  const parents = new Map(results.map((r) => [r.mine, r.spanId]));
  for (const s of serverSpans)
    assert.equal(s.parentSpanContext?.spanId, parents.get(s.spanContext().traceId));
});

test('a failing handler ends its span with error status', async () => {
  exporter.reset();
  await assert.rejects(client.unary(server.address, 'fails', Buffer.alloc(0)), /handler broke/);
  const [span] = exporter.getFinishedSpans().filter((s) => s.name === 'handle_payload');
  assert.equal(span!.status.code, SpanStatusCode.ERROR);
  assert.equal(span!.status.message, 'handler broke');
});
