// The router's HTTP surface without inference: bad input answered 400/413 in OpenAI's error shape,
// worker registration rules, request ids, readiness, 404s, and /metrics as Prometheus text.
// No worker processes: registrations here name addresses nobody listens on (kv_events false),
// or in-process request-plane servers (the pools of departed workers).

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import zlib from 'node:zlib';
import Fastify from 'fastify';
import { Histogram, Registry } from 'prom-client';
import { ENGINE_DEFAULTS } from '../src/engine/engine.js';
import { ERROR_CODES, type ErrorCode, KvrouteError } from '../src/errors.js';
import { LazyRequestLogger } from '../src/router/http/lazy-logger.js';
import { RequestHistogram } from '../src/router/request-histogram.js';
import { createRouter, type RouterService } from '../src/router/service.js';
import { encodeJson, type IncomingRequest, RequestPlaneServer } from '../src/tcp/index.js';
import { waitUntil } from './helpers/fleet.js';
import { markersSeenByNewResources } from './trace-helpers.js';

let router: RouterService;
let url: string;

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { res, status: res.status, json: text ? JSON.parse(text) : undefined };
}

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  json: unknown;
}

/**
 * Writes `request` on a fresh socket (ending the sending side when `end`) and reads one HTTP
 * response: for what fetch cannot send (malformed requests, bodies cut short or stalled).
 * `onSocket` gets the router's side of the connection once it has the request's first bytes.
 */
function rawExchange(
  request: string,
  opts: { end?: boolean; onSocket?: (socket: net.Socket) => void } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const { port } = new URL(url);
    if (opts.onSocket) {
      const onSocket = opts.onSocket;
      router.app.server.once('connection', (socket: net.Socket) =>
        socket.once('data', () => onSocket(socket)),
      );
    }
    const socket = net.connect(Number(port), '127.0.0.1');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      text += d;
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
      const headers = Object.fromEntries(
        lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
      );
      const body = text.slice(end + 4);
      if (body.length < Number(headers['content-length'] ?? 0)) return;
      socket.destroy();
      resolve({
        status: Number(statusLine!.split(' ')[1]),
        headers,
        json: body ? JSON.parse(body) : undefined,
      });
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`connection closed; received: ${JSON.stringify(text)}`)));
    socket.write(request);
    if (opts.end) socket.end();
  });
}

function registration(over: Record<string, unknown> = {}) {
  return {
    role: 'both',
    address: '127.0.0.1:9',
    model: 'mock-llm',
    block_size: 16,
    kv_blocks: 1024,
    max_batched_tokens: 8192,
    kv_events: false,
    ...over,
  };
}

function assertOpenAIError(json: unknown, code: string, param?: string) {
  const error = (json as { error: { message: string; type: string; code: string; param?: string } }).error;
  assert.equal(error.code, code);
  assert.equal(typeof error.message, 'string');
  assert.ok(error.message.length > 0);
  assert.equal(
    error.type,
    code === 'payload_too_large' || code.startsWith('invalid') || code === 'model_not_found'
      ? 'invalid_request_error'
      : error.type,
  );
  if (param !== undefined) assert.equal(error.param, param);
}

before(async () => {
  router = await createRouter({ port: 0, logger: false, bodyLimit: 64 * 1024, maxOutputTokens: 1000 });
  url = await router.listen();
});
after(() => router.close());

