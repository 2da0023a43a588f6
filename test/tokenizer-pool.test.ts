// The Tokenizer's I/O shell: inline vs pooled encoding (same ids either way), the bounded queue,
// and close(); and encoding's ids themselves (long runs sliced, a token limit). The pool runs the
// compiled worker from dist/ (npm test builds first).

import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { context, createContextKey, ROOT_CONTEXT } from '@opentelemetry/api';
import bpeRanks from 'gpt-tokenizer/bpeRanks/o200k_base';
import { encode as referenceEncode } from 'gpt-tokenizer/encoding/o200k_base';
import { isKvrouteError } from '../src/errors.js';
import { resolveWorkerFile, Tokenizer } from '../src/router/tokenizer/index.js';
import {
  encodeText,
  LONG_RUN,
  longRuns,
  MAX_RUN_CHARS,
  MAX_TOKEN_BYTES,
  minTokenCount,
} from '../src/router/tokenizer/vocabulary.js';
import { registerGlobalContext } from '../src/telemetry/index.js';
import { seededRng } from '../src/util/seeded-rng.js';
import { waitUntil } from './helpers/fleet.js';

const SHORT = 'Héllo wörld: 日本語のテキスト, emoji 🎉🦀, code `x => x + 1`, and <|endoftext|> as text.';
const LONG = `${SHORT}\n`.repeat(200);

test('round trip text -> ids -> text, inline, matching the reference encoder', async () => {
  const t = new Tokenizer({ inlineMaxChars: 1000 });
  try {
    const ids = await t.encode(SHORT);
    assert.ok(ids instanceof Uint32Array);
    // Special-token text is ordinary text: same as the reference with special tokens disallowed-off.
    assert.deepEqual([...ids], referenceEncode(SHORT, { disallowedSpecial: new Set() }));
    assert.ok(ids.every((id) => id < t.textTokenCount));
    assert.equal(t.decode(ids), SHORT);
    assert.deepEqual(t.stats, { inline: 1, pooled: 0, rejected: 0, cancelled: 0 });
    assert.equal(t.threads, 0, 'no thread starts for inline work');
    assert.equal(t.vocabSize, 200006);
  } finally {
    await t.close();
  }
});

test('a long prompt goes through the pool and gives the same ids as inline', async () => {
  const pooled = new Tokenizer({ inlineMaxChars: 1000, maxThreads: 1 });
  const inline = new Tokenizer({ inlineMaxChars: LONG.length });
  try {
    const viaPool = await pooled.encode(LONG);
    const viaInline = await inline.encode(LONG);
    assert.equal(pooled.stats.pooled, 1);
    assert.equal(pooled.stats.inline, 0);
    assert.equal(inline.stats.inline, 1);
    assert.equal(pooled.threads, 1);
    assert.deepEqual(viaPool, viaInline);
    assert.equal(pooled.decode(viaPool), LONG);
  } finally {
    await pooled.close();
    await inline.close();
  }
});

test('past maxThreads + maxQueue pending long prompts, encode rejects with overloaded', async () => {
  const t = new Tokenizer({ inlineMaxChars: 10, maxThreads: 1, maxQueue: 1 });
  try {
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => t.encode(LONG)));
    const fulfilled = results.filter((r) => r.status === 'fulfilled');
    const rejected = results.filter((r) => r.status === 'rejected');
    assert.equal(fulfilled.length, 2);
    assert.equal(rejected.length, 3);
    for (const r of rejected) {
      assert.ok(isKvrouteError(r.reason));
      assert.equal(r.reason.code, 'overloaded');
      assert.equal(r.reason.status, 503);
    }
    assert.deepEqual(t.stats, { inline: 0, pooled: 2, rejected: 3, cancelled: 0 });
    // The bound frees up as work completes: the next one is accepted again.
    assert.equal((await t.encode(LONG)).length, fulfilled[0]!.value.length);
    // Short prompts never touch the pool, so they pass whatever the queue holds.
    assert.ok((await t.encode('hi')).length > 0);
  } finally {
    await t.close();
  }
});

test('close() ends the threads; later encodes fail with shutting_down', async () => {
  const t = new Tokenizer({ inlineMaxChars: 10, maxThreads: 1 });
  await t.warmup();
  assert.equal(t.threads, 1);
  await t.close();
  assert.equal(t.threads, 0);
  await t.close(); // idempotent
  await assert.rejects(t.encode(LONG), (err) => isKvrouteError(err) && err.code === 'shutting_down');
  await assert.rejects(t.encode('hi'), (err) => isKvrouteError(err) && err.code === 'shutting_down');
});

