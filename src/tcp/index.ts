// Public surface of the framed TCP request plane (router <-> workers). See README.md beside this
// file for the modules and docs/protocol.md for the bytes on the wire.

export { ChunkIterator, type ChunkStream, UnaryCollector } from './calls.js';
export {
  type CallOptions,
  DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
  DEFAULT_STREAMS_PER_CONNECTION,
  parseAddress,
  RequestPlaneClient,
  type RequestPlaneClientOptions,
} from './client.js';
export {
  type DispatchFn,
  type DispatchRequest,
  type StreamHandle,
  type StreamHandler,
  withAbortSignal,
  withFirstResponseTimeout,
} from './dispatch.js';
export {
  CANCEL_PATH,
  CREDIT_PATH,
  DEFAULT_MAX_FRAME_BYTES,
  encodeRequestFrame,
  encodeResponseFrame,
  type PayloadWriter,
  REQUEST_ID_HEADER,
  ResponseType,
  STREAM_HEADER,
  WINDOW_HEADER,
} from './frames.js';
export { decodeJson, encodeJson } from './json.js';
export { type RequestEvent, RequestFrameDecoder } from './request-decoder.js';
export { type ResponseEvent, ResponseFrameDecoder } from './response-decoder.js';
export {
  formatAddress,
  RequestPlaneServer,
  type RequestPlaneServerOptions,
  type ServerStats,
} from './server.js';
export type { IncomingRequest, RequestHandler } from './server-types.js';
export { isTransportError, TransportError, type TransportErrorKind } from './transport-error.js';
