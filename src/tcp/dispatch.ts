// The dispatch contract shared by a connection, a pool and the client's fleet of pools, and the
// interceptors that wrap it (first-response timeout, caller's AbortSignal). Policies live in
// wrappers, not inside the connection, so each is small and tested on its own.
//
// A dispatcher sends one request and reports its response through a StreamHandler, always
// asynchronously (never from inside dispatch()). The returned StreamHandle carries the
// backpressure signal the other way: grant(bytes) says the caller consumed that many response
// bytes (the connection turns it into credit for the server), cancel() abandons the stream.

import { context, ROOT_CONTEXT } from '@opentelemetry/api';
import type { PayloadWriter } from './frames.js';
import { TransportError } from './transport-error.js';

export interface DispatchRequest {
  path: string;
  /** Caller's headers; the connection sends its own x-kvroute-stream/x-kvroute-window instead of any given. */
  headers: Record<string, string>;
  /** The bytes, or a writer that puts them straight into the request frame. */
  payload: Uint8Array | PayloadWriter;
  /** Response bytes the server may send ahead of the caller's consumption (the stream's credit). */
  windowBytes: number;
}

export interface StreamHandler {
  onData(chunk: Buffer): void;
  /** Clean end of the response. Exactly one of onEnd/onError is called, once. */
  onEnd(): void;
  onError(err: TransportError): void;
}

export interface StreamHandle {
  /** The caller consumed `bytes` of response data; the server may send that much more. */
  grant(bytes: number): void;
  /**
   * Abandons the stream: the server's handler sees its AbortSignal fire; no more callbacks.
   * `failure`: the caller ends it because of a failure on its side (a stream gone silent, an
   * answer it cannot read or hold), which the request-plane client span records as an error
   * rather than a cancellation. The server sees a cancel either way.
   */
  cancel(failure?: TransportError): void;
}

export type DispatchFn = (req: DispatchRequest, handler: StreamHandler) => StreamHandle;

export const NOOP_HANDLE: StreamHandle = { grant() {}, cancel() {} };

/** Reports `err` to `handler` on a later microtask and returns a handle that does nothing. */
export function failLater(handler: StreamHandler, err: TransportError): StreamHandle {
  let cancelled = false;
  queueMicrotask(() => {
    if (!cancelled) handler.onError(err);
  });
  return {
    grant() {},
    cancel() {
      cancelled = true;
    },
  };
}

/**
 * Sits between a dispatcher and a handler so an interceptor can end the stream early. Subclasses
 * hook `onSettled` (cleanup) and `onFirstFrame`; methods rather than closures, because a small
 * round trip is a few microseconds and every per-call allocation shows.
 */
abstract class Guard implements StreamHandler, StreamHandle {
  handle: StreamHandle = NOOP_HANDLE;
  private settled = false;
  private sawFrame = false;

  constructor(private readonly inner: StreamHandler) {}

  protected abstract onSettled(): void;
  protected onFirstFrame(): void {}

  onData(chunk: Buffer): void {
    if (this.settled) return;
    if (!this.sawFrame) {
      this.sawFrame = true;
      this.onFirstFrame();
    }
    this.inner.onData(chunk);
  }

  onEnd(): void {
    if (this.settle()) this.inner.onEnd();
  }

  onError(err: TransportError): void {
    if (this.settle()) this.inner.onError(err);
  }

  /** Ends the stream from outside: cancels it remotely and reports `err`. */
  fail(err: TransportError): void {
    if (!this.settle()) return;
    this.handle.cancel();
    this.inner.onError(err);
  }

  grant(bytes: number): void {
    this.handle.grant(bytes);
  }

  cancel(): void {
    this.settle();
    this.handle.cancel();
  }

  private settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    this.onSettled();
    return true;
  }
}

/**
 * Calls still waiting for their first response frame, checked by one sweep every SWEEP_MS while
 * any is waiting (a setTimeout per call cost ~8% of a small round trip). Kept as an intrusive
 * doubly linked list (no allocation or hashing per call), and a call's deadline is stamped by the
 * first sweep that sees it rather than by reading the clock per call: a timeout fires between
 * `ms` and `ms` + 2 × SWEEP_MS after the call (later only if the event loop is late), never
 * early. Guards leave the list on their first frame, so the sweep is O(calls still waiting).
 */
