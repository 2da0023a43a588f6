// parseJsonBytes must give exactly JSON.parse's value (key order and -0 included) or leave the
// body to JSON.parse; it must never accept a body JSON.parse rejects. A compact token-id array's
// text is kept for the generate payload, which must still be exactly JSON.stringify's bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeGenerateRequest, generatePayload } from '../src/router/execute/generate-payload.js';
import { NOT_PARSED, parseJsonBytes } from '../src/router/http/json-bytes.js';
import { idArrayText } from '../src/router/openai/token-id-text.js';
import { encodeJson } from '../src/tcp/index.js';

/** Checks one body against JSON.parse; returns whether parseJsonBytes read it itself. */
function check(body: Buffer | string): boolean {
  const buf = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  let expected: unknown;
  let valid = true;
  try {
    expected = JSON.parse(buf.toString('utf8'));
  } catch {
    valid = false;
  }
  const got = parseJsonBytes(buf);
  if (!valid) {
    assert.equal(got, NOT_PARSED, `accepted invalid JSON: ${JSON.stringify(buf.toString('utf8'))}`);
    return false;
  }
  if (got === NOT_PARSED) return false;
  assert.deepStrictEqual(got, expected, buf.toString('utf8'));
  assert.equal(JSON.stringify(got), JSON.stringify(expected)); // same key order
  return true;
}

test('parseJsonBytes reads a token-id completions body as JSON.parse does', () => {
  const prompt = Array.from({ length: 1024 }, (_, i) => (i * 7919) % 200_000);
  assert.ok(check(JSON.stringify({ model: 'mock-llm', prompt, max_tokens: 16 })));
  assert.ok(check(JSON.stringify({ model: 'm', prompt: [[1, 2], [3]], stop: ['\n'], n: 1 })));
});

test('parseJsonBytes reads every JSON value shape it handles exactly', () => {
  const handled = [
    '0',
    '-0',
    '[-0, 0, -1, 1]',
    '123456789012345',
    '-123456789012345',
    '1234567890123456',
    '12345678901234567890123',
    '[0.1, 1.5e-3, 1E400, -2.5E+10, 1e5, 0e0, 9007199254740993]',
    '"abc"',
    '""',
    '"quote \\" backslash \\\\ slash \\/ nl \\n tab \\t cr \\r bs \\b ff \\f"',
    '"héllo wörld 😀 ✓"',
    `"${'long text '.repeat(20)}"`,
    `"${'long text with é and \\n escapes, '.repeat(10)}"`,
    `"${'x'.repeat(40)}\\\\"`,
    'true',
    'false',
    'null',
    '[]',
    '{}',
    ' \t\r\n{ "a" : [ 1 , 2 , { "b" : null } ] , "c" : "d" } \n',
    '{"a":1,"a":2,"b":3}',
    '{"2":1,"1":2,"x":3}',
    '{"constructor":1}',
    '[[[[[[[[[[1]]]]]]]]]]',
    '[1,"a",true,false,null,{"k":[-1.5]},[]]',
    '[0,0,1,2147483647,2147483648,9999999999,12345678901,3,-4,5.5,[6,7,[8]],9]',
    '[[1,2],[3,[4,5]],6]',
  ];
  for (const body of handled) assert.ok(check(body), `not handled: ${body}`);
  // Invalid UTF-8 inside a string: the same replacement characters as decoding the whole body.
  assert.ok(check(Buffer.from([0x22, 0x61, 0xff, 0xc3, 0x22])));
  assert.ok(check(Buffer.concat([Buffer.from(`"${'y'.repeat(40)}`), Buffer.from([0xe2, 0x82, 0x22])])));
});

test('parseJsonBytes leaves to JSON.parse what it does not handle, and rejects nothing valid', () => {
  const left = [
    '"\\u0041"',
    '{"__proto__":{"x":1}}',
    `${'['.repeat(300)}${']'.repeat(300)}`,
    '\ufeff{"a":1}',
  ];
  for (const body of left) {
    assert.equal(parseJsonBytes(Buffer.from(body)), NOT_PARSED, body);
    check(body);
  }
});

test('parseJsonBytes never accepts invalid JSON', () => {
  const invalid = [
    '',
    ' ',
    '[1,]',
    '{"a":1,}',
    '[01]',
    '-',
    '1.',
    '.5',
    '1e',
    '1e+',
    '[1 2]',
    '{"a" 1}',
    '{a:1}',
    '"unterminated',
    `"${'z'.repeat(50)}`,
    '"raw\ttab"',
    `"${'w'.repeat(50)}\n"`,
    '"bad \\x escape"',
    'tru',
    'nul',
    '[1]]',
    '{"a":1}x',
    '[',
    '{',
    "'single'",
    'NaN',
    'Infinity',
    '+1',
    '--1',
  ];
  for (const body of invalid) assert.equal(check(body), false, body);
});

