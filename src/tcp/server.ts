// The request-plane server a worker runs: handlers by endpoint path, one ServerConnection per
// accepted socket, graceful close with a deadline.
//
// Lifecycle: handle()* -> listen() -> close(). close() stops accepting, refuses new requests on
// open connections (`shutting_down`, retryable), ends each connection when its last stream
// finishes, and after deadlineMs aborts the remaining handlers and destroys their sockets.

import { createServer, type Server, type Socket } from 'node:net';
import { context, ROOT_CONTEXT, type Tracer } from '@opentelemetry/api';
import { SecretCheck } from '../util/secret-check.js';
import { bearer } from './auth.js';
import { DEFAULT_MAX_FRAME_BYTES } from './frames.js';
import { type ConnectionHost, ServerConnection } from './server-connection.js';
import type { RequestHandler, ServerLimits } from './server-types.js';
import { globalTracer } from './trace.js';

export interface RequestPlaneServerOptions {
  maxFrameBytes?: number;
  maxStreamsPerConnection?: number;
  defaultWindowBytes?: number;
  outboundHighWaterBytes?: number;
  /** Connections held at once; one more is accepted and closed at once (its client may retry). */
  maxConnections?: number;
  /** Starts each request's `handle_payload` span: the component's tracer (default: the API global). */
  tracer?: Tracer;
  /**
   * Serve only requests whose frame carries `authorization: Bearer <authToken>` (the worker's
   * --worker-token); others get the refused ERROR `unauthorized` before any handler runs.
   * Without it every request is served, as the plane always did.
   */
  authToken?: string;
}

export interface ServerStats {
  connections: number;
  activeStreams: number;
  /** Request bytes held waiting for the rest of a frame, over all connections. */
  bufferedBytes: number;
  /** Response bytes queued in sockets, over all connections. */
  outboundBytes: number;
}

export class RequestPlaneServer implements ConnectionHost {
  readonly limits: ServerLimits;
  readonly tracer: Tracer;
  /** The check of a frame's `authorization` header against `Bearer <authToken>`; undefined without a token. */
  readonly tokenCheck: SecretCheck | undefined;
  private readonly maxConnections: number;
  private readonly handlers = new Map<string, RequestHandler>();
  private readonly connections = new Set<ServerConnection>();
  private server: Server | undefined;
  private bound: { host: string; port: number } | undefined;
  private closing: Promise<void> | undefined;
  private allClosed: (() => void) | undefined;
  draining = false;

  constructor(opts: RequestPlaneServerOptions = {}) {
    this.limits = {
      maxFrameBytes: opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      maxStreamsPerConnection: opts.maxStreamsPerConnection ?? 4096,
      defaultWindowBytes: opts.defaultWindowBytes ?? 256 * 1024,
      outboundHighWaterBytes: opts.outboundHighWaterBytes ?? 4 * 1024 * 1024,
    };
    this.maxConnections = opts.maxConnections ?? 10_000;
    this.tracer = opts.tracer ?? globalTracer;
    this.tokenCheck = opts.authToken === undefined ? undefined : new SecretCheck(bearer(opts.authToken));
  }

  /** Registers the handler of one endpoint path. Paths starting with `_` are reserved by the plane. */
  handle(path: string, handler: RequestHandler): this {
    if (path.startsWith('_')) throw new Error(`endpoint path '${path}' is reserved (leading '_')`);
    if (Buffer.byteLength(path) > 0xffff) throw new Error('endpoint path longer than 65535 bytes');
    this.handlers.set(path, handler);
    return this;
  }

  handlerFor(path: string): RequestHandler | undefined {
    return this.handlers.get(path);
  }

  listen(port = 0, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    if (this.server) return Promise.reject(new Error('already listening'));
    const server = createServer({ noDelay: true, highWaterMark: 64 * 1024 }, (socket) => this.accept(socket));
    server.maxConnections = this.maxConnections;
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // Root context: the listening socket and every connection it accepts keep the context they
      // are made in, whoever called listen().
      context.with(ROOT_CONTEXT, () =>
        server.listen(port, host, () => {
          server.off('error', reject);
          const addr = server.address();
          if (addr === null || typeof addr === 'string') return reject(new Error('no TCP address'));
          this.bound = { host: addr.address, port: addr.port };
          resolve(this.bound);
        }),
      );
    });
  }

  /** "host:port" once listening (IPv6 hosts in brackets). */
  get address(): string {
    if (!this.bound) throw new Error('not listening');
    return formatAddress(this.bound.host, this.bound.port);
  }

  stats(): ServerStats {
    let activeStreams = 0;
    let bufferedBytes = 0;
    let outboundBytes = 0;
    for (const c of this.connections) {
      activeStreams += c.streams.size;
      bufferedBytes += c.bufferedBytes;
      outboundBytes += c.outboundBytes;
    }
    return { connections: this.connections.size, activeStreams, bufferedBytes, outboundBytes };
  }

  close(opts: { deadlineMs?: number } = {}): Promise<void> {
    if (this.closing) return this.closing;
    const deadlineMs = opts.deadlineMs ?? 10_000;
    this.draining = true;
    const listenerClosed = new Promise<void>((resolve) => {
      if (this.server?.listening) this.server.close(() => resolve());
      else resolve();
    });
    const connectionsClosed = new Promise<void>((resolve) => {
      this.allClosed = resolve;
    });
    this.checkAllClosed();
    for (const c of this.connections) c.drain();
    this.closing = (async () => {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, deadlineMs);
      });
      await Promise.race([connectionsClosed, deadline]);
      clearTimeout(timer);
      for (const c of this.connections) c.destroy('server close deadline passed');
      await connectionsClosed;
      await listenerClosed;
    })();
    return this.closing;
  }

  connectionClosed(conn: ServerConnection): void {
    this.connections.delete(conn);
    this.checkAllClosed();
  }

  private accept(socket: Socket): void {
    if (this.draining) {
      socket.destroy();
      return;
    }
    this.connections.add(new ServerConnection(socket, this));
  }

  private checkAllClosed(): void {
    if (this.draining && this.connections.size === 0) this.allClosed?.();
  }
}

/**
 * A request-plane address, "host:port" with an IPv6 host in brackets: the form a worker announces
 * and the router registers and dials, read back by parseAddress (client.ts). One formula, so the
 * address a server reports and the one the registry makes for it cannot be written two ways.
 */
export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
