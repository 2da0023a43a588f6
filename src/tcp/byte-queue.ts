// A FIFO of received socket chunks that the frame decoders read integers from and cut frames out
// of without concatenating on every arrival. Reads never copy when the bytes sit inside one chunk.
//
// Complexity: push O(1); readUInt*/take/skip O(chunks touched); `length` is the buffered byte count.

/** Payloads smaller than this are copied out of the socket chunk by take() so a retained small
 * payload does not pin a whole 64 KiB read buffer (keeps the buffered-bytes accounting honest). */
const COPY_BELOW = 4096;

/** A copy of `buf` if it is a small view into a much larger buffer, else `buf` itself. */
export function detach(buf: Buffer): Buffer {
  return buf.length < COPY_BELOW && buf.buffer.byteLength > 2 * buf.length ? Buffer.from(buf) : buf;
}

const EMPTY = Buffer.alloc(0);

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Index of the first live chunk in `chunks`. */
  private first = 0;
  /** Bytes already consumed from `chunks[first]`. */
  private offset = 0;
  /** Unconsumed bytes buffered. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Byte at `pos` bytes past the read position; caller guarantees pos < length. */
  private byteAt(pos: number): number {
    let i = this.first;
    let p = pos + this.offset;
    for (;;) {
      const c = this.chunks[i]!;
      if (p < c.length) return c[p]!;
      p -= c.length;
      i++;
    }
  }

  readUInt8(pos: number): number {
    return this.byteAt(pos);
  }

  readUInt16BE(pos: number): number {
    const c = this.chunks[this.first]!;
    const p = this.offset + pos;
    if (p + 2 <= c.length) return c.readUInt16BE(p);
    return (this.byteAt(pos) << 8) | this.byteAt(pos + 1);
  }

  readUInt32BE(pos: number): number {
    const c = this.chunks[this.first]!;
    const p = this.offset + pos;
    if (p + 4 <= c.length) return c.readUInt32BE(p);
    return (
      this.byteAt(pos) * 0x1000000 +
      ((this.byteAt(pos + 1) << 16) | (this.byteAt(pos + 2) << 8) | this.byteAt(pos + 3))
    );
  }

  /** Removes and returns the next n bytes (n <= length), small ones copied out (see COPY_BELOW). */
  take(n: number): Buffer {
    return this.takeView(n, true);
  }

  /**
   * Removes and returns the next n bytes as a view into the socket chunk when they lie in one
   * (no copy), for a consumer that uses them at once or detaches what it keeps.
   */
  takeView(n: number, copySmall = false): Buffer {
    if (n === 0) return EMPTY;
    const c = this.chunks[this.first]!;
    let out: Buffer;
    if (this.offset + n <= c.length) {
      const view = c.subarray(this.offset, this.offset + n);
      out = copySmall && n < COPY_BELOW && n < c.length ? Buffer.from(view) : view;
      this.advance(n);
      return out;
    }
    out = Buffer.allocUnsafe(n);
    let written = 0;
    while (written < n) {
      const head = this.chunks[this.first]!;
      const m = Math.min(n - written, head.length - this.offset);
      head.copy(out, written, this.offset, this.offset + m);
      written += m;
      this.advance(m);
    }
    return out;
  }

  /** Whether the bytes at `pos` past the read position are `bytes` (caller guarantees they are buffered). */
  equalsAt(pos: number, bytes: Uint8Array): boolean {
    const n = bytes.length;
    const c = this.chunks[this.first]!;
    const p = this.offset + pos;
    if (p + n <= c.length) {
      for (let i = 0; i < n; i++) if (c[p + i] !== bytes[i]) return false;
      return true;
    }
    for (let i = 0; i < n; i++) if (this.byteAt(pos + i) !== bytes[i]) return false;
    return true;
  }

  /** Removes the next n bytes (n <= length) and decodes them as UTF-8. */
  takeUtf8(n: number): string {
    if (n === 0) return '';
    const c = this.chunks[this.first]!;
    if (this.offset + n <= c.length) {
      const s = c.toString('utf8', this.offset, this.offset + n);
      this.advance(n);
      return s;
    }
    return this.take(n).toString('utf8');
  }

  /** Discards up to n bytes; returns how many were discarded. */
  skip(n: number): number {
    const m = Math.min(n, this.length);
    let left = m;
    while (left > 0) {
      const head = this.chunks[this.first]!;
      const k = Math.min(left, head.length - this.offset);
      this.advance(k);
      left -= k;
    }
    return m;
  }

  /** Drops everything buffered. */
  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.offset = 0;
    this.length = 0;
  }

  /** Consumes n bytes that lie within the head chunk. */
  private advance(n: number): void {
    this.offset += n;
    this.length -= n;
    const head = this.chunks[this.first]!;
    if (this.offset === head.length) {
      this.chunks[this.first] = undefined as unknown as Buffer;
      this.first++;
      this.offset = 0;
      if (this.first === this.chunks.length) {
        this.chunks.length = 0;
        this.first = 0;
      } else if (this.first >= 1024 && this.first * 2 >= this.chunks.length) {
        this.chunks = this.chunks.slice(this.first);
        this.first = 0;
      }
    }
  }
}