describe('readiness and ids', () => {
  test('/health is 200; /ready is 503 without a decode-capable worker, 200 with one', async () => {
    assert.equal((await fetch(`${url}/health`)).status, 200);
    const notReady = await fetch(`${url}/ready`);
    assert.equal(notReady.status, 503);
    assertOpenAIError(await notReady.json(), 'no_workers');
    const prefillOnly = await post('/v1/workers', registration({ role: 'prefill', address: '127.0.0.1:11' }));
    assert.equal(prefillOnly.status, 201);
    assert.equal((await fetch(`${url}/ready`)).status, 503);
    const both = await post('/v1/workers', registration({ address: '127.0.0.1:12' }));
    assert.equal((await fetch(`${url}/ready`)).status, 200);
    for (const w of [prefillOnly, both]) {
      const del = await fetch(`${url}/v1/workers/${w.json.worker_id}`, { method: 'DELETE' });
      assert.equal(del.status, 204);
    }
    assert.equal((await fetch(`${url}/ready`)).status, 503);
  });

  test('x-request-id is echoed when given and generated otherwise', async () => {
    const given = await fetch(`${url}/health`, { headers: { 'x-request-id': 'client-id-42' } });
    assert.equal(given.headers.get('x-request-id'), 'client-id-42');
    const made = await fetch(`${url}/health`);
    assert.match(made.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
    const error = await post('/v1/completions', '{', { 'x-request-id': 'err-7' });
    assert.equal(error.res.headers.get('x-request-id'), 'err-7');
  });

  test('a malformed, oversized or cut-off HTTP request is answered in the error shape, with a request id', async () => {
    // Node's HTTP parser reports these to fastify, whose own answer was
    // {"error": "Bad Request", "statusCode": 400}: a string where OpenAI clients read error.code,
    // and no x-request-id.
    const garbage = await rawExchange('GARBAGE\r\n\r\n');
    assert.equal(garbage.status, 400);
    assertOpenAIError(garbage.json, 'invalid_request');
    assert.match(garbage.headers['x-request-id'] ?? '', /^[0-9a-f-]{36}$/);
    const huge = await rawExchange(`GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(huge.status, 431);
    assertOpenAIError(huge.json, 'headers_too_large');
    assert.ok(huge.headers['x-request-id']);
    // The body ends (the client half-closes) before its content-length: the request's own id.
    const head = 'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n';
    const cut = await rawExchange(`${head}x-request-id: cut-1\r\ncontent-length: 100\r\n\r\n{"model":`, {
      end: true,
    });
    assert.equal(cut.status, 400);
    assertOpenAIError(cut.json, 'invalid_request');
    assert.equal(cut.headers['x-request-id'], 'cut-1');
    // A body that stalls: node's request timeout fires as this clientError (after 30 to 60 s,
    // so it is raised here on the router's side of the real connection).
    const stalled = await rawExchange(`${head}x-request-id: slow-1\r\ncontent-length: 100\r\n\r\n{"model":`, {
      onSocket: (socket) =>
        setTimeout(() => {
          const err = Object.assign(new Error('Request timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' });
          router.app.server.emit('clientError', err, socket);
        }, 50),
    });
    assert.equal(stalled.status, 408);
    assertOpenAIError(stalled.json, 'request_timeout');
    assert.equal(stalled.headers['x-request-id'], 'slow-1');
    // Counted with the status its client saw (it was counted as a client gone, 499).
    await waitUntil(async () => {
      const text = await (await fetch(`${url}/metrics`)).text();
      return /^kvroute_http_requests_total\{route="\/v1\/completions",status="408",code="request_timeout"\} 1$/m.test(
        text,
      );
    }, 'the stalled request counted as a 408');
  });

  test('a URL that does not decode is a 400 in the error shape, with its request id, and counted', async () => {
    // fastify answered these itself, before any hook: its own error shape, no x-request-id, and
    // nothing in kvroute_http_requests_total.
    const counted = async () => {
      const text = await (await fetch(`${url}/metrics`)).text();
      return Number(
        /^kvroute_http_requests_total\{route="unmatched",status="400",code="invalid_request"\} (\d+)/m.exec(
          text,
        )?.[1] ?? 0,
      );
    };
    const before = await counted();
    for (const path of ['/%zz', '/v1/workers/%zz/heartbeat', `/v1/workers/${'a'.repeat(200)}/heartbeat`]) {
      const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'x-request-id': 'bad-url-1' } });
      assert.equal(res.status, 400, path);
      assertOpenAIError(await res.json(), 'invalid_request');
      assert.equal(res.headers.get('x-request-id'), 'bad-url-1');
    }
    assert.equal((await counted()) - before, 3);
  });

  test('a known path with a method it does not serve -> 405 with Allow, in the error shape', async () => {
    // It was a 404 not_found, as if the path did not exist, and no Allow header said what would do.
    for (const [method, path, allow] of [
      ['GET', '/v1/completions', 'POST'],
      ['DELETE', '/health', 'GET, HEAD'],
      ['GET', '/v1/workers/w-1/heartbeat', 'POST'],
      ['PUT', '/v1/workers/w-1', 'DELETE'],
    ] as const) {
      const res = await fetch(`${url}${path}`, { method, headers: { 'x-request-id': 'method-1' } });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get('allow'), allow, `${method} ${path}`);
      assert.equal(res.headers.get('x-request-id'), 'method-1');
      assertOpenAIError(await res.json(), 'method_not_allowed');
    }
  });

  test('unknown paths answer 404 in the error shape', async () => {
    const res = await fetch(`${url}/v1/nope`);
    assert.equal(res.status, 404);
    assertOpenAIError(await res.json(), 'not_found');
  });
});

describe('worker registration', () => {
  test('registers (201 with id and lease), heartbeats, lists, deregisters; unknown id is 404', async () => {
    const reg = await post('/v1/workers', registration({ address: '127.0.0.1:21' }));
    assert.equal(reg.status, 201);
    assert.match(reg.json.worker_id, /^w[0-9a-f]{6}-\d+$/);
    assert.equal(reg.json.lease_ttl_ms, router.config.leaseTtlMs);
    const beat = await fetch(`${url}/v1/workers/${reg.json.worker_id}/heartbeat`, { method: 'POST' });
    assert.equal(beat.status, 200);
    const list = (await (await fetch(`${url}/v1/workers`)).json()) as {
      data: { worker_id: string; index_mode: string; load: object }[];
    };
    const row = list.data.find((w) => w.worker_id === reg.json.worker_id);
    assert.ok(row);
    assert.equal(row.index_mode, 'approximate');
    assert.deepEqual(row.load, {
      active_prefill_tokens: 0,
      active_decode_blocks: 0,
      active_context_blocks: 0,
      active_requests: 0,
    });
    assert.equal((await fetch(`${url}/v1/workers/${reg.json.worker_id}`, { method: 'DELETE' })).status, 204);
    const gone = await fetch(`${url}/v1/workers/${reg.json.worker_id}/heartbeat`, { method: 'POST' });
    assert.equal(gone.status, 404);
    assertOpenAIError(await gone.json(), 'worker_not_found');
    assert.equal((await fetch(`${url}/v1/workers/w-999999`, { method: 'DELETE' })).status, 404);
  });

  test("a body with only CONTRACT.md's fields registers; max_batched_tokens is the engine's default", async () => {
    const {
      max_batched_tokens: _,
      kv_events: __,
      ...contractOnly
    } = registration({ address: '127.0.0.1:22' });
    const reg = await post('/v1/workers', contractOnly);
    assert.equal(reg.status, 201, JSON.stringify(reg.json));
    const list = (await (await fetch(`${url}/v1/workers`)).json()) as {
      data: { worker_id: string; max_batched_tokens: number }[];
    };
    const row = list.data.find((w) => w.worker_id === reg.json.worker_id);
    assert.equal(row?.max_batched_tokens, ENGINE_DEFAULTS.maxBatchedTokens);
    assert.equal((await fetch(`${url}/v1/workers/${reg.json.worker_id}`, { method: 'DELETE' })).status, 204);
    // Given, it must still be a positive integer.
    for (const bad of [0, 1.5, '8192', null]) {
      const r = await post('/v1/workers', registration({ max_batched_tokens: bad }));
      assert.equal(r.status, 400, JSON.stringify(bad));
      assertOpenAIError(r.json, 'invalid_request', 'max_batched_tokens');
    }
  });

  test('a bad address or block size is a 400 naming the field', async () => {
    for (const [over, param] of [
      [{ address: 'not-an-address' }, 'address'],
      [{ address: 'host:99999' }, 'address'],
      [{ address: 'http://x:1' }, 'address'],
      [{ block_size: 32 }, 'block_size'],
      [{ block_size: 'sixteen' }, 'block_size'],
      [{ role: 'boss' }, 'role'],
      [{ kv_blocks: 0 }, 'kv_blocks'],
    ] as const) {
      const r = await post('/v1/workers', registration(over));
      assert.equal(r.status, 400, JSON.stringify(over));
      assertOpenAIError(r.json, 'invalid_request', param);
    }
    assert.equal(router.registry.size, 0);
  });
});

describe('bad inference input', () => {
  let workerId: string;
  before(async () => {
    // A registered model, so that validation (not "no workers") is what answers.
    workerId = (await post('/v1/workers', registration({ address: '127.0.0.1:31' }))).json.worker_id;
  });
  after(async () => {
    await fetch(`${url}/v1/workers/${workerId}`, { method: 'DELETE' });
  });

  const cases: [string, string, unknown, string, string?][] = [
    ['malformed JSON', '/v1/completions', '{"model": "mock-llm", "prompt": ', 'invalid_json'],
    ['a JSON array body', '/v1/completions', '[1,2]', 'invalid_request', 'body'],
    [
      'prompt of the wrong type',
      '/v1/completions',
      { model: 'mock-llm', prompt: 42 },
      'invalid_request',
      'prompt',
    ],
    ['model of the wrong type', '/v1/completions', { model: 7, prompt: 'hi' }, 'invalid_request', 'model'],
    [
      'stream of the wrong type',
      '/v1/completions',
      { model: 'mock-llm', prompt: 'hi', stream: 'yes' },
      'invalid_request',
      'stream',
    ],
    ['empty text prompt', '/v1/completions', { model: 'mock-llm', prompt: '' }, 'invalid_request', 'prompt'],
    ['empty token prompt', '/v1/completions', { model: 'mock-llm', prompt: [] }, 'invalid_request', 'prompt'],
    [
      'max_tokens 0',
      '/v1/completions',
      { model: 'mock-llm', prompt: 'hi', max_tokens: 0 },
      'invalid_request',
      'max_tokens',
    ],
    [
      'max_tokens negative',
      '/v1/completions',
      { model: 'mock-llm', prompt: 'hi', max_tokens: -5 },
      'invalid_request',
      'max_tokens',
    ],
    [
      'max_tokens over the limit',
      '/v1/completions',
      { model: 'mock-llm', prompt: 'hi', max_tokens: 1001 },
      'invalid_request',
      'max_tokens',
    ],
    [
      'negative token id',
      '/v1/completions',
      { model: 'mock-llm', prompt: [1, -2, 3] },
      'invalid_request',
      'prompt',
    ],
    [
      'fractional token id',
      '/v1/completions',
      { model: 'mock-llm', prompt: [1, 2.5] },
      'invalid_request',
      'prompt',
    ],
    [
      'string token id',
      '/v1/completions',
      { model: 'mock-llm', prompt: [1, '2'] },
      'invalid_request',
      'prompt',
    ],
    [
      'token id over u32',
      '/v1/completions',
      { model: 'mock-llm', prompt: [2 ** 32] },
      'invalid_request',
      'prompt',
    ],
    [
      'token ids nested three deep',
      '/v1/completions',
      { model: 'mock-llm', prompt: [[[5, 6, 7]]] },
      'invalid_request',
      'prompt',
    ],
    [
      'a prompt 20,000 arrays deep',
      '/v1/completions',
      `{"model":"mock-llm","prompt":${'['.repeat(20_000)}5${']'.repeat(20_000)}}`,
      'invalid_request',
      'prompt',
    ],
    ['chat without messages', '/v1/chat/completions', { model: 'mock-llm' }, 'invalid_request', 'messages'],
    [
      'chat with a bad role',
      '/v1/chat/completions',
      { model: 'mock-llm', messages: [{ role: 'x', content: 'hi' }] },
      'invalid_request',
      'messages',
    ],
  ];
  for (const [name, path, body, code, param] of cases) {
    test(`${name} -> 400 ${code}`, async () => {
      const r = await post(path, body);
      assert.equal(r.status, 400);
      assertOpenAIError(r.json, code, param);
    });
  }

  test('an unknown model -> 404 model_not_found (as OpenAI answers it), on completions, chat and route', async () => {
    for (const [path, body] of [
      ['/v1/completions', { model: 'no-such-model', prompt: 'hi' }],
      ['/v1/chat/completions', { model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }],
      ['/v1/route', { model: 'nope', prompt: 'hi' }],
    ] as const) {
      const r = await post(path, body);
      assert.equal(r.status, 404, path);
      assertOpenAIError(r.json, 'model_not_found', 'model');
    }
  });

  test('a JSON body sent with another content-type, or none, -> 400 saying content-type', async () => {
    // text/plain (fastify's own parser gave a string) and no content-type (no body at all) were
    // answered "the request body must be a JSON object" for a body that is one, while every other
    // media type was told to send application/json: a client could not see what to change.
    const body = JSON.stringify({ model: 'mock-llm', prompt: 'hi' });
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', undefined]) {
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: type === undefined ? {} : { 'content-type': type },
        body: new Blob([body]),
      });
      assert.equal(res.headers.get('content-type')?.startsWith('application/json'), true);
      const json = (await res.json()) as { error: { message: string } };
      assert.equal(res.status, 400, `${type}: ${JSON.stringify(json)}`);
      assertOpenAIError(json, 'invalid_request');
      assert.match(json.error.message, /content-type.*application\/json/, `${type}`);
    }
  });

  test('a gzip or deflate body is decoded; past the limit once decoded -> 413; other encodings -> 415', async () => {
    // The encoded bytes were handed to the JSON parser: 400 invalid_json for a valid body.
    const body = JSON.stringify({ model: 'mock-llm', prompt: 'hello there' });
    const send = (encoding: string, bytes: Uint8Array) =>
      fetch(`${url}/v1/route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-encoding': encoding },
        body: bytes,
      });
    for (const [encoding, bytes] of [
      ['gzip', zlib.gzipSync(body)],
      ['deflate', zlib.deflateSync(body)],
      ['identity', Buffer.from(body)],
    ] as const) {
      const res = await send(encoding, bytes);
      const json = (await res.json()) as { model: string };
      assert.equal(res.status, 200, `${encoding}: ${JSON.stringify(json)}`);
      assert.equal(json.model, 'mock-llm');
    }
    // 2 KB that inflates to 1 MiB: the limit (64 KiB here) is on the decoded body.
    const bomb = zlib.gzipSync(Buffer.alloc(1 << 20, 0x20));
    const big = await send('gzip', bomb);
    assert.equal(big.status, 413);
    assertOpenAIError(await big.json(), 'payload_too_large');
    const corrupt = await send('gzip', Buffer.from('not gzip at all'));
    assert.equal(corrupt.status, 400);
    assertOpenAIError(await corrupt.json(), 'invalid_request');
    const other = await send('compress', Buffer.from(body));
    assert.equal(other.status, 415);
    const json = (await other.json()) as { error: { message: string } };
    assertOpenAIError(json, 'unsupported_media_type');
    assert.match(json.error.message, /gzip/);
  });

  test('a body declared in a charset other than UTF-8 -> 415; utf-8 in any spelling is read', async () => {
    // The bytes were decoded as UTF-8 whatever the charset said: latin-1 "café" became "caf\uFFFD".
    const send = (contentType: string, bytes: Buffer) =>
      fetch(`${url}/v1/route`, { method: 'POST', headers: { 'content-type': contentType }, body: bytes });
    const body = JSON.stringify({ model: 'mock-llm', prompt: 'café' });
    for (const type of [
      'application/json; charset=utf-8',
      'application/json;charset="UTF-8"',
      'application/json',
    ]) {
      const res = await send(type, Buffer.from(body, 'utf8'));
      assert.equal(res.status, 200, type);
      await res.arrayBuffer();
    }
    for (const [charset, encoding] of [
      ['iso-8859-1', 'latin1'],
      ['utf-16le', 'utf16le'],
    ] as const) {
      const res = await send(`application/json; charset=${charset}`, Buffer.from(body, encoding));
      assert.equal(res.status, 415, charset);
      const json = (await res.json()) as { error: { message: string } };
      assertOpenAIError(json, 'unsupported_media_type');
      assert.match(json.error.message, /UTF-8/);
    }
  });

  test('valid JSON with a __proto__ or constructor.prototype key -> 400 naming the key, not "not valid JSON"', async () => {
    // fastify's parser refuses these keys (prototype poisoning) with the same error as a syntax
    // error, so a client sending valid JSON was told it was not valid.
    for (const body of [
      '{"model":"mock-llm","prompt":"x","__proto__":{"stream":true}}',
      '{"model":"mock-llm","prompt":"x","metadata":{"constructor":{"prototype":{"a":"b"}}}}',
    ]) {
      const r = await post('/v1/completions', body);
      assert.equal(r.status, 400, body);
      assertOpenAIError(r.json, 'invalid_request');
      assert.match(r.json.error.message, /__proto__|constructor/, body);
      assert.doesNotMatch(r.json.error.message, /not valid JSON/, body);
    }
    // A word in a value is no key: read as usual.
    const r = await post('/v1/route', { model: 'mock-llm', prompt: 'the constructor of __proto__' });
    assert.equal(r.status, 200);
  });

  test('a body over the limit -> 413', async () => {
    const r = await post('/v1/completions', { model: 'mock-llm', prompt: 'x'.repeat(70 * 1024) });
    assert.equal(r.status, 413);
    assertOpenAIError(r.json, 'payload_too_large');
  });

  test('a worker that cannot be reached -> 502 after the attempts, and the booking is released', async () => {
    const r = await post('/v1/completions', { model: 'mock-llm', prompt: 'hello there' });
    assert.equal(r.status, 502);
    assertOpenAIError(r.json, 'worker_disconnected');
    assert.equal(router.registry.load.size, 0);
    assert.equal(router.inflight.active, 0);
  });
});

describe('no workers', () => {
  test('inference without any registered worker -> 503 no_workers, retry in 1 s', async () => {
    const r = await post('/v1/completions', { model: 'mock-llm', prompt: 'hi' });
    assert.equal(r.status, 503);
    assertOpenAIError(r.json, 'no_workers');
    // Workers register within seconds of a router restart: the client is told when to come back.
    assert.equal(r.res.headers.get('retry-after'), '1');
  });
});

/** The value of the series `series` (name and labels exactly as exposed) in a scrape, or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('/metrics', () => {
  test('parses as Prometheus text and has every metric family', async () => {
    await fetch(`${url}/health`);
    const res = await fetch(`${url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    const families = new Map<string, string>();
    const samples: string[] = [];
    for (const line of (await res.text()).split('\n')) {
      if (line === '') continue;
      const type = /^# TYPE (\w+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) {
        families.set(type[1]!, type[2]!);
        continue;
      }
      if (line.startsWith('# HELP ')) continue;
      // name{label="value",...} value
      const sample =
        /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(
          line,
        );
      assert.ok(sample, `not a Prometheus sample line: ${line}`);
      samples.push(sample[1]!);
    }
    for (const [name, type] of [
      ['kvroute_http_requests_total', 'counter'],
      ['kvroute_time_to_first_token_seconds', 'histogram'],
      ['kvroute_inter_token_latency_seconds', 'histogram'],
      ['kvroute_routing_decision_seconds', 'histogram'],
      ['kvroute_cache_hit_ratio', 'gauge'],
      ['kvroute_worker_active_prefill_tokens', 'gauge'],
      ['kvroute_worker_active_decode_blocks', 'gauge'],
      ['kvroute_index_blocks', 'gauge'],
      ['kvroute_requests_in_flight', 'gauge'],
      ['kvroute_kv_events_applied_total', 'counter'],
      ['kvroute_kv_events_rejected_total', 'counter'],
      ['kvroute_kv_resyncs_total', 'counter'],
      ['kvroute_request_retries_total', 'counter'],
    ]) {
      assert.equal(families.get(name!), type, `family ${name}`);
    }
    assert.ok(samples.includes('kvroute_http_requests_total'));
    assert.ok(samples.includes('kvroute_routing_decision_seconds_bucket'));
    // prom-client's default process metrics, as src/router/README.md promises.
    assert.equal(families.get('process_cpu_user_seconds_total'), 'counter');
    assert.equal(families.get('nodejs_heap_size_used_bytes'), 'gauge');
    assert.ok(samples.includes('process_cpu_user_seconds_total'));
  });

  test('kvroute_workers counts workers by model and role, ejected ones too; kvroute_ready is the /ready rule, draining too', async () => {
    // A router of its own: this one is drained.
    const own = await createRouter({ port: 0, logger: false, ejectAfterFailures: 3 });
    try {
      const base = await own.listen();
      const scrape = async () => (await fetch(`${base}/metrics`)).text();
      const register = async (over: Record<string, unknown>) => {
        const res = await fetch(`${base}/v1/workers`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(registration(over)),
        });
        assert.equal(res.status, 201);
        return ((await res.json()) as { worker_id: string }).worker_id;
      };
      const agree = async (ready: 0 | 1, when: string) => {
        const status = (await fetch(`${base}/ready`)).status;
        assert.equal(status, ready === 1 ? 200 : 503, `/ready ${when}`);
        assert.equal(sample(await scrape(), 'kvroute_ready'), ready, `kvroute_ready ${when}`);
      };
      await agree(0, 'with no worker');
      assert.doesNotMatch(await scrape(), /^kvroute_workers\{/m);

      await register({ role: 'prefill', address: '127.0.0.1:51' });
      await agree(0, 'with a prefill worker only');
      const both = [
        await register({ address: '127.0.0.1:52' }),
        await register({ address: '127.0.0.1:53' }),
        await register({ address: '127.0.0.1:54', model: 'other-llm' }),
      ];
      await agree(1, 'with decode-capable workers');
      // One ejected (its model has another): still registered, still counted.
      for (let i = 0; i < 3; i++) own.registry.recordFailure(both[0]!, Date.now());
      let text = await scrape();
      assert.equal(sample(text, 'kvroute_workers_ejected'), 1);
      assert.equal(sample(text, 'kvroute_workers{model="mock-llm",role="prefill"}'), 1);
      assert.equal(sample(text, 'kvroute_workers{model="mock-llm",role="both"}'), 2);
      assert.equal(sample(text, 'kvroute_workers{model="other-llm",role="both"}'), 1);

      // Deregistered: its series goes with its last worker.
      await fetch(`${base}/v1/workers/${both[2]}`, { method: 'DELETE' });
      text = await scrape();
      assert.equal(sample(text, 'kvroute_workers{model="other-llm",role="both"}'), undefined);

      const drained = own.drain();
      await agree(0, 'while draining');
      await drained;
    } finally {
      await own.close();
    }
  });

  test('kvroute_http_requests_total says which error each answer was: its code, empty for a success, only ours', async () => {
    const own = await createRouter({ port: 0, logger: false });
    try {
      // A handler failing with a code that is not in src/errors.ts (a bug): it must not become a label value.
      own.app.get('/not-ours', async () => {
        throw new KvrouteError('made_up' as ErrorCode, 'a code of nobody');
      });
      const completion = () =>
        own.app.inject({
          method: 'POST',
          url: '/v1/completions',
          payload: { model: 'mock-llm', prompt: 'hi' },
        });
      assert.equal((await completion()).statusCode, 503); // no worker
      assert.equal((await own.app.inject({ url: '/health' })).statusCode, 200);
      assert.equal((await own.app.inject({ url: '/nope' })).statusCode, 404);
      assert.equal((await own.app.inject({ url: '/not-ours' })).statusCode, 500);
      await own.drain();
      assert.equal((await completion()).statusCode, 503); // draining
      const text = await own.metrics.registry.metrics();
      const count = (labels: string) => sample(text, `kvroute_http_requests_total{${labels}}`);
      // The two 503s told apart.
      assert.equal(count('route="/v1/completions",status="503",code="no_workers"'), 1);
      assert.equal(count('route="/v1/completions",status="503",code="shutting_down"'), 1);
      assert.equal(count('route="/health",status="200",code=""'), 1);
      assert.equal(count('route="unmatched",status="404",code="not_found"'), 1);
      assert.equal(count('route="/not-ours",status="500",code="internal_error"'), 1);
    } finally {
      await own.close();
    }
    // Every answer this file's router gave (400s to 503s, 499s, parser errors): codes of ours only.
    const codes = new Set(
      [
        ...(await (await fetch(`${url}/metrics`)).text()).matchAll(
          /^kvroute_http_requests_total\{.*code="([^"]*)"\}/gm,
        ),
      ].map((m) => m[1]!),
    );
    assert.ok(codes.has('') && codes.size > 3, [...codes].join(' '));
    for (const code of codes) assert.ok(code === '' || Object.hasOwn(ERROR_CODES, code), code);
  });

  test('kvroute_max_inflight is the configured --max-inflight, beside kvroute_requests_in_flight', async () => {
    const text = await (await fetch(`${url}/metrics`)).text();
    assert.equal(sample(text, 'kvroute_max_inflight'), 4096); // the default
    assert.equal(sample(text, 'kvroute_requests_in_flight'), 0);
    const own = await createRouter({ port: 0, logger: false, maxInflight: 37 });
    try {
      assert.equal(sample(await own.metrics.registry.metrics(), 'kvroute_max_inflight'), 37);
    } finally {
      await own.close();
    }
  });

  test("kvroute_worker_info names each worker's role and model, for joining the per-worker gauges", async () => {
    const prefill = await post(
      '/v1/workers',
      registration({ role: 'prefill', address: '127.0.0.1:61', model: 'info-llm' }),
    );
    const decode = await post(
      '/v1/workers',
      registration({ role: 'decode', address: '127.0.0.1:62', model: 'org/info-2' }),
    );
    const ids = [prefill.json.worker_id as string, decode.json.worker_id as string];
    try {
      const text = await (await fetch(`${url}/metrics`)).text();
      assert.equal(
        sample(text, `kvroute_worker_info{worker_id="${ids[0]}",role="prefill",model="info-llm"}`),
        1,
      );
      assert.equal(
        sample(text, `kvroute_worker_info{worker_id="${ids[1]}",role="decode",model="org/info-2"}`),
        1,
      );
      // The same worker_id as the load gauges carry: the join key.
      for (const id of ids)
        assert.equal(sample(text, `kvroute_worker_active_decode_blocks{worker_id="${id}"}`), 0);
    } finally {
      for (const id of ids) await fetch(`${url}/v1/workers/${id}`, { method: 'DELETE' });
    }
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const id of ids) assert.ok(!text.includes(`worker_id="${id}"`), `${id} left its series behind`);
  });

  test("the routing-phase histogram's buckets reach the tokenize time of long prompts", async () => {
    // Tokenizing is a pool hop and O(prompt chars): ~15 ms for a 20k-token prompt on the 2-core VM
    // (--max-prompt-tokens allows 131072). The buckets stopped at 5 ms, so every prompt past ~2k
    // tokens fell into +Inf and the phase's quantiles could not be told apart.
    const reg = await post('/v1/workers', registration({ address: '127.0.0.1:41', model: 'bucket-llm' }));
    assert.equal((await post('/v1/route', { model: 'bucket-llm', prompt: 'hello there' })).status, 200);
    assert.equal((await fetch(`${url}/v1/workers/${reg.json.worker_id}`, { method: 'DELETE' })).status, 204);
    const text = await (await fetch(`${url}/metrics`)).text();
    const bounds = [
      ...text.matchAll(/^kvroute_routing_decision_seconds_bucket\{le="([^"]+)",phase="tokenize"\}/gm),
    ]
      .map((m) => Number(m[1]))
      .filter(Number.isFinite);
    assert.ok(bounds.length > 0, 'the tokenize series is exported');
    assert.ok(Math.max(...bounds) >= 0.25, `largest bucket ${Math.max(...bounds)} s`);
    // No more than a factor 2.5 between neighbours (the 1 ms -> 5 ms step skipped 2.5 ms).
    for (let i = 1; i < bounds.length; i++)
      assert.ok(bounds[i]! / bounds[i - 1]! <= 2.5 + 1e-9, `${bounds[i]}`);
  });

  test('two routers in one process both show the process metrics', async () => {
    const second = await createRouter({ port: 0, logger: false });
    try {
      const secondUrl = await second.listen();
      for (const base of [url, secondUrl]) {
        const text = await (await fetch(`${base}/metrics`)).text();
        assert.match(text, /^process_cpu_user_seconds_total \d/m, base);
        assert.match(text, /^nodejs_eventloop_lag_seconds /m, base);
      }
    } finally {
      await second.close();
    }
  });
});

describe('request-plane pools of departed workers', () => {
  // In-process request-plane servers stand in for workers that deregister: the connections each
  // one sees tell whether the router still holds a pool for its address.
  const servers: RequestPlaneServer[] = [];
  after(() => Promise.all(servers.map((s) => s.close({ deadlineMs: 100 }))));

  async function fakeWorker(generate: (req: IncomingRequest) => AsyncIterable<Uint8Array>) {
    const server = new RequestPlaneServer().handle('generate', generate);
    await server.listen(0);
    servers.push(server);
    const reg = await post('/v1/workers', registration({ address: server.address, model: 'pool-llm' }));
    assert.equal(reg.status, 201);
    return { server, workerId: reg.json.worker_id as string };
  }

  const chunk = (finish: string | null) =>
    encodeJson({ token_ids: [290], finish_reason: finish, prompt_tokens: 4, cached_tokens: 0 });

  test('register, request, deregister, 20 times: no connection (no pool) is left behind', async () => {
    const used: RequestPlaneServer[] = [];
    for (let i = 0; i < 20; i++) {
      const { server, workerId } = await fakeWorker(async function* () {
        yield chunk('length');
      });
      used.push(server);
      const r = await post('/v1/completions', { model: 'pool-llm', prompt: 'hi', max_tokens: 1 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(server.stats().connections, 1);
      assert.equal((await fetch(`${url}/v1/workers/${workerId}`, { method: 'DELETE' })).status, 204);
    }
    await waitUntil(
      () => used.every((s) => s.stats().connections === 0),
      'the router to close the pool of every departed address',
    );
  });

  test("a deregistered worker's open stream is not cut: its pool closes after the stream ends", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { server, workerId } = await fakeWorker(async function* () {
      yield chunk(null);
      await gate;
      yield chunk('length');
    });
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'pool-llm', prompt: 'hi', max_tokens: 2, stream: true }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    while (!text.includes('"text"')) text += (await reader.read()).value ?? '';
    assert.equal((await fetch(`${url}/v1/workers/${workerId}`, { method: 'DELETE' })).status, 204);
    // Past a lease sweep (1 s at the default 10 s lease): the busy pool is still there.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(server.stats().connections, 1);
    assert.equal(server.stats().activeStreams, 1);
    release();
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += r.value;
    const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
    assert.equal(events.at(-1), 'data: [DONE]');
    assert.ok(!text.includes('"error"'), text);
    await waitUntil(() => server.stats().connections === 0, 'the drained pool to close at the next sweep');
  });
});

test('a request whose body completes after close() began is refused 503 shutting_down, not started and cut', async () => {
  // It passed onRequest before close(), so nothing refused it: it ran on the worker, was not in
  // the set close() aborts, and its socket was cut after the grace: a stream with no end.
  const closing = await createRouter({ port: 0, logger: false });
  const worker = new RequestPlaneServer();
  let calls = 0;
  worker.handle('generate', async function* () {
    calls++;
    for (let i = 0; i < 100; i++) {
      yield encodeJson({ token_ids: [290], finish_reason: null, prompt_tokens: 4, cached_tokens: 0 });
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    yield encodeJson({ token_ids: [290], finish_reason: 'length', prompt_tokens: 4, cached_tokens: 0 });
  });
  try {
    await worker.listen(0);
    const base = await closing.listen();
    const reg = await fetch(`${base}/v1/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(registration({ address: worker.address, model: 'close-llm' })),
    });
    assert.equal(reg.status, 201);
    const body = JSON.stringify({ model: 'close-llm', prompt: 'hi', max_tokens: 101, stream: true });
    const received = new Promise((resolve) =>
      closing.app.server.once('connection', (s: net.Socket) => s.once('data', resolve)),
    );
    const socket = net.connect(Number(new URL(base).port), '127.0.0.1');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      text += d;
    });
    const gone = new Promise((resolve) => socket.once('close', resolve));
    socket.write(
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
        `x-request-id: late-1\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
    );
    await received;
    const closed = closing.close();
    socket.write(body.slice(10));
    await closed;
    await gone;
    assert.match(text, /^HTTP\/1\.1 503 /, text.slice(0, 300));
    assert.match(text, /x-request-id: late-1/);
    assert.match(text, /"code":"shutting_down"/);
    // The connection is going away: a client must not send its next request on it.
    assert.match(text, /\r\nconnection: close\r\n/i);
    assert.equal(calls, 0);
  } finally {
    await closing.close();
    await worker.close({ deadlineMs: 100 });
  }
});

test('RequestHistogram exposes exactly what a prom-client Histogram does (labelled, unlabelled, reset)', async () => {
  const ours = new Registry();
  const theirs = new Registry();
  const buckets = [1e-6, 2.5e-6, 1e-3, 0.5];
  const labelled = new RequestHistogram({
    name: 'l_seconds',
    help: 'l',
    labelNames: ['phase'],
    buckets,
    registers: [ours],
  });
  const plain = new RequestHistogram({ name: 'u_seconds', help: 'u', buckets, registers: [ours] });
  const refLabelled = new Histogram({
    name: 'l_seconds',
    help: 'l',
    labelNames: ['phase'],
    buckets,
    registers: [theirs],
  });
  const refPlain = new Histogram({ name: 'u_seconds', help: 'u', buckets, registers: [theirs] });
  const hash = labelled.labels({ phase: 'hash' });
  const match = labelled.labels({ phase: 'match' });
  const same = async (when: string) => assert.equal(await ours.metrics(), await theirs.metrics(), when);
  await same('before any observation');
  for (const v of [0, 1e-6, 3e-7, 2e-6, 2e-3, 7, 0.5]) {
    hash.observe(v);
    refLabelled.labels('hash').observe(v);
    plain.observe(v * 2);
    refPlain.observe(v * 2);
  }
  await same('after observations');
  ours.resetMetrics();
  theirs.resetMetrics();
  await same('after a reset');
  match.observe(1e-4);
  refLabelled.labels('match').observe(1e-4);
  plain.observe(1);
  refPlain.observe(1);
  await same('observed again after the reset');
  assert.throws(() => hash.observe(Number.NaN), TypeError);
});

test('LazyRequestLogger writes the lines the pino child would, and makes the child only on the first line', () => {
  const lines: Record<string, unknown>[] = [];
  const stream = { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) };
  const app = Fastify({ logger: { level: 'info', stream } });
  let children = 0;
  const parent = app.log;
  const counting = Object.create(parent) as typeof parent;
  counting.child = (bindings, options) => {
    children++;
    return parent.child(bindings, options);
  };
  const lazy = new LazyRequestLogger(counting, { reqId: 'r-1' }, {});
  assert.equal(lazy.level, 'info');
  lazy.debug({ skipped: true }, 'below the level');
  assert.equal(lines.length, 0);
  assert.equal(children, 1, 'a line (even a dropped one) makes the child');
  lazy.info({ event: 'request', status: 200 }, 'request');
  lazy.warn('plain %s', 'text');
  assert.equal(children, 1);
  assert.equal(lines.length, 2);
  assert.deepEqual(
    {
      reqId: lines[0]!.reqId,
      event: lines[0]!.event,
      status: lines[0]!.status,
      msg: lines[0]!.msg,
      level: lines[0]!.level,
    },
    { reqId: 'r-1', event: 'request', status: 200, msg: 'request', level: 30 },
  );
  assert.deepEqual(
    { reqId: lines[1]!.reqId, msg: lines[1]!.msg, level: lines[1]!.level },
    { reqId: 'r-1', msg: 'plain text', level: 40 },
  );
  lazy.child({ part: 'x' }).error('inner');
  assert.deepEqual(
    { reqId: lines[2]!.reqId, part: lines[2]!.part, msg: lines[2]!.msg },
    { reqId: 'r-1', part: 'x', msg: 'inner' },
  );
  const untouched = new LazyRequestLogger(counting, { reqId: 'r-2' }, {});
  assert.equal(untouched.level, 'info');
  assert.equal(children, 1, 'reading the level makes no child');
});

test("the router's listening socket and lease-expiry sweep are made outside the caller's context", async () => {
  const router = await createRouter({ port: 0, logger: false });
  try {
    const seen = await markersSeenByNewResources(['TCPSERVERWRAP', 'Timeout'], () => router.listen());
    assert.ok(seen.some((s) => s.type === 'TCPSERVERWRAP'));
    assert.ok(seen.some((s) => s.type === 'Timeout'));
    assert.deepEqual(new Set(seen.map((s) => s.marker)), new Set([undefined]));
  } finally {
    await router.close();
  }
});

test('--seed makes the random policy repeat its choices; another seed makes others', async () => {
  const choices = async (seed: number): Promise<string[]> => {
    const router = await createRouter({ port: 0, logger: false, policy: 'random', seed });
    try {
      const url = await router.listen();
      for (let i = 1; i <= 4; i++) {
        const res = await fetch(`${url}/v1/workers`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            role: 'both',
            address: `127.0.0.1:${9300 + i}`,
            model: 'mock-llm',
            block_size: 16,
            kv_blocks: 1024,
          }),
        });
        assert.equal(res.status, 201);
      }
      const picked: string[] = [];
      for (let i = 0; i < 24; i++) {
        const res = await fetch(`${url}/v1/route`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'mock-llm', prompt: `question ${i}`, max_tokens: 4 }),
        });
        assert.equal(res.status, 200);
        picked.push(((await res.json()) as { decode: { address: string } }).decode.address);
      }
      return picked;
    } finally {
      await router.close();
    }
  };
  const first = await choices(7);
  assert.ok(new Set(first).size > 1, 'random spreads its choices');
  assert.deepEqual(await choices(7), first);
  assert.notDeepEqual(await choices(8), first);
});

test('--max-connections: a connection past the limit is closed at once; one slot freed, a new one is served', async () => {
  const router = await createRouter({ port: 0, logger: false, maxConnections: 3 });
  const { port } = new URL(await router.listen());
  const connections = () =>
    new Promise<number>((resolve, reject) =>
      router.app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
    );
  const open = () =>
    new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => resolve(socket));
      socket.once('error', reject);
    });
  const held: net.Socket[] = [];
  try {
    for (let i = 0; i < 3; i++) held.push(await open());
    await waitUntil(async () => (await connections()) === 3, 'three connections held');
    const extra = await open();
    held.push(extra);
    // Closed by the router without an answer, even to a request sent on it.
    const answer = new Promise<string>((resolve) => {
      let text = '';
      extra.on('data', (b) => {
        text += b.toString();
      });
      extra.once('close', () => resolve(text));
      extra.on('error', () => {});
    });
    extra.write('GET /health HTTP/1.1\r\nhost: x\r\n\r\n');
    assert.equal(await answer, '');
    held[0]!.destroy();
    await waitUntil(async () => (await connections()) === 2, 'a slot freed');
    const res = await fetch(`http://127.0.0.1:${port}/health`, { headers: { connection: 'close' } });
    assert.equal(res.status, 200);
  } finally {
    for (const s of held) s.destroy();
    await router.close();
  }
});

test('a client that leaves while its long prompt waits for a tokenizer thread: the encode is dropped, counted as cancelled', {
  timeout: 60_000,
}, async () => {
  // A stand-in worker nothing listens behind: a request is tokenized, routed, and fails to reach
  // it (5xx), which is all this needs.
  const router = await createRouter({
    port: 0,
    logger: false,
    bodyLimit: 16 << 20,
    maxPromptTokens: 4_000_000,
  });
  try {
    const url = await router.listen();
    const registered = await fetch(`${url}/v1/workers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        role: 'both',
        address: '127.0.0.1:9',
        model: 'mock-llm',
        block_size: 16,
        // Large enough for the ~70,000-block prompt: the router refuses a prompt no pool holds (400)
        // before it calls any worker, and this test is about the tokenizer wait, not that check.
        kv_blocks: 1 << 20,
      }),
    });
    assert.equal(registered.status, 201);
    const metric = async (path: string) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      return Number(
        new RegExp(`^kvroute_tokenize_total\\{path="${path}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? 'NaN',
      );
    };
    const send = (prompt: string, signal?: AbortSignal) =>
      fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'mock-llm', prompt, max_tokens: 1 }),
        ...(signal ? { signal } : {}),
      });
    // Long enough to hold every thread (at most 4) while the fifth is sent and given up: ~300 ms each here.
    const long = 'the router keeps a prefix index of every worker cache. '.repeat(100_000);
    const holding = Array.from({ length: 4 }, (_, i) => send(`${i} ${long}`));
    // A pooled encode is counted when the tokenizer takes it: then the four hold the threads (at
    // most 4), and the fifth waits for one.
    await waitUntil(async () => (await metric('pooled')) === 4, 'the four long prompts in the tokenizer');
    const gone = new AbortController();
    const waiting = send('a prompt over the inline limit '.repeat(100), gone.signal).catch((e: unknown) => e);
    await waitUntil(async () => (await metric('pooled')) === 5, 'the fifth waiting for a thread');
    gone.abort();
    assert.ok((await waiting) instanceof Error, 'the client gave up');
    for (const res of await Promise.all(holding)) assert.ok(res.status >= 500, `status ${res.status}`);
    await waitUntil(async () => (await metric('cancelled')) === 1, 'the waiting encode counted as cancelled');
    assert.equal(await metric('pooled'), 5);
  } finally {
    await router.close();
  }
});

test('a text prompt far over --max-prompt-tokens is refused as one just over it, without being tokenized', {
  timeout: 60_000,
}, async () => {
  // 16 MiB against 8,192 tokens: a token is at most 128 UTF-8 bytes, so the text holds at least
  // 131,072 tokens. It was scanned whole for long runs (and sent to a pool thread) before.
  const router = await createRouter({ port: 0, logger: false, bodyLimit: 40 << 20, maxPromptTokens: 8192 });
  try {
    const url = await router.listen();
    const send = async (path: string, body: unknown) => {
      const res = await fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { status: res.status, json: (await res.json()) as { error: Record<string, unknown> } };
    };
    const reg = await send('/v1/workers', {
      role: 'both',
      address: '127.0.0.1:9',
      model: 'limit-llm',
      block_size: 16,
      kv_blocks: 1 << 20,
    });
    assert.equal(reg.status, 201);
    const tokenized = async () => {
      const text = await (await fetch(`${url}/metrics`)).text();
      let total = 0;
      for (const m of text.matchAll(/^kvroute_tokenize_total\{path="(?:inline|pooled)"\} (\S+)$/gm))
        total += Number(m[1]);
      return total;
    };
    const refusal = {
      message: 'prompt has more than the limit of 8192 tokens',
      type: 'invalid_request_error',
      param: 'prompt',
      code: 'context_length_exceeded',
    };
    const sentence = 'the router keeps a prefix index of every worker cache. ';
    // Just over the limit (~9,000 tokens): tokenized, and refused.
    const justOver = await send('/v1/completions', { model: 'limit-llm', prompt: sentence.repeat(800) });
    assert.equal(justOver.status, 400);
    assert.deepEqual(justOver.json.error, refusal);
    const before = await tokenized();
    assert.equal(before, 1);
    const huge = sentence.repeat(Math.ceil((16 << 20) / sentence.length));
    const completion = await send('/v1/completions', { model: 'limit-llm', prompt: huge });
    assert.equal(completion.status, 400);
    assert.deepEqual(completion.json.error, refusal);
    const chat = await send('/v1/chat/completions', {
      model: 'limit-llm',
      messages: [{ role: 'user', content: huge }],
    });
    assert.equal(chat.status, 400);
    assert.deepEqual(chat.json.error, refusal);
    assert.equal(await tokenized(), before, 'neither far-over prompt reached the tokenizer');
  } finally {
    await router.close();
  }
});

describe('--max-receiving-bytes', () => {
  /** A completion body of exactly `length` bytes (a prompt of spaces), valid JSON. */
  const bodyOf = (length: number) => {
    const head = '{"model":"mock-llm","max_tokens":1,"prompt":"';
    return Buffer.from(`${head}${' '.repeat(length - head.length - 2)}"}`);
  };
  /** Sends the headers and `sent` bytes of a body; resolves with all the router answers, at close. */
  function upload(port: number, headers: string, sent: Buffer) {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    let text = '';
    socket.on('data', (b) => {
      text += b.toString();
    });
    const answer = new Promise<string>((resolve) => socket.once('close', () => resolve(text)));
    socket.write(
      `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n${headers}\r\n`,
    );
    socket.write(sent);
    return { socket, answer, text: () => text };
  }
  const errorCode = (answer: string) => /"code":"([a-z_]+)"/.exec(answer)?.[1];

  test('a large body past what is being received: 503 overloaded, Retry-After, connection closed; a client leaving mid-body releases its share', async () => {
    const router = await createRouter({
      port: 0,
      logger: false,
      maxReceivingBytes: 300_000,
      bodyLimit: 1 << 20,
    });
    const port = Number(new URL(await router.listen()).port);
    try {
      // A holds 200,000 bytes of a 250,000-byte body.
      const a = upload(port, 'content-length: 250000\r\n', bodyOf(250_000).subarray(0, 200_000));
      await new Promise((r) => setTimeout(r, 200));
      // B's 200,000 would take the total past 300,000.
      const b = upload(port, 'content-length: 200000\r\n', bodyOf(200_000));
      const refused = await b.answer;
      assert.match(refused, /^HTTP\/1\.1 503 /);
      assert.match(refused, /retry-after: 1/i);
      assert.equal(errorCode(refused), 'overloaded');
      assert.equal(a.text(), '', 'A is still being received');
      a.socket.destroy();
      // With A gone, a 290,000-byte body is received in full (and fails later, for want of workers).
      const c = upload(port, 'content-length: 290000\r\nconnection: close\r\n', bodyOf(290_000));
      assert.equal(errorCode(await c.answer), 'no_workers');
    } finally {
      await router.close();
    }
  });

  test('a chunked body refused as too large (413) releases its share; small bodies are not counted', async () => {
    const router = await createRouter({
      port: 0,
      logger: false,
      maxReceivingBytes: 300_000,
      bodyLimit: 200_000,
    });
    const port = Number(new URL(await router.listen()).port);
    try {
      const chunk = (b: Buffer) =>
        Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')]);
      // 260,000 bytes sent chunked, past the 200,000 body limit: 413, and the router stops reading.
      const tooLarge = upload(port, 'transfer-encoding: chunked\r\n', chunk(Buffer.alloc(260_000, 0x20)));
      await waitUntil(() => /^HTTP\/1\.1 413 /.test(tooLarge.text()), 'the 413');
      // Its share is released: 200,000 more bytes fit in the 300,000.
      const next = upload(port, 'content-length: 200000\r\nconnection: close\r\n', bodyOf(200_000));
      assert.equal(errorCode(await next.answer), 'no_workers');
      tooLarge.socket.destroy();
      // Bodies of 64 KiB or less with a content-length are not counted: 6 of them held at once
      // (384 KiB) are all received.
      const small = Array.from({ length: 6 }, () =>
        upload(port, 'content-length: 65536\r\nconnection: close\r\n', bodyOf(65_536).subarray(0, 60_000)),
      );
      await new Promise((r) => setTimeout(r, 200));
      for (const s of small) s.socket.write(bodyOf(65_536).subarray(60_000));
      for (const s of small) assert.equal(errorCode(await s.answer), 'no_workers');
    } finally {
      await router.close();
    }
  });
});
