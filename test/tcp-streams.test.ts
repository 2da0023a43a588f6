// Request-plane streams over real sockets: multiplexing, chunked answers, errors, cancellation,
// credit-based backpressure, first-response timeout and graceful close.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KvrouteError } from '../src/errors.js';
import {
  ChunkIterator,
  decodeJson,
  encodeJson,
  encodeRequestFrame,
  RequestPlaneClient,
  RequestPlaneServer,
  TransportError,
} from '../src/tcp/index.js';

async function setup(opts: ConstructorParameters<typeof RequestPlaneClient>[0] = {}) {
  const server = new RequestPlaneServer();
  await server.listen();
  const client = new RequestPlaneClient(opts);
  return {
    server,
    client,
    async [Symbol.asyncDispose]() {
      await client.close();
      await server.close({ deadlineMs: 500 });
    },
  };
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(c);
  return out;
}

/**
 * Registers endpoint `stuck`: it sends `first`, then waits forever inside next(), so only a
 * cancellation can end it. Resolves when the handler's signal aborts.
 */
function handleStuck(server: RequestPlaneServer): Promise<void> {
  return new Promise<void>((sawAbort) => {
    server.handle('stuck', async function* (req) {
      req.signal.addEventListener('abort', () => sawAbort());
      yield Buffer.from('first');
      await new Promise(() => {});
    });
  });
}

async function rejectsWith(p: Promise<unknown>, kind: TransportError['kind']): Promise<TransportError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TransportError, String(err));
    assert.equal(err.kind, kind, err.message);
    return err;
  }
  assert.fail(`expected a ${kind} TransportError`);
}

test('1,000 concurrent streams share one connection', async () => {
  await using t = await setup({ maxConnectionsPerAddress: 1 });
  const N = 1000;
  let arrived = 0;
  let releaseAll!: () => void;
  const allArrived = new Promise<void>((r) => {
    releaseAll = r;
  });
  t.server.handle('gen', async function* (req) {
    const { n } = decodeJson<{ n: number }>(req.payload);
    if (++arrived === N) releaseAll();
    // No stream finishes before all N are open at once: FIFO handling would deadlock here.
    await allArrived;
    for (let i = 0; i < 3; i++) yield encodeJson({ n, i });
  });
  const results = await Promise.all(
    Array.from({ length: N }, (_, n) => collect(t.client.stream(t.server.address, 'gen', encodeJson({ n })))),
  );
  for (const [n, chunks] of results.entries()) {
    assert.deepEqual(
      chunks.map((c) => decodeJson(c)),
      [0, 1, 2].map((i) => ({ n, i })),
    );
  }
  assert.equal(t.server.stats().connections, 1);
  assert.equal(t.server.stats().activeStreams, 0);
});

test('many chunks, a clean end, and an error carrying its message after partial output', async () => {
  await using t = await setup();
  t.server.handle('count', async function* () {
    for (let i = 0; i < 500; i++) yield Buffer.from(String(i));
  });
  t.server.handle('fails', async function* () {
    yield Buffer.from('a');
    yield Buffer.from('b');
    throw new KvrouteError('overloaded', 'engine queue full');
  });
  const chunks = await collect(t.client.stream(t.server.address, 'count', Buffer.alloc(0)));
  assert.deepEqual(
    chunks.map((c) => c.toString()),
    Array.from({ length: 500 }, (_, i) => String(i)),
  );
  assert.equal((await t.client.unary(t.server.address, 'count', Buffer.alloc(0))).length, 1390);

  const got: string[] = [];
  const err = await rejectsWith(
    (async () => {
      for await (const c of t.client.stream(t.server.address, 'fails', Buffer.alloc(0)))
        got.push(c.toString());
    })(),
    'remote_error',
  );
  assert.deepEqual(got, ['a', 'b']);
  assert.equal(err.message, 'engine queue full');
  assert.equal(err.remoteCode, 'overloaded');
  assert.equal(err.retryable, false);
});

