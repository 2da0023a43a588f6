// OTLP/protobuf encoding of finished spans (opentelemetry/proto trace/v1), one span at a time, so a
// span can be encoded the moment it ends and its objects die young (see eager-otlp-processor.ts).
// The wire output is byte-for-byte what @opentelemetry/otlp-transformer's ProtobufTraceSerializer
// writes for the same spans: same fields, same order, same defaults (test/telemetry-otlp-encoder).
// Pure and synchronous.
//
//   ExportTraceServiceRequest { 1: repeated ResourceSpans }
//   ResourceSpans { 1: Resource, 2: repeated ScopeSpans, 3: schema_url }
//   ScopeSpans    { 1: InstrumentationScope, 2: repeated Span, 3: schema_url }
//   Span { 1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name, 6 kind, 7 start,
//          8 end, 9 attributes, 10 dropped attrs, 11 events, 12 dropped events, 13 links,
//          14 dropped links, 15 status, 16 flags }

import type { Attributes, Link, SpanContext } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace-base';
import { epochSeconds, nanosPastSecond } from './epoch-ms.js';
import { ProtoWriter } from './proto-writer.js';

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;

// Span.flags: the W3C trace flags in the low byte, plus whether the parent's context was remote
// (and that this is known).
const FLAG_HAS_IS_REMOTE = 0x100;
const FLAG_IS_REMOTE = 0x200;

function spanFlags(traceFlags: number, parentIsRemote: boolean | undefined): number {
  return (traceFlags & 0xff) | FLAG_HAS_IS_REMOTE | (parentIsRemote ? FLAG_IS_REMOTE : 0);
}

// int64 bounds for int_value; both are powers of two, so exact as doubles.
const INT64_MIN = -(2 ** 63);
const INT64_MAX_EXCLUSIVE = 2 ** 63;

// A span's attribute keys repeat in every span: their `KeyValue.key` field (tag, length, UTF-8) is
// encoded once. Bounded, so keys built from data cannot grow it without limit.
const KEY_CACHE_LIMIT = 1024;
const keyFieldCache = new Map<string, Uint8Array>();

function keyField(key: string): Uint8Array {
  let field = keyFieldCache.get(key);
  if (field === undefined) {
    const w = new ProtoWriter(key.length * 3 + 8);
    w.tag(1, WIRE_LENGTH);
    w.string(key);
    field = w.toBytes();
    if (keyFieldCache.size < KEY_CACHE_LIMIT) keyFieldCache.set(key, field);
  }
  return field;
}

/** Each item as a length-delimited message in repeated field `field`. */
function writeMessages<T>(
  w: ProtoWriter,
  field: number,
  items: readonly T[],
  write: (w: ProtoWriter, item: T) => void,
): void {
  // Indexed: a for-of here kept its array iterator, one allocation per call (two per span).
  for (let i = 0; i < items.length; i++) {
    w.tag(field, WIRE_LENGTH);
    const message = w.begin();
    write(w, items[i]!);
    w.end(message);
  }
}

function writeAnyValue(w: ProtoWriter, value: unknown): void {
  switch (typeof value) {
    case 'string':
      w.tag(1, WIRE_LENGTH);
      w.string(value);
      return;
    case 'boolean':
      w.tag(2, WIRE_VARINT);
      w.uint32(value ? 1 : 0);
      return;
    case 'number':
      if (Number.isInteger(value) && value >= INT64_MIN && value < INT64_MAX_EXCLUSIVE) {
        w.tag(3, WIRE_VARINT);
        w.int64(value);
      } else {
        w.tag(4, WIRE_FIXED64);
        w.double(value);
      }
      return;
    case 'object': {
      if (value === null) return;
      if (value instanceof Uint8Array) {
        w.tag(7, WIRE_LENGTH);
        w.bytes(value);
        return;
      }
      if (Array.isArray(value)) {
        w.tag(5, WIRE_LENGTH);
        const array = w.begin();
        writeMessages(w, 1, value, writeAnyValue);
        w.end(array);
        return;
      }
      w.tag(6, WIRE_LENGTH);
      const list = w.begin();
      writeAttributes(w, value as Record<string, unknown>, 1);
      w.end(list);
      return;
    }
    default:
    // undefined, functions, symbols, bigints: an empty AnyValue, as the reference encoder.
  }
}

/** One KeyValue in repeated field `field`. */
function writeKeyValue(w: ProtoWriter, field: number, key: string, value: unknown): void {
  w.tag(field, WIRE_LENGTH);
  const keyValue = w.begin();
  w.raw(keyField(key));
  w.tag(2, WIRE_LENGTH);
  const any = w.begin();
  writeAnyValue(w, value);
  w.end(any);
  w.end(keyValue);
}

