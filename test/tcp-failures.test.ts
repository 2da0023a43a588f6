// Request-plane failures over real sockets and a real child process: a worker killed mid-stream,
// a closed port, oversize frames and garbage on one connection not disturbing the others; and
// the pool of a departed worker's address closed once its streams are done, never before.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import {
  encodeRequestFrame,
  RequestPlaneClient,
  RequestPlaneServer,
  ResponseFrameDecoder,
  ResponseType,
  TransportError,
} from '../src/tcp/index.js';
import { waitUntil } from './helpers/fleet.js';

async function failureOf(p: Promise<unknown>): Promise<TransportError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TransportError, String(err));
    return err;
  }
  assert.fail('expected a TransportError');
}

test('a worker killed mid-stream: disconnected_mid_stream within 1 s; unanswered streams are retryable', async () => {
  const fixture = fileURLToPath(new URL('./tcp-child-server.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', fixture], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const address = `127.0.0.1:${Number(line.toString().trim())}`;
    const client = new RequestPlaneClient({ maxConnectionsPerAddress: 1 });
    const unanswered = failureOf(client.unary(address, 'silent', Buffer.alloc(0)));
    let killedAt = 0;
    const streaming = failureOf(
      (async () => {
        let n = 0;
        for await (const _ of client.stream(address, 'slow', Buffer.alloc(0))) {
          if (++n === 3) {
            child.kill('SIGKILL');
            killedAt = performance.now();
          }
        }
      })(),
    );
    const mid = await streaming;
    const elapsedMs = performance.now() - killedAt;
    assert.equal(mid.kind, 'disconnected_mid_stream', mid.message);
    assert.equal(mid.retryable, false);
    assert.ok(elapsedMs < 1000, `reported after ${elapsedMs} ms`);
    const before = await unanswered;
    assert.equal(before.kind, 'disconnected_before_response', before.message);
    assert.equal(before.retryable, true);
    // The dead connection left the pool: the next call dials again and finds nobody (once the
    // process is gone: the kernel may close its listener after its connections).
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    const again = await failureOf(client.unary(address, 'slow', Buffer.alloc(0)));
    assert.equal(again.kind, 'connect_failed');
    await client.close();
  } finally {
    child.kill('SIGKILL');
  }
});

test('connecting to a closed port fails with connect_failed (retryable)', async () => {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as { port: number };
  await new Promise((r) => probe.close(r));
  const client = new RequestPlaneClient();
  const err = await failureOf(client.unary(`127.0.0.1:${port}`, 'x', Buffer.alloc(0)));
  assert.equal(err.kind, 'connect_failed');
  assert.equal(err.retryable, true);
  await client.close();
});

test('a worker that stops reading: the client refuses new calls instead of queueing them without bound', async () => {
  // Accepts and never reads: the kernel buffers fill, then every request frame stays in the client.
  const stalled = createServer((socket) => socket.pause());
  await new Promise<void>((r) => stalled.listen(0, '127.0.0.1', r));
  const accepted = once(stalled, 'connection');
  const address = `127.0.0.1:${(stalled.address() as { port: number }).port}`;
  const limit = 1 << 20;
  const client = new RequestPlaneClient({
    maxConnectionsPerAddress: 1,
    maxUnsentBytesPerConnection: limit,
    firstResponseTimeoutMs: 0,
  });
  const payload = Buffer.alloc(256 * 1024, 1);
  const pending: Promise<unknown>[] = [];
  try {
    let refused: TransportError | undefined;
    let sent = 0;
    // The kernel takes a few MiB first; without a bound every call after that is queued in memory.
    while (refused === undefined && sent < 64 << 20) {
      const call = client.unary(address, 'echo', payload);
      pending.push(call.catch(() => {}));
      call.catch((err: unknown) => {
        if (err instanceof TransportError) refused = err;
      });
      sent += payload.length;
      if (sent === payload.length) await accepted; // connected: what piles up from here is unread
      await new Promise((r) => setImmediate(r)); // the frame is written; a refusal has arrived
    }
    assert.ok(refused, `${sent >> 20} MiB of requests queued for a worker that reads nothing`);
    assert.equal(refused.kind, 'peer_not_reading', refused.message);
    assert.equal(refused.retryable, true); // nothing of it was sent
  } finally {
    await client.close();
    await Promise.all(pending);
    stalled.close();
  }
});

