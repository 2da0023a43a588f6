// One socket from the client to a worker, multiplexing many streams by id. Implements the
// dispatch contract: dispatch() writes a request frame (batched with the other writes of the same
// tick by a FrameWriter) and routes DATA/END/ERROR frames back to the stream's handler.
//
// Stream ids increase monotonically (wrapping after 2^32-1, skipping open ids), so frames a server
// sent before it saw a cancel can never be mistaken for a newer stream's.
// Credit: each stream's consumed bytes are granted back in `_credit` frames once half its window
// was consumed, batched per tick. A server sending past window + one max frame is a protocol error.
//
// Failure classification when the socket dies: never connected -> connect_failed; no frame yet
// on the stream -> disconnected_before_response; otherwise disconnected_mid_stream.

import { connect, type Socket } from 'node:net';
import { context, ROOT_CONTEXT } from '@opentelemetry/api';
import type { DispatchRequest, StreamHandle, StreamHandler } from './dispatch.js';
import { failLater } from './dispatch.js';
import { FrameWriter } from './frame-writer.js';
import {
  type ErrorBody,
  encodeCancelFrame,
  encodeCreditFrame,
  ResponseType,
  requestFrameSize,
  STREAM_HEADER,
  streamHeaderBlockBytes,
  WINDOW_HEADER,
  writeStreamRequestFrame,
} from './frames.js';
import { ResponseFrameDecoder } from './response-decoder.js';
import { StreamTable } from './stream-table.js';
import { TransportError, type TransportErrorKind } from './transport-error.js';

export interface ClientConnectionOptions {
  connectTimeoutMs: number;
  maxFrameBytes: number;
}

class ClientStream implements StreamHandle {
  sawFrame = false;
  /** Bytes received and not yet granted back (what the server believes we still hold). */
  outstanding = 0;
  /** Consumed bytes not yet granted. */
  ungranted = 0;

  constructor(
    private readonly conn: ClientConnection,
    readonly id: number,
    readonly handler: StreamHandler,
    readonly windowBytes: number,
  ) {}

  grant(bytes: number): void {
    this.conn.grant(this, bytes);
  }

  cancel(): void {
    this.conn.cancel(this);
  }
}

export class ClientConnection {
  private readonly socket: Socket;
  private readonly streams = new StreamTable<ClientStream>();
  private readonly decoder: ResponseFrameDecoder;
  private nextId = 1;
  private connected = false;
  private closed = false;
  /** No new streams: the socket failed, ended, or is closing. */
  private dead = false;
  private failure: { kind: TransportErrorKind; message: string } | undefined;
  private lastError: Error | undefined;
  private readonly writer: FrameWriter;
  private credits: Array<[number, number]> = [];
  private connectTimer: NodeJS.Timeout | undefined;
  private lastPath = '';
  private lastPathBytes = 0;
  /** The last window sent and its decimal text (String(), as the header always had it). */
  private lastWindow = Number.NaN;
  private lastWindowText = '';
  private readonly closedPromise: Promise<void>;

  constructor(
    readonly host: string,
    readonly port: number,
    private readonly opts: ClientConnectionOptions,
    /** Called once when the connection stops taking new streams. */
    private readonly onDead: (conn: ClientConnection) => void,
  ) {
    this.decoder = new ResponseFrameDecoder(opts.maxFrameBytes);
    // Dialled in the root context. Made inside the request that needed it, the socket, its timer
    // and its close promise would each hold that request's trace context (and spans) for as long
    // as the connection lives, and every later stream's socket callbacks would run in it.
    const { socket, connectTimer, closed } = context.with(ROOT_CONTEXT, () => this.dial(host, port));
    this.socket = socket;
    this.writer = new FrameWriter(socket);
    this.connectTimer = connectTimer;
    this.closedPromise = closed;
  }

