// The tracer that records kvroute's spans when tracing is on: the SDK's sampler, resource, span
// processors and exporters, and an IdGenerator (pooled-id-generator.ts in kvroute), around a span
// object of our own that does only what a recorded span needs.
//
// Why not the SDK's Tracer and SpanImpl: a fully sampled request makes six spans, and on a mock
// request of ~120 µs of CPU the SDK's span machinery alone (two clock reads and an HrTime sum per
// timestamp, a sanitized copy of every attribute map, two regex checks of the parent's ids, the
// tracer's self-metrics, a multi-processor fan-out) cost about as much as everything else tracing
// does (docs/tracing.md). LeanSpan keeps the SDK's observable behaviour (same ReadableSpan
// contract, same attribute validation, limits, status and exception rules; one shared test suite
// runs both, test/telemetry-lean-tracer.test.ts) and drops the rest:
// - times are one performance.now() per start and end, against a wall-clock anchor refreshed
//   once a second (the start's anchor for both), kept as epoch milliseconds and turned into HrTime
//   only when read; the OTLP encoder writes them without one (startEpochMs, endEpochMs);
// - attributes are validated and stored in one pass, without a sanitized copy, as keys and values
//   in one array that the OTLP encoder reads; the `attributes` object is made only when read;
// - a parent that is one of our own spans is valid by construction: no regex;
// - under a parent-based sampler, a child of a valid sampled parent is sampled without asking the
//   sampler (whose answer is fixed, after two regex checks of the parent's ids).

