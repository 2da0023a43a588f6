// Trace propagation across the request plane (CONTRACT.md §5): the client injects the caller's
// active context into the frame headers; the server extracts it and runs each handler inside a
// `handle_payload` SERVER span parented by it.

import {
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';

const tracer = trace.getTracer('kvroute');

/** Adds traceparent/tracestate of `ctx` (the caller's context, captured at call time) to `headers`. */
export function injectTraceHeaders(headers: Record<string, string>, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers);
}

/** Starts the server span for one request; returns it with the context to run the handler in. */
export function startHandlerSpan(
  path: string,
  headers: Readonly<Record<string, string>>,
  requestId: string | undefined,
): { span: Span; ctx: Context } {
  const parent = propagation.extract(ROOT_CONTEXT, headers);
  const span = tracer.startSpan(
    'handle_payload',
    {
      kind: SpanKind.SERVER,
      attributes:
        requestId === undefined
          ? { 'kvroute.endpoint': path }
          : { 'kvroute.endpoint': path, 'kvroute.request_id': requestId },
    },
    parent,
  );
  return { span, ctx: trace.setSpan(parent, span) };
}

export function endHandlerSpan(span: Span, err: unknown, cancelled: boolean): void {
  if (cancelled) {
    span.setAttribute('kvroute.cancelled', true);
  } else if (err !== undefined) {
    span.recordException(err instanceof Error ? err : String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  }
  span.end();
}