  private dial(host: string, port: number) {
    const socket = connect({ host, port, noDelay: true });
    socket.on('drain', () => this.writer.drained());
    const connectTimer = setTimeout(
      () =>
        this.fail(
          'connect_failed',
          `connect to ${host}:${port} timed out after ${this.opts.connectTimeoutMs} ms`,
        ),
      this.opts.connectTimeoutMs,
    );
    socket.once('connect', () => {
      clearTimeout(this.connectTimer);
      this.connected = true;
      socket.setKeepAlive(true, 15_000);
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => {
      this.lastError = err;
    });
    socket.on('end', () => this.markDead()); // server ended (graceful close): no new streams here
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve(this.onClose())));
    return { socket, connectTimer, closed };
  }

  get usable(): boolean {
    return !this.dead;
  }

  get activeStreams(): number {
    return this.streams.size;
  }

  /** Request bytes written and not yet taken by the kernel (the peer is not reading them). */
  get unsentBytes(): number {
    return this.writer.queuedBytes;
  }

  dispatch(req: DispatchRequest, handler: StreamHandler): StreamHandle {
    if (this.dead) {
      return failLater(handler, new TransportError('disconnected_before_response', 'connection is closed'));
    }
    const id = this.allocateId();
    const window = Math.max(1, Math.floor(req.windowBytes));
    const tail = headerTail(req.headers);
    const tailBytes = tail.length === 0 ? 0 : Buffer.byteLength(tail);
    const path = req.path;
    const pathBytes = path === this.lastPath ? this.lastPathBytes : this.measurePath(path);
    if (window !== this.lastWindow) {
      this.lastWindow = window;
      this.lastWindowText = String(window);
    }
    const windowText = this.lastWindowText;
    const headersBytes = streamHeaderBlockBytes(id, windowText, tailBytes);
    const size = requestFrameSize(pathBytes, headersBytes, req.payload.byteLength);
    if (size > this.opts.maxFrameBytes || pathBytes > 0xffff || headersBytes > 0xffff) {
      return failLater(
        handler,
        new TransportError(
          'protocol_error',
          `request frame to '${path}' is ${size} bytes (limit ${this.opts.maxFrameBytes}; path and headers at most 65535 each)`,
        ),
      );
    }
    const stream = new ClientStream(this, id, handler, window);
    this.streams.add(stream);
    const writer = this.writer;
    const at = writer.reserve(size);
    writeStreamRequestFrame(writer.buffer, at, path, pathBytes, id, windowText, tail, tailBytes, req.payload);
    writer.commit(size);
    return stream;
  }

  /** UTF-8 length of a path, remembered for the next call (a connection mostly sees one or two). */
  private measurePath(path: string): number {
    this.lastPath = path;
    this.lastPathBytes = Buffer.byteLength(path);
    return this.lastPathBytes;
  }

  grant(stream: ClientStream, bytes: number): void {
    if (bytes <= 0 || this.streams.get(stream.id) !== stream) return;
    stream.outstanding -= bytes;
    stream.ungranted += bytes;
    if (stream.ungranted * 2 >= stream.windowBytes) {
      if (this.credits.length === 0) process.nextTick(this.flushCredits);
      this.credits.push([stream.id, stream.ungranted]);
      stream.ungranted = 0;
    }
  }

  cancel(stream: ClientStream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    if (!this.dead) this.write(encodeCancelFrame(stream.id));
  }

  /** Closes the socket; open streams fail with `cancelled`. */
  close(): Promise<void> {
    this.fail('cancelled', 'client closed');
    return this.closedPromise;
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id === 0xffffffff ? 1 : id + 1;
      if (!this.streams.has(id)) return id;
    }
  }

  private write(frame: Buffer): void {
    this.writer.write(frame);
  }

  private readonly flushCredits = (): void => {
    const grants = this.credits;
    this.credits = [];
    if (grants.length > 0 && !this.dead) this.write(encodeCreditFrame(grants));
  };

  private onData(chunk: Buffer): void {
    const decoder = this.decoder;
    decoder.push(chunk);
    for (let ev = decoder.next(); ev !== undefined; ev = decoder.next()) {
      if (ev.kind === 'fatal') {
        this.fail('protocol_error', ev.reason);
        return;
      }
      const { type, streamId, payload } = ev;
      if (streamId === 0) {
        const what = type === ResponseType.ERROR ? parseErrorBody(payload).message : `frame type ${type}`;
        this.fail('protocol_error', `server reported a connection error: ${what}`);
        return;
      }
      const stream = this.streams.get(streamId);
      if (stream === undefined) continue; // a stream we cancelled: its last frames are dropped
      stream.sawFrame = true;
      if (type === ResponseType.DATA) {
        stream.outstanding += payload.length;
        if (stream.outstanding > stream.windowBytes + this.opts.maxFrameBytes) {
          this.cancel(stream);
          stream.handler.onError(
            new TransportError(
              'protocol_error',
              `server overran the ${stream.windowBytes}-byte stream window`,
            ),
          );
          continue;
        }
        stream.handler.onData(payload);
      } else if (type === ResponseType.END) {
        this.streams.delete(streamId);
        stream.handler.onEnd();
      } else {
        this.streams.delete(streamId);
        const body = parseErrorBody(payload);
        stream.handler.onError(
          new TransportError('remote_error', body.message, {
            ...(body.code === undefined ? {} : { remoteCode: body.code }),
            refused: body.refused === true,
          }),
        );
      }
      if (this.closed) return;
    }
  }

  private markDead(): void {
    if (this.dead) return;
    this.dead = true;
    this.onDead(this);
  }

  private fail(kind: TransportErrorKind, message: string): void {
    if (this.failure === undefined) this.failure = { kind, message };
    this.markDead();
    this.socket.destroy();
  }

  private onClose(): void {
    this.closed = true;
    clearTimeout(this.connectTimer);
    this.markDead();
    const streams = this.streams.values();
    this.streams.clear();
    const detail = this.lastError ? `: ${this.lastError.message}` : '';
    for (const s of streams) {
      let kind: TransportErrorKind;
      let message: string;
      if (this.failure !== undefined) {
        ({ kind, message } = this.failure);
        if (kind === 'connect_failed' && this.connected) kind = 'disconnected_before_response';
      } else if (!this.connected) {
        kind = 'connect_failed';
        message = `cannot connect to ${this.host}:${this.port}${detail}`;
      } else if (!s.sawFrame) {
        kind = 'disconnected_before_response';
        message = `connection to ${this.host}:${this.port} closed before a response${detail}`;
      } else {
        kind = 'disconnected_mid_stream';
        message = `connection to ${this.host}:${this.port} closed mid-stream${detail}`;
      }
      s.handler.onError(new TransportError(kind, message, { cause: this.lastError }));
    }
  }
}

/**
 * The caller's headers as JSON members to follow the plane's own two (`,"k":"v",...`, or '' for
 * none); any x-kvroute-stream/x-kvroute-window the caller gave is left out.
 */
function headerTail(headers: Record<string, string>): string {
  for (const _ in headers) {
    let json: string;
    if (Object.hasOwn(headers, STREAM_HEADER) || Object.hasOwn(headers, WINDOW_HEADER)) {
      const { [STREAM_HEADER]: _s, [WINDOW_HEADER]: _w, ...rest } = headers;
      json = JSON.stringify(rest);
    } else {
      json = JSON.stringify(headers);
    }
    return json === '{}' ? '' : `,${json.slice(1, -1)}`;
  }
  return '';
}

function parseErrorBody(payload: Buffer): ErrorBody {
  try {
    const body = JSON.parse(payload.toString('utf8')) as Partial<ErrorBody>;
    if (typeof body.message === 'string') return body as ErrorBody;
  } catch {}
  return { message: payload.toString('utf8') || 'remote error' };
}
