// One accepted socket of the request-plane server: decodes request frames, dispatches them to
// handlers as ServerStreams multiplexed by stream id, and writes their response frames.
//
// Writes are batched by a FrameWriter: the frames many streams produce in one tick leave in one
// socket.write. When socket.write returns
// false, every stream pauses before pulling its next chunk until 'drain'. When unsent bytes exceed
// outboundHighWaterBytes (e.g. a peer that sends requests but never reads), reading pauses too, so
// nothing on either side grows without bound.

import type { Socket } from 'node:net';
import type { Tracer } from '@opentelemetry/api';
import type { SecretCheck } from '../util/secret-check.js';
import { AUTHORIZATION_HEADER } from './auth.js';
import { FrameWriter } from './frame-writer.js';
import {
  CANCEL_PATH,
  CREDIT_PATH,
  type ErrorBody,
  encodeErrorFrame,
  forEachCredit,
  parseStreamId,
  RESPONSE_HEADER_BYTES,
  ResponseType,
  STREAM_HEADER,
  WINDOW_HEADER,
  writeResponseHeader,
} from './frames.js';
import { RequestFrameDecoder } from './request-decoder.js';
import { ServerStream, type StreamSink } from './server-stream.js';
import type { RequestHandler, ServerLimits } from './server-types.js';
import { StreamTable } from './stream-table.js';

/** What a connection needs from the server that owns it. */
export interface ConnectionHost {
  readonly limits: ServerLimits;
  readonly tracer: Tracer;
  readonly draining: boolean;
  /** Set when requests must carry the server's token (RequestPlaneServerOptions.authToken). */
  readonly tokenCheck: SecretCheck | undefined;
  handlerFor(path: string): RequestHandler | undefined;
  connectionClosed(conn: ServerConnection): void;
}

/** How long a connection closed for a protocol violation may linger to flush its error frame. */
const LINGER_AFTER_FATAL_MS = 2000;

