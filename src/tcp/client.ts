// The request-plane client the router uses: a fleet of connection pools keyed by worker address,
// and the two call shapes built on the dispatch contract: stream() (async iterable of chunks with
// per-stream credit) and unary() (one answer).
//
// Trace context is captured when stream()/unary() is called, never in socket callbacks (those run
// in the context the socket was dialled in): each call gets one CLIENT span, child of the caller's
// context at call time, and that span's context travels in the frame headers.

import { type Context, context, type Span, type Tracer } from '@opentelemetry/api';
import { AUTHORIZATION_HEADER, bearer } from './auth.js';
import { ChunkIterator, type ChunkStream, UnaryCollector } from './calls.js';
import {
  type DispatchFn,
  type DispatchRequest,
  failLater,
  type StreamHandle,
  type StreamHandler,
  withAbortSignal,
  withFirstResponseTimeout,
} from './dispatch.js';
import { DEFAULT_MAX_FRAME_BYTES, type PayloadWriter, REQUEST_ID_HEADER } from './frames.js';
import { ConnectionPool, type PoolOptions } from './pool.js';
import { ClientSpanGuard, globalTracer, startClientSpan } from './trace.js';
import { TransportError } from './transport-error.js';

export interface CallOptions {
  requestId?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  firstResponseTimeoutMs?: number;
}

export interface RequestPlaneClientOptions {
  connectTimeoutMs?: number;
  /** Default for calls that do not set one; 0 disables. */
  firstResponseTimeoutMs?: number;
  maxConnectionsPerAddress?: number;
  /** Streams a connection carries before the pool dials another (up to maxConnectionsPerAddress). */
  streamsPerConnection?: number;
  maxFrameBytes?: number;
  /** Response bytes one stream may hold unconsumed: its credit window. */
  maxBufferedBytesPerStream?: number;
  /**
   * Request bytes a connection may hold that its worker has not read before it takes no new
   * stream (default: maxFrameBytes). Bounds what a worker that stops reading costs the caller.
   */
  maxUnsentBytesPerConnection?: number;
  /** Starts each call's CLIENT span: the component's tracer (default: the API global). */
  tracer?: Tracer;
  /**
   * The workers' token (the router's --worker-token): sent as `authorization: Bearer <token>` in
   * every call's frame headers, which a server with the same authToken requires.
   */
  authToken?: string;
}

/** A pool's connections per worker address, and the streams each carries before another is dialled. */
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 4;
export const DEFAULT_STREAMS_PER_CONNECTION = 16;

/** The options of a call that gives none (shared: one object fewer per call). */
const NO_OPTIONS: CallOptions = Object.freeze({});

export class RequestPlaneClient {
  private readonly pools = new Map<string, ConnectionPool>();
  private readonly defaultDispatch = new Map<string, DispatchFn>();
  private readonly poolOptions: PoolOptions;
  private readonly firstResponseTimeoutMs: number;
  private readonly windowBytes: number;
  private readonly tracer: Tracer;
  /** `Bearer <token>`, built once; undefined without a token. */
  private readonly authorization: string | undefined;
  private closed = false;

  constructor(opts: RequestPlaneClientOptions = {}) {
    const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.poolOptions = {
      connectTimeoutMs: opts.connectTimeoutMs ?? 2000,
      maxFrameBytes,
      maxConnections: opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
      streamsPerConnection: opts.streamsPerConnection ?? DEFAULT_STREAMS_PER_CONNECTION,
      maxUnsentBytes: opts.maxUnsentBytesPerConnection ?? maxFrameBytes,
    };
    this.firstResponseTimeoutMs = opts.firstResponseTimeoutMs ?? 30_000;
    this.windowBytes = opts.maxBufferedBytesPerStream ?? 256 * 1024;
    this.tracer = opts.tracer ?? globalTracer;
    this.authorization = opts.authToken === undefined ? undefined : bearer(opts.authToken);
  }

  get maxFrameBytes(): number {
    return this.poolOptions.maxFrameBytes;
  }

  /**
   * Streams the response chunks. Breaking out of the loop cancels the remote stream. A chunk
   * handed straight to a waiting loop may be a view into the connection's read buffer: copy it
   * (`Buffer.from`) if you keep it for long; chunks that had to be queued are already detached.
   * The iterator's `cancel(err)` ends the call from outside a pull (see ChunkStream).
   */
  stream(
    address: string,
    path: string,
    payload: Uint8Array | PayloadWriter,
    opts: CallOptions = NO_OPTIONS,
  ): { [Symbol.asyncIterator](): ChunkStream } {
    // The parent is the caller's context now, at call time; the span starts (and the stream is
    // dialled) when iteration starts, so an iterable never iterated leaves no open span.
    const parent = context.active();
    return {
      [Symbol.asyncIterator]: () => {
        const it = new ChunkIterator();
        it.handle = this.start(parent, address, path, payload, opts, it);
        return it;
      },
    };
  }

  /**
   * One answer (chunks are concatenated if the worker sends several). A single-chunk answer may be
   * a view into the connection's read buffer: decode it, or copy it if you keep it for long.
   */
  unary(
    address: string,
    path: string,
    payload: Uint8Array | PayloadWriter,
    opts: CallOptions = NO_OPTIONS,
  ): Promise<Buffer> {
    const parent = context.active();
    return new Promise((resolve, reject) => {
      const collector = new UnaryCollector(resolve, reject, this.poolOptions.maxFrameBytes);
      collector.handle = this.start(parent, address, path, payload, opts, collector);
    });
  }

