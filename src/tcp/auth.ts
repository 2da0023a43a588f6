// The request plane's shared secret (the router's and workers' --worker-token): a client with a
// token sends `authorization: Bearer <token>` in every request frame's headers; a server with one
// serves only frames that carry exactly that (docs/protocol.md §1).
//
// The server compares SHA-256 digests with timingSafeEqual, so the time a refusal takes says
// nothing about how much of a guess was right. A digest per frame would cost the router's hot path
// (~1 µs each), so a connection remembers the value it was last allowed with: later frames on it
// that carry that same string are compared with `===`. That comparison only ever runs on a
// connection that has already proved it holds the token, so its timing reveals nothing new.

import { createHash, timingSafeEqual } from 'node:crypto';

/** The frame header carrying the token (the control plane's HTTP header of the same name and form). */
export const AUTHORIZATION_HEADER = 'authorization';

/** The header value a client with `token` sends. */
export function bearer(token: string): string {
  return `Bearer ${token}`;
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** A server's check of the header value against its token; the expected digest is computed once. */
export class TokenCheck {
  private readonly expected: Buffer;

  constructor(token: string) {
    this.expected = sha256(bearer(token));
  }

  /** Whether `value` (the frame's header, undefined when absent) is `Bearer <token>`. */
  allows(value: string | undefined): boolean {
    return value !== undefined && timingSafeEqual(sha256(value), this.expected);
  }
}
