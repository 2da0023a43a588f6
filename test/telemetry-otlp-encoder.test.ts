// The eager OTLP/protobuf encoder against the reference: for the same finished spans, the bytes of
// EncodedSpanBatch.takeRequest() must equal @opentelemetry/otlp-transformer's
// ProtobufTraceSerializer output exactly. Spans come from the real SDK (seeded random names,
// attributes of every type, events, links, statuses, kinds, remote parents), the same from
// LeanTracer (whose times the encoder reads as epoch milliseconds) and from hand-built
// spans at the edges (times past 2^53 ns, long and non-ASCII strings, lengths of 2 and 3 bytes).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type Attributes,
  type AttributeValue,
  context,
  type Link,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOnSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  RandomIdGenerator,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { resolveTelemetryConfig, type SpanLimits } from '../src/telemetry/config.js';
import { LeanTracer } from '../src/telemetry/lean-tracer.js';
import { EncodedSpanBatch } from '../src/telemetry/otlp-span-encoder.js';
import { ProtoWriter } from '../src/telemetry/proto-writer.js';
import { seededRng } from '../src/util/seeded-rng.js';

function reference(spans: ReadableSpan[]): Buffer {
  return Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
}

function eager(spans: ReadableSpan[], batch = new EncodedSpanBatch()): Buffer {
  for (const span of spans) batch.add(span);
  assert.equal(batch.count, spans.length);
  const bytes = Buffer.from(batch.takeRequest());
  assert.equal(batch.count, 0);
  return bytes;
}

function assertSameBytes(spans: ReadableSpan[], batch?: EncodedSpanBatch): void {
  const want = reference(spans);
  const got = eager(spans, batch);
  if (!got.equals(want)) {
    let i = 0;
    while (i < got.length && got[i] === want[i]) i++;
    assert.fail(`encodings differ at byte ${i} of ${want.length} (got ${got.length} bytes)`);
  }
}

const WORDS = ['kv', 'prefill', 'decode', 'worker', 'blöck', '路由', 'x'.repeat(130), '🚀', ''];

function randomValue(rng: () => number, depth = 0): AttributeValue {
  switch (Math.floor(rng() * 9)) {
    case 0:
      return WORDS[Math.floor(rng() * WORDS.length)]!;
    case 1:
      return rng() < 0.5;
    case 2:
      return Math.floor((rng() - 0.5) * 2 ** 40);
    case 3:
      return (rng() - 0.5) * 1e6;
    case 4:
      return -Math.floor(rng() * 2 ** 53);
    case 5:
      return [WORDS[Math.floor(rng() * 4)]!, WORDS[Math.floor(rng() * 4)]!];
    case 6:
      return [Math.floor(rng() * 1000), -7, 2 ** 60];
    case 7:
      return depth === 0 ? [true, false] : 'leaf';
    default:
      return 'x'.repeat(Math.floor(rng() * 20_000));
  }
}

function randomAttributes(rng: () => number, n: number): Attributes {
  const attributes: Attributes = {};
  for (let i = 0; i < n; i++) attributes[`${WORDS[i % 5]}.${i}`] = randomValue(rng);
  return attributes;
}

const testResource = resourceFromAttributes({ 'service.name': 'kvroute-test', 'host.name': 'höst' });

/** Spans made by the real SDK, with everything a span can carry, from one seed. */
function sdkSpans(seed: number, count: number): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: testResource,
    spanProcessors: [new SimpleSpanProcessor(exporter)],
    spanLimits: { attributeCountLimit: 64, eventCountLimit: 3, linkCountLimit: 2 },
  });
  scriptSpans(seed, count, [provider.getTracer('kvroute'), provider.getTracer('other-scope', '1.2.3')]);
  return exporter.getFinishedSpans();
}

/** The same, made by LeanTracer (the spans the encoder meets in kvroute). */
function leanSpans(seed: number, count: number): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const options = {
    resource: testResource,
    sampler: new AlwaysOnSampler(),
    idGenerator: new RandomIdGenerator(),
    processors: [new SimpleSpanProcessor(exporter)],
    limits: {
      ...resolveTelemetryConfig('t', {}).limits,
      attributeCountLimit: 64,
      eventCountLimit: 3,
      linkCountLimit: 2,
    },
  };
  scriptSpans(seed, count, [
    new LeanTracer({ ...options, scope: { name: 'kvroute' } }),
    new LeanTracer({ ...options, scope: { name: 'other-scope', version: '1.2.3' } }),
  ]);
  return exporter.getFinishedSpans();
}

