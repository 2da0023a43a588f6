// Wire constants and frame encoders of the request plane (docs/protocol.md is the byte-level spec).
// Request frames follow CONTRACT.md §3; response frames are ours: u8 type | u32 stream_id | u32 len | payload.
// A frame is either encoded as one Buffer (encode*) or written in place into a FrameWriter's
// slab (write*); either way it leaves in one socket.write, never straddling two (Nagle stalls).

export const DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024;

/** Request header naming the stream a request opens (decimal u32, 1..2^32-1). */
export const STREAM_HEADER = 'x-kvroute-stream';
/** Request header giving the stream's initial credit in bytes (decimal). */
export const WINDOW_HEADER = 'x-kvroute-window';
export const REQUEST_ID_HEADER = 'x-request-id';

/** Reserved path: cancel the stream named by the STREAM_HEADER. Empty payload. */
export const CANCEL_PATH = '_cancel';
/** Reserved path: grant credit. Payload: repeated (u32 stream_id, u32 bytes). */
export const CREDIT_PATH = '_credit';

export const RESPONSE_HEADER_BYTES = 9;
export const ResponseType = { DATA: 1, END: 2, ERROR: 3 } as const;
export type ResponseTypeCode = (typeof ResponseType)[keyof typeof ResponseType];

/** Payload of an ERROR frame (UTF-8 JSON). */
export interface ErrorBody {
  message: string;
  /** KvrouteError code when the handler threw one, or the plane's own reason. */
  code?: string;
  /** True when the server refused the request before any handler ran (safe to retry elsewhere). */
  refused?: boolean;
}

/**
 * A request payload written straight into the frame (a connection's write slab) instead of being
 * built as a Buffer of its own first and copied in.
 */
export interface PayloadWriter {
  /** The payload's exact length in bytes. */
  readonly byteLength: number;
  /** Writes the payload's `byteLength` bytes at buf[at..]. */
  writeInto(buf: Buffer, at: number): void;
}

/** Bytes of a request frame with these parts. */
export function requestFrameSize(pathBytes: number, headersBytes: number, payloadBytes: number): number {
  return 2 + pathBytes + 2 + headersBytes + 4 + payloadBytes;
}

/** pathBytes/headersBytes: the UTF-8 lengths when the caller already measured them. */
export function encodeRequestFrame(
  path: string,
  headersJson: string,
  payload: Uint8Array,
  pathBytes = Buffer.byteLength(path, 'utf8'),
  headersBytes = Buffer.byteLength(headersJson, 'utf8'),
): Buffer {
  checkRequestParts(pathBytes, headersBytes);
  const buf = Buffer.allocUnsafe(requestFrameSize(pathBytes, headersBytes, payload.byteLength));
  let o = buf.writeUInt16BE(pathBytes, 0);
  o = writeUtf8(buf, o, path, pathBytes);
  o = buf.writeUInt16BE(headersBytes, o);
  o = writeUtf8(buf, o, headersJson, headersBytes);
  o = buf.writeUInt32BE(payload.byteLength, o);
  buf.set(payload, o);
  return buf;
}

function checkRequestParts(pathBytes: number, headersBytes: number): void {
  if (pathBytes > 0xffff) throw new RangeError(`endpoint path is ${pathBytes} bytes (max 65535)`);
  if (headersBytes > 0xffff) throw new RangeError(`headers are ${headersBytes} bytes (max 65535)`);
}

/**
 * Writes `s` (`bytes` = its UTF-8 length) at buf[o..]; returns the offset after it. Short ASCII
 * strings are copied in JS: the native UTF-8 writer's call overhead is most of a short write.
 */
function writeUtf8(buf: Buffer, o: number, s: string, bytes: number): number {
  if (bytes === s.length && bytes <= 64) {
    // Equal lengths mean every char is ASCII (anything else takes 2+ bytes per UTF-16 unit).
    for (let i = 0; i < bytes; i++) buf[o + i] = s.charCodeAt(i);
    return o + bytes;
  }
  return o + buf.write(s, o, bytes, 'utf8');
}

const STREAM_PREFIX = Buffer.from(`{"${STREAM_HEADER}":"`, 'latin1');
const WINDOW_INFIX = Buffer.from(`","${WINDOW_HEADER}":"`, 'latin1');

/** Decimal digits of a u32 (a stream id). */
function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

/**
 * The header block a client sends with each request, written straight into the frame rather than
 * built as a string: `{"x-kvroute-stream":"<id>","x-kvroute-window":"<window>"<tail>}`, where
 * `window` is the window's decimal text (ASCII) and `tail` is '' or `,"k":"v",...` (the caller's
 * headers as JSON members; `tailBytes` its UTF-8 length). The same bytes as JSON.stringify of those
 * headers in that order.
 */
export function streamHeaderBlockBytes(streamId: number, window: string, tailBytes: number): number {
  return STREAM_PREFIX.length + digits(streamId) + WINDOW_INFIX.length + window.length + 2 + tailBytes;
}

function writeStreamHeaderBlock(
  buf: Buffer,
  o: number,
  streamId: number,
  window: string,
  tail: string,
  tailBytes: number,
): number {
  buf.set(STREAM_PREFIX, o);
  o = writeDecimal(buf, o + STREAM_PREFIX.length, streamId);
  buf.set(WINDOW_INFIX, o);
  o = writeUtf8(buf, o + WINDOW_INFIX.length, window, window.length);
  buf[o++] = 0x22; // the window value's closing quote
  if (tailBytes > 0) o = writeUtf8(buf, o, tail, tailBytes);
  buf[o++] = 0x7d; // }
  return o;
}