test('an oversize frame is rejected on its stream and the connection carries on', async () => {
  const server = new RequestPlaneServer({ maxFrameBytes: 1024 });
  server.handle('echo', async (req) => req.payload);
  await server.listen();
  const client = new RequestPlaneClient({ maxConnectionsPerAddress: 1 });
  const err = await failureOf(client.unary(server.address, 'echo', Buffer.alloc(5000)));
  assert.equal(err.kind, 'remote_error');
  assert.equal(err.remoteCode, 'payload_too_large');
  assert.match(err.message, /exceeds the 1024-byte limit/);
  assert.deepEqual(await client.unary(server.address, 'echo', Buffer.from('ok')), Buffer.from('ok'));
  assert.equal(server.stats().connections, 1);
  assert.equal(server.stats().bufferedBytes, 0);

  // The client refuses to send what its own limit forbids.
  const strict = new RequestPlaneClient({ maxFrameBytes: 1024 });
  const local = await failureOf(strict.unary(server.address, 'echo', Buffer.alloc(5000)));
  assert.equal(local.kind, 'protocol_error');
  await strict.close();
  await client.close();
  await server.close({ deadlineMs: 500 });
});

test('a server with a token serves only frames that carry it: none or another is refused unauthorized before any handler runs; without a token, as before', async () => {
  const token = 'tcp-token-secret';
  let ran = 0;
  const server = new RequestPlaneServer({ authToken: token });
  server.handle('echo', async (req) => {
    ran++;
    return req.payload;
  });
  await server.listen();
  const none = new RequestPlaneClient();
  const wrong = new RequestPlaneClient({ authToken: 'tcp-token-secreT' });
  const right = new RequestPlaneClient({ authToken: token });
  try {
    for (const [client, hint] of [
      [none, /send 'authorization: Bearer <token>'/],
      [wrong, /not this worker's/],
    ] as const) {
      // Refused before routing: an unknown endpoint is not even told apart from a known one.
      for (const path of ['echo', 'no-such-endpoint']) {
        const err = await failureOf(client.unary(server.address, path, Buffer.from('x')));
        assert.equal(err.kind, 'remote_error', err.message);
        assert.equal(err.remoteCode, 'unauthorized');
        assert.equal(err.retryable, true, 'refused: no handler ran');
        assert.match(err.message, hint);
        assert.ok(!err.message.includes(token));
      }
    }
    // The same header on a raw frame, by hand: only the exact `Bearer <token>` passes.
    const raw = connect(Number(server.address.split(':')[1]), '127.0.0.1');
    await once(raw, 'connect');
    const answers = new ResponseFrameDecoder(1 << 20);
    const frames: Array<{ type: number; streamId: number; payload: string }> = [];
    raw.on('data', (chunk: Buffer) => {
      answers.push(chunk);
      for (let ev = answers.next(); ev !== undefined; ev = answers.next()) {
        if (ev.kind === 'frame')
          frames.push({ type: ev.type, streamId: ev.streamId, payload: ev.payload.toString() });
      }
    });
    const headers = (id: number, authorization?: string) =>
      JSON.stringify({ 'x-kvroute-stream': String(id), ...(authorization ? { authorization } : {}) });
    raw.write(encodeRequestFrame('echo', headers(1, `bearer ${token}`), Buffer.from('a')));
    raw.write(encodeRequestFrame('echo', headers(2, token), Buffer.from('b')));
    raw.write(encodeRequestFrame('echo', headers(3, `Bearer ${token}`), Buffer.from('c')));
    raw.write(encodeRequestFrame('echo', headers(4, `Bearer ${token}x`), Buffer.from('d')));
    raw.write(encodeRequestFrame('echo', headers(5), Buffer.from('e')));
    await waitUntil(
      async () => frames.filter((f) => f.type !== ResponseType.DATA).length === 5 || undefined,
      'five answers',
    );
    const refused = frames.filter((f) => f.type === ResponseType.ERROR).map((f) => f.streamId);
    assert.deepEqual(refused.sort(), [1, 2, 4, 5]);
    assert.deepEqual(
      frames.filter((f) => f.type === ResponseType.DATA),
      [{ type: ResponseType.DATA, streamId: 3, payload: 'c' }],
    );
    raw.destroy();
    assert.equal(ran, 1, 'only the frame with the token reached the handler');
    assert.deepEqual(await right.unary(server.address, 'echo', Buffer.from('ok')), Buffer.from('ok'));
    assert.deepEqual(await right.unary(server.address, 'echo', Buffer.from('again')), Buffer.from('again'));
    assert.equal(ran, 3);
  } finally {
    await Promise.all([none.close(), wrong.close(), right.close()]);
    await server.close({ deadlineMs: 500 });
  }
  // Without a token the server serves every frame, with a token or without.
  const open = new RequestPlaneServer();
  open.handle('echo', async (req) => req.payload);
  await open.listen();
  const withToken = new RequestPlaneClient({ authToken: token });
  const without = new RequestPlaneClient();
  assert.deepEqual(await withToken.unary(open.address, 'echo', Buffer.from('1')), Buffer.from('1'));
  assert.deepEqual(await without.unary(open.address, 'echo', Buffer.from('2')), Buffer.from('2'));
  await Promise.all([withToken.close(), without.close()]);
  await open.close({ deadlineMs: 500 });
});

test('an oversize frame on the id of a stream still open is a protocol error, as any reuse of it', async () => {
  let aborted = false;
  const server = new RequestPlaneServer({ maxFrameBytes: 1024 });
  server.handle('slow', async function* (req) {
    yield Buffer.from('first');
    await new Promise<void>((resolve) => {
      req.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    aborted = true;
  });
  const { port } = await server.listen();
  const raw = connect({ port, host: '127.0.0.1' });
  try {
    await once(raw, 'connect');
    const d = new ResponseFrameDecoder(1 << 20);
    const frames: { type: number; streamId: number; payload: string }[] = [];
    raw.on('data', (chunk: Buffer) => {
      d.push(chunk);
      for (let ev = d.next(); ev !== undefined; ev = d.next()) {
        if (ev.kind === 'frame')
          frames.push({ type: ev.type, streamId: ev.streamId, payload: ev.payload.toString() });
      }
    });
    let closed = false;
    raw.on('close', () => {
      closed = true;
    });
    raw.write(encodeRequestFrame('slow', JSON.stringify({ 'x-kvroute-stream': '1' }), Buffer.alloc(0)));
    await waitUntil(() => frames.some((f) => f.streamId === 1), 'stream 1 to answer');
    // Same id, payload over the limit (headers readable): the decoder rejects it without serving.
    raw.write(encodeRequestFrame('slow', JSON.stringify({ 'x-kvroute-stream': '1' }), Buffer.alloc(5000)));
    await waitUntil(() => closed, 'the server to close the connection', 5000);
    const errors = frames.filter((f) => f.type === ResponseType.ERROR);
    assert.deepEqual(
      errors.map((f) => f.streamId),
      [0],
      `errors: ${JSON.stringify(errors)}`,
    );
    assert.match(errors[0]!.payload, /protocol_error/);
    assert.match(errors[0]!.payload, /stream id 1 is already open/);
    await waitUntil(() => aborted, 'the open stream to be aborted');
  } finally {
    raw.destroy();
    await server.close({ deadlineMs: 500 });
  }
});

test('after a protocol error the server serves nothing more on that connection', async () => {
  let served = 0;
  const server = new RequestPlaneServer();
  server.handle('slow', async function* (req) {
    yield Buffer.from('first');
    await new Promise<void>((resolve) => {
      req.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  });
  server.handle('work', async () => {
    served++; // what a generate on the engine would cost, for an answer that cannot be sent
    return Buffer.from('done');
  });
  const { port } = await server.listen();
  // Half-open allowed, so this peer can still write after the server's FIN.
  const raw = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  try {
    await once(raw, 'connect');
    const d = new ResponseFrameDecoder(1 << 20);
    const streamIds: number[] = [];
    raw.on('data', (chunk: Buffer) => {
      d.push(chunk);
      for (let ev = d.next(); ev !== undefined; ev = d.next())
        if (ev.kind === 'frame') streamIds.push(ev.streamId);
    });
    const open1 = encodeRequestFrame('slow', JSON.stringify({ 'x-kvroute-stream': '1' }), Buffer.alloc(0));
    raw.write(open1);
    await waitUntil(() => streamIds.includes(1), 'stream 1 to answer');
    raw.write(open1); // stream 1 again while open: the connection is closed for it
    await waitUntil(() => streamIds.includes(0), 'the connection error on stream 0');
    // Requests arriving after that, each in a read of its own, must not start handlers.
    for (let id = 2; id <= 4; id++) {
      raw.write(
        encodeRequestFrame('work', JSON.stringify({ 'x-kvroute-stream': String(id) }), Buffer.alloc(0)),
      );
      await sleep(5);
    }
    raw.end(); // after the requests: once the server sees this it has read them all
    await waitUntil(() => server.stats().connections === 0, 'the server to close the connection', 5000);
    assert.equal(served, 0, `${served} handlers ran after the protocol error`);
  } finally {
    raw.destroy();
    await server.close({ deadlineMs: 500 });
  }
});

test('garbage on one connection closes only that connection', async () => {
  const server = new RequestPlaneServer({ maxFrameBytes: 1024 });
  server.handle('echo', async (req) => req.payload);
  const { port } = await server.listen();
  const client = new RequestPlaneClient();
  assert.deepEqual(await client.unary(server.address, 'echo', Buffer.from('before')), Buffer.from('before'));

  const raw = connect({ port, host: '127.0.0.1' });
  await once(raw, 'connect');
  // A header block larger than the frame limit: framing cannot be trusted, so the server says why
  // on stream 0 and closes this connection.
  raw.write(encodeRequestFrame('echo', JSON.stringify({ pad: 'x'.repeat(2000) }), Buffer.alloc(0)));
  const d = new ResponseFrameDecoder(1 << 20);
  for await (const chunk of raw) d.push(chunk as Buffer);
  const ev = d.next();
  assert.ok(ev?.kind === 'frame' && ev.type === ResponseType.ERROR && ev.streamId === 0);
  assert.match(ev.payload.toString(), /protocol_error/);

  assert.deepEqual(await client.unary(server.address, 'echo', Buffer.from('after')), Buffer.from('after'));
  await client.close();
  await server.close({ deadlineMs: 500 });
});

test('closeIfIdle spares a pool with a stream open; closeIdlePools closes it once the stream ended', async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const server = new RequestPlaneServer();
  server.handle('echo', async (req) => req.payload);
  server.handle('slow', async function* () {
    yield Buffer.from('a');
    await gate;
    yield Buffer.from('b');
  });
  await server.listen();
  const address = server.address;
  const client = new RequestPlaneClient();
  try {
    // An idle pool (its worker left, nothing in flight) closes at once.
    await client.unary(address, 'echo', Buffer.from('x'));
    assert.equal(client.poolCount, 1);
    assert.equal(client.closeIfIdle(address), true);
    assert.equal(client.poolCount, 0);
    await waitUntil(() => server.stats().connections === 0, 'the idle connection to close');

    // A busy one (a draining worker's) stays until its stream is done: closing it would cut it.
    const chunks: string[] = [];
    const streaming = (async () => {
      for await (const c of client.stream(address, 'slow', Buffer.alloc(0))) chunks.push(c.toString());
    })();
    await waitUntil(() => chunks.length === 1, 'the first chunk');
    assert.equal(client.closeIfIdle(address), false);
    client.closeIdlePools(() => true);
    assert.equal(client.poolCount, 1);
    release();
    await streaming;
    assert.deepEqual(chunks, ['a', 'b']);
    client.closeIdlePools((a) => a !== address); // still in use: kept
    assert.equal(client.poolCount, 1);
    client.closeIdlePools(() => true);
    assert.equal(client.poolCount, 0);
    await waitUntil(() => server.stats().connections === 0, 'the drained connection to close');
  } finally {
    await client.close();
    await server.close({ deadlineMs: 100 });
  }
});
