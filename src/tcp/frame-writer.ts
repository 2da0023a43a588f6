// Batches the frames written to one socket in a tick into a single socket.write: many small
// frames concatenated cost one syscall and one stream write request instead of one each (a corked
// writev of hundreds of tiny buffers was the server's top cost). A frame of FLUSH_AT_BYTES or more,
// or a batch reaching it, is written at once so a batch never holds much memory.
//
// `blocked` is true from a write that returned false until the socket's 'drain'.

import type { Socket } from 'node:net';

const FLUSH_AT_BYTES = 64 * 1024;

export class FrameWriter {
  blocked = false;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private scheduled = false;

  constructor(private readonly socket: Socket) {}

  /** Response/request bytes accepted but not yet handed to the kernel. */
  get queuedBytes(): number {
    return this.pendingBytes + this.socket.writableLength;
  }

  write(frame: Buffer): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (frame.length >= FLUSH_AT_BYTES) {
      this.flush();
      this.put(frame);
      return;
    }
    this.pending.push(frame);
    this.pendingBytes += frame.length;
    if (this.pendingBytes >= FLUSH_AT_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flushOnTick);
    }
  }

  /** Call from the socket's 'drain'. */
  drained(): void {
    this.blocked = false;
  }

  flush(): void {
    const frames = this.pending;
    if (frames.length === 0) return;
    this.pending = [];
    const bytes = this.pendingBytes;
    this.pendingBytes = 0;
    this.put(frames.length === 1 ? frames[0]! : Buffer.concat(frames, bytes));
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

  private put(buf: Buffer): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (!this.socket.write(buf)) this.blocked = true;
  }
}
