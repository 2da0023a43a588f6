// Request-plane codec: frames survive any split or coalescing, both in the pure decoders and
// through a real socket to a real server; bad header blocks and oversize frames are rejected
// without losing the framing of what follows.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  encodeRequestFrame,
  encodeResponseFrame,
  RequestFrameDecoder,
  RequestPlaneServer,
  ResponseFrameDecoder,
  ResponseType,
} from '../src/tcp/index.js';

const frames = [
  { path: 'generate', headers: { 'x-kvroute-stream': '1', 'x-request-id': 'a' }, payload: Buffer.from('{}') },
  { path: 'prefill/ünïcode', headers: { 'x-kvroute-stream': '2' }, payload: Buffer.alloc(0) },
  { path: 'load', headers: {}, payload: Buffer.alloc(70_000, 7) },
  { path: '', headers: { k: 'v'.repeat(300) }, payload: Buffer.from([0, 1, 2, 255]) },
];

function encodeAll(): Buffer {
  return Buffer.concat(frames.map((f) => encodeRequestFrame(f.path, JSON.stringify(f.headers), f.payload)));
}

function decodeRequests(chunks: Buffer[], max = 1 << 20) {
  const d = new RequestFrameDecoder(max);
  const out = [];
  for (const c of chunks) {
    d.push(c);
    for (let ev = d.next(); ev; ev = d.next()) out.push(ev.kind === 'frame' ? { ...ev } : ev);
  }
  assert.equal(d.bufferedBytes, 0);
  return out;
}

function splitEvery(buf: Buffer, n: number): Buffer[] {
  const out = [];
  for (let i = 0; i < buf.length; i += n) out.push(buf.subarray(i, i + n));
  return out;
}

test('request frames round-trip delivered 1 byte at a time, coalesced, and in odd splits', () => {
  const bytes = encodeAll();
  for (const chunks of [splitEvery(bytes, 1), [bytes], splitEvery(bytes, 7), splitEvery(bytes, 65_537)]) {
    const events = decodeRequests(chunks);
    assert.deepEqual(
      events,
      frames.map((f) => ({ kind: 'frame', ...f })),
    );
  }
});

test('response frames round-trip delivered 1 byte at a time and coalesced', () => {
  const sent = [
    { type: ResponseType.DATA, streamId: 1, payload: Buffer.from('abc') },
    { type: ResponseType.DATA, streamId: 0xffffffff, payload: Buffer.alloc(5000, 1) },
    { type: ResponseType.END, streamId: 1, payload: Buffer.alloc(0) },
    { type: ResponseType.ERROR, streamId: 9, payload: Buffer.from('{"message":"x"}') },
  ];
  const bytes = Buffer.concat(sent.map((f) => encodeResponseFrame(f.type, f.streamId, f.payload)));
  for (const chunks of [splitEvery(bytes, 1), [bytes], splitEvery(bytes, 10)]) {
    const d = new ResponseFrameDecoder(1 << 20);
    const got = [];
    for (const c of chunks) {
      d.push(c);
      for (let ev = d.next(); ev; ev = d.next()) got.push({ ...ev });
    }
    assert.deepEqual(
      got,
      sent.map((f) => ({ kind: 'frame', ...f })),
    );
  }
  const bad = new ResponseFrameDecoder(100);
  bad.push(encodeResponseFrame(ResponseType.DATA, 1, Buffer.alloc(200)));
  assert.equal(bad.next()?.kind, 'fatal');
});

test('bad header blocks are rejected and the next frame still decodes', () => {
  const good = encodeRequestFrame('ok', '{"a":"b"}', Buffer.from('p'));
  for (const headers of ['not json', '[1,2]', 'null', '{"a":1}', '"str"']) {
    const events = decodeRequests([encodeRequestFrame('x', headers, Buffer.from('zz')), good]);
    assert.equal(events.length, 2, headers);
    assert.equal(events[0]!.kind, 'rejected');
    assert.deepEqual(events[1], {
      kind: 'frame',
      path: 'ok',
      headers: { a: 'b' },
      payload: Buffer.from('p'),
    });
  }
});

test('an oversize frame is rejected with its headers, its payload skipped, framing kept', () => {
  const big = encodeRequestFrame('gen', '{"x-kvroute-stream":"4"}', Buffer.alloc(5000, 9));
  const next = encodeRequestFrame('ok', '{}', Buffer.from('after'));
  const events = decodeRequests(splitEvery(Buffer.concat([big, next]), 333), 1024);
  assert.equal(events.length, 2);
  const [rejected, frame] = events;
  assert.equal(rejected!.kind, 'rejected');
  assert.deepEqual(rejected!.kind === 'rejected' && rejected!.headers, { 'x-kvroute-stream': '4' });
  assert.equal(frame!.kind === 'frame' && frame!.payload.toString(), 'after');

  // A header block over the limit cannot be trusted: fatal, reported once.
  const d = new RequestFrameDecoder(64);
  d.push(encodeRequestFrame('p', JSON.stringify({ k: 'v'.repeat(100) }), Buffer.alloc(0)));
  assert.equal(d.next()?.kind, 'fatal');
  assert.equal(d.next(), undefined);
  assert.equal(d.bufferedBytes, 0);
});

/** Reads response frames from a raw socket until `count` END/ERROR frames arrived. */
async function readResponses(sock: ReturnType<typeof connect>, count: number) {
  const d = new ResponseFrameDecoder(1 << 20);
  const byStream = new Map<number, { data: Buffer[]; end?: number }>();
  let finished = 0;
  for await (const chunk of sock) {
    d.push(chunk as Buffer);
    for (let ev = d.next(); ev; ev = d.next()) {
      assert.equal(ev.kind, 'frame');
      if (ev.kind !== 'frame') continue;
      const s = byStream.get(ev.streamId) ?? { data: [] };
      byStream.set(ev.streamId, s);
      if (ev.type === ResponseType.DATA) s.data.push(ev.payload);
      else {
        s.end = ev.type;
        finished++;
      }
    }
    if (finished >= count) break;
  }
  return byStream;
}

test('through a real socket: frames written 1 byte per write, then coalesced in one write', async () => {
  const server = new RequestPlaneServer();
  server.handle('echo', async (req) => req.payload);
  const { port } = await server.listen();
  const payloads = [Buffer.from('one'), Buffer.alloc(3000, 2), Buffer.from('три')];
  const request = (id: number, p: Buffer) =>
    encodeRequestFrame('echo', JSON.stringify({ 'x-kvroute-stream': String(id) }), p);

  const sock = connect({ port, host: '127.0.0.1', noDelay: true });
  await once(sock, 'connect');
  const reading = readResponses(sock, payloads.length * 2);
  const slow = Buffer.concat(payloads.map((p, i) => request(i + 1, p)));
  for (let i = 0; i < slow.length; i++) {
    sock.write(slow.subarray(i, i + 1));
    if (i % 64 === 0) await sleep(0); // let single bytes actually leave as separate segments
  }
  sock.write(Buffer.concat(payloads.map((p, i) => request(i + 101, p))));
  const got = await reading;
  for (const [i, p] of payloads.entries()) {
    for (const id of [i + 1, i + 101]) {
      assert.deepEqual(Buffer.concat(got.get(id)!.data), p, `stream ${id}`);
      assert.equal(got.get(id)!.end, ResponseType.END);
    }
  }
  sock.destroy();
  await server.close({ deadlineMs: 1000 });
});