import {
  type Attributes,
  type AttributeValue,
  type Context,
  context,
  type Exception,
  type HrTime,
  INVALID_SPAN_CONTEXT,
  type Link,
  type Span,
  type SpanContext,
  SpanKind,
  type SpanOptions,
  type SpanStatus,
  SpanStatusCode,
  type TimeInput,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import {
  hrTimeDuration,
  type InstrumentationScope,
  isAttributeValue,
  isTimeInputHrTime,
  isTracingSuppressed,
  millisToHrTime,
} from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import {
  type IdGenerator,
  type ReadableSpan,
  type Sampler,
  SamplingDecision,
  type SamplingResult,
  type SpanProcessor,
  type TimedEvent,
} from '@opentelemetry/sdk-trace-base';
import type { SpanLimits } from './config.js';
import { startActiveSpanOf } from './context.js';
import { epochSeconds, nanosPastSecond } from './epoch-ms.js';
import { isSpanContextValid } from './trace-context-propagator.js';

// Wall clock = performance.now() + anchor. The SDK re-derives this offset for every span (a
// Date.now() and a performance.now() each); one refresh a second follows clock steps as well.
let anchorMs = Date.now() - performance.now();
let anchorTakenAt = performance.now();
const ANCHOR_REFRESH_MS = 1000;

function nowPerf(): number {
  const now = performance.now();
  if (now - anchorTakenAt > ANCHOR_REFRESH_MS) {
    anchorMs = Date.now() - now;
    anchorTakenAt = now;
  }
  return now;
}

/** Epoch milliseconds (fractional) as HrTime, exact to the nanosecond a double can hold. */
function epochMsToHrTime(ms: number): HrTime {
  const seconds = epochSeconds(ms);
  return [seconds, nanosPastSecond(ms, seconds)];
}

/** A TimeInput the caller gave as an epoch-ms number (the SDK reads a small number as performance time). */
function explicitTime(input: TimeInput): HrTime {
  if (isTimeInputHrTime(input)) return input as HrTime;
  if (input instanceof Date) return millisToHrTime(input.getTime());
  const ms = input as number;
  return ms <= performance.now() ? epochMsToHrTime(ms + anchorMs) : millisToHrTime(ms);
}

const EXCEPTION_EVENT = 'exception';
const NONE = Object.freeze([]) as unknown as never[];
const UNSET_STATUS: SpanStatus = Object.freeze({ code: SpanStatusCode.UNSET });

export interface LeanTracerOptions {
  sampler: Sampler;
  idGenerator: IdGenerator;
  resource: Resource;
  scope: InstrumentationScope;
  /** Every processor gets every span (the SDK's MultiSpanProcessor, without the wrapper). */
  processors: SpanProcessor[];
  limits: SpanLimits;
  /**
   * True when `sampler` is one of the parent-based ones as configured here (index.ts), which
   * record and sample every child of a valid sampled parent: such a child skips the sampler call
   * (and the regex checks of the parent's ids it makes). False: the sampler decides every span.
   */
  sampledParentsSample?: boolean;
}

const SAMPLED_BY_PARENT: SamplingResult = Object.freeze({ decision: SamplingDecision.RECORD_AND_SAMPLED });

export class LeanTracer implements Tracer {
  constructor(private readonly o: LeanTracerOptions) {}

  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    const parentContext = options.root ? trace.deleteSpan(ctx) : ctx;
    if (isTracingSuppressed(parentContext)) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
    const parentSpan = trace.getSpan(parentContext);
    const parentSpanContext = parentSpan?.spanContext();
    // Our own span's context is valid by construction; anything else (a remote parent from a
    // traceparent, a wrapped context) is checked as the SDK checks it.
    const validParent =
      parentSpanContext !== undefined &&
      (parentSpan instanceof LeanSpan || isSpanContextValid(parentSpanContext))
        ? parentSpanContext
        : undefined;
    const spanId = this.o.idGenerator.generateSpanId();
    const traceId = validParent?.traceId ?? this.o.idGenerator.generateTraceId();
    const kind = options.kind ?? SpanKind.INTERNAL;
    const result =
      this.o.sampledParentsSample === true &&
      validParent !== undefined &&
      (validParent.traceFlags & TraceFlags.SAMPLED) !== 0
        ? SAMPLED_BY_PARENT
        : this.o.sampler.shouldSample(
            parentContext,
            traceId,
            name,
            kind,
            options.attributes ?? {},
            options.links ?? [],
          );
    const traceState = result.traceState ?? validParent?.traceState;
    if (result.decision === SamplingDecision.NOT_RECORD) {
      return trace.wrapSpanContext({ traceId, spanId, traceFlags: TraceFlags.NONE, traceState });
    }
    const spanContext: SpanContext = {
      traceId,
      spanId,
      traceFlags:
        result.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
      traceState,
    };
    const span = new LeanSpan(this.o, spanContext, validParent, name, kind, options.startTime);
    if (options.links) span.addLinks(options.links);
    if (options.attributes) span.setAttributes(options.attributes);
    if (result.attributes) span.setAttributes(result.attributes);
    for (const p of this.o.processors) p.onStart(span, parentContext);
    return span;
  }

  startActiveSpan: Tracer['startActiveSpan'] = (name: string, ...rest: unknown[]) =>
    startActiveSpanOf(this, name, rest) as never;
}

/** A recorded span: the API's Span for the code that makes it, ReadableSpan for processors. */
export class LeanSpan implements Span, ReadableSpan {
  /**
   * The attributes as keys and values interleaved, in the order they were first set (a key set
   * again keeps its place): cheaper to fill and to encode than an object with a shape per key set.
   */
  private readonly attributeList: (string | AttributeValue)[] = [];
  /** `attributes` once someone read it; kept in step from then on. */
  private attributeObject: Attributes | undefined;
  /** False once a key is one a plain object would not keep in set order (see attributesInOrder). */
  private plainKeys = true;
  // Most spans never get a link or an event: they share one empty array until their first.
  links: Link[] = NONE;
  events: TimedEvent[] = NONE;
  status: SpanStatus = UNSET_STATUS;
  ended = false;
  /** Set once end() has fixed the end time, before onEnding (`ended` follows after it). */
  private endRecorded = false;
  droppedAttributesCount = 0;
  droppedEventsCount = 0;
  droppedLinksCount = 0;
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  /**
   * Start as epoch milliseconds (performance.now() + the clock anchor), or NaN when the caller gave
   * an explicit start time (then `start` holds it). The OTLP encoder reads it instead of an HrTime.
   */
  readonly startEpochMs: number;
  /** performance.now() at start: the end is the start plus the time elapsed since, one anchor for both. */
  private readonly startPerf: number;
  private start: HrTime | undefined;
  private endMs = Number.NaN;
  private endHr: HrTime | undefined;

