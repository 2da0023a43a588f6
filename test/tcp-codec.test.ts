// Request-plane codec: frames survive any split or coalescing, both in the pure decoders and
// through a real socket to a real server; bad header blocks and oversize frames are rejected
// without losing the framing of what follows.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { requestFrameSize, streamHeaderBlockBytes, writeStreamRequestFrame } from '../src/tcp/frames.js';
import {
  encodeRequestFrame,
  encodeResponseFrame,
  RequestFrameDecoder,
  RequestPlaneServer,
  ResponseFrameDecoder,
  ResponseType,
} from '../src/tcp/index.js';
import { StreamTable } from '../src/tcp/stream-table.js';

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

test('compact header blocks read exactly as JSON.parse reads them, odd ones included', () => {
  const good = encodeRequestFrame('p', '{}', Buffer.from('x'));
  const blocks = [
    '{}',
    '{"a":"b"}',
    '{"x-kvroute-stream":"7","x-kvroute-window":"262144","traceparent":"00-ab-cd-01"}',
    '{"a":"1","a":"2"}', // duplicate key: the last value, the first position
    '{"2":"x","b":"y","1":"z"}', // integer-like keys are ordered first, as JSON.parse does
    '{"__proto__":"x"}', // an own property, not the prototype
    '{"a":"\\u0041\\"q"}', // escapes
    '{"é":"ü"}',
    '{ "a" : "b" }',
    '{"a":"b",}',
    '{"a":"b"}x',
    '{"a":1}',
    '{"a":"b"',
    '{"a""b"}',
    '{"a":"b\u0001"}',
    '{"":""}',
  ];
  for (const block of blocks) {
    const events = decodeRequests([encodeRequestFrame('x', block, Buffer.alloc(0)), good]);
    let expected: unknown;
    try {
      expected = JSON.parse(block);
    } catch {
      expected = undefined;
    }
    const valid =
      expected !== null &&
      typeof expected === 'object' &&
      !Array.isArray(expected) &&
      Object.values(expected as object).every((v) => typeof v === 'string');
    const ev = events[0]!;
    if (valid) {
      assert.equal(ev.kind, 'frame', block);
      const headers = (ev as { headers: Record<string, string> }).headers;
      assert.deepEqual(headers, expected, block);
      assert.deepEqual(Object.keys(headers), Object.keys(expected as object), block);
      assert.equal(Object.getPrototypeOf(headers), Object.prototype, block);
    } else {
      assert.equal(ev.kind, 'rejected', block);
    }
    assert.equal(events[1]!.kind, 'frame', 'framing intact after it');
  }
});

test('stream table: the same answers as a Map under random adds and deletes', () => {
  const table = new StreamTable<{ id: number }>(2);
  const model = new Map<number, { id: number }>();
  let seed = 42;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  let nextId = 1;
  for (let step = 0; step < 50_000; step++) {
    const op = rnd(10);
    if (op < 5 || model.size === 0) {
      // mostly sequential ids, sometimes far away ones (a peer's choice)
      const id = rnd(8) === 0 ? 1 + rnd(0xfffffffe) : nextId++;
      if (model.has(id)) continue;
      const s = { id };
      table.add(s);
      model.set(id, s);
    } else if (op < 9) {
      const ids = [...model.keys()];
      const id = ids[rnd(ids.length)]!;
      assert.equal(table.delete(id), true);
      model.delete(id);
    } else {
      const id = 0xffffffff - rnd(1000); // usually absent
      assert.equal(table.delete(id), model.delete(id));
    }
    assert.equal(table.size, model.size);
    if (step % 97 === 0) {
      for (const [id, s] of model) assert.equal(table.get(id), s);
      assert.equal(table.get(nextId + 5), undefined);
      assert.deepEqual(
        table
          .values()
          .map((s) => s.id)
          .sort((a, b) => a - b),
        [...model.keys()].sort((a, b) => a - b),
      );
    }
  }
});

test('the client header block written in place is byte for byte the JSON it stands for', () => {
  const payload = Buffer.from('pl');
  for (const id of [1, 9, 10, 12345, 0xffffffff]) {
    for (const window of [1, 262144, 2 ** 40, Number.NaN]) {
      for (const caller of [
        {},
        { 'x-request-id': 'r1', traceparent: '00-aa-bb-01' },
        { ü: 'é'.repeat(40) },
      ]) {
        const json = JSON.stringify(caller);
        const tail = json === '{}' ? '' : `,${json.slice(1, -1)}`;
        const tailBytes = Buffer.byteLength(tail);
        const text = String(window);
        const expected = encodeRequestFrame(
          'gen',
          `{"x-kvroute-stream":"${id}","x-kvroute-window":"${text}"${tail}}`,
          payload,
        );
        const size = requestFrameSize(3, streamHeaderBlockBytes(id, text, tailBytes), payload.length);
        const buf = Buffer.alloc(size + 3, 0xee);
        const end = writeStreamRequestFrame(buf, 3, 'gen', 3, id, text, tail, tailBytes, payload);
        assert.equal(end, size + 3);
        assert.deepEqual(buf.subarray(3), expected, `${id} ${window} ${json}`);
      }
    }
  }
});