test('a chunk over the frame limit fails the stream and closes the handler (its finally runs)', async () => {
  const server = new RequestPlaneServer({ maxFrameBytes: 64 * 1024 });
  await server.listen();
  const client = new RequestPlaneClient();
  try {
    let closed = false;
    server.handle('too-big', async function* () {
      try {
        yield Buffer.from('small');
        yield Buffer.alloc(128 * 1024);
        yield Buffer.from('never sent');
      } finally {
        closed = true; // what a kv_events subscription or an engine request releases here
      }
    });
    const got: string[] = [];
    const err = await rejectsWith(
      (async () => {
        for await (const c of client.stream(server.address, 'too-big', Buffer.alloc(0)))
          got.push(c.toString());
      })(),
      'remote_error',
    );
    assert.deepEqual(got, ['small']);
    assert.match(err.message, /exceeds the frame limit/);
    await sleep(10);
    assert.equal(closed, true, "the handler's generator was left suspended");
  } finally {
    await client.close();
    await server.close({ deadlineMs: 500 });
  }
});

test('an error message over the frame limit is cut to fit: it fails its own stream, not the connection', async () => {
  const limit = 64 * 1024;
  const server = new RequestPlaneServer({ maxFrameBytes: limit });
  await server.listen();
  const client = new RequestPlaneClient({ maxFrameBytes: limit, maxConnectionsPerAddress: 1 });
  try {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    server.handle('two', async function* () {
      yield Buffer.from('a');
      await gate;
      yield Buffer.from('b');
    });
    // E.g. a parse error quoting the payload it could not read.
    server.handle('verbose', async () => {
      throw new KvrouteError('invalid_request', `bad payload: ${'é'.repeat(limit)}`);
    });
    const it = client.stream(server.address, 'two', Buffer.alloc(0))[Symbol.asyncIterator]();
    assert.equal((await it.next()).value?.toString(), 'a'); // open on the same connection
    const err = await rejectsWith(client.unary(server.address, 'verbose', Buffer.alloc(0)), 'remote_error');
    assert.equal(err.remoteCode, 'invalid_request');
    assert.match(err.message, /^bad payload: é+/);
    release();
    assert.equal((await it.next()).value?.toString(), 'b');
    assert.equal((await it.next()).done, true);
  } finally {
    await client.close();
    await server.close({ deadlineMs: 500 });
  }
});

test("a frame larger than the 64 KiB slab does not stay on as the connection's write buffer", async () => {
  await using t = await setup();
  t.server.handle('big', async () => Buffer.alloc(1 << 20, 1));
  t.server.handle('small', async () => Buffer.from('ok'));
  await t.client.unary(t.server.address, 'big', Buffer.alloc(0)); // a 1 MiB answer
  await t.client.unary(t.server.address, 'small', Buffer.alloc(3 << 20, 2)); // a 3 MiB request
  for (let i = 0; i < 20; i++) await t.client.unary(t.server.address, 'small', Buffer.from('x'));
  // White-box: the write buffers of the one connection on each side.
  type WithWriter = { writer: { buffer: Buffer } };
  const server = t.server as unknown as { connections: Set<WithWriter> };
  const client = t.client as unknown as { pools: Map<string, { connections: WithWriter[] }> };
  const [serverSide] = [...server.connections];
  const [clientSide] = client.pools.get(t.server.address)!.connections;
  assert.ok(
    serverSide!.writer.buffer.length <= 64 * 1024,
    `server kept ${serverSide!.writer.buffer.length} bytes`,
  );
  assert.ok(
    clientSide!.writer.buffer.length <= 64 * 1024,
    `client kept ${clientSide!.writer.buffer.length} bytes`,
  );
});

test('unknown endpoint: a refused (retryable) error, and the connection stays usable', async () => {
  await using t = await setup({ maxConnectionsPerAddress: 1 });
  t.server.handle('echo', async (req) => req.payload);
  const err = await rejectsWith(t.client.unary(t.server.address, 'nope', Buffer.alloc(0)), 'remote_error');
  assert.match(err.message, /nope/);
  assert.equal(err.retryable, true);
  assert.deepEqual(await t.client.unary(t.server.address, 'echo', Buffer.from('x')), Buffer.from('x'));
  assert.equal(t.server.stats().connections, 1);
});

