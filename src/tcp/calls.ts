// The two consumers of a dispatched stream that RequestPlaneClient hands to callers.
// ChunkIterator: an AsyncIterator that buffers chunks until the caller pulls them and grants
// credit only for what was pulled, so a slow consumer holds at most one window (+ one frame).
// UnaryCollector: gathers the whole answer, granting as it goes, capped at maxFrameBytes in total.

import { detach } from './byte-queue.js';
import { NOOP_HANDLE, type StreamHandle, type StreamHandler } from './dispatch.js';
import { TransportError } from './transport-error.js';

const DONE: IteratorResult<Buffer> = { value: undefined, done: true };

/** A stream() call's iterator, with a way to end the call from outside a pull. */
export interface ChunkStream extends AsyncIterator<Buffer> {
  /**
   * Abandons the stream if it is still open (no end or error received yet), as the caller's
   * signal would: it is cancelled remotely, what was not pulled is dropped, and the pending or
   * next pull fails with `err`. Lets a caller enforce its own bound (an idle timeout) without an
   * AbortSignal of its own per call.
   */
  cancel(err: TransportError): void;
}

export class ChunkIterator implements ChunkStream, StreamHandler {
  handle: StreamHandle = NOOP_HANDLE;
  private queue: Buffer[] = [];
  private head = 0;
  private ended = false;
  private error: TransportError | undefined;
  private waiter: { resolve: (r: IteratorResult<Buffer>) => void; reject: (e: unknown) => void } | undefined;

  onData(chunk: Buffer): void {
    const w = this.waiter;
    if (w !== undefined) {
      this.waiter = undefined;
      this.handle.grant(chunk.length);
      w.resolve({ value: chunk, done: false });
    } else {
      this.queue.push(detach(chunk));
    }
  }

  onEnd(): void {
    this.ended = true;
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve(DONE);
  }

  onError(err: TransportError): void {
    // A cancellation is acted on at once; other errors come after the chunks already received.
    if (err.kind === 'cancelled') this.dropQueue();
    this.error = err;
    const w = this.waiter;
    if (w !== undefined) {
      this.waiter = undefined;
      this.ended = true;
      this.error = undefined;
      w.reject(err);
    }
  }

  next(): Promise<IteratorResult<Buffer>> {
    if (this.head < this.queue.length) {
      const chunk = this.queue[this.head]!;
      this.queue[this.head++] = undefined as unknown as Buffer;
      if (this.head === this.queue.length) this.dropQueue();
      else if (this.head >= 1024 && this.head * 2 >= this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      this.handle.grant(chunk.length);
      return Promise.resolve({ value: chunk, done: false });
    }
    if (this.error !== undefined) {
      const err = this.error;
      this.error = undefined;
      this.ended = true;
      return Promise.reject(err);
    }
    if (this.ended) return Promise.resolve(DONE);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /**
   * The caller stopped early (break/return/throw in for-await): cancel the remote stream. A pull
   * still waiting for a chunk ends (done) rather than waiting forever.
   */
  return(): Promise<IteratorResult<Buffer>> {
    if (!this.ended) {
      this.ended = true;
      this.error = undefined;
      this.handle.cancel();
    }
    this.dropQueue();
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve(DONE);
    return Promise.resolve(DONE);
  }

  /** Ends the call from outside a pull with `err`: a `cancelled` one is the caller's cancel, any other a failure. */
  cancel(err: TransportError): void {
    if (this.ended || this.error !== undefined) return;
    this.handle.cancel(err.kind === 'cancelled' ? undefined : err);
    this.onError(err);
  }

  private dropQueue(): void {
    this.queue = [];
    this.head = 0;
  }
}

export class UnaryCollector implements StreamHandler {
  handle: StreamHandle = NOOP_HANDLE;
  /** The first chunk; `more` holds the rest only when the answer has several (rare). */
  private first: Buffer | undefined;
  private more: Buffer[] | undefined;
  private total = 0;

  constructor(
    private readonly resolve: (buf: Buffer) => void,
    private readonly reject: (err: TransportError) => void,
    private readonly maxBytes: number,
  ) {}

  onData(chunk: Buffer): void {
    this.total += chunk.length;
    if (this.total > this.maxBytes) {
      const err = new TransportError('protocol_error', `unary answer exceeds ${this.maxBytes} bytes`);
      this.handle.cancel(err);
      this.first = undefined;
      this.more = undefined;
      this.reject(err);
      return;
    }
    // The first chunk usually ends the answer in the same read: kept as a view. Later ones wait
    // for more reads, so they are detached from the socket's read buffer.
    if (this.first === undefined) this.first = chunk;
    else if (this.more === undefined) this.more = [detach(chunk)];
    else this.more.push(detach(chunk));
    this.handle.grant(chunk.length);
  }

  onEnd(): void {
    if (this.first === undefined) this.resolve(Buffer.alloc(0));
    else if (this.more === undefined) this.resolve(this.first);
    else this.resolve(Buffer.concat([this.first, ...this.more], this.total));
  }

  onError(err: TransportError): void {
    this.reject(err);
  }
}
