// LeanTracer against the reference, the SDK's own Tracer: one suite of scripted span operations
// (attributes valid and invalid, overrides, events, exceptions, links, statuses, renames, work
// after end, limits, samplers, remote parents, explicit times, active spans) runs against both,
// and what each exports must be the same, field by field, with ids mapped to span names.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type Attributes,
  type Context,
  context,
  type HrTime,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { suppressTracing } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  ParentBasedSampler,
  RandomIdGenerator,
  type ReadableSpan,
  type Sampler,
  SimpleSpanProcessor,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { resolveTelemetryConfig, type SpanLimits } from '../src/telemetry/config.js';
import { registerGlobalContext } from '../src/telemetry/context.js';
import { LeanTracer } from '../src/telemetry/lean-tracer.js';

registerGlobalContext();

const DEFAULT_LIMITS = resolveTelemetryConfig('t', {}).limits;
const resource = resourceFromAttributes({ 'service.name': 'lean-test' });

interface Harness {
  tracer: Tracer;
  finished(): ReadableSpan[];
  /** What each span showed its processors' onEnding: its end time, and whether it said ended. */
  endings: Map<ReadableSpan, { endTime: HrTime; duration: HrTime; ended: boolean }>;
}

/** A processor that notes what onEnding sees (the SDK: the end time is set, `ended` not yet). */
function endingWitness(endings: Harness['endings']): SpanProcessor {
  return {
    onStart: () => {},
    onEnding: (span) =>
      endings.set(span as ReadableSpan, {
        endTime: [...(span as ReadableSpan).endTime],
        duration: [...(span as ReadableSpan).duration],
        ended: (span as ReadableSpan).ended,
      }),
    onEnd: () => {},
    forceFlush: async () => {},
    shutdown: async () => {},
  };
}

type Make = (sampler: Sampler, limits: SpanLimits) => Harness;

function leanHarness(sampler: Sampler, limits: SpanLimits, sampledParentsSample: boolean): Harness {
  const exporter = new InMemorySpanExporter();
  const endings: Harness['endings'] = new Map();
  const tracer = new LeanTracer({
    resource,
    scope: { name: 'kvroute' },
    sampler,
    idGenerator: new RandomIdGenerator(),
    processors: [endingWitness(endings), new SimpleSpanProcessor(exporter)],
    limits,
    sampledParentsSample,
  });
  return { tracer, finished: () => exporter.getFinishedSpans(), endings };
}

const implementations: Record<string, Make> = {
  'SDK Tracer (reference)': (sampler, limits) => {
    const exporter = new InMemorySpanExporter();
    const endings: Harness['endings'] = new Map();
    const provider = new BasicTracerProvider({
      resource,
      sampler,
      spanLimits: limits,
      spanProcessors: [endingWitness(endings), new SimpleSpanProcessor(exporter)],
    });
    return { tracer: provider.getTracer('kvroute'), finished: () => exporter.getFinishedSpans(), endings };
  },
  LeanTracer: (sampler, limits) => leanHarness(sampler, limits, false),
  // As index.ts builds it for the parentbased_* samplers: a sampled parent's children skip the sampler.
  'LeanTracer, sampled parents short-cut': (sampler, limits) =>
    leanHarness(sampler, limits, sampler instanceof ParentBasedSampler),
};

/** What a span exports, with ids replaced by the names of the spans they belong to. */
function normalize(spans: ReadableSpan[], remote: Map<string, string> = new Map()) {
  const nameOf = new Map(remote);
  for (const s of spans) nameOf.set(s.spanContext().spanId, s.name);
  const traces = new Map<string, number>();
  const traceOf = (id: string) => {
    if (!traces.has(id)) traces.set(id, traces.size);
    return traces.get(id);
  };
  return spans.map((s) => {
    const ctx = s.spanContext();
    assert.match(ctx.spanId, /^[0-9a-f]{16}$/);
    assert.match(ctx.traceId, /^[0-9a-f]{32}$/);
    // Times: well-formed HrTime, end not before start, duration = end - start.
    const ns = (t: readonly [number, number]) => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
    assert.ok(s.startTime[1] >= 0 && s.startTime[1] < 1e9);
    assert.ok(ns(s.endTime) >= ns(s.startTime), `${s.name}: end before start`);
    assert.equal(ns(s.duration), ns(s.endTime) - ns(s.startTime));
    assert.equal(s.ended, true);
    return {
      name: s.name,
      kind: s.kind,
      trace: traceOf(ctx.traceId),
      traceFlags: ctx.traceFlags,
      traceState: ctx.traceState?.serialize(),
      parent: s.parentSpanContext ? (nameOf.get(s.parentSpanContext.spanId) ?? 'unknown') : undefined,
      parentIsRemote: s.parentSpanContext?.isRemote,
      attributes: s.attributes,
      droppedAttributesCount: s.droppedAttributesCount,
      events: s.events.map((e) => ({
        name: e.name,
        attributes: e.attributes,
        droppedAttributesCount: e.droppedAttributesCount,
      })),
      droppedEventsCount: s.droppedEventsCount,
      links: s.links.map((l) => ({
        span: nameOf.get(l.context.spanId) ?? l.context.spanId,
        attributes: l.attributes,
        droppedAttributesCount: l.droppedAttributesCount,
      })),
      droppedLinksCount: s.droppedLinksCount,
      status: s.status,
      scope: s.instrumentationScope.name,
      resource: s.resource.attributes['service.name'],
    };
  });
}