test('breaking out of the loop cancels: the handler observes its AbortSignal', async () => {
  await using t = await setup();
  let aborted!: () => void;
  const handlerSawAbort = new Promise<void>((r) => {
    aborted = r;
  });
  t.server.handle('forever', async function* (req) {
    req.signal.addEventListener('abort', () => aborted());
    for (let i = 0; ; i++) {
      yield Buffer.from(String(i));
      await sleep(5);
    }
  });
  let seen = 0;
  for await (const _ of t.client.stream(t.server.address, 'forever', Buffer.alloc(0))) {
    if (++seen === 3) break;
  }
  await handlerSawAbort;
  while (t.server.stats().activeStreams !== 0) await sleep(5);
});

test("the caller's AbortSignal cancels a handler stuck inside next()", async () => {
  await using t = await setup();
  const handlerSawAbort = handleStuck(t.server);
  const ac = new AbortController();
  const chunks: string[] = [];
  const done = rejectsWith(
    (async () => {
      for await (const c of t.client.stream(t.server.address, 'stuck', Buffer.alloc(0), {
        signal: ac.signal,
      })) {
        chunks.push(c.toString());
        ac.abort();
      }
    })(),
    'cancelled',
  );
  await done;
  await handlerSawAbort;
  assert.deepEqual(chunks, ['first']);
  while (t.server.stats().activeStreams !== 0) await sleep(5);
});

test('return() while a next() is waiting: the pending next() ends (done) and the handler is cancelled', async () => {
  await using t = await setup();
  const handlerSawAbort = handleStuck(t.server);
  const it = t.client.stream(t.server.address, 'stuck', Buffer.alloc(0))[Symbol.asyncIterator]();
  assert.equal((await it.next()).value?.toString(), 'first');
  const pending = it.next();
  assert.deepEqual(await it.return!(), { value: undefined, done: true });
  assert.deepEqual(await pending, { value: undefined, done: true });
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await handlerSawAbort;
  while (t.server.stats().activeStreams !== 0) await sleep(5);
});

test('cancel(err) ends an open stream: the pending next() rejects with err, the handler is cancelled', async () => {
  await using t = await setup();
  const handlerSawAbort = handleStuck(t.server);
  const it = t.client.stream(t.server.address, 'stuck', Buffer.alloc(0))[Symbol.asyncIterator]();
  assert.equal((await it.next()).value?.toString(), 'first');
  const pending = it.next();
  const err = new TransportError('cancelled', 'gave up waiting');
  it.cancel(err);
  await assert.rejects(pending, (e) => e === err);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await handlerSawAbort;
  while (t.server.stats().activeStreams !== 0) await sleep(5);
});

test('cancel(err) after the end or an error arrived changes nothing: what was received is still read', async () => {
  let cancels = 0;
  const handle = { grant() {}, cancel: () => cancels++ };
  const ended = new ChunkIterator();
  ended.handle = handle;
  ended.onData(Buffer.from('a'));
  ended.onEnd();
  ended.cancel(new TransportError('cancelled', 'too late'));
  assert.equal((await ended.next()).value?.toString(), 'a');
  assert.deepEqual(await ended.next(), { value: undefined, done: true });

  const failed = new ChunkIterator();
  failed.handle = handle;
  failed.onData(Buffer.from('a'));
  const err = new TransportError('disconnected_mid_stream', 'gone');
  failed.onError(err);
  failed.cancel(new TransportError('cancelled', 'too late'));
  assert.equal((await failed.next()).value?.toString(), 'a');
  await assert.rejects(failed.next(), (e) => e === err);
  assert.equal(cancels, 0);
});

test('a slow consumer bounds what the handler produces to its credit window', async () => {
  const window = 64 * 1024;
  const chunk = 16 * 1024;
  await using t = await setup({ maxBufferedBytesPerStream: window });
  let produced = 0;
  const total = 64;
  t.server.handle('firehose', async function* () {
    for (let i = 0; i < total; i++) {
      produced++;
      yield Buffer.alloc(chunk, i);
    }
  });
  const it = t.client.stream(t.server.address, 'firehose', Buffer.alloc(0))[Symbol.asyncIterator]();
  assert.equal((await it.next()).done, false);
  await sleep(200); // the consumer stalls; the server must stop at the window
  assert.ok(
    produced <= window / chunk + 1,
    `handler produced ${produced} chunks into a ${window}-byte window`,
  );
  let received = 1;
  while (!(await it.next()).done) received++;
  assert.equal(received, total);
  assert.equal(produced, total);
});