  constructor(
    private readonly o: LeanTracerOptions,
    private readonly context: SpanContext,
    readonly parentSpanContext: SpanContext | undefined,
    public name: string,
    readonly kind: SpanKind,
    startTime: TimeInput | undefined,
  ) {
    this.resource = o.resource;
    this.instrumentationScope = o.scope;
    if (startTime === undefined) {
      this.startPerf = nowPerf();
      this.startEpochMs = this.startPerf + anchorMs;
    } else {
      this.startPerf = Number.NaN;
      this.startEpochMs = Number.NaN;
      this.start = explicitTime(startTime);
    }
  }

  spanContext(): SpanContext {
    return this.context;
  }

  /** End as epoch milliseconds, or NaN before the end or when it was given explicitly (see endTime). */
  get endEpochMs(): number {
    return this.endMs;
  }

  get startTime(): HrTime {
    this.start ??= epochMsToHrTime(this.startEpochMs);
    return this.start;
  }

  get endTime(): HrTime {
    if (!this.endRecorded) return [0, 0];
    this.endHr ??= epochMsToHrTime(this.endMs);
    return this.endHr;
  }

  get duration(): HrTime {
    if (!this.endRecorded) return [-1, -1];
    return hrTimeDuration(this.startTime, this.endTime);
  }

  isRecording(): boolean {
    return !this.ended;
  }

  /** The attributes as the SDK's span holds them: an object, made on first read. */
  get attributes(): Attributes {
    if (this.attributeObject === undefined) {
      const object: Attributes = {};
      const list = this.attributeList;
      for (let i = 0; i < list.length; i += 2) object[list[i] as string] = list[i + 1] as AttributeValue;
      this.attributeObject = object;
    }
    return this.attributeObject;
  }

  /**
   * Keys and values interleaved in the order `attributes` has them, for the OTLP encoder; undefined
   * when that order differs (an array-index key such as "7", which an object puts first, or
   * "__proto__"): then read `attributes`.
   */
  get attributesInOrder(): readonly unknown[] | undefined {
    return this.plainKeys ? this.attributeList : undefined;
  }

