// The span processor behind the default OTLP/protobuf export: a batch processor that encodes each
// sampled span into its batch's protobuf bytes the moment the span ends, instead of queueing the
// span object until the batch is serialized.
//
// Why: the SDK's BatchSpanProcessor keeps every finished span (with its attributes, events, ids
// and times) until its batch of 512 is exported, tens of milliseconds at a router's rates. That is
// long enough for the young-generation GC to copy each span twice and promote it, and the old
// generation then collects it: in the real processes this doubled what a span costs (bench
// tracing; docs/tracing.md). Encoded at `onEnd`, a span's objects die young; the batch holds ~250
// bytes per span in reused buffers. The wire output is the reference encoder's, byte for byte.
//
// Delivery goes through @opentelemetry/otlp-exporter-base's HTTP export delegate, the same one the
// official OTLP/protobuf exporter uses, so OTEL_EXPORTER_OTLP_* headers, timeout, compression and
// retries behave exactly as they do there.
//
// Bounds: at most `maxQueueSize` spans are buffered or in flight, and at most maxQueueSize /
// maxExportBatchSize exports (4 at the defaults) are in flight: a batch due while that many wait
// for the collector is held until one is answered (a slow collector would otherwise collect one
// export per schedule delay, each with its own request buffer, until the exporter's own limit
// failed them). Past either bound spans are dropped and counted, never queued without limit.
// Lost spans are never silent: dropped spans and failed exports are reported (one stderr line at
// most every 30 s by default, with the counts since the last line), since nothing else would tell
// an operator that traces are missing. Exports run in the root context, so the exporter's sockets
// never hold on to a user's trace.