test('no first response within the timeout: timeout error and the handler is cancelled', async () => {
  await using t = await setup();
  let sawAbort = false;
  t.server.handle('silent', (req) => {
    return new Promise<Uint8Array>((_, reject) => {
      req.signal.addEventListener('abort', () => {
        sawAbort = true;
        reject(new Error('aborted'));
      });
    });
  });
  const err = await rejectsWith(
    t.client.unary(t.server.address, 'silent', Buffer.alloc(0), { firstResponseTimeoutMs: 100 }),
    'timeout',
  );
  assert.equal(err.retryable, false);
  while (!sawAbort) await sleep(5);
});

test('graceful close lets in-flight streams finish, refuses new ones, then cuts at the deadline', async () => {
  const server = new RequestPlaneServer();
  await server.listen();
  const client = new RequestPlaneClient({ maxConnectionsPerAddress: 1 });
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  let started!: () => void;
  const isStarted = new Promise<void>((r) => {
    started = r;
  });
  server.handle('slow', async function* () {
    started();
    yield Buffer.from('a');
    await gate;
    yield Buffer.from('b');
  });
  const inFlight = collect(client.stream(server.address, 'slow', Buffer.alloc(0)));
  await isStarted;
  const closing = server.close({ deadlineMs: 10_000 });
  const refused = await rejectsWith(client.unary(server.address, 'slow', Buffer.alloc(0)), 'remote_error');
  assert.equal(refused.retryable, true);
  assert.equal(refused.remoteCode, 'shutting_down');
  release();
  assert.deepEqual(
    (await inFlight).map((c) => c.toString()),
    ['a', 'b'],
  );
  await closing;
  await rejectsWith(client.unary(server.address, 'slow', Buffer.alloc(0)), 'connect_failed');

  const server2 = new RequestPlaneServer();
  await server2.listen();
  let aborted = false;
  server2.handle('forever', async function* (req) {
    req.signal.addEventListener('abort', () => {
      aborted = true;
    });
    yield Buffer.from('x');
    await once(req.signal, 'abort');
  });
  const cut = rejectsWith(
    collect(client.stream(server2.address, 'forever', Buffer.alloc(0))),
    'disconnected_mid_stream',
  );
  while (server2.stats().activeStreams === 0) await sleep(5);
  await server2.close({ deadlineMs: 100 });
  await cut;
  assert.equal(aborted, true);
  await client.close();
});

test('closeAddress drops the pool of one worker; the next call dials again', async () => {
  await using t = await setup();
  t.server.handle('echo', async (req) => req.payload);
  assert.deepEqual(await t.client.unary(t.server.address, 'echo', Buffer.from('1')), Buffer.from('1'));
  await t.client.closeAddress(t.server.address);
  while (t.server.stats().connections !== 0) await sleep(5);
  assert.deepEqual(await t.client.unary(t.server.address, 'echo', Buffer.from('2')), Buffer.from('2'));
  assert.equal(t.server.stats().connections, 1);
});

test('a peer that stops reading: the server stops pulling from the handler (socket backpressure)', async () => {
  const server = new RequestPlaneServer();
  const chunk = Buffer.alloc(64 * 1024, 1);
  const limit = 4096; // 256 MiB if nothing held the handler back
  let produced = 0;
  let aborted = false;
  server.handle('firehose', async function* (req) {
    req.signal.addEventListener('abort', () => {
      aborted = true;
    });
    while (produced < limit) {
      produced++;
      yield chunk;
    }
  });
  const { port } = await server.listen();
  const raw = connect({ port, host: '127.0.0.1' });
  await once(raw, 'connect');
  raw.pause(); // never read: the kernel buffers fill, then socket.write returns false
  // A window far beyond anything the socket can hold, so only the socket can stop the handler.
  raw.write(
    encodeRequestFrame(
      'firehose',
      '{"x-kvroute-stream":"1","x-kvroute-window":"4000000000"}',
      Buffer.alloc(0),
    ),
  );
  let last = -1;
  for (let still = 0; still < 5 && produced < limit; ) {
    await sleep(40);
    still = produced === last ? still + 1 : 0;
    last = produced;
  }
  assert.ok(
    produced < limit / 4,
    `handler produced ${produced} x 64 KiB chunks into a peer that reads nothing`,
  );
  raw.destroy();
  while (!aborted) await sleep(5);
  await server.close({ deadlineMs: 500 });
});
