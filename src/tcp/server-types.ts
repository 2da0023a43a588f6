// Types shared by the request-plane server and its handlers.

export interface IncomingRequest {
  path: string;
  headers: Readonly<Record<string, string>>;
  payload: Buffer;
  /** Aborted when the caller cancels, the connection drops, or the server's close deadline passes. */
  signal: AbortSignal;
  requestId: string | undefined;
}

/** One response chunk per yielded value; a plain Uint8Array is a single-chunk response. */
export type RequestHandler = (
  req: IncomingRequest,
) => AsyncIterable<Uint8Array> | Promise<Uint8Array | AsyncIterable<Uint8Array>>;

export interface ServerLimits {
  /** Largest request frame accepted and largest response frame sent. */
  maxFrameBytes: number;
  /** Concurrent streams one connection may hold; more are refused with `overloaded`. */
  maxStreamsPerConnection: number;
  /** Credit a stream starts with when the request does not name one (x-kvroute-window). */
  defaultWindowBytes: number;
  /** Unsent response bytes at which the server stops reading more requests from that connection. */
  outboundHighWaterBytes: number;
}