/** Runs `script` against both implementations and asserts they export the same spans. */
function sameAsReference(
  script: (tracer: Tracer) => void,
  sampler: () => Sampler = () => new AlwaysOnSampler(),
  limits: SpanLimits = DEFAULT_LIMITS,
  remote?: Map<string, string>,
): ReturnType<typeof normalize> {
  const results = Object.entries(implementations).map(([name, make]) => {
    const h = make(sampler(), limits);
    script(h.tracer);
    for (const span of h.finished()) {
      assert.deepEqual(
        h.endings.get(span),
        { endTime: span.endTime, duration: span.duration, ended: false },
        `${name}: what onEnding saw of '${span.name}'`,
      );
    }
    return { name, spans: normalize(h.finished(), remote) };
  });
  const [reference, ...others] = results;
  for (const other of others)
    assert.deepEqual(other!.spans, reference!.spans, `${other!.name} vs ${reference!.name}`);
  return reference!.spans;
}

const weird = {
  ok: 'yes',
  n: 3,
  f: 1.5,
  b: false,
  list: ['a', 'b'],
  nums: [1, 2],
  nothing: null,
  undef: undefined,
  object: { not: 'allowed' },
  mixed: ['a', 1],
  '': 'empty key',
} as unknown as Attributes;

/** The span id of the caller in remoteParent(), by the name normalize gives it. */
const REMOTE_CALLER = new Map([['00f067aa0ba902b7', 'remote caller']]);

/** A sampled remote parent with trace state, as a traceparent/tracestate pair brings it. */
function remoteParent(): Context {
  return propagation.extract(ROOT_CONTEXT, {
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    tracestate: 'vendor=value',
  });
}