/** Each own key of `attributes` as a KeyValue in repeated field `field`. */
function writeAttributes(
  w: ProtoWriter,
  attributes: Attributes | Record<string, unknown>,
  field: number,
): void {
  for (const key in attributes) {
    if (Object.hasOwn(attributes, key)) writeKeyValue(w, field, key, attributes[key]);
  }
}

/**
 * A span that also has its attributes as keys and values interleaved, in the order of its
 * `attributes` object (LeanSpan): the encoder reads those instead. Undefined: read `attributes`.
 */
export interface AttributesInOrder {
  readonly attributesInOrder: readonly unknown[] | undefined;
}

/**
 * A span that also has its start and end as epoch milliseconds (LeanSpan): the encoder writes
 * those without making an HrTime per time. NaN: read `startTime` / `endTime` instead.
 */
export interface EpochMsTimes {
  readonly startEpochMs: number;
  readonly endEpochMs: number;
}

/** Epoch milliseconds as fixed64 nanoseconds: the bytes their HrTime (epoch-ms.ts) would give. */
function writeEpochMs(w: ProtoWriter, epochMs: number): void {
  const seconds = epochSeconds(epochMs);
  w.hrTimeFixed64(seconds, nanosPastSecond(epochMs, seconds));
}

function writeEvent(w: ProtoWriter, event: TimedEvent): void {
  w.tag(1, WIRE_FIXED64);
  w.hrTimeFixed64(event.time[0], event.time[1]);
  w.tag(2, WIRE_LENGTH);
  w.string(event.name);
  if (event.attributes) writeAttributes(w, event.attributes, 3);
  w.tag(4, WIRE_VARINT);
  w.uint32(event.droppedAttributesCount ?? 0);
}

/** trace_id, span_id and trace_state: fields 1, 2 and 3 of both Span and Span.Link. */
function writeIdsAndState(w: ProtoWriter, ctx: SpanContext): void {
  w.tag(1, WIRE_LENGTH);
  w.hexBytes(ctx.traceId);
  w.tag(2, WIRE_LENGTH);
  w.hexBytes(ctx.spanId);
  const traceState = ctx.traceState?.serialize();
  if (traceState) {
    w.tag(3, WIRE_LENGTH);
    w.string(traceState);
  }
}

function writeLink(w: ProtoWriter, link: Link): void {
  const ctx = link.context;
  writeIdsAndState(w, ctx);
  if (link.attributes) writeAttributes(w, link.attributes, 4);
  w.tag(5, WIRE_VARINT);
  w.uint32(link.droppedAttributesCount ?? 0);
  w.tag(6, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, ctx.isRemote));
}

/** One Span message's fields (without its own tag and length). */
export function writeSpan(w: ProtoWriter, span: ReadableSpan): void {
  const ctx: SpanContext = span.spanContext();
  writeIdsAndState(w, ctx);
  const parent = span.parentSpanContext;
  if (parent?.spanId) {
    w.tag(4, WIRE_LENGTH);
    w.hexBytes(parent.spanId);
  }
  w.tag(5, WIRE_LENGTH);
  w.string(span.name);
  // OTLP's SpanKind counts from 1 (0 is "unspecified"); the API's from 0.
  w.tag(6, WIRE_VARINT);
  w.uint32(span.kind + 1);
  const { startEpochMs, endEpochMs } = span as ReadableSpan & Partial<EpochMsTimes>;
  w.tag(7, WIRE_FIXED64);
  if (startEpochMs === undefined || Number.isNaN(startEpochMs)) {
    const start = span.startTime;
    w.hrTimeFixed64(start[0], start[1]);
  } else writeEpochMs(w, startEpochMs);
  w.tag(8, WIRE_FIXED64);
  if (endEpochMs === undefined || Number.isNaN(endEpochMs)) {
    const end = span.endTime;
    w.hrTimeFixed64(end[0], end[1]);
  } else writeEpochMs(w, endEpochMs);
  const inOrder = (span as ReadableSpan & Partial<AttributesInOrder>).attributesInOrder;
  if (inOrder === undefined) writeAttributes(w, span.attributes, 9);
  else for (let i = 0; i < inOrder.length; i += 2) writeKeyValue(w, 9, inOrder[i] as string, inOrder[i + 1]);
  w.tag(10, WIRE_VARINT);
  w.uint32(span.droppedAttributesCount);
  writeMessages(w, 11, span.events, writeEvent);
  w.tag(12, WIRE_VARINT);
  w.uint32(span.droppedEventsCount);
  writeMessages(w, 13, span.links, writeLink);
  w.tag(14, WIRE_VARINT);
  w.uint32(span.droppedLinksCount);
  w.tag(15, WIRE_LENGTH);
  const status = w.begin();
  if (span.status.message) {
    w.tag(2, WIRE_LENGTH);
    w.string(span.status.message);
  }
  w.tag(3, WIRE_VARINT);
  w.uint32(span.status.code);
  w.end(status);
  w.tag(16, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, parent?.isRemote));
}

