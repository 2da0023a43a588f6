// The generate payload encoder must produce exactly the JSON that JSON.stringify gives, for
// every id shape (digit-count borders, zero) and fall back to JSON for ids it does not write.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeGenerateRequest, generatePayload } from '../src/router/execute/generate-payload.js';
import { parseJsonBytes } from '../src/router/http/json-bytes.js';
import { idArrayText } from '../src/router/openai/token-id-text.js';
import { encodeJson } from '../src/tcp/index.js';

test('encodeGenerateRequest gives the bytes of JSON.stringify at every digit-count border', () => {
  const ids = [0, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 99_999, 100_000, 199_997, 999_999];
  for (let p = 1e6; p <= 1e9; p *= 10) ids.push(p - 1, p);
  ids.push(2 ** 31 - 1);
  const body = { request_id: 'é"\\\u0001id', token_ids: ids, max_tokens: 16, stop_token_ids: [1, 2] };
  assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
});

test('encodeGenerateRequest keeps every other field and handles an empty prompt', () => {
  const body = {
    request_id: 'r',
    token_ids: [],
    max_tokens: 1,
    first_token: 7,
    await_kv_handoff: { timeout_ms: 5 },
  };
  assert.deepEqual(JSON.parse(encodeGenerateRequest(body).toString()), body);
  assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
});

test('encodeGenerateRequest falls back to JSON for ids it does not write as digits', () => {
  for (const odd of [1.5, -1, 2 ** 31, Number.NaN]) {
    const body = { request_id: 'r', token_ids: [1, odd], max_tokens: 1 };
    assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
  }
});

test('encodeGenerateRequest gives the same bytes for repeated and widely spread ids', () => {
  let seed = 7;
  const next = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed;
  };
  for (let round = 0; round < 50; round++) {
    const ids = Array.from({ length: 64 }, () => (next() % 3 === 0 ? next() % 2 ** 31 : next() % 300_000));
    ids.push(...ids.slice(0, 16));
    const body = { request_id: `r${round}`, token_ids: ids, max_tokens: 16 };
    assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
    assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
  }
});

test('the client text of the ids serves one payload; a retry writes the same bytes as digits', () => {
  // Kept past the first payload, the text (a view into the whole request body) would stay beside
  // the array of ids for as long as the request waits for its worker: twice the prompt held.
  const ids = Array.from({ length: 64 }, (_, i) => (i * 7919) % 50_000);
  const parsed = parseJsonBytes(Buffer.from(JSON.stringify({ prompt: ids }))) as { prompt: number[] };
  const body = { request_id: 'r', token_ids: parsed.prompt, max_tokens: 2 };
  const first = generatePayload(body);
  assert.ok(!Buffer.isBuffer(first), 'the first payload copies the client text');
  assert.equal(idArrayText(parsed.prompt), undefined, 'the text is not kept after the first payload');
  const retry = generatePayload(body);
  assert.ok(Buffer.isBuffer(retry));
  const buf = Buffer.alloc(first.byteLength);
  first.writeInto(buf, 0);
  assert.equal(buf.toString(), encodeJson(body).toString());
  assert.equal(retry.toString(), encodeJson(body).toString());
});