test('a long prompt whose caller left while it waited for a thread is dropped; the running one finishes', async () => {
  const t = new Tokenizer({ inlineMaxChars: 10, maxThreads: 1, maxQueue: 8 });
  try {
    await t.warmup();
    const huge = LONG.repeat(40); // ~700 K characters: the thread is busy for a good while
    let runningDone = false;
    const running = t.encode(huge).then((ids) => {
      runningDone = true;
      return ids;
    });
    const client = new AbortController();
    const waiting = t.encode(LONG, client.signal);
    const gone = new Error('client gone');
    client.abort(gone);
    await assert.rejects(waiting, (err) => err === gone);
    assert.equal(runningDone, false, 'dropped at once, not after the running encode');
    assert.equal(t.decode(await running), huge);
    const late = new AbortController();
    late.abort(gone);
    await assert.rejects(t.encode(LONG, late.signal), (err) => err === gone);
    assert.deepEqual(t.stats, { inline: 0, pooled: 2, rejected: 0, cancelled: 2 });
    // The slot freed by the dropped one is not lost: the next encode runs.
    assert.ok((await t.encode(LONG)).length > 0);
  } finally {
    await t.close();
  }
});

test('close() with long prompts running and waiting rejects each with shutting_down', async () => {
  const t = new Tokenizer({ inlineMaxChars: 10, maxThreads: 1, maxQueue: 8 });
  await t.warmup();
  const pending = Promise.allSettled(Array.from({ length: 4 }, () => t.encode(LONG.repeat(20))));
  await t.close();
  for (const r of await pending) {
    assert.equal(r.status, 'rejected');
    assert.ok(isKvrouteError(r.reason) && r.reason.code === 'shutting_down', String(r.reason));
  }
});

test('the pool thread starts outside the context of the request that needed it; the request keeps its own', async () => {
  registerGlobalContext();
  const marker = createContextKey('kvroute test request');
  const seenByThreads: unknown[] = [];
  // What context each worker thread is created in (its handle would keep that context alive).
  const hook = createHook({
    init(_id, type) {
      if (type === 'WORKER') seenByThreads.push(context.active().getValue(marker));
    },
  }).enable();
  const t = new Tokenizer({ inlineMaxChars: 1000, maxThreads: 1 });
  try {
    const after = await context.with(ROOT_CONTEXT.setValue(marker, 'a request'), async () => {
      await t.encode(LONG);
      return context.active().getValue(marker);
    });
    assert.equal(after, 'a request');
  } finally {
    hook.disable();
    await t.close();
  }
  assert.equal(seenByThreads.length, 1);
  assert.deepEqual(seenByThreads, [undefined]);
});

test('a worker script that does not load fails warmup and encode with its error, no crash, no hang', async () => {
  // A broken build: the worker exists but one of its imports does not.
  const dir = mkdtempSync(join(tmpdir(), 'kvroute-tokenizer-'));
  const file = join(dir, 'worker.mjs');
  writeFileSync(file, "import './vocabulary-missing.js';\nexport default (text) => text;\n");
  const broken = (err: unknown) =>
    isKvrouteError(err) && err.code === 'internal_error' && err.message.includes('vocabulary-missing');
  const t = new Tokenizer({ inlineMaxChars: 10, maxThreads: 1, workerFile: pathToFileURL(file).href });
  try {
    await assert.rejects(t.warmup(), broken);
    await assert.rejects(t.encode(LONG), broken);
    assert.ok((await t.encode('hi')).length > 0, 'short prompts do not need the pool');
  } finally {
    await t.close();
  }
  // Two threads loading at once: the encodes fail when the last of them has failed.
  const two = new Tokenizer({ inlineMaxChars: 10, maxThreads: 2, workerFile: pathToFileURL(file).href });
  try {
    const results = await Promise.allSettled([two.encode(LONG), two.encode(`${LONG}!`)]);
    assert.ok(
      results.every((r) => r.status === 'rejected' && broken(r.reason)),
      JSON.stringify(results),
    );
  } finally {
    await two.close();
  }
});

