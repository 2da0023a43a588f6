// EagerOtlpSpanProcessor's batching contract, with a recording delivery in place of the HTTP
// delegate (the real delivery is exercised end to end by telemetry-export.test.ts): a full batch
// is exported at once and equals the reference encoding of its spans; a partial one after the
// schedule delay or on forceFlush; unsampled spans are skipped; at most maxQueueSize spans are
// buffered or in flight and the rest are dropped; losses (drops, failed exports) are reported;
// a request buffer is reused only after a successful export; after shutdown nothing more is taken.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { ROOT_CONTEXT } from '@opentelemetry/api';
import { type ExportResult, ExportResultCode } from '@opentelemetry/core';
import type { IOtlpExportDelegate } from '@opentelemetry/otlp-exporter-base';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOnSampler,
  ParentBasedSampler,
  RandomIdGenerator,
  type ReadableSpan,
  type SpanProcessor,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import { type BatchLimits, resolveTelemetryConfig } from '../src/telemetry/config.js';
import {
  createProtobufTraceDelivery,
  EagerOtlpSpanProcessor,
  type EncodedTraceRequest,
  stderrReporter,
} from '../src/telemetry/eager-otlp-processor.js';
import { LeanTracer } from '../src/telemetry/lean-tracer.js';
import { markersSeenByNewResources } from './trace-helpers.js';

interface Sent {
  request: EncodedTraceRequest;
  /** A copy taken when the request was handed over (the processor may reuse the buffer later). */
  bytes: Buffer;
  answer(code: ExportResultCode): void;
}

/** A delivery that records every request and answers only when the test says so. */
function recordingDelivery(): IOtlpExportDelegate<EncodedTraceRequest> & { sent: Sent[]; shutDown: boolean } {
  const sent: Sent[] = [];
  const delivery = {
    sent,
    shutDown: false,
    export(request: EncodedTraceRequest, done: (result: ExportResult) => void) {
      sent.push({ request, bytes: Buffer.from(request.bytes), answer: (code) => done({ code }) });
    },
    forceFlush: async () => {},
    shutdown: async () => {
      delivery.shutDown = true;
    },
    setMetrics: () => {},
  };
  return delivery;
}

const resource = resourceFromAttributes({ 'service.name': 'eager-test' });

/** A tracer whose spans go to `processor` and, for comparison, are kept in `ended`. */
function tracerWith(processor: SpanProcessor, sampled = true) {
  const ended: ReadableSpan[] = [];
  const keep: SpanProcessor = {
    onStart: () => {},
    onEnd: (span) => ended.push(span),
    forceFlush: async () => {},
    shutdown: async () => {},
  };
  const tracer = new LeanTracer({
    resource,
    scope: { name: 'kvroute' },
    sampler: sampled
      ? new AlwaysOnSampler()
      : new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0) }),
    idGenerator: new RandomIdGenerator(),
    processors: [processor, keep],
    limits: resolveTelemetryConfig('t', {}).limits,
  });
  const make = (n: number) => {
    for (let i = 0; i < n; i++) {
      const span = tracer.startSpan(`span ${ended.length}`, { attributes: { i } }, ROOT_CONTEXT);
      span.end();
    }
  };
  return { make, ended };
}

const limits = (over: Partial<BatchLimits> = {}): BatchLimits => ({
  maxQueueSize: 2048,
  maxExportBatchSize: 512,
  scheduledDelayMillis: 60_000,
  ...over,
});

const reference = (spans: ReadableSpan[]) => Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(condition(), what);
}

test('a full batch goes out at once and is the reference encoding of exactly those spans', () => {
  const delivery = recordingDelivery();
  const { make, ended } = tracerWith(new EagerOtlpSpanProcessor(delivery, limits({ maxExportBatchSize: 8 })));
  make(7);
  assert.equal(delivery.sent.length, 0);
  make(1);
  assert.equal(delivery.sent.length, 1);
  assert.equal(delivery.sent[0]!.request.spanCount, 8);
  assert.ok(delivery.sent[0]!.bytes.equals(reference(ended.slice(0, 8))));
  make(8);
  assert.equal(delivery.sent.length, 2);
  assert.ok(delivery.sent[1]!.bytes.equals(reference(ended.slice(8, 16))));
});

