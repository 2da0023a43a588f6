// The respond stage's stop sequences (StreamTally, pure): the output ends right before the first
// stop sequence, finish_reason `stop`; text that might be the start of one is held back until the
// next chunk tells, so a sequence split over chunks is never half sent; a worker's finish releases
// what is held. Tokens are the mock's single-word tokens, decoded by the router's own decoder.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WORD_TOKEN_IDS } from '../src/engine/token-sampler.js';
import type { GenerateChunk } from '../src/protocols/worker-plane.js';
import { StreamTally } from '../src/router/pipeline/respond.js';
import { TokenStreamDecoder } from '../src/router/tokenizer/index.js';
import { decodeTokens } from '../src/router/tokenizer/stream-decoder.js';

const [THE, OF, AND] = WORD_TOKEN_IDS as [number, number, number];
const word = (id: number) => decodeTokens([id]);

function chunk(token_ids: number[], finish_reason: GenerateChunk['finish_reason'] = null): GenerateChunk {
  return { token_ids, finish_reason };
}

/** The text each chunk sends, and the tally after the last one. */
function run(stops: string[], chunks: GenerateChunk[]): { sent: string[]; tally: StreamTally } {
  const tally = new StreamTally(3, new TokenStreamDecoder(), stops);
  const sent: string[] = [];
  for (const c of chunks) sent.push(tally.add(c));
  return { sent, tally };
}

test('the mock words decode as expected (the cases below rely on them)', () => {
  assert.deepEqual([word(THE), word(OF), word(AND)], [' the', ' of', ' and']);
});

test('no stop sequences: each chunk sends its text as before', () => {
  const { sent, tally } = run([], [chunk([THE, OF]), chunk([AND], 'length')]);
  assert.deepEqual(sent, [' the of', ' and']);
  assert.equal(tally.finishReason, 'length');
  assert.equal(tally.stoppedBySequence, false);
});

test('a stop sequence inside a chunk ends the output before it; later chunks send nothing', () => {
  const { sent, tally } = run([' of'], [chunk([THE, OF, AND]), chunk([THE], 'length')]);
  assert.deepEqual(sent, [' the', '']);
  assert.equal(tally.finishReason, 'stop');
  assert.equal(tally.stoppedBySequence, true);
  assert.equal(tally.completionTokens, 3, 'tokens after the stop are not counted once stopped');
});

test('a stop sequence split over two chunks: its first part is held back, never sent', () => {
  const { sent, tally } = run(['e o'], [chunk([THE]), chunk([OF]), chunk([AND], 'length')]);
  assert.deepEqual(sent, [' th', '', '']);
  assert.equal(tally.finishReason, 'stop');
});

test('held-back text is sent once the next chunk shows it starts no stop sequence', () => {
  const { sent, tally } = run(['e x'], [chunk([THE]), chunk([OF]), chunk([AND], 'length')]);
  assert.deepEqual(sent, [' th', 'e of', ' and']);
  assert.equal(sent.join(''), ' the of and');
  assert.equal(tally.finishReason, 'length');
});

test("the worker's finish releases what is held back", () => {
  const { sent, tally } = run(['e x'], [chunk([THE], 'length')]);
  assert.deepEqual(sent, [' the']);
  assert.equal(tally.finishReason, 'length');
});

test('of several stop sequences, the one that starts first wins', () => {
  const { sent } = run([' and', 'f'], [chunk([THE, OF, AND], 'length')]);
  assert.deepEqual(sent, [' the o']);
});