test('a thread that fails to load does not fail the encode running on a loaded thread; what waits runs there next', async () => {
  // The real worker behind a test one that fails to load, when the test says `fail`, once a marker
  // file exists (as a dist/ being replaced under a running router would), and whose `hold:`
  // encodes wait for the test's `release`: the first thread loads and holds an encode while a
  // second one, started for the next encode, fails to load.
  const dir = mkdtempSync(join(tmpdir(), 'kvroute-tokenizer-'));
  const file = join(dir, 'worker.mjs');
  const marker = join(dir, 'fail-to-load');
  writeFileSync(
    file,
    `import { existsSync } from 'node:fs';
import encode from ${JSON.stringify(resolveWorkerFile())};
const heard = (what) => new Promise((resolve) => {
  const channel = new BroadcastChannel('kvroute-tokenizer-test');
  channel.onmessage = (event) => { if (event.data === what) { channel.close(); resolve(); } };
});
const say = (what) => {
  const channel = new BroadcastChannel('kvroute-tokenizer-test');
  channel.postMessage(what);
  channel.close();
};
if (existsSync(${JSON.stringify(marker)})) {
  const failed = heard('fail');
  say('loading');
  await failed;
  throw new Error('worker file replaced');
}
export default async function ({ text, maxTokens }) {
  if (!text.startsWith('hold:')) return encode({ text, maxTokens });
  const released = heard('release');
  say('holding');
  await released;
  return encode({ text: text.slice(5), maxTokens });
}
`,
  );
  const t = new Tokenizer({ inlineMaxChars: 0, maxThreads: 2, workerFile: pathToFileURL(file).href });
  const control = new BroadcastChannel('kvroute-tokenizer-test');
  const said = new Set<unknown>();
  control.onmessage = (event) => said.add(event.data);
  try {
    const held = t.encode(`hold:${LONG}`);
    await waitUntil(() => said.has('holding'), 'the first thread holding an encode');
    writeFileSync(marker, '');
    // No free thread: piscina starts a second one for it, which waits for the word to fail.
    const next = t.encode(`${SHORT}${LONG}`);
    await waitUntil(() => said.has('loading'), 'a second thread loading');
    assert.equal(t.threads, 2);
    control.postMessage('fail');
    await waitUntil(() => t.threads === 1, 'the second thread failed and is gone');
    control.postMessage('release');
    assert.deepEqual([...(await held)], encodeText(LONG), 'the encode on the loaded thread completes');
    assert.deepEqual([...(await next)], encodeText(`${SHORT}${LONG}`), 'the waiting one runs on it next');
  } finally {
    control.close();
    await t.close();
  }
});

test('a long run of one character class (or of line breaks and slashes) encodes in slices, the same inline and pooled', {
  timeout: 60_000,
}, async () => {
  // BPE merges inside one piece in quadratic time: 210 K CJK characters with no punctuation took
  // over a minute per encode before (a body well within the 4 MiB limit); sliced, under a second.
  const runs = [
    '日本語'.repeat(70_000),
    '🎉'.repeat(50_000),
    `e${'\u0301'.repeat(100_000)}`,
    `x${' '.repeat(100_000)}y`,
    // One o200k piece (punctuation, then a tail of line breaks and slashes) that is neither all
    // whitespace nor all not: 160 K characters of it took 9.9 s before it was sliced too.
    `!${'/\n'.repeat(200_000)}`,
  ];
  const pooled = new Tokenizer({ inlineMaxChars: 0, maxThreads: 1 });
  const inline = new Tokenizer({ inlineMaxChars: Number.MAX_SAFE_INTEGER });
  try {
    for (const text of runs) {
      const viaPool = await pooled.encode(text);
      assert.deepEqual(viaPool, await inline.encode(text));
      assert.equal(pooled.decode(viaPool), text, 'slices never split a surrogate pair');
    }
  } finally {
    await pooled.close();
    await inline.close();
  }
});

