// Trace propagation across the request plane (CONTRACT.md §5). The client starts one CLIENT span
// per call, parented by the caller's context captured at call time, and injects THAT span's
// context into the frame headers; the server extracts it and runs each handler inside a
// `handle_payload` SERVER span. Both sides use the tracer their component hands them (the API
// global only as a default), so a process with several components exports each through its own
// provider.

import {
  type Context,
  INVALID_SPAN_CONTEXT,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  type SpanOptions,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import type { StreamHandle, StreamHandler } from './dispatch.js';
import { isTransportError, type TransportError } from './transport-error.js';

/**
 * The default when a component names no tracer: the API global. A ProxyTracer, so a provider
 * registered globally after this module loads is still picked up on first use.
 */
export const globalTracer: Tracer = trace.getTracer('kvroute');

/** Span attribute names shared by both ends of the request plane (docs/tracing.md). */
export const ATTR = {
  address: 'kvroute.address',
  endpoint: 'kvroute.endpoint',
  requestId: 'kvroute.request_id',
  outcome: 'kvroute.outcome',
  errorKind: 'kvroute.error_kind',
  remoteCode: 'kvroute.remote_code',
  chunks: 'kvroute.chunks',
  cancelled: 'kvroute.cancelled',
} as const;

const CLIENT_KIND: SpanOptions = { kind: SpanKind.CLIENT };
const SERVER_KIND: SpanOptions = { kind: SpanKind.SERVER };

/** `request_plane <path>` per path (a handful), built once: a call builds no span-name string. */
const clientSpanNames = new Map<string, string>();
function clientSpanName(path: string): string {
  let name = clientSpanNames.get(path);
  if (name === undefined) {
    name = `request_plane ${path}`;
    clientSpanNames.set(path, name);
  }
  return name;
}

/**
 * Starts the CLIENT span of one call as a child of `parent` (the caller's context at call time) and writes its
 * traceparent/tracestate into `headers`. Returns the span only when it records: a non-recording
 * span (tracing off, or sampled out) needs no ending, so the call pays for no wrapper. With
 * tracing off the no-op span carries the caller's span context, which is what gets injected.
 */
export function startClientSpan(
  tracer: Tracer,
  parent: Context,
  address: string,
  path: string,
  requestId: string | undefined,
  headers: Record<string, string>,
): Span | undefined {
  const span = tracer.startSpan(clientSpanName(path), CLIENT_KIND, parent);
  if (!span.isRecording()) {
    // A non-recording span that carries the parent's own span context (tracing off, or the
    // unsampled shortcut) propagates exactly what the parent does: inject the parent as is and
    // skip the context copy setSpan makes (a Map per call, ~15% of a small call's allocations).
    const parentSpanContext = trace.getSpanContext(parent);
    const sameAsParent =
      span.spanContext() === parentSpanContext ||
      (parentSpanContext === undefined && span.spanContext() === INVALID_SPAN_CONTEXT);
    propagation.inject(sameAsParent ? parent : trace.setSpan(parent, span), headers);
    return undefined;
  }
  propagation.inject(trace.setSpan(parent, span), headers);
  // Attributes only for a span that records (one write, undefined ones are skipped).
  span.setAttributes({ [ATTR.address]: address, [ATTR.endpoint]: path, [ATTR.requestId]: requestId });
  return span;
}

/**
 * Sits between the dispatcher and the caller's handler and ends the client span with the call's
 * outcome: `ok`, `error` (with the TransportError kind) or `cancelled` (the caller stopped early).
 * Ending a span needs no context, so it does not matter that these callbacks run in the socket's.
 */
export class ClientSpanGuard implements StreamHandler, StreamHandle {
  handle: StreamHandle | undefined;
  private chunks = 0;
  private ended = false;

  constructor(
    private readonly span: Span,
    private readonly inner: StreamHandler,
  ) {}

  onData(chunk: Buffer): void {
    this.chunks++;
    this.inner.onData(chunk);
  }

  onEnd(): void {
    this.finish('ok');
    this.inner.onEnd();
  }

  onError(err: TransportError): void {
    this.finish(err.kind === 'cancelled' ? 'cancelled' : 'error', err);
    this.inner.onError(err);
  }

  grant(bytes: number): void {
    this.handle?.grant(bytes);
  }

  cancel(failure?: TransportError): void {
    if (failure === undefined) this.finish('cancelled');
    else this.finish('error', failure);
    this.handle?.cancel();
  }

  private finish(outcome: 'ok' | 'error' | 'cancelled', err?: TransportError): void {
    if (this.ended) return;
    this.ended = true;
    const span = this.span;
    if (err !== undefined && outcome === 'error') {
      span.setAttributes({
        [ATTR.outcome]: outcome,
        [ATTR.chunks]: this.chunks,
        [ATTR.errorKind]: err.kind,
        [ATTR.remoteCode]: isTransportError(err) ? err.remoteCode : undefined,
      });
      span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
    } else {
      span.setAttributes({ [ATTR.outcome]: outcome, [ATTR.chunks]: this.chunks });
    }
    span.end();
  }
}

/** Starts the server span for one request; returns it with the context to run the handler in. */
export function startHandlerSpan(
  tracer: Tracer,
  path: string,
  headers: Readonly<Record<string, string>>,
  requestId: string | undefined,
): { span: Span; ctx: Context } {
  // ROOT as the base: a frame without traceparent starts a new trace instead of joining whatever
  // context the socket callback happens to run in.
  const parent = propagation.extract(ROOT_CONTEXT, headers);
  const span = tracer.startSpan('handle_payload', SERVER_KIND, parent);
  if (span.isRecording()) span.setAttributes({ [ATTR.endpoint]: path, [ATTR.requestId]: requestId });
  return { span, ctx: handlerContext(parent, span) };
}

/** The context of a request with no trace parent and a non-recording span (tracing off). */
const UNTRACED_HANDLER_CONTEXT = trace.setSpan(ROOT_CONTEXT, trace.wrapSpanContext(INVALID_SPAN_CONTEXT));

/**
 * `trace.setSpan(parent, span)`, without the context copy it makes when that would change nothing
 * a handler can observe: a non-recording span (no-op methods) whose span context is the parent's
 * own (tracing off, or sampled out by the unsampled shortcut), or invalid under no parent.
 */
function handlerContext(parent: Context, span: Span): Context {
  if (span.isRecording()) return trace.setSpan(parent, span);
  const own = span.spanContext();
  const parentSpan = trace.getSpan(parent);
  if (parentSpan !== undefined && !parentSpan.isRecording() && parentSpan.spanContext() === own)
    return parent;
  if (parent === ROOT_CONTEXT && own === INVALID_SPAN_CONTEXT) return UNTRACED_HANDLER_CONTEXT;
  return trace.setSpan(parent, span);
}

export function endHandlerSpan(span: Span, err: unknown, cancelled: boolean): void {
  if (cancelled) {
    span.setAttribute(ATTR.cancelled, true);
  } else if (err !== undefined) {
    span.recordException(err instanceof Error ? err : String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  }
  span.end();
}
