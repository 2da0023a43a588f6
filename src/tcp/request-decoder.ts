// Incremental decoder of request frames (CONTRACT.md §3) for the server side. Pure: bytes in,
// events out; no sockets or timers. Feed socket chunks with push() in any split or coalescing,
// then drain events with next() until it returns undefined. A `frame` event object is reused by
// the following next() call: read it first.
//
// Limits: a frame whose declared size exceeds maxFrameBytes is never buffered. If its headers are
// readable it is reported as `rejected` (so the server can answer on its stream) and its payload is
// discarded as it streams past; otherwise framing can no longer be trusted and `fatal` is reported.
// Buffered bytes never exceed maxFrameBytes plus one socket chunk.

import { ByteQueue } from './byte-queue.js';

export type RequestEvent =
  | { kind: 'frame'; path: string; headers: Record<string, string>; payload: Buffer }
  /** The frame was consumed without being served; framing is intact. headers: undefined if unreadable. */
  | { kind: 'rejected'; path: string; headers: Record<string, string> | undefined; reason: string }
  /** Framing is lost; the connection must be closed. Reported once; next() returns undefined after. */
  | { kind: 'fatal'; reason: string };

/** A character that ends the fast path: a JSON escape or a control character (invalid raw in JSON). */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point (JSON forbids them raw)
const ESCAPE_OR_CONTROL = /[\u0000-\u001f\\]/;

/**
 * The header block every kvroute client sends, `{"k":"v",...}` without whitespace or escapes,
 * read by scanning for quotes (JSON.parse plus the type check was ~15% of a small request on the
 * server). Returns undefined for anything else, which JSON.parse then decides: the result is
 * always what JSON.parse would give.
 */
function parseCompactHeaderBlock(text: string): Record<string, string> | undefined {
  const n = text.length;
  if (n < 2 || text.charCodeAt(0) !== 0x7b || text.charCodeAt(n - 1) !== 0x7d) return undefined;
  if (ESCAPE_OR_CONTROL.test(text)) return undefined;
  const headers: Record<string, string> = {};
  if (n === 2) return headers;
  let i = 1; // at the opening quote of a key
  for (;;) {
    if (text.charCodeAt(i) !== 0x22) return undefined;
    const keyEnd = text.indexOf('"', i + 1);
    if (keyEnd < 0 || text.charCodeAt(keyEnd + 1) !== 0x3a || text.charCodeAt(keyEnd + 2) !== 0x22) {
      return undefined;
    }
    const valueEnd = text.indexOf('"', keyEnd + 3);
    if (valueEnd < 0) return undefined;
    const key = text.slice(i + 1, keyEnd);
    if (key === '__proto__') return undefined; // JSON.parse makes it an own property; `=` would not
    headers[key] = text.slice(keyEnd + 3, valueEnd);
    const after = text.charCodeAt(valueEnd + 1);
    if (after === 0x7d) return valueEnd + 2 === n ? headers : undefined;
    if (after !== 0x2c) return undefined;
    i = valueEnd + 2;
  }
}

/** Parses a header block; returns the headers or a reason string. */
export function parseHeaderBlock(text: string): Record<string, string> | string {
  const compact = parseCompactHeaderBlock(text);
  if (compact !== undefined) return compact;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'headers are not valid JSON';
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return 'headers are not a JSON object';
  }
  for (const k in value) {
    if (typeof (value as Record<string, unknown>)[k] !== 'string') {
      return `header '${k}' is not a string`;
    }
  }
  return value as Record<string, string>;
}

export class RequestFrameDecoder {
  private readonly queue = new ByteQueue();
  /** Payload bytes of a rejected oversize frame still to be discarded. */
  private skipping = 0;
  private fatal: string | undefined;
  private fatalReported = false;
  /** Reused for every served frame: one allocation fewer per request on the hot path. */
  private readonly frame: Extract<RequestEvent, { kind: 'frame' }> = {
    kind: 'frame',
    path: '',
    headers: {},
    payload: Buffer.alloc(0),
  };

  private lastPath = '';
  /** The UTF-8 bytes of lastPath (a copy, not a view of a socket chunk). */
  private lastPathBytes: Buffer = Buffer.alloc(0);

  constructor(readonly maxFrameBytes: number) {}

  /** Bytes held while waiting for the rest of a frame. */
  get bufferedBytes(): number {
    return this.queue.length;
  }

  push(chunk: Buffer): void {
    if (this.fatal !== undefined) return;
    if (this.skipping > 0 && this.queue.length === 0) {
      const s = Math.min(this.skipping, chunk.length);
      this.skipping -= s;
      chunk = chunk.subarray(s);
    }
    this.queue.push(chunk);
  }

  next(): RequestEvent | undefined {
    if (this.fatal !== undefined) return this.reportFatal();
    const q = this.queue;
    if (this.skipping > 0) {
      this.skipping -= q.skip(this.skipping);
      if (this.skipping > 0) return undefined;
    }
    if (q.length < 2) return undefined;
    const max = this.maxFrameBytes;
    const pathLen = q.readUInt16BE(0);
    if (2 + pathLen + 2 + 4 > max)
      return this.fail(`endpoint path of ${pathLen} bytes exceeds the frame limit`);
    if (q.length < 2 + pathLen + 2) return undefined;
    const headersLen = q.readUInt16BE(2 + pathLen);
    const prefix = 2 + pathLen + 2 + headersLen + 4;
    if (prefix > max) return this.fail(`header block of ${headersLen} bytes exceeds the frame limit`);
    if (q.length < prefix) return undefined;
    const payloadLen = q.readUInt32BE(prefix - 4);
    const total = prefix + payloadLen;

    if (total > max) {
      q.skip(2);
      const path = q.takeUtf8(pathLen);
      q.skip(2);
      const headers = parseHeaderBlock(q.takeUtf8(headersLen));
      q.skip(4);
      if (typeof headers === 'string') {
        return this.fail(`frame of ${total} bytes exceeds the ${max}-byte limit and ${headers}`);
      }
      this.skipping = payloadLen - q.skip(payloadLen);
      return {
        kind: 'rejected',
        path,
        headers,
        reason: `frame of ${total} bytes exceeds the ${max}-byte limit`,
      };
    }

    if (q.length < total) return undefined;
    const path = this.takePath(pathLen);
    q.skip(2);
    const headers = parseHeaderBlock(q.takeUtf8(headersLen));
    q.skip(4);
    const payload = q.take(payloadLen);
    if (typeof headers === 'string') return { kind: 'rejected', path, headers: undefined, reason: headers };
    const frame = this.frame;
    frame.path = path;
    frame.headers = headers;
    frame.payload = payload;
    return frame;
  }

  /**
   * Consumes the path length and path; the string of the previous frame's path when the bytes are
   * the same (they nearly always are: no decode, and the handler lookup hits a hashed string).
   */
  private takePath(pathLen: number): string {
    const q = this.queue;
    if (pathLen === this.lastPathBytes.length && q.equalsAt(2, this.lastPathBytes)) {
      q.skip(2 + pathLen);
      return this.lastPath;
    }
    q.skip(2);
    this.lastPathBytes = Buffer.from(q.takeView(pathLen));
    this.lastPath = this.lastPathBytes.toString('utf8');
    return this.lastPath;
  }

  private fail(reason: string): RequestEvent | undefined {
    this.fatal = reason;
    this.queue.clear();
    return this.reportFatal();
  }

  private reportFatal(): RequestEvent | undefined {
    if (this.fatalReported) return undefined;
    this.fatalReported = true;
    return { kind: 'fatal', reason: this.fatal! };
  }
}