/** `count` spans with everything a span can carry, from one seed, made with `tracers`. */
function scriptSpans(seed: number, count: number, tracers: Tracer[]): void {
  const rng = seededRng(seed);
  const kinds = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER];
  for (let i = 0; i < count; i++) {
    const remote = rng() < 0.5;
    const parent = trace.setSpanContext(context.active(), {
      traceId: (seed * 7919 + i).toString(16).padStart(32, 'a'),
      spanId: (i + 1).toString(16).padStart(16, '0'),
      traceFlags: TraceFlags.SAMPLED,
      isRemote: remote,
      traceState: rng() < 0.3 ? new TraceState('vendor=abc,other=1') : undefined,
    });
    const links: Link[] =
      rng() < 0.4
        ? [
            {
              context: { traceId: 'f'.repeat(32), spanId: '1'.repeat(16), traceFlags: 0, isRemote: true },
              attributes: randomAttributes(rng, 2),
            },
            { context: { traceId: 'e'.repeat(32), spanId: '2'.repeat(16), traceFlags: 1 } },
          ]
        : [];
    const tracer = tracers[Math.floor(rng() * tracers.length)]!;
    const span = tracer.startSpan(
      `${WORDS[i % WORDS.length]} ${i}`,
      { kind: kinds[i % kinds.length], attributes: randomAttributes(rng, Math.floor(rng() * 8)), links },
      rng() < 0.8 ? parent : context.active(),
    );
    span.setAttributes(randomAttributes(rng, Math.floor(rng() * 6)));
    for (let e = 0; e < Math.floor(rng() * 5); e++) span.addEvent(`event ${e}`, randomAttributes(rng, e));
    const status = rng();
    if (status < 0.3) span.setStatus({ code: SpanStatusCode.ERROR, message: rng() < 0.5 ? 'bröken' : '' });
    else if (status < 0.5) span.setStatus({ code: SpanStatusCode.OK });
    span.end();
  }
}

