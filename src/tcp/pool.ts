// The connections to one worker address. New streams go to the least-busy live connection; a new
// connection is dialled when every live one already carries `streamsPerConnection` streams and the
// pool is below `maxConnections`. A connection that fails or is ended by the server leaves the pool
// at once, so the next call dials again (no backoff here: the router decides where to retry).
// A connection holding `maxUnsentBytes` of requests its peer has not read takes no new stream: a
// worker that stops reading (hung, stopped) would otherwise have every call to it queued in the
// router's memory without bound. When no connection can take one and the pool is full, the call
// fails at once with `peer_not_reading` (nothing was sent: retryable elsewhere).
//
// Complexity: dispatch O(connections), at most maxConnections (a handful).

import { ClientConnection, type ClientConnectionOptions } from './client-connection.js';
import { type DispatchRequest, failLater, type StreamHandle, type StreamHandler } from './dispatch.js';
import { TransportError } from './transport-error.js';

export interface PoolOptions extends ClientConnectionOptions {
  maxConnections: number;
  streamsPerConnection: number;
  /** Unsent request bytes at which a connection takes no new stream. */
  maxUnsentBytes: number;
}

export class ConnectionPool {
  private connections: ClientConnection[] = [];

  constructor(
    readonly host: string,
    readonly port: number,
    private readonly opts: PoolOptions,
  ) {}

  get size(): number {
    return this.connections.length;
  }

  /** Streams open over all connections (0: closing the pool cuts nothing). */
  get activeStreams(): number {
    let n = 0;
    for (const c of this.connections) n += c.activeStreams;
    return n;
  }

  dispatch(req: DispatchRequest, handler: StreamHandler): StreamHandle {
    const conn = this.pick();
    if (conn === undefined) {
      return failLater(
        handler,
        new TransportError(
          'peer_not_reading',
          `${this.host}:${this.port} has not read the requests already sent: each of its ${this.connections.length} connections holds ${this.opts.maxUnsentBytes} bytes or more unsent`,
        ),
      );
    }
    return conn.dispatch(req, handler);
  }

  async close(): Promise<void> {
    const conns = this.connections;
    this.connections = [];
    await Promise.all(conns.map((c) => c.close()));
  }

  /** The connection for a new stream, or undefined when none can take one. */
  private pick(): ClientConnection | undefined {
    let best: ClientConnection | undefined;
    for (const c of this.connections) {
      if (c.unsentBytes >= this.opts.maxUnsentBytes) continue;
      if (best === undefined || c.activeStreams < best.activeStreams) best = c;
    }
    if (
      (best === undefined || best.activeStreams >= this.opts.streamsPerConnection) &&
      this.connections.length < this.opts.maxConnections
    ) {
      best = new ClientConnection(this.host, this.port, this.opts, (dead) => this.drop(dead));
      this.connections.push(best);
    }
    return best;
  }

  private drop(conn: ClientConnection): void {
    const i = this.connections.indexOf(conn);
    if (i !== -1) this.connections.splice(i, 1);
  }
}