const SWEEP_MS = 10;

class Deadlines {
  private head: TimeoutGuard | undefined;
  private timer: NodeJS.Timeout | undefined;

  add(guard: TimeoutGuard): void {
    guard.next = this.head;
    if (this.head !== undefined) this.head.prev = guard;
    this.head = guard;
    guard.waiting = true;
    if (this.timer === undefined) {
      // One sweep serves every call and runs while any waits: made in the root context, not in
      // the call that happened to start it (whose context it would keep, and run others' in).
      this.timer = context.with(ROOT_CONTEXT, () => setInterval(this.sweep, SWEEP_MS));
      this.timer.unref();
    }
  }

  delete(guard: TimeoutGuard): void {
    if (!guard.waiting) return;
    guard.waiting = false;
    const { prev, next } = guard;
    if (prev === undefined) this.head = next;
    else prev.next = next;
    if (next !== undefined) next.prev = prev;
    guard.prev = undefined;
    guard.next = undefined;
  }

  private readonly sweep = (): void => {
    const now = performance.now();
    for (let guard = this.head; guard !== undefined; ) {
      const next = guard.next;
      if (guard.due === 0) guard.due = now + guard.ms;
      else if (guard.due <= now) {
        this.delete(guard);
        guard.expire();
      }
      guard = next;
    }
    if (this.head === undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  };
}

const deadlines = new Deadlines();

class TimeoutGuard extends Guard {
  /** When the call times out (performance.now() scale); 0 until the first sweep stamps it. */
  due = 0;
  /** Links of the Deadlines list, while waiting for a first frame. */
  waiting = false;
  prev: TimeoutGuard | undefined = undefined;
  next: TimeoutGuard | undefined = undefined;

  constructor(
    inner: StreamHandler,
    readonly ms: number,
    private readonly path: string,
  ) {
    super(inner);
    deadlines.add(this);
  }

  expire(): void {
    // Rounded: a bound left over from a shared deadline is fractional ("within 1999.99858 ms").
    this.fail(
      new TransportError('timeout', `no response to '${this.path}' within ${Math.round(this.ms)} ms`),
    );
  }

  protected override onFirstFrame(): void {
    deadlines.delete(this);
  }

  protected override onSettled(): void {
    deadlines.delete(this);
  }
}

/** Fails the stream with `timeout` when no response frame (data, end or error) arrives within ms. */
export function withFirstResponseTimeout(next: DispatchFn, ms: number | undefined): DispatchFn {
  if (ms === undefined || !(ms > 0) || !Number.isFinite(ms)) return next;
  return (req, handler) => {
    const guard = new TimeoutGuard(handler, ms, req.path);
    guard.handle = next(req, guard);
    return guard;
  };
}

class SignalGuard extends Guard {
  constructor(
    inner: StreamHandler,
    private readonly signal: AbortSignal,
    private readonly path: string,
  ) {
    super(inner);
    signal.addEventListener('abort', this, { once: true });
  }

  /** EventListener object form: no closure per call. */
  handleEvent(): void {
    this.fail(cancelledError(this.path, this.signal));
  }

  protected override onSettled(): void {
    this.signal.removeEventListener('abort', this);
  }
}

/** Fails the stream with `cancelled` (and cancels it remotely) when the caller's signal aborts. */
export function withAbortSignal(next: DispatchFn, signal: AbortSignal | undefined): DispatchFn {
  if (signal === undefined) return next;
  return (req, handler) => {
    if (signal.aborted) return failLater(handler, cancelledError(req.path, signal));
    const guard = new SignalGuard(handler, signal, req.path);
    guard.handle = next(req, guard);
    return guard;
  };
}

function cancelledError(path: string, signal: AbortSignal): TransportError {
  return new TransportError('cancelled', `call to '${path}' cancelled by the caller`, {
    cause: signal.reason,
  });
}