test('parseJsonBytes agrees with JSON.parse on random and mutated bodies', () => {
  let seed = 12345;
  const rand = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const space = () => pick(['', '', '', ' ', '\n', '\t ', '\r\n  ']);
  const strings = [
    '',
    'a',
    'mock-llm',
    'é',
    '😀',
    '"',
    '\\',
    '/',
    '\n',
    '\t',
    'x'.repeat(45),
    'ab\ncd'.repeat(9),
  ];
  const value = (depth: number): string => {
    const r = rand();
    if (depth > 3 || r < 0.35) {
      return pick([
        () => String(Math.floor(rand() * 300_000)),
        () => String(-Math.floor(rand() * 1000)),
        () => String((rand() - 0.5) * 1e6),
        () => JSON.stringify(pick(strings)),
        () => pick(['true', 'false', 'null', '-0', '1e21', '5E-7']),
      ])();
    }
    if (r < 0.65) {
      const n = Math.floor(rand() * 5);
      return `[${space()}${Array.from({ length: n }, () => `${value(depth + 1)}${space()}`).join(`,${space()}`)}]`;
    }
    const n = Math.floor(rand() * 4);
    const members = Array.from(
      { length: n },
      () =>
        `${JSON.stringify(pick(['a', 'b', 'model', 'prompt', '1', 'é']))}${space()}:${space()}${value(depth + 1)}`,
    );
    return `{${space()}${members.join(`,${space()}`)}${space()}}`;
  };
  const mutations = [
    '',
    ',',
    ']',
    '}',
    '"',
    '\\',
    '0',
    '-',
    '.',
    'e',
    ' ',
    '\u0001',
    '\u00ff',
    ':',
    '[',
    '{',
  ];
  let handled = 0;
  for (let i = 0; i < 3000; i++) {
    const body = `${space()}${value(0)}${space()}`;
    if (check(body)) handled++;
    // The same body with one byte replaced, inserted or dropped.
    const buf = Buffer.from(body);
    const at = Math.floor(rand() * buf.length);
    const ins = Buffer.from(pick(mutations));
    const kind = rand();
    const mutated =
      kind < 0.33
        ? Buffer.concat([buf.subarray(0, at), ins, buf.subarray(at + 1)])
        : kind < 0.66
          ? Buffer.concat([buf.subarray(0, at), ins, buf.subarray(at)])
          : Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1)]);
    check(mutated);
  }
  assert.ok(handled > 2500, `handled only ${handled} of 3000 valid bodies`);
});

test('a compact token-id array keeps its text, which the generate payload copies as sent', () => {
  const ids = Array.from({ length: 40 }, (_, i) => (i * 104_729) % 300_000);
  const compact = parseJsonBytes(Buffer.from(JSON.stringify({ model: 'm', prompt: ids }))) as {
    prompt: number[];
  };
  assert.equal(Buffer.from(idArrayText(compact.prompt)!).toString(), JSON.stringify(ids));
  const body = { request_id: 'r', token_ids: compact.prompt, max_tokens: 4 };
  assert.equal(encodeGenerateRequest(body).toString(), encodeJson(body).toString());
  // Not the canonical text (spaces), or too short to be worth it: nothing kept.
  const spaced = parseJsonBytes(Buffer.from(`{"prompt":[${ids.join(', ')}]}`)) as { prompt: number[] };
  assert.deepEqual(spaced.prompt, ids);
  assert.equal(idArrayText(spaced.prompt), undefined);
  const short = parseJsonBytes(Buffer.from('[1,2,3]')) as number[];
  assert.equal(idArrayText(short), undefined);
  // An array changed after parsing is encoded afresh.
  const changed = parseJsonBytes(Buffer.from(JSON.stringify(ids))) as number[];
  changed.push(7);
  assert.equal(idArrayText(changed), undefined);
  const changedBody = { ...body, token_ids: changed };
  assert.equal(encodeGenerateRequest(changedBody).toString(), encodeJson(changedBody).toString());
});

test('generatePayload writes a compact prompt straight into a frame buffer, at any offset', () => {
  const ids = Array.from({ length: 32 }, (_, i) => i * 7);
  const parsed = parseJsonBytes(Buffer.from(JSON.stringify(ids))) as number[];
  const body = { request_id: 'req-é', token_ids: parsed, max_tokens: 3, stop_token_ids: [2] };
  const payload = generatePayload(body);
  assert.ok(!Buffer.isBuffer(payload));
  const buf = Buffer.alloc(payload.byteLength + 10, 0xee);
  payload.writeInto(buf, 5);
  assert.equal(buf.subarray(5, 5 + payload.byteLength).toString(), encodeJson(body).toString());
  assert.deepEqual([...buf.subarray(0, 5), ...buf.subarray(5 + payload.byteLength)], Array(10).fill(0xee));
  // Ids without a recorded text: a Buffer of the same JSON.
  const plain = generatePayload({ ...body, token_ids: [...ids] });
  assert.ok(Buffer.isBuffer(plain));
  assert.equal(plain.toString(), encodeJson({ ...body, token_ids: ids }).toString());
});