test('a partial batch goes out after the schedule delay', async () => {
  const delivery = recordingDelivery();
  const { make, ended } = tracerWith(
    new EagerOtlpSpanProcessor(delivery, limits({ scheduledDelayMillis: 20 })),
  );
  make(3);
  assert.equal(delivery.sent.length, 0);
  await until(() => delivery.sent.length === 1, 'exported after the delay');
  assert.ok(delivery.sent[0]!.bytes.equals(reference(ended)));
});

test('forceFlush sends the partial batch and waits for its answer; shutdown ends intake', async () => {
  const delivery = recordingDelivery();
  const processor = new EagerOtlpSpanProcessor(delivery, limits());
  const { make } = tracerWith(processor);
  make(5);
  let flushed = false;
  const flush = processor.forceFlush().then(() => {
    flushed = true;
  });
  assert.equal(delivery.sent.length, 1);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(flushed, false, 'waits for the export to be answered');
  delivery.sent[0]!.answer(ExportResultCode.SUCCESS);
  await flush;
  const shutdown = processor.shutdown();
  assert.equal(processor.shutdown(), shutdown, 'one shutdown');
  await shutdown;
  assert.equal(delivery.shutDown, true);
  make(600);
  assert.equal(delivery.sent.length, 1, 'nothing is taken after shutdown');
});

test('unsampled spans are not exported', async () => {
  const delivery = recordingDelivery();
  const processor = new EagerOtlpSpanProcessor(delivery, limits());
  const { make } = tracerWith(processor, false);
  make(10);
  const flush = processor.forceFlush();
  assert.equal(delivery.sent.length, 0);
  await flush;
});

test('bounded: at most maxQueueSize spans buffered or in flight, the rest dropped and reported', () => {
  const delivery = recordingDelivery();
  const reports: string[] = [];
  const report = (message: string) => reports.push(message) > 0;
  const { make } = tracerWith(
    new EagerOtlpSpanProcessor(delivery, limits({ maxQueueSize: 4, maxExportBatchSize: 2 }), report),
  );
  make(10); // nothing answered: two batches in flight fill the queue, six spans are dropped
  assert.deepEqual(
    delivery.sent.map((s) => s.request.spanCount),
    [2, 2],
  );
  assert.deepEqual(reports, [], 'told when an export is answered, not per dropped span');
  delivery.sent[0]!.answer(ExportResultCode.SUCCESS);
  assert.deepEqual(reports, ['6 spans dropped with the span queue full (OTEL_BSP_MAX_QUEUE_SIZE 4)']);
  make(2); // room for two again
  assert.deepEqual(
    delivery.sent.map((s) => s.request.spanCount),
    [2, 2, 2],
  );
});

test('at most maxQueueSize / maxExportBatchSize exports wait for the collector; a batch due meanwhile waits its turn', async () => {
  // A slow collector and a short delay: each delay would otherwise start one more export.
  const delivery = recordingDelivery();
  const reports: string[] = [];
  const report = (message: string) => reports.push(message) > 0;
  const { make } = tracerWith(
    new EagerOtlpSpanProcessor(
      delivery,
      limits({ maxQueueSize: 6, maxExportBatchSize: 2, scheduledDelayMillis: 5 }),
      report,
    ),
  );
  for (let i = 1; i <= 3; i++) {
    make(1);
    await until(() => delivery.sent.length === i, `partial batch ${i} exported after the delay`);
  }
  make(2); // a full batch, due at once, while the bound of 3 exports wait
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(delivery.sent.length, 3, 'held back, not a fourth export');
  make(1); // the held batch is full: this span is dropped, the batch never exceeds its size
  delivery.sent[0]!.answer(ExportResultCode.SUCCESS);
  assert.deepEqual(
    delivery.sent.map((s) => s.request.spanCount),
    [1, 1, 1, 2],
    'the held batch leaves as soon as one export is answered',
  );
  assert.deepEqual(reports, ['1 spans dropped with the span queue full (OTEL_BSP_MAX_QUEUE_SIZE 6)']);
  for (const s of delivery.sent.slice(1)) s.answer(ExportResultCode.SUCCESS);
});

test('failed exports are reported with their span count; a rate-limited report carries the count over', () => {
  const delivery = recordingDelivery();
  const reports: string[] = [];
  let accept = false;
  const report = (message: string) => {
    if (accept) reports.push(message);
    return accept;
  };
  const { make } = tracerWith(
    new EagerOtlpSpanProcessor(delivery, limits({ maxExportBatchSize: 2 }), report),
  );
  make(4);
  delivery.sent[0]!.answer(ExportResultCode.FAILED);
  assert.deepEqual(reports, []);
  accept = true;
  delivery.sent[1]!.answer(ExportResultCode.FAILED);
  assert.deepEqual(reports, ['4 spans not exported (unknown error)']);
  make(2);
  delivery.sent[2]!.answer(ExportResultCode.SUCCESS);
  assert.equal(reports.length, 1, 'nothing lost, nothing said');
});

