// Trace and span ids for recorded spans and sampled-out roots: the format of the SDK's
// RandomIdGenerator (lower-case hex, 32 and 16 digits, never all zeros) at about half its cost.
//
// Why: every span takes an id, and the SDK's generator writes Math.random() words into a buffer and
// turns its bytes into hex through Buffer#toString, a call into C++ for each id (~95 ns for a span
// id; ~60 here). Here the random bytes come from crypto.randomFillSync into a pool refilled every
// 4 KB (512 span ids), and the hex digits are assembled in JavaScript into one flat string.

import { randomFillSync } from 'node:crypto';
import type { IdGenerator } from '@opentelemetry/sdk-trace-base';

const POOL_BYTES = 4096;
const TRACE_ID_BYTES = 16;
const SPAN_ID_BYTES = 8;
const HEX_DIGIT_CODES = Array.from('0123456789abcdef', (c) => c.charCodeAt(0));
const CHAR_CODE_ONE = 0x31;

export class PooledIdGenerator implements IdGenerator {
  private readonly pool = new Uint8Array(POOL_BYTES);
  private offset = POOL_BYTES;
  // The digits of the id being made, reused: String.fromCharCode.apply reads them as its arguments.
  private readonly traceIdCodes = new Array<number>(TRACE_ID_BYTES * 2).fill(0);
  private readonly spanIdCodes = new Array<number>(SPAN_ID_BYTES * 2).fill(0);

  /** `fill` puts random bytes into the pool (tests pass their own). */
  constructor(private readonly fill: (pool: Uint8Array) => void = randomFillSync) {}

  generateTraceId(): string {
    return this.hexId(TRACE_ID_BYTES, this.traceIdCodes);
  }

  generateSpanId(): string {
    return this.hexId(SPAN_ID_BYTES, this.spanIdCodes);
  }

  private hexId(bytes: number, codes: number[]): string {
    if (this.offset + bytes > POOL_BYTES) {
      this.fill(this.pool);
      this.offset = 0;
    }
    const pool = this.pool;
    const start = this.offset;
    this.offset += bytes;
    let any = 0;
    for (let i = 0; i < bytes; i++) {
      const b = pool[start + i]!;
      any |= b;
      codes[2 * i] = HEX_DIGIT_CODES[b >> 4]!;
      codes[2 * i + 1] = HEX_DIGIT_CODES[b & 0xf]!;
    }
    // All zeros is the invalid id: end in 1 instead, as the SDK's generator does.
    if (any === 0) codes[2 * bytes - 1] = CHAR_CODE_ONE;
    return String.fromCharCode.apply(null, codes);
  }
}
