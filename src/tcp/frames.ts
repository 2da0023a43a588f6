// Wire constants and frame encoders of the request plane (docs/protocol.md is the byte-level spec).
// Request frames follow CONTRACT.md §3; response frames are ours: u8 type | u32 stream_id | u32 len | payload.
// Every encoder returns ONE Buffer per frame so a frame never straddles two writes (Nagle stalls).

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
  if (pathBytes > 0xffff) throw new RangeError(`endpoint path is ${pathBytes} bytes (max 65535)`);
  if (headersBytes > 0xffff) throw new RangeError(`headers are ${headersBytes} bytes (max 65535)`);
  const buf = Buffer.allocUnsafe(requestFrameSize(pathBytes, headersBytes, payload.byteLength));
  let o = buf.writeUInt16BE(pathBytes, 0);
  o += buf.write(path, o, 'utf8');
  o = buf.writeUInt16BE(headersBytes, o);
  o += buf.write(headersJson, o, 'utf8');
  o = buf.writeUInt32BE(payload.byteLength, o);
  buf.set(payload, o);
  return buf;
}

export function encodeResponseFrame(type: ResponseTypeCode, streamId: number, payload?: Uint8Array): Buffer {
  const len = payload === undefined ? 0 : payload.byteLength;
  const buf = Buffer.allocUnsafe(RESPONSE_HEADER_BYTES + len);
  buf[0] = type;
  buf.writeUInt32BE(streamId, 1);
  buf.writeUInt32BE(len, 5);
  if (payload !== undefined) buf.set(payload, RESPONSE_HEADER_BYTES);
  return buf;
}

/** A DATA frame immediately followed by the END frame of the same stream, in one Buffer. */
export function encodeDataEndFrames(streamId: number, payload: Uint8Array): Buffer {
  const len = payload.byteLength;
  const buf = Buffer.allocUnsafe(2 * RESPONSE_HEADER_BYTES + len);
  buf[0] = ResponseType.DATA;
  buf.writeUInt32BE(streamId, 1);
  buf.writeUInt32BE(len, 5);
  buf.set(payload, RESPONSE_HEADER_BYTES);
  const end = RESPONSE_HEADER_BYTES + len;
  buf[end] = ResponseType.END;
  buf.writeUInt32BE(streamId, end + 1);
  buf.writeUInt32BE(0, end + 5);
  return buf;
}

export function encodeErrorFrame(streamId: number, body: ErrorBody): Buffer {
  return encodeResponseFrame(ResponseType.ERROR, streamId, Buffer.from(JSON.stringify(body), 'utf8'));
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