export class ServerConnection implements StreamSink {
  readonly streams = new StreamTable<ServerStream>();
  private readonly decoder: RequestFrameDecoder;
  private readonly writer: FrameWriter;
  private closed = false;
  private ending = false;
  private readPaused = false;
  private drainWaiters: Array<() => void> = [];
  private lingerTimer: NodeJS.Timeout | undefined;
  /** The authorization value a request on this connection last passed the token check with. */
  private allowedAuthorization: string | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly host: ConnectionHost,
  ) {
    this.decoder = new RequestFrameDecoder(host.limits.maxFrameBytes);
    this.writer = new FrameWriter(socket);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.onDrain());
    socket.on('error', () => {}); // 'close' always follows and does the cleanup
    socket.on('close', () => this.onClose());
  }

  get maxFrameBytes(): number {
    return this.host.limits.maxFrameBytes;
  }

  /** Bytes held in the decoder plus unsent response bytes. */
  get bufferedBytes(): number {
    return this.decoder.bufferedBytes;
  }

  get outboundBytes(): number {
    return this.writer.queuedBytes;
  }

  get blocked(): boolean {
    return this.writer.blocked;
  }

  send(frame: Buffer): void {
    if (!this.closed) this.writer.write(frame);
  }

  sendResponse(
    type: typeof ResponseType.DATA | typeof ResponseType.END,
    streamId: number,
    payload?: Uint8Array,
    thenEnd = false,
  ): void {
    if (this.closed) return;
    const len = payload === undefined ? 0 : payload.byteLength;
    const size = RESPONSE_HEADER_BYTES + len + (thenEnd ? RESPONSE_HEADER_BYTES : 0);
    const writer = this.writer;
    const at = writer.reserve(size); // first: it may replace writer.buffer
    const buf = writer.buffer;
    let o = writeResponseHeader(buf, at, type, streamId, len);
    if (payload !== undefined) {
      buf.set(payload, o);
      o += len;
    }
    if (thenEnd) writeResponseHeader(buf, o, ResponseType.END, streamId, 0);
    writer.commit(size);
  }

  onceDrained(wake: () => void): void {
    this.drainWaiters.push(wake);
  }

  finished(stream: ServerStream): void {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
    if (this.host.draining && this.streams.size === 0) this.end();
  }

  /** Graceful close: end the socket once the last stream finished (now, if idle). */
  drain(): void {
    if (this.streams.size === 0) this.end();
  }

  /** Hard close: abort every stream and cut the socket. */
  destroy(reason: string): void {
    this.abortAll(reason);
    this.socket.destroy();
  }

  private end(): void {
    if (this.ending || this.closed) return;
    this.ending = true;
    this.writer.end();
  }

  private onData(chunk: Buffer): void {
    // Ending (a protocol error, or a drained server) means no answer can be sent any more: a
    // request read now would run its handler for nothing.
    if (this.ending) return;
    const decoder = this.decoder;
    decoder.push(chunk);
    for (let ev = decoder.next(); ev !== undefined; ev = decoder.next()) {
      if (ev.kind === 'frame') this.onFrame(ev.path, ev.headers, ev.payload);
      else if (ev.kind === 'rejected') this.onRejected(ev.headers, ev.reason);
      else this.fatal(ev.reason);
      if (this.closed || this.ending) return;
    }
    if (!this.readPaused && this.writer.queuedBytes > this.host.limits.outboundHighWaterBytes) {
      this.readPaused = true;
      this.socket.pause();
    }
  }

  private onFrame(path: string, headers: Record<string, string>, payload: Buffer): void {
    if (path === CANCEL_PATH) {
      const id = parseStreamId(headers[STREAM_HEADER]);
      if (id !== undefined) this.streams.get(id)?.abort('cancelled by the caller');
      return;
    }
    if (path === CREDIT_PATH) {
      const ok = forEachCredit(payload, (id, bytes) => this.streams.get(id)?.grant(bytes));
      if (!ok) this.sendError(0, { message: 'malformed _credit payload', code: 'protocol_error' });
      return;
    }
    const id = parseStreamId(headers[STREAM_HEADER]);
    if (id === undefined) {
      this.sendError(0, { message: `missing or invalid ${STREAM_HEADER} header`, code: 'protocol_error' });
      return;
    }
    if (this.streams.has(id)) {
      this.fatal(`stream id ${id} is already open`);
      return;
    }
    // Before anything else is told (draining, load, which endpoints exist): a peer without the
    // token learns only that it needs one.
    if (this.host.tokenCheck !== undefined && !this.authorized(headers[AUTHORIZATION_HEADER])) {
      this.sendError(id, {
        message:
          headers[AUTHORIZATION_HEADER] === undefined
            ? "this worker serves only requests with its worker token: send 'authorization: Bearer <token>'"
            : "the request's worker token is not this worker's",
        code: 'unauthorized',
        refused: true,
      });
      return;
    }
    if (this.host.draining) {
      this.sendError(id, { message: 'server is shutting down', code: 'shutting_down', refused: true });
      return;
    }
    if (this.streams.size >= this.host.limits.maxStreamsPerConnection) {
      this.sendError(id, {
        message: `connection already has ${this.streams.size} open streams`,
        code: 'overloaded',
        refused: true,
      });
      return;
    }
    const handler = this.host.handlerFor(path);
    if (handler === undefined) {
      this.sendError(id, { message: `no handler for endpoint '${path}'`, code: 'not_found', refused: true });
      return;
    }
    const stream = new ServerStream(this, id, windowOf(headers, this.host.limits.defaultWindowBytes));
    this.streams.add(stream);
    void stream.run(handler, path, headers, payload, this.host.tracer);
  }

  /** The token check, skipped for the value this connection was last allowed with (see auth.ts). */
  private authorized(value: string | undefined): boolean {
    if (value !== undefined && value === this.allowedAuthorization) return true;
    if (!this.host.tokenCheck!.matches(value)) return false;
    this.allowedAuthorization = value;
    return true;
  }

  private onRejected(headers: Record<string, string> | undefined, reason: string): void {
    const id = headers === undefined ? undefined : parseStreamId(headers[STREAM_HEADER]);
    if (id === undefined) this.sendError(0, { message: reason, code: 'protocol_error' });
    // The id of a stream still open: the same protocol breach as a served frame reusing it. An
    // answer on that id would mix into the open stream's own (and `refused` would invite a retry
    // of a request whose handler is still running).
    else if (this.streams.has(id)) this.fatal(`stream id ${id} is already open`);
    else this.sendError(id, { message: reason, code: 'payload_too_large', refused: true });
  }

  /** Framing is lost or the peer broke the protocol: say why on stream 0, then close. */
  private fatal(reason: string): void {
    this.sendError(0, { message: reason, code: 'protocol_error' });
    this.abortAll(`protocol error: ${reason}`);
    this.end();
    this.lingerTimer = setTimeout(() => this.socket.destroy(), LINGER_AFTER_FATAL_MS).unref();
  }

  private sendError(id: number, body: ErrorBody): void {
    this.send(encodeErrorFrame(id, body, this.host.limits.maxFrameBytes));
  }

  private onDrain(): void {
    this.writer.drained();
    if (this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const wake of waiters) wake();
  }

  private abortAll(reason: string): void {
    for (const stream of this.streams.values()) stream.abort(reason);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.lingerTimer);
    this.abortAll('connection closed');
    this.streams.clear();
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const wake of waiters) wake();
    this.host.connectionClosed(this);
  }
}

function windowOf(headers: Record<string, string>, fallback: number): number {
  const raw = headers[WINDOW_HEADER];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  return Number.isInteger(n) && n >= 1 ? n : fallback;
}