/** A Resource message's fields. Its attributes must have settled (no async attributes pending). */
export function writeResource(w: ProtoWriter, resource: Resource): void {
  writeAttributes(w, resource.attributes, 1);
  w.tag(2, WIRE_VARINT);
  w.uint32(0);
}

/** An InstrumentationScope message's fields. */
export function writeScope(w: ProtoWriter, scope: InstrumentationScope): void {
  w.tag(1, WIRE_LENGTH);
  w.string(scope.name);
  if (scope.version) {
    w.tag(2, WIRE_LENGTH);
    w.string(scope.version);
  }
  // The SDK's scope type has no attributes today; encode them if a future one carries them.
  const { attributes, droppedAttributesCount } = scope as {
    attributes?: Attributes;
    droppedAttributesCount?: number;
  };
  if (attributes) writeAttributes(w, attributes, 3);
  if (droppedAttributesCount) {
    w.tag(4, WIRE_VARINT);
    w.uint32(droppedAttributesCount);
  }
}

/** The spans of one resource and instrumentation scope, each already a `ScopeSpans.spans` field. */
interface ScopeGroup {
  resource: Resource;
  scope: InstrumentationScope;
  spans: ProtoWriter;
}

/**
 * Finished spans encoded as they arrive, grouped by resource and then instrumentation scope (by
 * identity, in order of first appearance, as the reference encoder groups a batch), until
 * `takeRequest` wraps them into one ExportTraceServiceRequest. Memory: the encoded bytes only
 * (~250 B per span with a handful of attributes), in buffers reused from batch to batch.
 */
export class EncodedSpanBatch {
  private groups: ScopeGroup[] = [];
  private last: ScopeGroup | undefined;
  private readonly spareWriters: ProtoWriter[] = [];
  private readonly scopeMessage = new ProtoWriter(256);
  /** Spans added since the last `takeRequest`. */
  count = 0;

  add(span: ReadableSpan): void {
    let group = this.last;
    if (
      group === undefined ||
      group.scope !== span.instrumentationScope ||
      group.resource !== span.resource
    ) {
      group = this.groupFor(span.resource, span.instrumentationScope);
      this.last = group;
    }
    const w = group.spans;
    w.tag(2, WIRE_LENGTH);
    const message = w.begin();
    writeSpan(w, span);
    w.end(message);
    this.count++;
  }

  private groupFor(resource: Resource, scope: InstrumentationScope): ScopeGroup {
    for (const group of this.groups) {
      if (group.resource === resource && group.scope === scope) return group;
    }
    const group = { resource, scope, spans: this.spareWriters.pop() ?? new ProtoWriter() };
    this.groups.push(group);
    return group;
  }

  /** The resources holding spans now: their async attributes must settle before `takeRequest`. */
  resources(): Resource[] {
    return [...new Set(this.groups.map((g) => g.resource))];
  }

  /**
   * Every span added so far as one ExportTraceServiceRequest, written into `out` from its start
   * (a writer the caller reuses once the request is sent); empties the batch. Returns the bytes,
   * a view of `out`'s buffer.
   */
  takeRequest(out: ProtoWriter = new ProtoWriter(64 * 1024)): Uint8Array {
    out.reset();
    const scopeMessage = this.scopeMessage;
    const resourcesInOrder = this.resources();
    for (const resource of resourcesInOrder) {
      out.tag(1, WIRE_LENGTH);
      const resourceSpans = out.begin();
      out.tag(1, WIRE_LENGTH);
      const resourceMessage = out.begin();
      writeResource(out, resource);
      out.end(resourceMessage);
      for (const group of this.groups) {
        if (group.resource !== resource) continue;
        // ScopeSpans { scope, spans..., schema_url }: its length is known before it is written.
        scopeMessage.reset();
        scopeMessage.tag(1, WIRE_LENGTH);
        const scope = scopeMessage.begin();
        writeScope(scopeMessage, group.scope);
        scopeMessage.end(scope);
        const schemaStart = scopeMessage.pos;
        const schemaUrl = group.scope.schemaUrl;
        if (schemaUrl) {
          scopeMessage.tag(3, WIRE_LENGTH);
          scopeMessage.string(schemaUrl);
        }
        out.tag(2, WIRE_LENGTH);
        out.uint32(scopeMessage.pos + group.spans.pos);
        out.raw(scopeMessage.buf.subarray(0, schemaStart));
        out.raw(group.spans.buf.subarray(0, group.spans.pos));
        out.raw(scopeMessage.buf.subarray(schemaStart, scopeMessage.pos));
        group.spans.reset();
        this.spareWriters.push(group.spans);
      }
      if (resource.schemaUrl) {
        out.tag(3, WIRE_LENGTH);
        out.string(resource.schemaUrl);
      }
      out.end(resourceSpans);
    }
    this.groups = [];
    this.last = undefined;
    this.count = 0;
    return out.buf.subarray(0, out.pos);
  }
}