test('longRuns finds exactly what LONG_RUN finds over the whole text (seeded random texts)', () => {
  // Pieces of every class and their overlaps: letters, marks (letters' class and punctuation's),
  // CJK, digits, punctuation, a surrogate-pair symbol, spaces, line breaks and slashes.
  const pieces = ['a', 'Z', 'é', '\u0301', '語', '7', '!', '/', '🎉', ' ', '\t', '\n', '\r', '/\n', '。'];
  const random = seededRng(20261125);
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)]!;
  const whole = (text: string) => [...text.matchAll(LONG_RUN)].map((m) => [m.index, m[0].length]);
  let withRuns = 0;
  for (let i = 0; i < 400; i++) {
    let text = '';
    const stretches = 1 + Math.floor(random() * 8);
    for (let k = 0; k < stretches; k++) {
      // A run of one or two pieces, often near the bound, then a few random characters.
      const a = pick(pieces);
      const b = random() < 0.5 ? a : pick(pieces);
      const n = Math.floor(random() * 2.2 * MAX_RUN_CHARS);
      for (let j = 0; j < n; j++) text += random() < 0.5 ? a : b;
      for (let j = Math.floor(random() * 4); j > 0; j--) text += pick(pieces);
    }
    const expected = whole(text);
    if (expected.length > 0) withRuns++;
    assert.deepEqual(longRuns(text), expected, `seeded text ${i}`);
  }
  assert.ok(withRuns > 100, `${withRuns} of the texts had long runs`);
  const cjk = '東京都の天気は晴れで、気温は二十度くらいになるでしょう。'.repeat(400);
  assert.deepEqual(longRuns(cjk), []);
  assert.deepEqual(
    longRuns(`!${'\u0301'.repeat(300)}${'a'.repeat(300)}`),
    whole(`!${'\u0301'.repeat(300)}${'a'.repeat(300)}`),
  );
});

test('text without a long run of one class keeps o200k_base ids, a 300-character URL included', async () => {
  const url = `https://example.com/${'abcdefghi/'.repeat(30)}?q=${'0123456789'.repeat(5)}`;
  const text = `${SHORT} see ${url} and ${'word '.repeat(100)}`;
  const t = new Tokenizer({ inlineMaxChars: Number.MAX_SAFE_INTEGER });
  try {
    assert.deepEqual([...(await t.encode(text))], referenceEncode(text, { disallowedSpecial: new Set() }));
  } finally {
    await t.close();
  }
});

test('a burst of ordinary chat-sized prompts (2,000 characters) is encoded inline, none refused', async () => {
  // ~500 tokens, a common prompt. Sent to the pool, 200 at once filled its bounded queue and most
  // were refused with 503 overloaded, though encoding each costs less than the hop itself.
  const prompt = `${SHORT} ${'the model reads the request and answers it. '.repeat(45)}`.slice(0, 2000);
  const t = new Tokenizer({ maxThreads: 1 });
  try {
    const results = await Promise.allSettled(Array.from({ length: 200 }, () => t.encode(prompt)));
    assert.equal(results.filter((r) => r.status === 'rejected').length, 0);
    assert.deepEqual(t.stats, { inline: 200, pooled: 0, rejected: 0, cancelled: 0 });
  } finally {
    await t.close();
  }
});

test('lone surrogates, NUL and combining marks give the same ids inline and pooled', async () => {
  const texts = [
    '\uD800',
    `a\uDC00b${SHORT}`,
    `🎉`.slice(0, 1) + LONG,
    `x\u0000y${LONG}`,
    `e\u0301\u0302 ${LONG}`,
  ];
  const pooled = new Tokenizer({ inlineMaxChars: 0, maxThreads: 1 });
  const inline = new Tokenizer({ inlineMaxChars: Number.MAX_SAFE_INTEGER });
  try {
    for (const text of texts) assert.deepEqual(await pooled.encode(text), await inline.encode(text));
    // UTF-8 cannot hold a lone surrogate: it encodes as U+FFFD does.
    assert.deepEqual(await inline.encode('a\uDC00b'), await inline.encode('a\uFFFDb'));
    assert.equal(inline.decode(await pooled.encode('x\u0000y')), 'x\u0000y');
  } finally {
    await pooled.close();
    await inline.close();
  }
});

test('many long prompts at once add at most one listener per thread to the shared failure signal: no leak warning', async () => {
  // Every encode used to go to piscina at once with the one thread-failure signal, so more than 10
  // in flight printed MaxListenersExceededWarning on the router's stderr (seen in a fleet soak).
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
  process.on('warning', onWarning);
  const tokenizer = new Tokenizer({ maxThreads: 2, maxQueue: 64 });
  try {
    await tokenizer.warmup();
    const text = 'hello world router cache '.repeat(200);
    const results = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) => tokenizer.encode(`${text}${i}`)),
    );
    assert.ok(results.every((r) => r.status === 'fulfilled'));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(warnings, []);
  } finally {
    process.off('warning', onWarning);
    await tokenizer.close();
  }
});

