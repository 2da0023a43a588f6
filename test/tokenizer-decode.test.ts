// Detokenization: whole-sequence and streaming, with multi-byte characters split across tokens,
// and no state shared between calls (gpt-tokenizer's own decode() leaks partial bytes into the
// next call; ours must not).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvrouteError } from '../src/errors.js';
import { TokenStreamDecoder } from '../src/router/tokenizer/index.js';
import { decodeTokens } from '../src/router/tokenizer/stream-decoder.js';
import { encodeText } from '../src/router/tokenizer/vocabulary.js';

const TEXT = 'party 🎉 crab 🦀 日本語 ünïcödé 👩‍👩‍👧 done';

test('streaming one token at a time emits only whole characters and reassembles the text', () => {
  const ids = encodeText(TEXT);
  const decoder = new TokenStreamDecoder();
  const pieces = ids.map((id) => decoder.push(id));
  pieces.push(decoder.flush());
  assert.equal(pieces.join(''), TEXT);
  for (const p of pieces)
    assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} holds a broken character`);
  // The text really does split characters across tokens (else this test proves nothing).
  assert.ok(
    ids.some((id) => decodeTokens([id]).includes('\uFFFD')),
    'expected at least one token that is part of a character',
  );
});

test('a stream cut inside a character flushes U+FFFD, and nothing leaks into the next decode', () => {
  const ids = encodeText('🎉');
  const partial = ids.slice(0, -1);
  assert.ok(partial.length > 0, '🎉 is expected to span more than one token');
  const decoder = new TokenStreamDecoder();
  assert.equal(partial.map((id) => decoder.push(id)).join(''), '');
  assert.equal(decoder.flush(), '\uFFFD');
  // Independent calls: the tail alone decodes to a replacement, not to the emoji.
  assert.equal(decodeTokens(partial), '\uFFFD');
  assert.equal(decodeTokens(ids.slice(-1)), '\uFFFD');
  assert.equal(decodeTokens(ids), '🎉');
});

test('interleaved streams do not share bytes', () => {
  const a = encodeText('🎉🎉🎉');
  const b = encodeText('日本語日本語');
  const da = new TokenStreamDecoder();
  const db = new TokenStreamDecoder();
  let outA = '';
  let outB = '';
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i < a.length) outA += da.push(a[i]!);
    if (i < b.length) outB += db.push(b[i]!);
  }
  assert.equal(outA + da.flush(), '🎉🎉🎉');
  assert.equal(outB + db.flush(), '日本語日本語');
});

test('special tokens decode to their text; ids outside the vocabulary are invalid_request', () => {
  assert.equal(decodeTokens([199999]), '<|endoftext|>');
  for (const bad of [199998, 200007, -1, 1e9]) {
    assert.throws(
      () => decodeTokens([bad]),
      (err) => err instanceof KvrouteError && err.code === 'invalid_request',
    );
  }
});

test('U+FEFF (zero-width no-break space, the BOM) inside text survives decoding, whole and streamed', () => {
  for (const text of ['\uFEFF', 'a\uFEFFb', '日本\uFEFF語 🎉\uFEFF']) {
    const ids = encodeText(text);
    assert.equal(decodeTokens(ids), text);
    const decoder = new TokenStreamDecoder();
    assert.equal(ids.map((id) => decoder.push(id)).join('') + decoder.flush(), text);
  }
});