describe('LeanTracer exports what the SDK Tracer exports', () => {
  test('attributes (valid, invalid, overridden), events, exceptions, statuses, renames, work after end', () => {
    const spans = sameAsReference((tracer) => {
      const root = tracer.startSpan('root', { kind: SpanKind.SERVER, attributes: weird }, ROOT_CONTEXT);
      const ctx = trace.setSpan(ROOT_CONTEXT, root);
      const child = tracer.startSpan('child', { kind: SpanKind.CLIENT }, ctx);
      child.setAttribute('ok', 'first');
      child.setAttribute('ok', 'second');
      child.setAttributes({ more: 1, undef: undefined });
      child.addEvent('with attributes', { a: 1, bad: { x: 1 } as unknown as string });
      child.addEvent('plain');
      child.recordException(new Error('boom'));
      child.recordException('a string');
      child.recordException({ code: 42, message: 'coded' });
      child.setStatus({ code: SpanStatusCode.UNSET });
      child.setStatus({ code: SpanStatusCode.ERROR, message: 'failed' });
      child.updateName('child renamed');
      child.end();
      child.setAttribute('late', true);
      child.addEvent('late');
      child.setStatus({ code: SpanStatusCode.OK });
      child.updateName('too late');
      child.end();
      root.setStatus({ code: SpanStatusCode.OK });
      root.setStatus({ code: SpanStatusCode.ERROR, message: 'after ok' });
      root.addLink({ context: child.spanContext(), attributes: { why: 'follows' } });
      root.end();
    });
    assert.deepEqual(
      spans.map((s) => s.name),
      ['child renamed', 'root'],
    );
    assert.equal(spans[0]!.parent, 'root');
    assert.deepEqual(spans[0]!.attributes, { ok: 'second', more: 1 });
    assert.equal(spans[0]!.status.code, SpanStatusCode.ERROR);
    assert.equal(spans[1]!.status.code, SpanStatusCode.OK);
  });

  test('limits: attribute count and length, events, links, per-event and per-link attributes', () => {
    const limits: SpanLimits = {
      attributeValueLengthLimit: 4,
      attributeCountLimit: 3,
      eventCountLimit: 2,
      linkCountLimit: 1,
      attributePerEventCountLimit: 1,
      attributePerLinkCountLimit: 1,
    };
    const spans = sameAsReference(
      (tracer) => {
        const other = tracer.startSpan('other', {}, ROOT_CONTEXT);
        other.end();
        const span = tracer.startSpan(
          'limited',
          {
            attributes: { a: 'abcdefgh', b: ['long string', 'x'], c: 1, d: 2 },
            links: [{ context: other.spanContext() }],
          },
          ROOT_CONTEXT,
        );
        span.setAttribute('a', 'replaced, still truncated');
        span.setAttribute('e', 'dropped');
        for (let i = 0; i < 4; i++) span.addEvent(`event ${i}`, { x: 'long value', y: 2 });
        span.addLink({ context: other.spanContext(), attributes: { p: 1, q: 2 } });
        span.end();
      },
      undefined,
      limits,
    );
    const limited = spans.find((s) => s.name === 'limited')!;
    assert.equal(limited.droppedAttributesCount, 2);
    assert.equal(limited.droppedEventsCount, 2);
    assert.equal(limited.droppedLinksCount, 1);
  });

  test('samplers: a parent-based sampler follows the parent; root: true; suppressed tracing', () => {
    sameAsReference(
      (tracer) => {
        const root = tracer.startSpan('unsampled root', {}, ROOT_CONTEXT);
        assert.equal(root.isRecording(), false);
        const child = tracer.startSpan('child of unsampled', {}, trace.setSpan(ROOT_CONTEXT, root));
        assert.equal(child.isRecording(), false);
        assert.equal(child.spanContext().traceId, root.spanContext().traceId);
        child.end();
        root.end();
      },
      () => new ParentBasedSampler({ root: new AlwaysOffSampler() }),
    );
    sameAsReference((tracer) => {
      const outer = tracer.startSpan('outer', {}, ROOT_CONTEXT);
      const fresh = tracer.startSpan('fresh root', { root: true }, trace.setSpan(ROOT_CONTEXT, outer));
      const suppressed = tracer.startSpan('suppressed', {}, suppressTracing(ROOT_CONTEXT));
      assert.equal(suppressed.isRecording(), false);
      suppressed.end();
      fresh.end();
      outer.end();
    });
  });

  test('a remote parent from a traceparent: its trace, trace state and span as parent', () => {
    const spans = sameAsReference(
      (tracer) => {
        const parent = remoteParent();
        const span = tracer.startSpan('server', { kind: SpanKind.SERVER }, parent);
        assert.equal(span.spanContext().traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
        span.end();
      },
      undefined,
      undefined,
      REMOTE_CALLER,
    );
    assert.equal(spans[0]!.parent, 'remote caller');
    assert.equal(spans[0]!.parentIsRemote, true);
    assert.equal(spans[0]!.traceState, 'vendor=value');
  });

  test('a parent-based sampler: children of a sampled parent, local or remote, are recorded', () => {
    const spans = sameAsReference(
      (tracer) => {
        // The root sampler never samples: only the sampled parent's decision records these.
        const parent = remoteParent();
        const server = tracer.startSpan('server', { kind: SpanKind.SERVER, attributes: { a: 1 } }, parent);
        const child = tracer.startSpan('child', {}, trace.setSpan(parent, server));
        const unsampledRoot = tracer.startSpan('unsampled root', {}, ROOT_CONTEXT);
        assert.equal(unsampledRoot.isRecording(), false);
        unsampledRoot.end();
        child.end();
        server.end();
      },
      () => new ParentBasedSampler({ root: new AlwaysOffSampler() }),
      undefined,
      REMOTE_CALLER,
    );
    assert.deepEqual(
      spans.map((s) => [s.name, s.parent, s.traceFlags, s.traceState]),
      [
        ['child', 'server', 1, 'vendor=value'],
        ['server', 'remote caller', 1, 'vendor=value'],
      ],
    );
  });

  test('attribute keys in the order of the SDK span attributes object, read during and after the span', () => {
    const orders = Object.entries(implementations).map(([name, make]) => {
      const h = make(new AlwaysOnSampler(), { ...DEFAULT_LIMITS, attributeCountLimit: 5 });
      const span = h.tracer.startSpan('ordered', { attributes: { b: 1, 7: 'seven' } }, ROOT_CONTEXT);
      const during = Object.keys((span as unknown as ReadableSpan).attributes);
      span.setAttributes({ a: [1, 2], 2: true, b: 'again' });
      span.setAttribute('10', 'ten');
      span.setAttribute('over the limit', 1);
      span.end();
      const [s] = h.finished();
      return { name, during, after: Object.entries(s!.attributes), dropped: s!.droppedAttributesCount };
    });
    for (const other of orders.slice(1))
      assert.deepEqual({ ...other, name: '' }, { ...orders[0]!, name: '' });
    assert.deepEqual(
      orders[0]!.after.map(([k]) => k),
      ['2', '7', '10', 'b', 'a'],
    );
  });

  test('explicit start, event and end times are kept as given', () => {
    for (const [name, make] of Object.entries(implementations)) {
      const h = make(new AlwaysOnSampler(), DEFAULT_LIMITS);
      const span = h.tracer.startSpan('timed', { startTime: new Date(1_700_000_000_123) }, ROOT_CONTEXT);
      span.addEvent('at', [1_700_000_000, 500]);
      span.end([1_700_000_001, 250_000_000]);
      const [s] = h.finished();
      assert.deepEqual(s!.startTime, [1_700_000_000, 123_000_000], name);
      assert.deepEqual(s!.events[0]!.time, [1_700_000_000, 500], name);
      assert.deepEqual(s!.endTime, [1_700_000_001, 250_000_000], name);
      assert.deepEqual(s!.duration, [1, 127_000_000], name);
    }
  });

  test('startActiveSpan makes the span active inside the callback and returns its result', () => {
    for (const make of Object.values(implementations)) {
      const h = make(new AlwaysOnSampler(), DEFAULT_LIMITS);
      const result = h.tracer.startActiveSpan('active', (span: Span) => {
        assert.equal(trace.getActiveSpan(), span);
        const inner = h.tracer.startSpan('inner');
        inner.end();
        span.end();
        return 7;
      });
      assert.equal(result, 7);
      const [inner, active] = h.finished();
      assert.equal(inner!.parentSpanContext?.spanId, active!.spanContext().spanId);
      assert.equal(context.active(), ROOT_CONTEXT);
    }
  });

  test('times are the wall clock: a span started now starts within a few ms of Date.now()', () => {
    for (const make of Object.values(implementations)) {
      const h = make(new AlwaysOnSampler(), DEFAULT_LIMITS);
      const before = Date.now();
      h.tracer.startSpan('now', {}, ROOT_CONTEXT).end();
      const [s] = h.finished();
      const startMs = s!.startTime[0] * 1000 + s!.startTime[1] / 1e6;
      assert.ok(Math.abs(startMs - before) < 50, `${startMs} vs ${before}`);
    }
  });

  test('event and link attributes keep null and undefined values (and count them); kept arrays are copies', () => {
    const limits: SpanLimits = {
      ...DEFAULT_LIMITS,
      attributePerEventCountLimit: 1,
      attributePerLinkCountLimit: 1,
    };
    sameAsReference(
      (tracer) => {
        const startList = ['a', 'b'];
        const other = tracer.startSpan('other', {}, ROOT_CONTEXT);
        other.end();
        const span = tracer.startSpan('arrays and nulls', { attributes: { startList } }, ROOT_CONTEXT);
        const setList = [1, 2];
        span.setAttribute('setList', setList);
        const eventList = ['x'];
        span.addEvent('undefined first', { a: undefined, b: 1 } as unknown as Attributes);
        span.addEvent('null', { n: null } as unknown as Attributes);
        span.addEvent('array', { eventList });
        span.addLink({
          context: other.spanContext(),
          attributes: { gone: null, kept: 1 } as unknown as Attributes,
        });
        // Changing the caller's arrays afterwards must not change what was recorded.
        startList.push('changed');
        setList.push(3);
        eventList.push('changed');
        span.end();
      },
      undefined,
      limits,
    );
  });
});
