// The bound on request bodies being received at once. Each body is held whole until it is parsed,
// so without it the memory of uploads in progress was bounded only by --max-connections times
// --body-limit (64 GiB at the defaults), each upload for up to the 30 s request timeout. Bodies
// past `limit` bytes in all are refused with 503 `overloaded` (Retry-After: 1), like every other
// full queue of the router: nothing waits.
//
// Only bodies that may be large are counted: those whose content-length is over SMALL_BODY_BYTES,
// chunked ones (no length) and encoded ones (gzip/deflate, counted as decoded). A small body with a
// content-length cannot grow past it (node's parser frames the body by it), so those are bounded
// by --max-connections × SMALL_BODY_BYTES already, and the hot path of short requests gets no
// stream wrapped around its body.

import type { ServerResponse } from 'node:http';
import { finished, type Readable, Transform, type TransformCallback } from 'node:stream';
import { KvrouteError } from '../../errors.js';

/** Bodies at most this long (by content-length, not encoded) are not counted. */
export const SMALL_BODY_BYTES = 64 * 1024;

export class ReceivingBudget {
  #used = 0;

  constructor(readonly limit: number) {}

  /** Bytes of counted bodies received and not yet released. */
  get used(): number {
    return this.#used;
  }

  /** Whether a body with these headers is counted (may be larger than SMALL_BODY_BYTES). */
  counts(contentLength: string | undefined, encoded: boolean): boolean {
    if (encoded || contentLength === undefined) return true;
    return !(Number(contentLength) <= SMALL_BODY_BYTES);
  }

  /**
   * `payload`, counted as it is read: a chunk that would take the total past `limit` fails the
   * body with 503 `overloaded` (and `onRefused` runs, to close the connection: the rest of that
   * body is never read). What it counted is released when its stream closes: read to the end,
   * failed, the request's stream closed early, or the response to it over (fastify stops reading
   * a body it refuses as too large; the response ending is what always comes).
   */
  watch(payload: Readable, response: ServerResponse, onRefused: () => void): Readable {
    let held = 0;
    const counter = new Transform({
      transform: (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) => {
        if (this.#used + chunk.length > this.limit) {
          onRefused();
          callback(
            new KvrouteError(
              'overloaded',
              `the router is receiving ${this.limit} bytes of request bodies already: retry shortly`,
              { retryAfterSeconds: 1 },
            ),
          );
          return;
        }
        this.#used += chunk.length;
        held += chunk.length;
        callback(null, chunk);
      },
    });
    counter.once('close', () => {
      this.#used -= held;
      held = 0;
    });
    // fastify checks the content-length against the bytes it reads, or against a decoder's count
    // of the encoded bytes (json-body.ts): pass the latter through.
    Object.defineProperty(counter, 'receivedEncodedLength', {
      get: () => (payload as Readable & { receivedEncodedLength?: number }).receivedEncodedLength,
    });
    // Not pipeline(): that would destroy the request itself, and with it the socket that the 503
    // goes out on, when the counter refuses.
    finished(payload, (err) => {
      if (err) counter.destroy(err);
    });
    response.once('close', () => counter.destroy());
    payload.pipe(counter);
    return counter;
  }
}
