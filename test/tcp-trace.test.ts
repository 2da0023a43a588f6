// Trace propagation across the request plane: each call gets one CLIENT span (child of the
// caller's context at call time) from the client's own tracer; its context travels in the frame
// headers, and the handler (and every step of its async iterable) runs inside a `handle_payload`
// SERVER span from the server's own tracer, parented by the client span, even when many contexts
// share one pooled socket. No tracer provider is registered globally here: the `tracer` options
// are what make the spans record.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import {
  AlwaysOffSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import {
  decodeJson,
  encodeJson,
  RequestPlaneClient,
  RequestPlaneServer,
  TransportError,
} from '../src/tcp/index.js';
import { registerGlobalContext } from '../src/telemetry/index.js';
import { markersSeenByNewResources } from './trace-helpers.js';

function recorder() {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  return { exporter, provider, tracer: provider.getTracer('test') };
}

const callers = recorder();
const clientSide = recorder();
const serverSide = recorder();
const server = new RequestPlaneServer({ tracer: serverSide.tracer });
const client = new RequestPlaneClient({ maxConnectionsPerAddress: 1, tracer: clientSide.tracer });

interface Seen {
  traceparent: string | undefined;
  requestId: string | undefined;
  /** Trace id of the active span in the handler and at each step of its iterable. */
  activeTraceIds: string[];
}

before(async () => {
  registerGlobalContext();
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
  server.handle('endless', async function* (req) {
    while (!req.signal.aborted) {
      yield encodeJson({ tick: true });
      await sleep(2);
    }
  });
  await server.listen();
});

after(async () => {
  await client.close();
  await server.close({ deadlineMs: 500 });
  await Promise.all([callers, clientSide, serverSide].map((r) => r.provider.shutdown()));
});

function reset(): void {
  for (const r of [callers, clientSide, serverSide]) r.exporter.reset();
}

function finished(r: ReturnType<typeof recorder>, name: string): ReadableSpan[] {
  return r.exporter.getFinishedSpans().filter((s) => s.name === name);
}

test('caller -> request_plane CLIENT span -> handle_payload SERVER span, each from its own tracer', async () => {
  reset();
  const caller = callers.tracer.startSpan('caller');
  const { traceId, spanId } = caller.spanContext();
  const answer = await context.with(trace.setSpan(ROOT_CONTEXT, caller), () =>
    client.unary(server.address, 'whoami', Buffer.alloc(0), { requestId: 'req-1' }),
  );
  caller.end();
  const seen = decodeJson<Seen>(answer.subarray(answer.lastIndexOf('{"traceparent"')));

  const [clientSpan, ...moreClient] = finished(clientSide, 'request_plane whoami');
  assert.ok(clientSpan);
  assert.equal(moreClient.length, 0);
  assert.equal(clientSpan.kind, SpanKind.CLIENT);
  assert.equal(clientSpan.spanContext().traceId, traceId);
  assert.equal(clientSpan.parentSpanContext?.spanId, spanId);
  assert.equal(clientSpan.attributes['kvroute.address'], server.address);
  assert.equal(clientSpan.attributes['kvroute.endpoint'], 'whoami');
  assert.equal(clientSpan.attributes['kvroute.request_id'], 'req-1');
  assert.equal(clientSpan.attributes['kvroute.outcome'], 'ok');
  assert.equal(clientSpan.attributes['kvroute.chunks'], 3);

  // The frame carried the CLIENT span's context, not the caller's.
  assert.equal(seen.traceparent, `00-${traceId}-${clientSpan.spanContext().spanId}-01`);
  assert.equal(seen.requestId, 'req-1');
  assert.deepEqual(seen.activeTraceIds, [traceId, traceId, traceId, traceId]);

  const [span, ...more] = finished(serverSide, 'handle_payload');
  assert.ok(span);
  assert.equal(more.length, 0);
  assert.equal(span.kind, SpanKind.SERVER);
  assert.equal(span.spanContext().traceId, traceId);
  assert.equal(span.parentSpanContext?.spanId, clientSpan.spanContext().spanId);
  assert.equal(span.attributes['kvroute.endpoint'], 'whoami');
  assert.equal(span.attributes['kvroute.request_id'], 'req-1');
  assert.equal(finished(clientSide, 'handle_payload').length, 0, 'server spans use the server tracer');
});

