// A growable protobuf writer for the OTLP span encoder: one pass, no size-estimate pass. A nested
// message reserves one length byte and is moved right once in the rare case it ends up 128 bytes
// or longer (spans do, their attributes and ids do not), so each byte is written once and a span
// is copied at most once more. Pure and synchronous; the buffer is reused across batches.

const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i;
  HEX_VALUE['0123456789ABCDEF'.charCodeAt(i)] = i;
}

const TWO_POW_32 = 0x1_0000_0000;
const NANOS_PER_SECOND = 1_000_000_000;

/** Bytes a varint of `value` (0 ≤ value < 2^32) takes. */
function varintSize(value: number): number {
  return value < 0x80 ? 1 : value < 0x4000 ? 2 : value < 0x20_0000 ? 3 : value < 0x1000_0000 ? 4 : 5;
}

export class ProtoWriter {
  buf: Uint8Array;
  pos = 0;
  private view: DataView;

  constructor(initialBytes = 4096) {
    this.buf = new Uint8Array(initialBytes);
    this.view = new DataView(this.buf.buffer);
  }

  /** Makes room for `n` more bytes (small, so that V8 inlines it into every write). */
  ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(this.pos + n);
  }

  /** Doubles until `need` fits, so that appends stay amortised O(1). */
  private grow(need: number): void {
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  /** Forgets the content, keeps the buffer. */
  reset(): void {
    this.pos = 0;
  }

  /** A copy of what was written (the writer is then free to reuse its buffer). */
  toBytes(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  tag(field: number, wireType: number): void {
    this.uint32((field << 3) | wireType);
  }

  /** A varint of 0 ≤ value < 2^32. */
  uint32(value: number): void {
    this.ensure(5);
    let v = value >>> 0;
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  /** An int64 varint of any integer a double holds exactly (negative: two's complement, 10 bytes). */
  int64(value: number): void {
    if (value >= 0 && value < TWO_POW_32) {
      this.uint32(value);
      return;
    }
    let hi = Math.floor(value / TWO_POW_32);
    let lo = value - hi * TWO_POW_32;
    hi >>>= 0;
    lo >>>= 0;
    this.ensure(10);
    while (hi !== 0 || lo > 0x7f) {
      this.buf[this.pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.pos++] = lo;
  }

  fixed32(value: number): void {
    this.ensure(4);
    this.view.setUint32(this.pos, value >>> 0, true);
    this.pos += 4;
  }

  double(value: number): void {
    this.ensure(8);
    this.view.setFloat64(this.pos, value, true);
    this.pos += 8;
  }

  /**
   * An OpenTelemetry HrTime ([seconds, nanoseconds]) as fixed64 nanoseconds since the epoch.
   * seconds × 1e9 passes 2^53 (a double's exact range) in 1970 + 104 days, so the product is
   * assembled from 16-bit halves of `seconds`, each of whose products is exact.
   */
  hrTimeFixed64(seconds: number, nanos: number): void {
    const lowPart = (seconds % 0x1_0000) * NANOS_PER_SECOND + nanos; // < 2^47: exact
    const highPart = Math.floor(seconds / 0x1_0000) * NANOS_PER_SECOND; // to be shifted 16 left
    const highPartLow16 = highPart % 0x1_0000;
    const sum = lowPart + highPartLow16 * 0x1_0000; // < 2^48: exact
    const carry = Math.floor(sum / TWO_POW_32);
    this.ensure(8);
    this.view.setUint32(this.pos, sum - carry * TWO_POW_32, true);
    this.view.setUint32(this.pos + 4, (Math.floor(highPart / 0x1_0000) + carry) >>> 0, true);
    this.pos += 8;
  }

  /** Length-delimited raw bytes. */
  bytes(data: Uint8Array): void {
    this.uint32(data.length);
    this.raw(data);
  }

  /** Bytes with no length prefix (an already-encoded field). */
  raw(data: Uint8Array): void {
    this.ensure(data.length);
    this.buf.set(data, this.pos);
    this.pos += data.length;
  }

  /** Length-delimited UTF-8, written in place: ASCII char by char, anything else by Buffer. */
  string(value: string): void {
    const n = value.length;
    if (n < 0x80) {
      this.ensure(1 + n);
      const start = this.pos;
      const buf = this.buf;
      let p = start + 1;
      for (let i = 0; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c > 0x7f) {
          this.pos = start;
          this.utf8String(value);
          return;
        }
        buf[p++] = c;
      }
      buf[start] = n;
      this.pos = p;
      return;
    }
    this.utf8String(value);
  }

  private utf8String(value: string): void {
    const encoded = Buffer.from(value, 'utf8');
    this.bytes(encoded);
  }

  /** A W3C hex id (trace or span id) as length-delimited raw bytes; `hex` is well-formed. */
  hexBytes(hex: string): void {
    const n = hex.length >>> 1;
    this.ensure(1 + n);
    const buf = this.buf;
    buf[this.pos++] = n;
    for (let i = 0; i < n; i++) {
      buf[this.pos++] = (HEX_VALUE[hex.charCodeAt(2 * i)]! << 4) | HEX_VALUE[hex.charCodeAt(2 * i + 1)]!;
    }
  }

  /** Starts a nested message: reserves its length byte; pass the result to `end`. */
  begin(): number {
    this.ensure(1);
    return this.pos++;
  }

  /** Ends the nested message begun at `start`: writes its length, moving it right if needed. */
  end(start: number): void {
    const length = this.pos - start - 1;
    if (length < 0x80) {
      this.buf[start] = length;
      return;
    }
    const extra = varintSize(length) - 1;
    this.ensure(extra);
    this.buf.copyWithin(start + 1 + extra, start + 1, this.pos);
    this.pos += extra;
    let p = start;
    let v = length;
    while (v > 0x7f) {
      this.buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[p] = v;
  }
}
