// Encodes the frames written to one socket in a tick back to back into one slab and hands them to
// the socket in a single socket.write: many small frames cost one syscall and one stream write
// request instead of one each (a corked writev of hundreds of tiny buffers was the server's top
// cost), and no frame gets a Buffer of its own (a Buffer per frame plus the batch's concat copy
// was a large share of a small round trip's garbage). A batch reaching FLUSH_AT_BYTES is written
// at once so it never holds much memory.
//
// Use: `const at = writer.reserve(n)`, encode the frame into `writer.buffer` at `at`, then
// `writer.commit(n)`. Bytes the socket may still hold a view of are never written again: later
// frames go after them, and a full slab is replaced. Once the kernel has taken every byte handed
// over (the socket queues nothing), no view survives and the next batch starts again at the slab's
// first byte: a connection keeps reusing the same few cache-warm KiB instead of walking a fresh
// 64 KiB slab, which cost a page fault per 4 KiB written (~1 per routed 1k-token request).
//
// `blocked` is true from a write that returned false until the socket's 'drain'.

import type { Socket } from 'node:net';

const FLUSH_AT_BYTES = 64 * 1024;
const SLAB_BYTES = 64 * 1024;
const EMPTY = Buffer.alloc(0);

export class FrameWriter {
  blocked = false;
  /** The slab reserve()'s offsets point into (replaced when full). */
  buffer: Buffer = EMPTY;
  /** First byte of `buffer` not yet handed to the socket. */
  private sent = 0;
  /** First free byte of `buffer`. */
  private filled = 0;
  private scheduled = false;

  constructor(private readonly socket: Socket) {}

  /** Response/request bytes accepted but not yet handed to the kernel. */
  get queuedBytes(): number {
    return this.filled - this.sent + this.socket.writableLength;
  }

  /** Room for a frame of n bytes: encode it into `buffer` at the returned offset, then commit(n). */
  reserve(n: number): number {
    if (this.filled + n > this.buffer.length) {
      this.flush();
      // A frame larger than a slab gets a buffer of its own, dropped by flush() once handed over.
      this.buffer = Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, n));
      this.sent = 0;
      this.filled = 0;
    }
    return this.filled;
  }

  /** The frame reserved last is complete: it leaves with this tick's batch. */
  commit(n: number): void {
    if (this.socket.destroyed || this.socket.writableEnded) return; // dropped: the peer is gone
    this.filled += n;
    if (this.filled - this.sent >= FLUSH_AT_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flushOnTick);
    }
  }

  /** Queues an already encoded frame. */
  write(frame: Buffer): void {
    const at = this.reserve(frame.length);
    frame.copy(this.buffer, at);
    this.commit(frame.length);
  }

  /** Call from the socket's 'drain'. */
  drained(): void {
    this.blocked = false;
  }

  flush(): void {
    const { sent, filled } = this;
    if (filled === sent) return;
    this.sent = filled;
    if (!(this.socket.destroyed || this.socket.writableEnded)) {
      if (!this.socket.write(this.buffer.subarray(sent, filled))) this.blocked = true;
      else if (this.socket.writableLength === 0) {
        // Written through to the kernel: nothing refers to the slab any more.
        this.sent = 0;
        this.filled = 0;
      }
    }
    if (this.buffer.length > SLAB_BYTES) {
      // An oversize frame's own buffer (reserve): kept as the slab, it would hold every
      // connection at the largest frame it ever carried, up to the frame limit, for its life.
      this.buffer = EMPTY;
      this.sent = 0;
      this.filled = 0;
    }
  }

  /** Flushes what is batched, then half-closes the socket. */
  end(): void {
    this.flush();
    if (!this.socket.destroyed) this.socket.end();
  }

  private readonly flushOnTick = (): void => {
    this.scheduled = false;
    this.flush();
  };
}