test('a request buffer is reused after a successful export, never after a failed one', () => {
  const delivery = recordingDelivery();
  const { make } = tracerWith(
    new EagerOtlpSpanProcessor(delivery, limits({ maxExportBatchSize: 2 }), () => true),
  );
  make(2);
  const first = delivery.sent[0]!;
  first.answer(ExportResultCode.FAILED);
  make(2);
  const second = delivery.sent[1]!;
  assert.notEqual(
    second.request.bytes.buffer,
    first.request.bytes.buffer,
    'a failed request keeps its buffer',
  );
  assert.ok(Buffer.from(first.request.bytes).equals(first.bytes), 'the failed request bytes are untouched');
  second.answer(ExportResultCode.SUCCESS);
  make(2);
  assert.equal(
    delivery.sent[2]!.request.bytes.buffer,
    second.request.bytes.buffer,
    'an answered buffer is reused',
  );
});

test('the default reporter writes one stderr line per interval and says when it did; a final one always', () => {
  const lines: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => lines.push(chunk) > 0) as typeof process.stderr.write;
  try {
    const report = stderrReporter(60_000);
    assert.equal(report('first'), true);
    assert.equal(report('second'), false);
    assert.equal(report('last', true), true);
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(lines, ['kvroute tracing: first\n', 'kvroute tracing: last\n']);
});

test('shutdown says what a rate-limited report held back', async () => {
  const delivery = recordingDelivery();
  const reports: [string, boolean | undefined][] = [];
  const report = (message: string, final?: boolean) => {
    reports.push([message, final]);
    return final === true; // the rate limit holds every line but the final one
  };
  const processor = new EagerOtlpSpanProcessor(delivery, limits({ maxExportBatchSize: 2 }), report);
  const { make } = tracerWith(processor);
  make(2);
  delivery.sent[0]!.answer(ExportResultCode.FAILED);
  assert.deepEqual(reports, [['2 spans not exported (unknown error)', false]]);
  await processor.shutdown();
  assert.deepEqual(reports.at(-1), ['2 spans not exported (unknown error)', true]);
});

test('spans a collector rejects in an accepted export (partial success) are reported', async () => {
  // ExportTraceServiceResponse { partial_success { rejected_spans: 3, error_message: "quota" } }
  const partialSuccess = Buffer.from([0x0a, 9, 0x08, 3, 0x12, 5, ...Buffer.from('quota')]);
  const collector = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(partialSuccess));
  });
  collector.listen(0, '127.0.0.1');
  await once(collector, 'listening');
  const reports: string[] = [];
  let processor: EagerOtlpSpanProcessor | undefined;
  const delivery = createProtobufTraceDelivery(
    `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`,
    (count, message) => processor?.noteRejected(count, message),
  );
  processor = new EagerOtlpSpanProcessor(delivery, limits(), (message) => reports.push(message) > 0);
  try {
    tracerWith(processor).make(5);
    await processor.forceFlush();
    assert.deepEqual(reports, ['3 spans rejected by the collector (quota)']);
  } finally {
    await processor.shutdown();
    collector.close();
  }
});

test('the schedule-delay timer is armed in the root context, not in the span that opened the batch', async () => {
  const processor = new EagerOtlpSpanProcessor(recordingDelivery(), limits());
  const { make } = tracerWith(processor);
  assert.deepEqual(
    await markersSeenByNewResources(['Timeout'], () => make(2)),
    [{ type: 'Timeout', marker: undefined }], // one timer for the batch, armed outside the request
  );
});

test("an export started by the span that filled a batch holds nothing of that span's context", async () => {
  const delivery = recordingDelivery();
  const { make } = tracerWith(new EagerOtlpSpanProcessor(delivery, limits({ maxExportBatchSize: 4 })));
  // The export is pending until the collector answers: its promises must not pin the request.
  const seen = await markersSeenByNewResources(['PROMISE', 'Timeout'], () => make(4));
  assert.equal(delivery.sent.length, 1);
  assert.ok(seen.length > 0, 'the export made its promises');
  assert.deepEqual(new Set(seen.map((s) => s.marker)), new Set([undefined]));
});
