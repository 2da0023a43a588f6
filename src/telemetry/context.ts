// Process-wide trace-context plumbing shared by router and workers: the AsyncLocalStorage
// context manager and the W3C propagators (registered once per process, whether tracing exports
// or not), plus the few helpers every component needs to carry a trace across its own I/O.

import {
  type Context,
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  propagation,
  ROOT_CONTEXT,
  type Span,
  type SpanOptions,
  SpanStatusCode,
  type TextMapGetter,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator } from '@opentelemetry/core';
import { parseTraceparent, TraceContextPropagator } from './trace-context-propagator.js';

let globalsRegistered = false;

/**
 * Registers the AsyncLocalStorage context manager and the W3C trace-context + baggage propagator
 * with the OpenTelemetry API. Idempotent. If something else registered first (the API refuses a
 * second registration), that registration stays and ours is discarded.
 */
export function registerGlobalContext(): void {
  if (globalsRegistered) return;
  globalsRegistered = true;
  const manager = new AsyncLocalStorageContextManager();
  manager.enable();
  if (!context.setGlobalContextManager(manager)) manager.disable();
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new TraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
}

/**
 * Runs `fn` outside any trace. For background work started from a request path or a traced
 * startup (heartbeats, KV-event subscriptions, health checks, resyncs) so that its spans are
 * roots and its timers do not pin a user's trace.
 */
export function withRootContext<T>(fn: () => T): T {
  registerGlobalContext();
  return context.with(ROOT_CONTEXT, fn);
}

/**
 * Starts `fn` now as a detached task that keeps the caller's trace context across awaits, timers
 * and setImmediate (the router's spawned prefill task). The caller does not wait for it; the
 * returned promise is the task's result and is the caller's to observe (a rejection that nobody
 * handles is an unhandled rejection, as for any promise). A synchronous throw becomes a rejection.
 */
export function spawnInCurrentContext<T>(fn: () => Promise<T> | T): Promise<T> {
  registerGlobalContext();
  const captured = context.active();
  return new Promise<T>((resolve, reject) => {
    context.with(captured, () => {
      try {
        Promise.resolve(fn()).then(resolve, reject);
      } catch (err) {
        reject(err);
      }
    });
  });
}

/**
 * `iterable` with every step (`next`, `return`, `throw`) run in the context active now. For a
 * stream that something else pulls from its own callbacks: node's `Readable.from` pulls an SSE
 * response's events from stream callbacks, outside the request, so without this every step after
 * the first (the worker stream's chunks, its end, its cancellation) would leave the trace.
 */
export function bindIterableToCurrentContext<T>(iterable: AsyncIterable<T>): AsyncIterable<T> {
  registerGlobalContext();
  const ctx = context.active();
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const it = context.with(ctx, () => iterable[Symbol.asyncIterator]());
      const bound: AsyncIterator<T> = { next: (...args) => context.with(ctx, () => it.next(...args)) };
      if (it.return) bound.return = (value) => context.with(ctx, () => it.return!(value));
      if (it.throw) bound.throw = (err) => context.with(ctx, () => it.throw!(err));
      return bound;
    },
  };
}

/** Headers as node:http gives them (lower-case keys, maybe arrays) or a frame's string map. */
export type HeaderCarrier = Record<string, string | string[] | undefined>;

const headerGetter: TextMapGetter<HeaderCarrier> = defaultTextMapGetter;

/**
 * Reads `traceparent`/`tracestate`/`baggage` into a context derived from `base` (default: the
 * active one). An absent or malformed `traceparent` leaves the span context of `base` untouched.
 */
export function extractFromHeaders(headers: HeaderCarrier, base: Context = context.active()): Context {
  registerGlobalContext();
  return propagation.extract(base, headers, headerGetter);
}

/**
 * Writes the span context of `ctx` (default: the active one) into `headers` and returns them.
 * Writes nothing for an invalid span context (no trace in progress).
 */
export function injectToHeaders<H extends Record<string, string>>(
  ctx: Context = context.active(),
  headers: H = {} as H,
): H {
  registerGlobalContext();
  propagation.inject(ctx, headers, defaultTextMapSetter);
  return headers;
}

/** Whether a `traceparent` value would be accepted as a parent (same parser the propagator uses). */
export function isValidTraceparent(value: string | undefined): boolean {
  return value !== undefined && parseTraceparent(value) !== null;
}

/**
 * The API's `startActiveSpan` over a tracer's `startSpan`, for our tracers: its three overloads
 * are told apart by arity, (name, fn), (name, options, fn) and (name, options, context, fn); the
 * callback runs with the new span active and its result is returned.
 */
export function startActiveSpanOf(tracer: Pick<Tracer, 'startSpan'>, name: string, rest: unknown[]): unknown {
  const fn = rest[rest.length - 1] as (span: Span) => unknown;
  const options = rest.length >= 2 ? (rest[0] as SpanOptions | undefined) : undefined;
  const ctx = rest.length >= 3 ? ((rest[1] as Context | undefined) ?? context.active()) : context.active();
  const span = tracer.startSpan(name, options, ctx);
  return context.with(trace.setSpan(ctx, span), fn, undefined, span);
}

/**
 * Marks `span` failed by `err`: an `exception` event and status ERROR with the error's message.
 * (`recordException` alone leaves the status UNSET, so a backend would not count the span failed.)
 */
export function recordFailure(span: Span, err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  span.recordException(err instanceof Error ? err : message);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}