describe('EncodedSpanBatch: byte-for-byte the reference OTLP encoding', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    test(`seed ${seed}: 60 SDK spans of two scopes`, () => {
      assertSameBytes(sdkSpans(seed, 60));
    });
  }

  /** A LeanTracer (always sampling) whose ended spans land in an in-memory exporter. */
  function leanTracerToMemory(limits: Partial<SpanLimits> = {}) {
    const exporter = new InMemorySpanExporter();
    const tracer = new LeanTracer({
      resource: testResource,
      scope: { name: 'kvroute' },
      sampler: new AlwaysOnSampler(),
      idGenerator: new RandomIdGenerator(),
      processors: [new SimpleSpanProcessor(exporter)],
      limits: { ...resolveTelemetryConfig('t', {}).limits, ...limits },
    });
    return { tracer, exporter };
  }

  for (const seed of [6, 7, 8]) {
    test(`seed ${seed}: 60 LeanTracer spans of two scopes`, () => {
      assertSameBytes(leanSpans(seed, 60));
    });
  }

  test('LeanTracer spans with explicit times, or with times read before they are encoded', () => {
    const { tracer, exporter } = leanTracerToMemory();
    tracer.startSpan('explicit', { startTime: new Date(1_700_000_000_123) }).end([1_700_000_001, 5]);
    tracer.startSpan('implicit times').end();
    const read = tracer.startSpan('start read early', { attributes: { a: 1 } });
    assert.ok(read.isRecording() && (read as unknown as ReadableSpan).startTime[0] > 0);
    read.setAttribute('a', 'overwritten');
    read.setAttribute('b', 2);
    read.end();
    tracer.startSpan('explicit end', { startTime: performance.timeOrigin }).end(Date.now());
    assertSameBytes(exporter.getFinishedSpans());
  });

  test('LeanTracer attributes: set again, over the count limit, keys an object puts first, __proto__', () => {
    const { tracer, exporter } = leanTracerToMemory({ attributeCountLimit: 4 });
    const plain = tracer.startSpan('plain', { attributes: { b: 1, a: 'x' } });
    plain.setAttributes({ b: 'again', c: [1, 2], d: true, e: 'dropped' });
    plain.end();
    const indexKeys = tracer.startSpan('index keys', { attributes: { b: 1, 7: 'seven' } });
    indexKeys.setAttribute('2', true);
    indexKeys.setAttribute('b', 'again');
    indexKeys.end();
    const proto = tracer.startSpan('proto', { attributes: { a: 1 } });
    proto.setAttribute('__proto__', 'not an own key');
    proto.setAttribute('z', 2);
    proto.end();
    assertSameBytes(exporter.getFinishedSpans());
  });

  test('a batch is reusable: the second request holds only the second batch', () => {
    const batch = new EncodedSpanBatch();
    assertSameBytes(sdkSpans(11, 30), batch);
    assertSameBytes(sdkSpans(12, 45), batch);
    assert.equal(batch.takeRequest().length, 0);
  });

  test('edge values: far-future times, 2- and 3-byte lengths, every attribute type', () => {
    const [base] = sdkSpans(21, 1);
    const huge = 'ü'.repeat(9000); // 18,000 UTF-8 bytes: a 3-byte length inside a string
    const edge: ReadableSpan = {
      name: huge,
      kind: SpanKind.CLIENT,
      spanContext: () => base!.spanContext(),
      parentSpanContext: base!.parentSpanContext,
      status: { code: SpanStatusCode.ERROR, message: 'x'.repeat(300) },
      events: base!.events,
      links: base!.links,
      duration: [1, 0],
      ended: true,
      resource: base!.resource,
      instrumentationScope: base!.instrumentationScope,
      startTime: [4_294_967_295, 999_999_999],
      endTime: [18_000_000_000, 1],
      attributes: {
        big: 2 ** 62,
        neg: -(2 ** 62),
        min: -(2 ** 63),
        tooBig: 2 ** 64,
        nan: Number.NaN,
        bytes: new Uint8Array([0, 1, 255]),
        nested: { a: 1, b: ['x', 2, true] },
        nothing: undefined,
        empty: '',
        long: 'y'.repeat(200),
      } as unknown as Attributes,
      droppedAttributesCount: 300,
      droppedEventsCount: 70_000,
      droppedLinksCount: 1,
    };
    assertSameBytes([edge, base!]);
  });
});

describe('ProtoWriter', () => {
  test('hrTimeFixed64 equals seconds*1e9+nanos for any second count below 2^32', () => {
    const rng = seededRng(5);
    const w = new ProtoWriter(16);
    for (let i = 0; i < 2000; i++) {
      const seconds = i < 3 ? [0, 4_294_967_295, 1_800_000_000][i]! : Math.floor(rng() * 2 ** 32);
      const nanos = Math.floor(rng() * 1e9);
      w.reset();
      w.hrTimeFixed64(seconds, nanos);
      const got = Buffer.from(w.buf.subarray(0, 8)).readBigUInt64LE(0);
      assert.equal(got, BigInt(seconds) * 1_000_000_000n + BigInt(nanos), `${seconds}s ${nanos}ns`);
    }
  });

  test('int64 writes two-s complement varints for negative integers', () => {
    const w = new ProtoWriter(4);
    for (const v of [
      0,
      1,
      127,
      128,
      2 ** 32 - 1,
      2 ** 32,
      2 ** 53 - 1,
      -1,
      -(2 ** 31),
      -(2 ** 53),
      -(2 ** 63),
    ]) {
      w.reset();
      w.int64(v);
      let value = 0n;
      let shift = 0n;
      for (let i = 0; i < w.pos; i++) {
        value |= BigInt(w.buf[i]! & 0x7f) << shift;
        shift += 7n;
      }
      assert.equal(BigInt.asIntN(64, value), BigInt(v), String(v));
      assert.ok(w.pos <= 10);
    }
  });

  test('a nested message of any length gets a minimal length prefix', () => {
    const w = new ProtoWriter(2);
    for (const n of [0, 127, 128, 16_383, 16_384, 70_000]) {
      w.reset();
      const start = w.begin();
      w.raw(new Uint8Array(n).fill(7));
      w.end(start);
      const prefix = n < 128 ? 1 : n < 16_384 ? 2 : 3;
      assert.equal(w.pos, n + prefix);
      assert.ok(w.buf.subarray(prefix, w.pos).every((b) => b === 7));
    }
  });
});
