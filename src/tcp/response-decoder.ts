// Incremental decoder of response frames (u8 type | u32 stream_id | u32 len | payload) for the
// client side. Pure: push() socket chunks in any split, drain with next() (the returned frame
// event is reused by the following next() call: read it first). A frame over the limit
// or of an unknown type is fatal: the response framing is ours, so it means a broken peer.

import { ByteQueue } from './byte-queue.js';
import { RESPONSE_HEADER_BYTES, ResponseType, type ResponseTypeCode } from './frames.js';

export type ResponseEvent =
  | { kind: 'frame'; type: ResponseTypeCode; streamId: number; payload: Buffer }
  | { kind: 'fatal'; reason: string };

type FrameEvent = Extract<ResponseEvent, { kind: 'frame' }>;

export class ResponseFrameDecoder {
  private readonly queue = new ByteQueue();
  private fatal: string | undefined;
  /** Reused for every frame: one allocation fewer per frame on the hot path. */
  private readonly frame: FrameEvent = {
    kind: 'frame',
    type: ResponseType.DATA,
    streamId: 0,
    payload: Buffer.alloc(0),
  };

  constructor(readonly maxFrameBytes: number) {}

  get bufferedBytes(): number {
    return this.queue.length;
  }

  push(chunk: Buffer): void {
    if (this.fatal === undefined) this.queue.push(chunk);
  }

  next(): ResponseEvent | undefined {
    if (this.fatal !== undefined) return undefined;
    const q = this.queue;
    if (q.length < RESPONSE_HEADER_BYTES) return undefined;
    const type = q.readUInt8(0);
    if (type !== ResponseType.DATA && type !== ResponseType.END && type !== ResponseType.ERROR) {
      return this.fail(`unknown response frame type ${type}`);
    }
    const len = q.readUInt32BE(5);
    if (len + RESPONSE_HEADER_BYTES > this.maxFrameBytes) {
      return this.fail(`response frame of ${len} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
    }
    if (q.length < RESPONSE_HEADER_BYTES + len) return undefined;
    const frame = this.frame;
    frame.type = type;
    frame.streamId = q.readUInt32BE(1);
    q.skip(RESPONSE_HEADER_BYTES);
    // A view, not a copy: the client hands most chunks straight to a waiting caller and detaches
    // only the ones it has to queue.
    frame.payload = q.takeView(len);
    return frame;
  }

  private fail(reason: string): ResponseEvent {
    this.fatal = reason;
    this.queue.clear();
    return { kind: 'fatal', reason };
  }
}
