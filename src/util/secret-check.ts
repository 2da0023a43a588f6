// One way to compare a shared secret (the worker token) with what a peer sent, on both planes:
// the control plane's `Authorization` header (src/router/http/workers.ts) and the request plane's
// frame header (src/tcp/server-connection.ts). SHA-256 digests compared with timingSafeEqual:
// equal lengths whatever was sent, no exit at the first differing byte, so the time an answer
// takes says nothing about how much of a guess was right. The expected digest is made once.

import { createHash, timingSafeEqual } from 'node:crypto';

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

export class SecretCheck {
  private readonly expected: Buffer;

  constructor(secret: string) {
    this.expected = sha256(secret);
  }

  /** Whether `value` (undefined when nothing was sent) is the secret. */
  matches(value: string | undefined): boolean {
    return value !== undefined && timingSafeEqual(sha256(value), this.expected);
  }
}
