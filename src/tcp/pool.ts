// The connections to one worker address. New streams go to the least-busy live connection; a new
// connection is dialled when every live one already carries `streamsPerConnection` streams and the
// pool is below `maxConnections`. A connection that fails or is ended by the server leaves the pool
// at once, so the next call dials again (no backoff here: the router decides where to retry).
//
// Complexity: dispatch O(connections), at most maxConnections (a handful).

import { ClientConnection, type ClientConnectionOptions } from './client-connection.js';
import type { DispatchRequest, StreamHandle, StreamHandler } from './dispatch.js';

export interface PoolOptions extends ClientConnectionOptions {
  maxConnections: number;
  streamsPerConnection: number;
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
    return this.pick().dispatch(req, handler);
  }

  async close(): Promise<void> {
    const conns = this.connections;
    this.connections = [];
    await Promise.all(conns.map((c) => c.close()));
  }

  private pick(): ClientConnection {
    let best: ClientConnection | undefined;
    for (const c of this.connections) {
      if (best === undefined || c.activeStreams < best.activeStreams) best = c;
    }
    if (
      best === undefined ||
      (best.activeStreams >= this.opts.streamsPerConnection &&
        this.connections.length < this.opts.maxConnections)
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