/** Texts through every path of encodeText: plain, long runs sliced (at the start, middle, end). */
const LIMITED_TEXTS = [
  SHORT,
  LONG,
  '日本語'.repeat(2_000),
  `${SHORT}${'🎉'.repeat(1_000)}${LONG}`,
  `${LONG}${' '.repeat(700)}x${'-'.repeat(600)}`,
  `a\uDC00b${'e\u0301'.repeat(400)}`,
];

test('with a token limit, encodeText stops one token past it: a prefix of the full ids, or all of them', () => {
  for (const text of LIMITED_TEXTS) {
    const full = encodeText(text);
    const limits = [1, 2, 7, 100, 257, 1_000, full.length - 1, full.length, full.length + 1, 3 * text.length];
    for (const limit of limits) {
      const label = `${JSON.stringify(text.slice(0, 12))}… (${full.length} tokens), limit ${limit}`;
      const limited = encodeText(text, limit);
      if (full.length <= limit) assert.deepEqual(limited, full, `${label}: within the limit, the same ids`);
      else assert.deepEqual(limited, full.slice(0, limit + 1), `${label}: the first limit + 1 ids`);
    }
  }
});

test('a pooled encode with a token limit moves back the first limit + 1 ids, or all of them', async () => {
  const pooled = new Tokenizer({ inlineMaxChars: 0, maxThreads: 1 });
  try {
    const text = `${LONG}${'日本語'.repeat(2_000)}`.repeat(4);
    const full = encodeText(text);
    const cut = await pooled.encode(text, undefined, 1_000);
    assert.ok(cut instanceof Uint32Array);
    assert.deepEqual([...cut], full.slice(0, 1_001));
    assert.deepEqual([...(await pooled.encode(text, undefined, full.length))], full);
    assert.deepEqual(pooled.stats, { inline: 0, pooled: 2, rejected: 0, cancelled: 0 });
  } finally {
    await pooled.close();
  }
});

test('MAX_TOKEN_BYTES is the longest token of the vocabulary, in UTF-8 bytes', () => {
  const utf8 = new TextEncoder();
  let longest = 0;
  for (const rank of bpeRanks) {
    const bytes = typeof rank === 'string' ? utf8.encode(rank).length : rank.length;
    longest = Math.max(longest, bytes);
  }
  assert.equal(MAX_TOKEN_BYTES, longest);
});

test('minTokenCount never exceeds the count, and refusing by it or by the limited encode agrees with the full count (seeded texts around the limit)', () => {
  // Runs of spaces make the longest tokens (128 spaces is one), so texts of them sit right at the
  // bound; the other pieces cover 1-4 UTF-8 bytes per code unit and lone surrogates.
  const pieces = [' ', 'the ', 'cache', '語', '🎉', 'é', '\uDC00', '\n', '!', '7'];
  const random = seededRng(20261126);
  const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)]!;
  let atTheBound = 0;
  for (let i = 0; i < 300; i++) {
    let text = '';
    const stretches = 1 + Math.floor(random() * 6);
    for (let k = 0; k < stretches; k++) {
      const piece = random() < 0.5 ? ' ' : pick(pieces);
      text += piece.repeat(Math.floor(random() * 3 * MAX_RUN_CHARS));
    }
    if (text.length === 0) continue;
    const full = encodeText(text).length;
    const bound = minTokenCount(text);
    assert.ok(bound <= full, `seeded text ${i}: bound ${bound} > count ${full}`);
    if (bound === full) atTheBound++;
    for (const limit of new Set([bound - 2, bound - 1, bound, bound + 1, full - 1, full, full + 1])) {
      if (limit < 1) continue;
      // What the router does: refuse by the bound, else encode up to one token past the limit.
      const refused = bound > limit || encodeText(text, limit).length > limit;
      assert.equal(refused, full > limit, `seeded text ${i} (${full} tokens), limit ${limit}`);
    }
  }
  assert.ok(atTheBound > 20, `${atTheBound} texts' counts equal the bound`);
  assert.equal(minTokenCount(' '.repeat(1280)), encodeText(' '.repeat(1280)).length);
});
