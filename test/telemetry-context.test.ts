// The in-process half of telemetry: the OTEL_* rules, sampling without losing propagation,
// pass-through when off, and the context helpers across async boundaries.

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { setImmediate as immediate, setTimeout as sleep } from 'node:timers/promises';
import { context, createContextKey, ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { UsageError } from '../src/errors.js';
import {
  bindIterableToCurrentContext,
  extractFromHeaders,
  initTelemetry,
  injectToHeaders,
  isValidTraceparent,
  registerGlobalContext,
  resolveTelemetryConfig,
  spawnInCurrentContext,
  withRootContext,
} from '../src/telemetry/index.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';
const INCOMING = `00-${TRACE_ID}-${PARENT_ID}-01`;

test('off rule: nothing configured, or exporter none, or SDK disabled -> disabled', () => {
  assert.equal(resolveTelemetryConfig('svc', {}).enabled, false);
  assert.equal(
    resolveTelemetryConfig('svc', {
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4318',
    }).enabled,
    false,
  );
  assert.equal(
    resolveTelemetryConfig('svc', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x', OTEL_SDK_DISABLED: 'true' })
      .enabled,
    false,
  );
  const byEndpoint = resolveTelemetryConfig('svc', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4318/' });
  assert.deepEqual(byEndpoint.exporters, ['otlp']);
  assert.equal(byEndpoint.otlpTracesUrl, 'http://x:4318/v1/traces');
  assert.equal(byEndpoint.protocol, 'http/protobuf');
  const explicit = resolveTelemetryConfig('svc', { OTEL_TRACES_EXPORTER: 'otlp,console' });
  assert.deepEqual(explicit.exporters, ['otlp', 'console']);
  assert.equal(explicit.otlpTracesUrl, 'http://localhost:4318/v1/traces');
  assert.equal(resolveTelemetryConfig('svc', { OTEL_SERVICE_NAME: 'mine' }).serviceName, 'mine');
});

test('sampler rules: default parentbased_always_on; a bare ratio means parentbased_traceidratio', () => {
  assert.deepEqual(resolveTelemetryConfig('s', {}).sampler, { kind: 'parentbased_always_on', ratio: 1 });
  assert.deepEqual(resolveTelemetryConfig('s', { OTEL_TRACES_SAMPLER_ARG: '0.25' }).sampler, {
    kind: 'parentbased_traceidratio',
    ratio: 0.25,
  });
  assert.deepEqual(resolveTelemetryConfig('s', { OTEL_TRACES_SAMPLER: 'always_off' }).sampler, {
    kind: 'always_off',
    ratio: 1,
  });
  assert.throws(() => resolveTelemetryConfig('s', { OTEL_TRACES_SAMPLER: 'sometimes' }), UsageError);
  assert.throws(() => resolveTelemetryConfig('s', { OTEL_TRACES_SAMPLER_ARG: '1.5' }), UsageError);
  assert.throws(() => resolveTelemetryConfig('s', { OTEL_TRACES_EXPORTER: 'zipkin' }), UsageError);
  assert.throws(
    () => resolveTelemetryConfig('s', { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }),
    UsageError,
  );
  assert.throws(
    () =>
      resolveTelemetryConfig('s', {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      }),
    UsageError,
  );
  // An endpoint the exporter could not dial is a usage error naming the variable, not the
  // exporter's own error thrown from deep in startup; unused (console only), it is not read.
  assert.throws(
    () => resolveTelemetryConfig('s', { OTEL_EXPORTER_OTLP_ENDPOINT: 'notaurl' }),
    /OTEL_EXPORTER_OTLP_ENDPOINT: not a URL, got 'notaurl'/,
  );
  assert.throws(
    () =>
      resolveTelemetryConfig('s', {
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://x/',
      }),
    /OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: must be an http:\/\/ or https:\/\/ URL/,
  );
  assert.throws(() => resolveTelemetryConfig('s', { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'x' }), UsageError);
  assert.equal(
    resolveTelemetryConfig('s', { OTEL_TRACES_EXPORTER: 'console', OTEL_EXPORTER_OTLP_ENDPOINT: 'notaurl' })
      .enabled,
    true,
  );
  assert.equal(
    resolveTelemetryConfig('s', { OTEL_EXPORTER_OTLP_ENDPOINT: 'https://collector:4318/' }).otlpTracesUrl,
    'https://collector:4318/v1/traces',
  );
  // What cannot matter does not stop the process: the protocol without an OTLP exporter (it is
  // shared with metrics and logs), anything at all with the SDK disabled.
  const grpc = { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' };
  for (const env of [
    { ...grpc, OTEL_TRACES_EXPORTER: 'none' },
    { ...grpc, OTEL_TRACES_EXPORTER: 'console' },
    { ...grpc, OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x' },
    { OTEL_SDK_DISABLED: 'true', OTEL_TRACES_EXPORTER: 'jaeger', OTEL_TRACES_SAMPLER: 'sometimes' },
  ]) {
    const config = resolveTelemetryConfig('s', env);
    assert.equal(config.enabled, env.OTEL_TRACES_EXPORTER === 'console', JSON.stringify(env));
    assert.equal(config.protocol, 'http/protobuf');
  }
  // Empty list entries are skipped, as the SDK's list parser does.
  assert.deepEqual(resolveTelemetryConfig('s', { OTEL_TRACES_EXPORTER: 'otlp, ,console,' }).exporters, [
    'otlp',
    'console',
  ]);
});

test('ratio 0: spans are not recorded but the trace id still propagates', async () => {
  // Exporter pointed at a closed port: it is never dialled because nothing is recorded.
  const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_TRACES_SAMPLER: 'traceidratio' };
  const t = initTelemetry({ serviceName: 'svc', env: { ...env, OTEL_TRACES_SAMPLER_ARG: '0' } });
  assert.equal(t.enabled, true);
  const parentCtx = extractFromHeaders({ traceparent: INCOMING }, ROOT_CONTEXT);
  const span = t.tracer.startSpan('http-request', { kind: SpanKind.SERVER }, parentCtx);
  assert.equal(span.isRecording(), false);
  assert.equal(span.spanContext().traceId, TRACE_ID);
  const out = injectToHeaders(trace.setSpan(parentCtx, span));
  assert.match(out.traceparent!, new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-00$`));
  assert.notEqual(out.traceparent!.split('-')[2], PARENT_ID);
  // A root span (no incoming trace) still gets a fresh valid trace id to hand to workers.
  const root = t.tracer.startSpan('http-request', {}, ROOT_CONTEXT);
  assert.equal(root.isRecording(), false);
  assert.ok(isValidTraceparent(injectToHeaders(trace.setSpan(ROOT_CONTEXT, root)).traceparent));
  span.end();
  root.end();
  await t.shutdown();

  // The same ratio behind parentbased (the default when only the arg is set) follows a sampled parent.
  const pb = initTelemetry({
    serviceName: 'svc',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: env.OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER_ARG: '0' },
  });
  const followed = pb.tracer.startSpan('http-request', {}, parentCtx);
  assert.equal(followed.isRecording(), true);
  const unsampledRoot = pb.tracer.startSpan('x', {}, ROOT_CONTEXT);
  assert.equal(unsampledRoot.isRecording(), false);
  unsampledRoot.end();
  // Not ending `followed`: a recorded span would be exported to the closed port on shutdown.
  await pb.shutdown();
  await pb.shutdown(); // idempotent
});

test('off mode: no SDK, the incoming traceparent passes through unchanged', async () => {
  const t = initTelemetry({ serviceName: 'svc', env: {} });
  assert.equal(t.enabled, false);
  const parentCtx = extractFromHeaders({ traceparent: INCOMING, tracestate: 'vendor=1' }, ROOT_CONTEXT);
  const span = t.tracer.startSpan('http-request', { kind: SpanKind.SERVER }, parentCtx);
  assert.equal(span.isRecording(), false);
  const out = injectToHeaders(trace.setSpan(parentCtx, span), { 'x-request-id': 'r1' });
  assert.deepEqual(out, { 'x-request-id': 'r1', traceparent: INCOMING, tracestate: 'vendor=1' });
  // Without an incoming trace there is nothing to propagate.
  const root = t.tracer.startSpan('http-request', {}, ROOT_CONTEXT);
  assert.deepEqual(injectToHeaders(trace.setSpan(ROOT_CONTEXT, root)), {});
  // A malformed traceparent is ignored (and node:http's array form is read).
  assert.equal(trace.getSpanContext(extractFromHeaders({ traceparent: 'garbage' }, ROOT_CONTEXT)), undefined);
  assert.equal(
    trace.getSpanContext(extractFromHeaders({ traceparent: [INCOMING] }, ROOT_CONTEXT))?.traceId,
    TRACE_ID,
  );
  await t.shutdown();
});

test('isValidTraceparent follows the W3C parser', () => {
  assert.equal(isValidTraceparent(INCOMING), true);
  assert.equal(isValidTraceparent(`00-${'0'.repeat(32)}-${PARENT_ID}-01`), false);
  assert.equal(isValidTraceparent(`ff-${TRACE_ID}-${PARENT_ID}-01`), false);
  assert.equal(isValidTraceparent(undefined), false);
});

test('spawnInCurrentContext keeps the span across immediates, awaits and timers; withRootContext drops it', async () => {
  const t = initTelemetry({ serviceName: 'svc', env: {} });
  const parentCtx = extractFromHeaders({ traceparent: INCOMING }, ROOT_CONTEXT);
  const seen: (string | undefined)[] = [];
  const activeTrace = () => trace.getSpanContext(context.active())?.traceId;
  let task!: Promise<string>;
  let background!: Promise<string | undefined>;
  context.with(parentCtx, () => {
    task = spawnInCurrentContext(async () => {
      await immediate();
      seen.push(activeTrace());
      await sleep(5);
      seen.push(activeTrace());
      await new Promise<void>((r) => setTimeout(r, 1));
      seen.push(activeTrace());
      return 'done';
    });
    background = withRootContext(async () => {
      await immediate();
      return activeTrace();
    });
  });
  // The caller's own context is unaffected by the spawned task.
  assert.equal(activeTrace(), undefined);
  assert.equal(await task, 'done');
  assert.deepEqual(seen, [TRACE_ID, TRACE_ID, TRACE_ID]);
  assert.equal(await background, undefined);
  await assert.rejects(
    spawnInCurrentContext(() => {
      throw new Error('sync throw');
    }),
    /sync throw/,
  );
  await t.shutdown();
});

test('bindIterableToCurrentContext: every step of a stream pulled from elsewhere runs in the binding context', async () => {
  registerGlobalContext();
  const marker = createContextKey('request');
  const seen: unknown[] = [];
  async function* steps() {
    try {
      // Never ends by itself: the consumer stops it.
      for (let i = 0; ; i++) {
        await sleep(1);
        seen.push(context.active().getValue(marker));
        yield `chunk ${i}\n`;
      }
    } finally {
      seen.push(`finally: ${String(context.active().getValue(marker))}`);
    }
  }
  const bound = context.with(ROOT_CONTEXT.setValue(marker, 'request A'), () =>
    bindIterableToCurrentContext(steps()),
  );
  // Pulled from the root context by a stream, as the HTTP layer does with an SSE response.
  const stream = Readable.from(bound, { objectMode: false });
  let text = '';
  for await (const chunk of stream) {
    text += chunk;
    if (text.split('\n').length > 3) break; // stops the stream: return() on the iterator
  }
  await sleep(20);
  // Three steps or more (the stream reads ahead), then the stop, all in request A.
  assert.ok(seen.length >= 4, String(seen.length));
  assert.equal(seen.at(-1), 'finally: request A');
  assert.deepEqual(new Set(seen.slice(0, -1)), new Set(['request A']));
});