  /** One call under `parent`: its frame headers, its client span, then the dispatch. */
  private start(
    parent: Context,
    address: string,
    path: string,
    payload: Uint8Array | PayloadWriter,
    opts: CallOptions,
    handler: StreamHandler,
  ): StreamHandle {
    const headers = this.requestHeaders(opts);
    const span = startClientSpan(this.tracer, parent, address, path, opts.requestId, headers);
    return this.call(address, { path, headers, payload, windowBytes: this.windowBytes }, handler, opts, span);
  }

  /** The raw dispatch contract to one address (no timeout or signal wrapping). */
  dispatch(address: string, req: DispatchRequest, handler: StreamHandler): StreamHandle {
    if (this.closed) return failLater(handler, new TransportError('cancelled', 'client is closed'));
    const pool = this.pool(address);
    if (pool === undefined) {
      return failLater(handler, new TransportError('connect_failed', `bad worker address '${address}'`));
    }
    return pool.dispatch(req, handler);
  }

  /** Closes the pool of one address (e.g. a deregistered worker); its open streams fail `cancelled`. */
  async closeAddress(address: string): Promise<void> {
    const pool = this.pools.get(address);
    this.pools.delete(address);
    this.defaultDispatch.delete(address);
    await pool?.close();
  }

  /**
   * Closes the pool of an address no worker uses any more (deregistered, lease expired) if it
   * carries no stream, and returns true; a busy pool is left alone (false), so a draining worker
   * finishes its streams: call again later (closeIdlePools). Without this every address ever
   * called kept a pool, and workers on --port 0 come back at a new address after each restart.
   */
  closeIfIdle(address: string): boolean {
    const pool = this.pools.get(address);
    if (pool !== undefined && pool.activeStreams > 0) return false;
    void this.closeAddress(address);
    return true;
  }

  /**
   * closeIfIdle for every address with a pool that `unused` selects: the periodic retry for pools
   * that were busy when their worker left, and for any a late call dialled afterwards.
   */
  closeIdlePools(unused: (address: string) => boolean): void {
    // Deleting the entry being visited is safe while iterating a Map.
    for (const address of this.pools.keys()) if (unused(address)) this.closeIfIdle(address);
    for (const address of this.defaultDispatch.keys()) {
      if (!this.pools.has(address) && unused(address)) this.defaultDispatch.delete(address);
    }
  }

  /** Addresses with a pool: what the router holds on the request plane (tests, diagnostics). */
  get poolCount(): number {
    return this.pools.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    this.defaultDispatch.clear();
    await Promise.all(pools.map((p) => p.close()));
  }

  private call(
    address: string,
    req: DispatchRequest,
    handler: StreamHandler,
    opts: CallOptions,
    span: Span | undefined,
  ): StreamHandle {
    let fn: DispatchFn;
    if (opts.signal === undefined && opts.firstResponseTimeoutMs === undefined) {
      fn = this.defaultDispatchTo(address);
    } else {
      fn = (r, h) => this.dispatch(address, r, h);
      fn = withFirstResponseTimeout(fn, opts.firstResponseTimeoutMs ?? this.firstResponseTimeoutMs);
      fn = withAbortSignal(fn, opts.signal);
    }
    if (span === undefined) return fn(req, handler);
    // Outermost, so it sees the outcome the caller sees (timeouts and aborts included).
    const guard = new ClientSpanGuard(span, handler);
    guard.handle = fn(req, guard);
    return guard;
  }

  /** The dispatch of a call with no options (the client's default timeout), composed once per address. */
  private defaultDispatchTo(address: string): DispatchFn {
    let fn = this.defaultDispatch.get(address);
    if (fn === undefined) {
      fn = withFirstResponseTimeout((r, h) => this.dispatch(address, r, h), this.firstResponseTimeoutMs);
      this.defaultDispatch.set(address, fn);
    }
    return fn;
  }

  /** Frame headers for one call (the trace context is added by startClientSpan), the token's among them. */
  private requestHeaders(opts: CallOptions): Record<string, string> {
    const headers: Record<string, string> = opts.headers ? { ...opts.headers } : {};
    if (opts.requestId !== undefined) headers[REQUEST_ID_HEADER] = opts.requestId;
    if (this.authorization !== undefined) headers[AUTHORIZATION_HEADER] = this.authorization;
    return headers;
  }

  private pool(address: string): ConnectionPool | undefined {
    let pool = this.pools.get(address);
    if (pool === undefined) {
      const parsed = parseAddress(address);
      if (parsed === undefined) return undefined;
      pool = new ConnectionPool(parsed.host, parsed.port, this.poolOptions);
      this.pools.set(address, pool);
    }
    return pool;
  }
}

/** "host:port" or "[v6]:port". */
export function parseAddress(address: string): { host: string; port: number } | undefined {
  const colon = address.lastIndexOf(':');
  if (colon <= 0) return undefined;
  let host = address.slice(0, colon);
  const port = Number(address.slice(colon + 1));
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (!Number.isInteger(port) || port < 1 || port > 65535 || host.length === 0) return undefined;
  return { host, port };
}
