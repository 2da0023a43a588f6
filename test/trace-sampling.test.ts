// The sampled-out shortcut of initTelemetry's tracer (src/telemetry/unsampled-shortcut.ts): under
// a parent-following sampler, a child of an unsampled parent is answered without the SDK (same
// trace, not sampled, nothing recorded); a sampled parent still gets real recorded children; and
// a sampler that does NOT follow the parent (always_on) is never short-circuited.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { context, ROOT_CONTEXT, type Span, TraceFlags, trace } from '@opentelemetry/api';
import {
  initTelemetry,
  injectToHeaders,
  registerGlobalContext,
  type Telemetry,
} from '../src/telemetry/index.js';
import { exportTo, OtlpReceiver } from './trace-helpers.js';

registerGlobalContext();
// Spans that are recorded get exported somewhere that answers, so shutdown() flushes cleanly.
const receiver = new OtlpReceiver();
const made: Telemetry[] = [];
function telemetry(env: Record<string, string>): Telemetry {
  const base = { ...exportTo(receiver.url), OTEL_TRACES_SAMPLER: '' };
  const t = initTelemetry({ serviceName: 'trace-sampling-test', env: { ...base, ...env } });
  made.push(t);
  return t;
}
before(() => receiver.listen());
after(async () => {
  await Promise.all(made.map((t) => t.shutdown()));
  await receiver.close();
});

const remote = (flags: number) =>
  trace.setSpanContext(ROOT_CONTEXT, {
    traceId: '0af7651916cd43dd8448eb211c80319c',
    spanId: 'b7ad6b7169203331',
    traceFlags: flags,
    isRemote: true,
  });

test('ratio 0: the root is not sampled and every descendant stays in its trace, unsampled', () => {
  const { tracer } = telemetry({ OTEL_TRACES_SAMPLER_ARG: '0' });
  const root = tracer.startSpan('http-request', {}, ROOT_CONTEXT);
  assert.equal(root.isRecording(), false);
  const rootCtx = root.spanContext();
  assert.ok(trace.isSpanContextValid(rootCtx));
  const child = tracer.startSpan('kv_find_best_match', {}, trace.setSpan(ROOT_CONTEXT, root));
  assert.equal(child.isRecording(), false);
  assert.equal(child.spanContext().traceId, rootCtx.traceId);
  const headers = injectToHeaders(trace.setSpan(ROOT_CONTEXT, child));
  assert.match(headers.traceparent ?? '', new RegExp(`^00-${rootCtx.traceId}-[0-9a-f]{16}-00$`));
});

test('an unsampled remote parent under the default sampler: children non-recording, same trace', () => {
  const { tracer } = telemetry({});
  const span = tracer.startSpan('handle_payload', {}, remote(TraceFlags.NONE));
  assert.equal(span.isRecording(), false);
  assert.equal(span.spanContext().traceId, '0af7651916cd43dd8448eb211c80319c');
  assert.equal(span.spanContext().traceFlags & TraceFlags.SAMPLED, 0);
  // The shortcut: no SDK span, so no fresh id; the parent's context is passed on as it is.
  assert.equal(span.spanContext().spanId, 'b7ad6b7169203331');
});

test('a sampled parent still gets recorded children with their own ids', () => {
  const { tracer } = telemetry({});
  const span = tracer.startSpan('handle_payload', {}, remote(TraceFlags.SAMPLED));
  assert.equal(span.isRecording(), true);
  assert.notEqual(span.spanContext().spanId, 'b7ad6b7169203331');
  span.end();
});

test('root: true ignores the unsampled parent (a fresh trace, sampled by the root rule)', () => {
  const { tracer } = telemetry({});
  const span = tracer.startSpan('background', { root: true }, remote(TraceFlags.NONE));
  assert.equal(span.isRecording(), true);
  assert.notEqual(span.spanContext().traceId, '0af7651916cd43dd8448eb211c80319c');
  span.end();
});

test('always_on does not follow the parent: no shortcut, the child is sampled', () => {
  const { tracer } = telemetry({ OTEL_TRACES_SAMPLER: 'always_on' });
  const span = tracer.startSpan('handle_payload', {}, remote(TraceFlags.NONE));
  assert.equal(span.isRecording(), true);
  span.end();
});

test('startActiveSpan: all three call shapes make the new span active for fn and return its result', () => {
  const { tracer } = telemetry({});
  const activeIn = (span: Span) => trace.getActiveSpan() === span;
  assert.equal(
    tracer.startActiveSpan('a', (s) => {
      s.end();
      return activeIn(s);
    }),
    true,
  );
  assert.equal(
    tracer.startActiveSpan('b', {}, (s) => {
      s.end();
      return activeIn(s);
    }),
    true,
  );
  const unsampled = remote(TraceFlags.NONE);
  const result = tracer.startActiveSpan('c', {}, unsampled, (s) => {
    s.end();
    return { active: activeIn(s), recording: s.isRecording(), traceId: s.spanContext().traceId };
  });
  assert.deepEqual(result, { active: true, recording: false, traceId: '0af7651916cd43dd8448eb211c80319c' });
  // Outside fn the caller's context is back.
  assert.equal(trace.getActiveSpan(), trace.getSpan(context.active()));
});

test('a root sampler that never samples: fresh, distinct, valid roots without the SDK; a sampled parent is still followed', () => {
  const envs: Record<string, string>[] = [
    { OTEL_TRACES_SAMPLER_ARG: '0' },
    { OTEL_TRACES_SAMPLER: 'parentbased_always_off' },
    { OTEL_TRACES_SAMPLER: 'always_off' },
  ];
  for (const env of envs) {
    const { tracer } = telemetry(env);
    const a = tracer.startSpan('http-request', {}, ROOT_CONTEXT).spanContext();
    const b = tracer.startSpan('http-request', {}, ROOT_CONTEXT).spanContext();
    for (const ctx of [a, b]) {
      assert.ok(trace.isSpanContextValid(ctx), JSON.stringify(env));
      assert.equal(ctx.traceFlags, TraceFlags.NONE);
    }
    assert.notEqual(a.traceId, b.traceId);
    assert.notEqual(a.spanId, b.spanId);
    // root: true over an unsampled parent is a new root too, in a trace of its own.
    const fresh = tracer.startSpan('background', { root: true }, remote(TraceFlags.NONE));
    assert.equal(fresh.isRecording(), false);
    assert.notEqual(fresh.spanContext().traceId, '0af7651916cd43dd8448eb211c80319c');
    // An invalid parent counts as no parent.
    const invalid = trace.setSpanContext(ROOT_CONTEXT, { traceId: 'x', spanId: 'y', traceFlags: 0 });
    assert.ok(trace.isSpanContextValid(tracer.startSpan('x', {}, invalid).spanContext()));
  }
  const sampled = telemetry({ OTEL_TRACES_SAMPLER_ARG: '0' }).tracer.startSpan(
    'handle_payload',
    {},
    remote(TraceFlags.SAMPLED),
  );
  assert.equal(sampled.isRecording(), true);
  sampled.end();
});
