// One request being served: runs the handler inside its `handle_payload` span and pumps the
// handler's chunks into DATA frames, pulling the next chunk only while the socket is writable and
// the stream has credit. Cancellation aborts the handler's signal and stops the pump at once, even
// if the handler is stuck inside next().

import { type Context, context, ROOT_CONTEXT, type Tracer } from '@opentelemetry/api';
import { isKvrouteError } from '../errors.js';
import { encodeErrorFrame, REQUEST_ID_HEADER, RESPONSE_HEADER_BYTES, ResponseType } from './frames.js';
import type { IncomingRequest, RequestHandler } from './server-types.js';
import { endHandlerSpan, startHandlerSpan } from './trace.js';

const ABORTED: unique symbol = Symbol('aborted');
type Aborted = typeof ABORTED;

/** The connection as a stream sees it. */
export interface StreamSink {
  /** True while socket.write has returned false and 'drain' has not come yet. */
  readonly blocked: boolean;
  readonly maxFrameBytes: number;
  send(frame: Buffer): void;
  /** Sends a DATA (with payload) or END (without) frame of `streamId`; with `thenEnd`, an END after the DATA. */
  sendResponse(
    type: typeof ResponseType.DATA | typeof ResponseType.END,
    streamId: number,
    payload?: Uint8Array,
    thenEnd?: boolean,
  ): void;
  /** Calls `wake` once on the next 'drain'. */
  onceDrained(wake: () => void): void;
  finished(stream: ServerStream): void;
}

export class ServerStream {
  /** Created on first use of req.signal: an AbortController costs more than a small request. */
  private controller: AbortController | undefined;
  private abortReason: Error | undefined;
  /** Bytes the stream may still send before it needs credit (may dip below 0 by one chunk). */
  private window: number;
  /** Resolves whatever the pump is currently awaiting (a chunk, credit or drain). */
  private wake: ((value: Aborted | undefined) => void) | undefined;
  /**
   * The handler's context (its handle_payload span). The handler's own code runs in it also when
   * the plane calls it from outside: its signal's abort listeners and its iterator's return(),
   * which a cancel or a closing connection starts from a socket callback.
   */
  private ctx: Context = ROOT_CONTEXT;

  constructor(
    private readonly sink: StreamSink,
    readonly id: number,
    windowBytes: number,
  ) {
    this.window = windowBytes;
  }

  get aborted(): boolean {
    return this.abortReason !== undefined;
  }

  abort(reason: string): void {
    if (this.aborted) return;
    this.abortReason = new Error(reason);
    const controller = this.controller;
    if (controller !== undefined) context.with(this.ctx, () => controller.abort(this.abortReason));
    this.wake?.(ABORTED);
  }

  grant(bytes: number): void {
    const before = this.window;
    this.window += bytes;
    if (before <= 0 && this.window > 0) this.wake?.(undefined);
  }

  async run(
    handler: RequestHandler,
    path: string,
    headers: Record<string, string>,
    payload: Buffer,
    tracer: Tracer,
  ) {
    const requestId = headers[REQUEST_ID_HEADER];
    const { span, ctx } = startHandlerSpan(tracer, path, headers, requestId);
    this.ctx = ctx;
    const req = new LazySignalRequest(path, headers, payload, requestId, this);
    let iterator: AsyncIterator<Uint8Array> | undefined;
    /** The handler's iterator said done: it has already run its own cleanup. */
    let exhausted = false;
    let failure: unknown;
    try {
      const produced = context.with(ctx, handler, undefined, req);
      const result = isThenable(produced)
        ? await this.untilSettledOrAborted(Promise.resolve(produced))
        : produced;
      let ended = false;
      if (result !== ABORTED) {
        if (result instanceof Uint8Array) {
          // A single-chunk answer leaves as DATA+END in one buffer.
          this.checkChunkSize(result);
          if (!this.aborted) this.sink.sendResponse(ResponseType.DATA, this.id, result, true);
          ended = true;
        } else if (result !== null && typeof result === 'object' && Symbol.asyncIterator in result) {
          const it = result[Symbol.asyncIterator]();
          iterator = it;
          for (;;) {
            if ((this.sink.blocked || this.window <= 0) && (await this.untilSendable()) === ABORTED) break;
            const step = await this.untilSettledOrAborted(context.with(ctx, () => it.next()));
            if (step === ABORTED) break;
            if (step.done) {
              exhausted = true;
              break;
            }
            this.sendData(step.value);
          }
        } else {
          throw new TypeError(`handler for '${path}' returned neither bytes nor an async iterable`);
        }
      }
      if (!this.aborted && !ended) this.sink.sendResponse(ResponseType.END, this.id);
    } catch (err) {
      failure = err;
      if (!this.aborted) {
        this.sink.send(
          encodeErrorFrame(
            this.id,
            {
              message: err instanceof Error ? err.message : String(err),
              ...(isKvrouteError(err) ? { code: err.code } : {}),
            },
            this.sink.maxFrameBytes,
          ),
        );
      }
    } finally {
      this.wake = undefined;
      // Closed whenever it did not finish by itself: aborted, or failed on our side (a chunk over
      // the frame limit). Left suspended, a generator never runs its finally, and whatever it
      // holds (a kv_events subscription, an engine request and its KV blocks) stays held.
      if (!exhausted && iterator?.return) {
        // Not awaited: an async generator runs return() only after its pending next() settles.
        try {
          context.with(ctx, iterator.return, iterator).catch(() => {});
        } catch {}
      }
      this.sink.finished(this);
      endHandlerSpan(span, failure, this.aborted);
    }
  }

  /** The AbortSignal handed to the handler, made on demand and already aborted if the stream is. */
  signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason !== undefined) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  private checkChunkSize(chunk: Uint8Array): void {
    if (chunk.byteLength + RESPONSE_HEADER_BYTES > this.sink.maxFrameBytes) {
      throw new RangeError(`response chunk of ${chunk.byteLength} bytes exceeds the frame limit`);
    }
  }

  private sendData(chunk: Uint8Array): void {
    this.checkChunkSize(chunk);
    this.window -= chunk.byteLength;
    this.sink.sendResponse(ResponseType.DATA, this.id, chunk);
  }

  private untilSettledOrAborted<T>(p: Promise<T>): Promise<T | Aborted> {
    if (this.aborted) return Promise.resolve(ABORTED);
    return new Promise<T | Aborted>((resolve, reject) => {
      this.wake = resolve as (v: Aborted | undefined) => void;
      p.then(resolve, reject);
    });
  }

  /** Waits until the socket drained and the stream has credit, or the stream is aborted. */
  private async untilSendable(): Promise<Aborted | undefined> {
    while (!this.aborted && (this.sink.blocked || this.window <= 0)) {
      const r = await new Promise<Aborted | undefined>((resolve) => {
        this.wake = resolve;
        if (this.sink.blocked) this.sink.onceDrained(() => resolve(undefined));
      });
      if (r === ABORTED) return ABORTED;
    }
    return this.aborted ? ABORTED : undefined;
  }
}

function isThenable<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

class LazySignalRequest implements IncomingRequest {
  constructor(
    readonly path: string,
    readonly headers: Readonly<Record<string, string>>,
    readonly payload: Buffer,
    readonly requestId: string | undefined,
    private readonly stream: ServerStream,
  ) {}

  get signal(): AbortSignal {
    return this.stream.signal();
  }
}
