// W3C trace context (`traceparent`, `tracestate`) with the same results as
// @opentelemetry/core's W3CTraceContextPropagator and the API's span-context checks, minus their
// regular expressions on the common path.
//
// Why: every hop of every request checks ids and parses or writes a traceparent, traced or not.
// Sampled out, those regex checks were about half of what tracing still cost (bench tracing,
// docs/tracing.md). A traceparent as every tracer writes it (55 characters, lower-case hex, no
// whitespace) is checked here character by character; anything else (whitespace, upper case, a
// future version with more fields, garbage) goes to core's own parser, so odd input gets exactly
// the reference answer. test/telemetry-trace-context.test.ts holds both to the same results.

import {
  type Context,
  type SpanContext,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
  TraceFlags,
  trace,
} from '@opentelemetry/api';
import { isTracingSuppressed, parseTraceParent, TraceState } from '@opentelemetry/core';

export const TRACEPARENT_HEADER = 'traceparent';
export const TRACESTATE_HEADER = 'tracestate';

// Character codes.
const ZERO = 48;
const NINE = 57;
const LOWER_A = 97;
const LOWER_F = 102;
const UPPER_A = 65;
const UPPER_F = 70;
const DASH = 45;

/**
 * Whether `s[from, from + length)` is all hex digits and not all zeros; upper case allowed only
 * with `anyCase` (the API's id checks take both cases, the traceparent grammar lower case only).
 */
function isNonZeroHex(s: string, from: number, length: number, anyCase: boolean): boolean {
  let nonZero = false;
  for (let i = from; i < from + length; i++) {
    const c = s.charCodeAt(i);
    if (c >= ZERO && c <= NINE) {
      if (c !== ZERO) nonZero = true;
    } else if ((c >= LOWER_A && c <= LOWER_F) || (anyCase && c >= UPPER_A && c <= UPPER_F)) {
      nonZero = true;
    } else return false;
  }
  return nonZero;
}

/** The API's `isValidTraceId`: 32 hex digits (either case), not all zeros. */
export function isValidTraceId(id: string): boolean {
  return typeof id === 'string' && id.length === 32 && isNonZeroHex(id, 0, 32, true);
}

/** The API's `isValidSpanId`: 16 hex digits (either case), not all zeros. */
export function isValidSpanId(id: string): boolean {
  return typeof id === 'string' && id.length === 16 && isNonZeroHex(id, 0, 16, true);
}

/** The API's `isSpanContextValid`. */
export function isSpanContextValid(spanContext: SpanContext): boolean {
  return isValidTraceId(spanContext.traceId) && isValidSpanId(spanContext.spanId);
}

/** Whether `s[from]` and `s[from + 1]` are lower-case hex digits. */
function isLowerHexPair(s: string, from: number): boolean {
  for (let i = from; i < from + 2; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= ZERO && c <= NINE) || (c >= LOWER_A && c <= LOWER_F))) return false;
  }
  return true;
}

/**
 * core's `parseTraceParent`: the ids and flags of a valid traceparent, or null. The canonical
 * 55-character form `vv-<32 hex>-<16 hex>-ff` is read here; any other shape, valid or not, is
 * left to core (whose regex tolerates surrounding whitespace and later versions' extra fields).
 */
export function parseTraceparent(value: string): SpanContext | null {
  if (
    value.length === 55 &&
    value.charCodeAt(2) === DASH &&
    value.charCodeAt(35) === DASH &&
    value.charCodeAt(52) === DASH &&
    isLowerHexPair(value, 0) &&
    !(value.charCodeAt(0) === LOWER_F && value.charCodeAt(1) === LOWER_F) &&
    isNonZeroHex(value, 3, 32, false) &&
    isNonZeroHex(value, 36, 16, false) &&
    isLowerHexPair(value, 53)
  ) {
    return {
      traceId: value.slice(3, 35),
      spanId: value.slice(36, 52),
      traceFlags: Number.parseInt(value.slice(53, 55), 16),
    };
  }
  return parseTraceParent(value);
}

/** core's W3CTraceContextPropagator, on the checks above. */
export class TraceContextPropagator implements TextMapPropagator {
  inject(ctx: Context, carrier: unknown, setter: TextMapSetter): void {
    const spanContext = trace.getSpanContext(ctx);
    if (!spanContext || isTracingSuppressed(ctx) || !isSpanContextValid(spanContext)) return;
    // Two hex digits, whatever the flags: core writes `-0${hex}`, which for flags of 0x10 and up
    // (a caller's flags passed through unsampled or untraced) is a 56-character traceparent every
    // parser rejects, and the next hop started a trace of its own.
    const flags = (Number(spanContext.traceFlags || TraceFlags.NONE) & 0xff).toString(16).padStart(2, '0');
    setter.set(carrier, TRACEPARENT_HEADER, `00-${spanContext.traceId}-${spanContext.spanId}-${flags}`);
    if (spanContext.traceState) setter.set(carrier, TRACESTATE_HEADER, spanContext.traceState.serialize());
  }

  extract(ctx: Context, carrier: unknown, getter: TextMapGetter): Context {
    const header = getter.get(carrier, TRACEPARENT_HEADER);
    if (!header) return ctx;
    const value = Array.isArray(header) ? header[0] : header;
    if (typeof value !== 'string') return ctx;
    const spanContext = parseTraceparent(value);
    if (!spanContext) return ctx;
    spanContext.isRemote = true;
    const stateHeader = getter.get(carrier, TRACESTATE_HEADER);
    if (stateHeader) {
      // Several tracestate headers are one list (W3C), as core merges them.
      const state = Array.isArray(stateHeader) ? stateHeader.join(',') : stateHeader;
      spanContext.traceState = new TraceState(typeof state === 'string' ? state : undefined);
    }
    return trace.setSpanContext(ctx, spanContext);
  }

  fields(): string[] {
    return [TRACEPARENT_HEADER, TRACESTATE_HEADER];
  }
}