  setAttribute(key: string, value: AttributeValue | undefined): this {
    if (value == null || this.ended || key.length === 0) return this;
    const t = typeof value;
    if (t !== 'string' && t !== 'number' && t !== 'boolean' && !isAttributeValue(value)) return this;
    const list = this.attributeList;
    let at = 0;
    while (at < list.length && list[at] !== key) at += 2;
    const isNew = at === list.length;
    if (isNew && at >>> 1 >= this.o.limits.attributeCountLimit) {
      this.droppedAttributesCount++;
      return this;
    }
    const kept = this.truncate(value, this.o.limits.attributeValueLengthLimit);
    if (isNew) {
      const first = key.charCodeAt(0);
      if ((first >= 0x30 && first <= 0x39) || key === '__proto__') this.plainKeys = false;
      list.push(key, kept);
    } else list[at + 1] = kept;
    if (this.attributeObject !== undefined) this.attributeObject[key] = kept;
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const key in attributes) {
      if (Object.hasOwn(attributes, key)) this.setAttribute(key, attributes[key]);
    }
    return this;
  }

  addEvent(name: string, attributesOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    if (this.ended) return this;
    const { eventCountLimit, attributePerEventCountLimit } = this.o.limits;
    if (eventCountLimit === 0) {
      this.droppedEventsCount++;
      return this;
    }
    if (this.events === NONE) this.events = [];
    if (this.events.length >= eventCountLimit) {
      this.events.shift();
      this.droppedEventsCount++;
    }
    const isTime =
      attributesOrTime instanceof Date ||
      typeof attributesOrTime === 'number' ||
      isTimeInputHrTime(attributesOrTime);
    const at = isTime ? (time ?? (attributesOrTime as TimeInput)) : time;
    const { attributes, dropped } = this.limited(
      isTime ? undefined : (attributesOrTime as Attributes | undefined),
      attributePerEventCountLimit,
    );
    this.events.push({
      name,
      attributes,
      time: at === undefined ? epochMsToHrTime(nowPerf() + anchorMs) : explicitTime(at),
      droppedAttributesCount: dropped,
    });
    return this;
  }

  addLink(link: Link): this {
    if (this.ended) return this;
    const { linkCountLimit, attributePerLinkCountLimit } = this.o.limits;
    if (linkCountLimit === 0) {
      this.droppedLinksCount++;
      return this;
    }
    if (this.links === NONE) this.links = [];
    if (this.links.length >= linkCountLimit) {
      this.links.shift();
      this.droppedLinksCount++;
    }
    const { attributes, dropped, count } = this.limited(link.attributes, attributePerLinkCountLimit);
    const kept: Link = { context: link.context };
    if (count > 0) kept.attributes = attributes;
    if (dropped > 0) kept.droppedAttributesCount = dropped;
    this.links.push(kept);
    return this;
  }

  addLinks(links: Link[]): this {
    for (const link of links) this.addLink(link);
    return this;
  }

  setStatus(status: SpanStatus): this {
    // As the SDK: UNSET never overrides, and OK is final.
    if (this.ended || status.code === SpanStatusCode.UNSET || this.status.code === SpanStatusCode.OK)
      return this;
    const next: SpanStatus = { code: status.code };
    if (status.code === SpanStatusCode.ERROR && typeof status.message === 'string')
      next.message = status.message;
    this.status = next;
    return this;
  }

  updateName(name: string): this {
    if (!this.ended) this.name = name;
    return this;
  }

  end(endTime?: TimeInput): void {
    if (this.endRecorded) return;
    if (endTime === undefined && !Number.isNaN(this.startPerf)) {
      this.endMs = this.startEpochMs + (nowPerf() - this.startPerf);
    } else {
      const end = endTime === undefined ? millisToHrTime(Date.now()) : explicitTime(endTime);
      const start = this.startTime;
      // An end before the start is clamped to the start, as the SDK does.
      this.endHr =
        end[0] < start[0] || (end[0] === start[0] && end[1] < start[1]) ? [start[0], start[1]] : end;
    }
    // As the SDK: the end time is there for onEnding, and the span still takes changes until ended.
    this.endRecorded = true;
    for (const p of this.o.processors) p.onEnding?.(this);
    this.ended = true;
    for (const p of this.o.processors) p.onEnd(this);
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === 'string') {
      attributes['exception.message'] = exception;
    } else if (exception) {
      if (exception.code) attributes['exception.type'] = exception.code.toString();
      else if (exception.name) attributes['exception.type'] = exception.name;
      if (exception.message) attributes['exception.message'] = exception.message;
      if (exception.stack) attributes['exception.stacktrace'] = exception.stack;
    }
    if (attributes['exception.type'] || attributes['exception.message']) {
      this.addEvent(EXCEPTION_EVENT, attributes, time);
    }
  }

  /** Valid attributes of an event or link, at most `limit` of them, values truncated. */
  private limited(
    input: Attributes | undefined,
    limit: number,
  ): { attributes: Attributes; dropped: number; count: number } {
    const attributes: Attributes = {};
    let dropped = 0;
    let count = 0;
    for (const key in input) {
      if (!Object.hasOwn(input, key)) continue;
      const value = input[key];
      // As the SDK's sanitizeAttributes: null and undefined values are kept (and counted) here.
      if (key.length === 0 || !isAttributeValue(value)) continue;
      if (count >= limit) {
        dropped++;
        continue;
      }
      attributes[key] = this.truncate(value, this.o.limits.attributeValueLengthLimit);
      count++;
    }
    return { attributes, dropped, count };
  }

  /** The value as kept: strings cut to `limit`; arrays always a copy (as the SDK), never the caller's. */
  private truncate(value: AttributeValue, limit: number): AttributeValue {
    if (limit === Number.POSITIVE_INFINITY)
      return Array.isArray(value) ? (value.slice() as AttributeValue) : value;
    if (typeof value === 'string') return value.length <= limit ? value : value.substring(0, limit);
    if (Array.isArray(value)) {
      return value.map((v) =>
        typeof v === 'string' && v.length > limit ? v.substring(0, limit) : v,
      ) as AttributeValue;
    }
    return value;
  }
}