import { TraceFlags } from '@opentelemetry/api';
import { type ExportResult, ExportResultCode } from '@opentelemetry/core';
import type { IOtlpExportDelegate } from '@opentelemetry/otlp-exporter-base';
import {
  convertLegacyHttpOptions,
  createOtlpHttpExportDelegate,
} from '@opentelemetry/otlp-exporter-base/node-http';
import { type ISerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import type { ReadableSpan, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { BatchLimits } from './config.js';
import { withRootContext } from './context.js';
import { EncodedSpanBatch } from './otlp-span-encoder.js';
import { ProtoWriter } from './proto-writer.js';

/** One ExportTraceServiceRequest, already encoded. */
export interface EncodedTraceRequest {
  bytes: Uint8Array;
  spanCount: number;
}

type ExportResponse = ReturnType<typeof ProtobufTraceSerializer.deserializeResponse>;

/** Told when a collector accepts an export only in part (OTLP partial success): spans it dropped. */
export type RejectedSpansListener = (rejected: number, message: string) => void;

/**
 * The official OTLP/HTTP delivery (URL, OTEL_EXPORTER_OTLP_* settings) for pre-encoded requests.
 * A partial success still counts as a successful export there (and is only logged to `diag`), so
 * its rejected spans are handed to `onRejected`.
 */
export function createProtobufTraceDelivery(
  url: string,
  onRejected?: RejectedSpansListener,
): IOtlpExportDelegate<EncodedTraceRequest> {
  const passThrough: ISerializer<EncodedTraceRequest, ExportResponse> = {
    serializeRequest: (request) => request.bytes,
    deserializeResponse: (data) => {
      const response = ProtobufTraceSerializer.deserializeResponse(data);
      const rejected = Number(response.partialSuccess?.rejectedSpans ?? 0);
      if (rejected > 0) onRejected?.(rejected, response.partialSuccess?.errorMessage || 'no reason given');
      return response;
    },
  };
  return createOtlpHttpExportDelegate(
    convertLegacyHttpOptions({ url }, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' }),
    passThrough,
    'otlp_http_span_exporter',
    { name: 'span', countItems: (request) => request.spanCount },
    undefined,
  );
}

/**
 * Where the processor says that spans were lost. Returns false when it did not pass the message
 * on (rate limit): the counts then carry over into the next message. `final` (at shutdown) must
 * be passed on: there is no next message.
 */
export type TracingProblemReporter = (message: string, final?: boolean) => boolean;

const REPORT_INTERVAL_MS = 30_000;

/** A reporter that writes at most one line per interval to stderr (the rest is counted into the next). */
export function stderrReporter(intervalMs = REPORT_INTERVAL_MS): TracingProblemReporter {
  let lastAt = Number.NEGATIVE_INFINITY;
  return (message, final = false) => {
    const now = performance.now();
    if (!final && now - lastAt < intervalMs) return false;
    lastAt = now;
    process.stderr.write(`kvroute tracing: ${message}\n`);
    return true;
  };
}

export class EagerOtlpSpanProcessor implements SpanProcessor {
  private readonly batch = new EncodedSpanBatch();
  /**
   * Request buffers not in use. A request's bytes stay with the exporter until it is answered;
   * then its buffer comes back here, so steady exporting allocates no new ~150 KB buffers (each
   * one is external memory the GC accounts for). At most maxQueueSize / maxExportBatchSize exist.
   */
  private readonly spareRequestWriters: ProtoWriter[] = [];
  /** Spans handed to the delivery and not answered yet. */
  private inFlight = 0;
  private readonly exports = new Set<Promise<void>>();
  private readonly maxConcurrentExports: number;
  /** Exports handed to the delivery and not answered yet (counted at once, unlike `exports`). */
  private exportsInFlight = 0;
  /** A batch was due while `maxConcurrentExports` were in flight: sent when one is answered. */
  private exportHeldBack = false;
  private resourcesSettling: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Spans lost since the last report, and why. */
  private dropped = 0;
  private failedSpans = 0;
  private lastFailure = '';
  private rejectedSpans = 0;
  private lastRejection = '';
  private shuttingDown: Promise<void> | undefined;

  constructor(
    private readonly delivery: IOtlpExportDelegate<EncodedTraceRequest>,
    private readonly limits: BatchLimits,
    private readonly report: TracingProblemReporter = stderrReporter(),
  ) {
    this.maxConcurrentExports = Math.max(1, Math.ceil(limits.maxQueueSize / limits.maxExportBatchSize));
  }

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    if (this.shuttingDown !== undefined) return;
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    // A full batch still here is held back (exports at their bound, or resources settling).
    if (
      this.batch.count + this.inFlight >= this.limits.maxQueueSize ||
      this.batch.count >= this.limits.maxExportBatchSize
    ) {
      // Counted here, told when the next export is answered (cheap while overloaded).
      this.dropped++;
      return;
    }
    this.batch.add(span);
    // Exported from the root context: the export's promises live until the collector answers,
    // and would keep the context of the request whose span filled the batch as long.
    if (this.batch.count >= this.limits.maxExportBatchSize) withRootContext(() => this.exportBatch());
    else if (this.timer === undefined) {
      // Armed in the root context: made here, in whichever request's span just ended, the timer
      // would hold that request's context (and span) until it fires, and export inside it.
      this.timer = withRootContext(() =>
        setTimeout(() => this.exportBatch(), this.limits.scheduledDelayMillis),
      );
      this.timer.unref();
    }
  }

  /** Sends what is buffered; resolves when every export so far has been answered. */
  async forceFlush(): Promise<void> {
    // Two rounds: the exports in flight (and the batch, unless they are at their bound), then the
    // batch the bound held back, which leaves as soon as one of them is answered.
    for (let round = 0; round < 2; round++) {
      this.exportBatch();
      await this.resourcesSettling;
      if (this.exports.size === 0) break;
      await Promise.all(this.exports);
    }
    await this.delivery.forceFlush();
  }

  shutdown(): Promise<void> {
    this.shuttingDown ??= this.forceFlush()
      .then(() => this.delivery.shutdown())
      // Whatever a rate-limited report held back is said now: there is no later export.
      .finally(() => this.reportLosses(true));
    return this.shuttingDown;
  }

  /** Spans the collector dropped from an accepted export (partial success); told with the next report. */
  noteRejected(count: number, message: string): void {
    this.rejectedSpans += count;
    this.lastRejection = message;
  }

  /** Tells the reporter what was lost since it last heard; it may drop the line (rate limit). */
  private reportLosses(final = false): void {
    const parts: string[] = [];
    if (this.failedSpans > 0) parts.push(`${this.failedSpans} spans not exported (${this.lastFailure})`);
    if (this.rejectedSpans > 0)
      parts.push(`${this.rejectedSpans} spans rejected by the collector (${this.lastRejection})`);
    if (this.dropped > 0)
      parts.push(
        `${this.dropped} spans dropped with the span queue full (OTEL_BSP_MAX_QUEUE_SIZE ${this.limits.maxQueueSize})`,
      );
    if (parts.length === 0 || !this.report(parts.join('; '), final)) return;
    this.failedSpans = 0;
    this.rejectedSpans = 0;
    this.dropped = 0;
  }

  private exportBatch(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.batch.count === 0 || this.resourcesSettling !== undefined) return;
    if (this.exportsInFlight >= this.maxConcurrentExports) {
      this.exportHeldBack = true;
      return;
    }
    // A resource with async attributes (from detectors) cannot be encoded until they settle.
    const pending = this.batch.resources().filter((r) => r.asyncAttributesPending);
    if (pending.length > 0) {
      this.resourcesSettling = Promise.all(pending.map((r) => r.waitForAsyncAttributes?.())).then(() => {
        this.resourcesSettling = undefined;
        this.exportBatch();
      });
      return;
    }
    const writer = this.spareRequestWriters.pop() ?? new ProtoWriter(256 * 1024);
    const request: EncodedTraceRequest = {
      spanCount: this.batch.count,
      bytes: this.batch.takeRequest(writer),
    };
    this.inFlight += request.spanCount;
    this.exportsInFlight++;
    const answered = new Promise<void>((resolve) => {
      withRootContext(() =>
        this.delivery.export(request, (result: ExportResult) => {
          this.inFlight -= request.spanCount;
          this.exportsInFlight--;
          // Only an answered request is surely done with its bytes: after a failure (a timeout
          // among them) the socket might still be reading them, so that buffer is left to the GC.
          if (result.code === ExportResultCode.SUCCESS) this.spareRequestWriters.push(writer);
          else {
            this.failedSpans += request.spanCount;
            this.lastFailure = result.error?.message ?? 'unknown error';
          }
          this.reportLosses();
          resolve();
          if (this.exportHeldBack) {
            this.exportHeldBack = false;
            withRootContext(() => this.exportBatch());
          }
        }),
      );
    });
    this.exports.add(answered);
    void answered.then(() => this.exports.delete(answered));
  }
}
