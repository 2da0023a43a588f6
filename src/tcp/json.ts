// JSON payload helpers for request-plane endpoints: one way to turn a value into a frame payload
// and back, so router and workers agree on the encoding (UTF-8 JSON).

export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

export function decodeJson<T>(buf: Uint8Array): T {
  const bytes = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return JSON.parse(bytes.toString('utf8')) as T;
}