function writeDecimal(buf: Buffer, o: number, n: number): number {
  const end = o + digits(n);
  for (let i = end - 1; i >= o; i--) {
    buf[i] = 0x30 + (n % 10);
    n = Math.floor(n / 10);
  }
  return end;
}

/**
 * Writes at buf[o..] a request frame whose header block is the client's own (see
 * streamHeaderBlockBytes, which gives `headersBytes`); returns the offset after it.
 */
export function writeStreamRequestFrame(
  buf: Buffer,
  o: number,
  path: string,
  pathBytes: number,
  streamId: number,
  window: string,
  tail: string,
  tailBytes: number,
  payload: Uint8Array | PayloadWriter,
): number {
  const headersBytes = streamHeaderBlockBytes(streamId, window, tailBytes);
  checkRequestParts(pathBytes, headersBytes);
  o = buf.writeUInt16BE(pathBytes, o);
  o = writeUtf8(buf, o, path, pathBytes);
  o = buf.writeUInt16BE(headersBytes, o);
  o = writeStreamHeaderBlock(buf, o, streamId, window, tail, tailBytes);
  o = buf.writeUInt32BE(payload.byteLength, o);
  if (payload instanceof Uint8Array) buf.set(payload, o);
  else payload.writeInto(buf, o);
  return o + payload.byteLength;
}

/** Writes a response frame header (u8 type | u32 stream_id | u32 len) at buf[o..]; returns o + 9. */
export function writeResponseHeader(
  buf: Buffer,
  o: number,
  type: ResponseTypeCode,
  streamId: number,
  len: number,
): number {
  buf[o] = type;
  buf.writeUInt32BE(streamId, o + 1);
  buf.writeUInt32BE(len, o + 5);
  return o + RESPONSE_HEADER_BYTES;
}

export function encodeResponseFrame(type: ResponseTypeCode, streamId: number, payload?: Uint8Array): Buffer {
  const len = payload === undefined ? 0 : payload.byteLength;
  const buf = Buffer.allocUnsafe(RESPONSE_HEADER_BYTES + len);
  const o = writeResponseHeader(buf, 0, type, streamId, len);
  if (payload !== undefined) buf.set(payload, o);
  return buf;
}

/**
 * An ERROR frame of at most `maxFrameBytes`, its message cut short if need be: a peer treats an
 * over-limit frame as fatal for the connection, so an overlong message (an error quoting the
 * payload it could not read) would fail every other stream on it too.
 */
export function encodeErrorFrame(streamId: number, body: ErrorBody, maxFrameBytes: number): Buffer {
  let json = JSON.stringify(body);
  let bytes = Buffer.byteLength(json, 'utf8');
  let message = body.message;
  while (RESPONSE_HEADER_BYTES + bytes > maxFrameBytes && message.length > 0) {
    // Cut in proportion to the overshoot (escapes and multi-byte characters make it inexact).
    const keep = Math.floor((message.length * (maxFrameBytes - RESPONSE_HEADER_BYTES)) / bytes) - 16;
    message = `${message.slice(0, Math.max(0, keep))}…`;
    if (keep <= 0) message = '';
    json = JSON.stringify({ ...body, message });
    bytes = Buffer.byteLength(json, 'utf8');
  }
  return encodeResponseFrame(ResponseType.ERROR, streamId, Buffer.from(json, 'utf8'));
}

const EMPTY = Buffer.alloc(0);

export function encodeCancelFrame(streamId: number): Buffer {
  return encodeRequestFrame(CANCEL_PATH, `{"${STREAM_HEADER}":"${streamId}"}`, EMPTY);
}

/** One `_credit` frame carrying every (stream, bytes) grant given. */
export function encodeCreditFrame(grants: ReadonlyArray<readonly [streamId: number, bytes: number]>): Buffer {
  const payload = Buffer.allocUnsafe(grants.length * 8);
  let o = 0;
  for (const [id, bytes] of grants) {
    o = payload.writeUInt32BE(id, o);
    o = payload.writeUInt32BE(Math.min(bytes, 0xffffffff), o);
  }
  return encodeRequestFrame(CREDIT_PATH, '{}', payload);
}

/** Calls `grant` for each (stream, bytes) pair of a `_credit` payload; false if the payload is malformed. */
export function forEachCredit(payload: Buffer, grant: (streamId: number, bytes: number) => void): boolean {
  if (payload.length % 8 !== 0) return false;
  for (let o = 0; o < payload.length; o += 8) grant(payload.readUInt32BE(o), payload.readUInt32BE(o + 4));
  return true;
}

/** Parses a stream id header value: a canonical decimal in 1..2^32-1, else undefined. */
export function parseStreamId(value: string | undefined): number | undefined {
  if (value === undefined || value.length === 0 || value.length > 10) return undefined;
  // Digit by digit rather than Number + String round trip: no string made per request.
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const d = value.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9 || (d === 0 && i === 0)) return undefined;
    n = n * 10 + d;
  }
  return n <= 0xffffffff ? n : undefined;
}