test('many concurrent streams from different contexts on one pooled connection keep their own trace', async () => {
  reset();
  const N = 50;
  const results = await Promise.all(
    Array.from({ length: N }, (_, i) =>
      callers.tracer.startActiveSpan(`caller-${i}`, async (caller) => {
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
  const clientSpans = finished(clientSide, 'request_plane whoami');
  assert.equal(clientSpans.length, N);
  const clientByTrace = new Map(clientSpans.map((s) => [s.spanContext().traceId, s]));
  for (const r of results) {
    const cs = clientByTrace.get(r.mine);
    assert.ok(cs, 'one client span per caller trace');
    assert.equal(cs.parentSpanContext?.spanId, r.spanId);
    assert.equal(r.seen.length, 3);
    for (const s of r.seen) {
      assert.equal(s.traceparent, `00-${r.mine}-${cs.spanContext().spanId}-01`);
      for (const id of s.activeTraceIds) assert.equal(id, r.mine);
    }
  }
  const serverSpans = finished(serverSide, 'handle_payload');
  assert.equal(serverSpans.length, N);
  for (const s of serverSpans) {
    const cs = clientByTrace.get(s.spanContext().traceId);
    assert.equal(s.parentSpanContext?.spanId, cs?.spanContext().spanId);
  }
});

test('a failing handler: handle_payload has error status, the client span says remote_error', async () => {
  reset();
  await assert.rejects(client.unary(server.address, 'fails', Buffer.alloc(0)), /handler broke/);
  const [span] = finished(serverSide, 'handle_payload');
  assert.equal(span!.status.code, SpanStatusCode.ERROR);
  assert.equal(span!.status.message, 'handler broke');
  const [cs] = finished(clientSide, 'request_plane fails');
  assert.equal(cs!.attributes['kvroute.outcome'], 'error');
  assert.equal(cs!.attributes['kvroute.error_kind'], 'remote_error');
  assert.equal(cs!.status.code, SpanStatusCode.ERROR);
});

test('a caller that stops reading early ends the client span as cancelled; so does an unknown endpoint fail it', async () => {
  reset();
  let n = 0;
  for await (const _ of client.stream(server.address, 'endless', Buffer.alloc(0))) {
    if (++n === 3) break;
  }
  const [cs] = finished(clientSide, 'request_plane endless');
  assert.equal(cs!.attributes['kvroute.outcome'], 'cancelled');
  assert.equal(cs!.status.code, SpanStatusCode.UNSET);

  await assert.rejects(client.unary(server.address, 'nope', Buffer.alloc(0)));
  const [missing] = finished(clientSide, 'request_plane nope');
  assert.equal(missing!.attributes['kvroute.outcome'], 'error');
  assert.equal(missing!.attributes['kvroute.remote_code'], 'not_found');
});

test('a call the caller ends for a failure of its own is an error on its span, not a cancel', async () => {
  reset();
  // A stream the caller gives up on (a silent stream, an unreadable chunk): cancel with a failure.
  const it = client.stream(server.address, 'endless', Buffer.alloc(0))[Symbol.asyncIterator]();
  await it.next();
  it.cancel(new TransportError('timeout', 'silent for 800 ms'));
  await assert.rejects(it.next(), /silent for 800 ms/);
  const [silent] = finished(clientSide, 'request_plane endless');
  assert.equal(silent!.attributes['kvroute.outcome'], 'error');
  assert.equal(silent!.attributes['kvroute.error_kind'], 'timeout');
  assert.equal(silent!.status.code, SpanStatusCode.ERROR);
  await serverSpanEnded();

  // A unary answer larger than the caller holds.
  reset();
  const small = new RequestPlaneClient({ maxFrameBytes: 1024, tracer: clientSide.tracer });
  try {
    await assert.rejects(small.unary(server.address, 'endless', Buffer.alloc(0)), /exceeds 1024 bytes/);
  } finally {
    await small.close();
  }
  const [big] = finished(clientSide, 'request_plane endless');
  assert.equal(big!.attributes['kvroute.outcome'], 'error');
  assert.equal(big!.attributes['kvroute.error_kind'], 'protocol_error');
  await serverSpanEnded();
});

/** The server saw a cancel: its handler (and span) ends, before the spans are reset again. */
async function serverSpanEnded(): Promise<void> {
  for (let i = 0; i < 200 && finished(serverSide, 'handle_payload').length === 0; i++) await sleep(5);
  assert.equal(finished(serverSide, 'handle_payload')[0]?.attributes['kvroute.cancelled'], true);
}

test("a cancelled handler's abort listener and cleanup run in its handle_payload span", async () => {
  reset();
  const tidy = new RequestPlaneServer({ tracer: serverSide.tracer });
  // A small window: the handler is parked on credit (suspended at a yield) when the cancel comes.
  const small = new RequestPlaneClient({ maxBufferedBytesPerStream: 4096 });
  const seen: { body?: string; onAbort?: string; cleanup?: string } = {};
  const active = () => trace.getActiveSpan()?.spanContext().spanId ?? 'none';
  tidy.handle('tidy', async function* (req) {
    seen.body = active();
    req.signal.addEventListener('abort', () => {
      seen.onAbort = active(); // e.g. an engine request cancelled: its log line or event
    });
    try {
      for (;;) yield Buffer.alloc(1024);
    } finally {
      seen.cleanup = active(); // e.g. a subscription or KV blocks released
    }
  });
  await tidy.listen();
  try {
    for await (const _ of small.stream(tidy.address, 'tidy', Buffer.alloc(0))) break;
    for (let i = 0; i < 200 && seen.cleanup === undefined; i++) await sleep(5);
    const [span] = finished(serverSide, 'handle_payload');
    assert.ok(span);
    assert.equal(seen.body, span.spanContext().spanId);
    assert.deepEqual(seen, { body: seen.body, onAbort: seen.body, cleanup: seen.body });
  } finally {
    await small.close();
    await tidy.close({ deadlineMs: 500 });
  }
});

test('an iterable that is never iterated starts no span', async () => {
  reset();
  client.stream(server.address, 'whoami', Buffer.alloc(0));
  await sleep(5);
  assert.equal(clientSide.exporter.getFinishedSpans().length, 0);
  assert.equal(serverSide.exporter.getFinishedSpans().length, 0);
});

test('with no tracer (API global, none registered) the caller context passes through unchanged', async () => {
  const plain = new RequestPlaneClient();
  try {
    const caller = callers.tracer.startSpan('caller');
    const { traceId, spanId } = caller.spanContext();
    const answer = await context.with(trace.setSpan(ROOT_CONTEXT, caller), () =>
      plain.unary(server.address, 'whoami', Buffer.alloc(0)),
    );
    caller.end();
    const seen = decodeJson<Seen>(answer.subarray(answer.lastIndexOf('{"traceparent"')));
    assert.equal(seen.traceparent, `00-${traceId}-${spanId}-01`);
  } finally {
    await plain.close();
  }
});

test('a sampled-out caller: no client span recorded, the not-sampled flag still travels', async () => {
  reset();
  const off = new BasicTracerProvider({ sampler: new AlwaysOffSampler() }).getTracer('off');
  const caller = off.startSpan('caller');
  const { traceId } = caller.spanContext();
  const sampledOut = new RequestPlaneClient({
    tracer: new BasicTracerProvider({ sampler: new AlwaysOffSampler() }).getTracer('off'),
  });
  try {
    const answer = await context.with(trace.setSpan(ROOT_CONTEXT, caller), () =>
      sampledOut.unary(server.address, 'whoami', Buffer.alloc(0)),
    );
    const seen = decodeJson<Seen>(answer.subarray(answer.lastIndexOf('{"traceparent"')));
    assert.match(seen.traceparent ?? '', new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
    // The server's parent-based default follows the caller's decision.
    assert.equal(serverSide.exporter.getFinishedSpans().length, 0);
  } finally {
    await sampledOut.close();
  }
});

test('shared request-plane machinery made during a call holds none of its context', async () => {
  await sleep(200); // the shared deadline sweep stops once no call waits: let earlier tests' go
  const fresh = new RequestPlaneClient({ tracer: clientSide.tracer });
  let answered: Promise<Buffer> | undefined;
  // The first call to an address dials (socket, connect timer); a call with a first-response
  // timeout starts the shared deadline sweep. Both serve every later call: both must be root.
  const seen = await markersSeenByNewResources(['Timeout', 'TCPWRAP'], () => {
    answered = fresh.unary(server.address, 'whoami', Buffer.alloc(0), { firstResponseTimeoutMs: 5_000 });
  });
  assert.deepEqual(seen.map((s) => s.type).sort(), ['TCPWRAP', 'Timeout', 'Timeout']);
  assert.deepEqual(new Set(seen.map((s) => s.marker)), new Set([undefined]));
  // And the call still gets its answer (its own callbacks are not the socket's context).
  assert.match((await answered!).toString(), /"activeTraceIds"/);
  await fresh.close();
});

test("a request-plane server's listening socket is made outside the caller's context", async () => {
  const other = new RequestPlaneServer();
  try {
    const seen = await markersSeenByNewResources(['TCPSERVERWRAP'], () => other.listen());
    assert.deepEqual(seen, [{ type: 'TCPSERVERWRAP', marker: undefined }]);
  } finally {
    await other.close();
  }
});
