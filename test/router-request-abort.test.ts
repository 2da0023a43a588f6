// RequestAbort: a request's cancellation without an AbortController per request.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RequestAbort } from '../src/router/execute/request-abort.js';

test('RequestAbort: listeners hear the reason once, in order; unlisten stops one; the lazy signal follows', () => {
  const abort = new RequestAbort();
  const heard: string[] = [];
  const a = { onAbort: (r: unknown) => heard.push(`a:${String(r)}`) };
  const b = { onAbort: (r: unknown) => heard.push(`b:${String(r)}`) };
  const c = { onAbort: (r: unknown) => heard.push(`c:${String(r)}`) };
  abort.listen(a);
  abort.listen(b);
  abort.listen(c);
  abort.unlisten(b);
  const signal = abort.signal;
  assert.equal(signal.aborted, false);
  let signalled: unknown;
  signal.addEventListener('abort', () => {
    signalled = signal.reason;
    heard.push('signal');
  });
  abort.abort('gone');
  abort.abort('again');
  assert.deepEqual(heard, ['signal', 'a:gone', 'c:gone']);
  assert.equal(abort.aborted, true);
  assert.equal(abort.reason, 'gone');
  assert.equal(signalled, 'gone');
  // A listener added after the abort is not called; the signal made after it is aborted already.
  abort.listen(b);
  assert.deepEqual(heard, ['signal', 'a:gone', 'c:gone']);
});

test('RequestAbort: a signal made after the abort carries its reason; no reason gives an AbortError', () => {
  const late = new RequestAbort();
  late.abort('why');
  assert.equal(late.signal.aborted, true);
  assert.equal(late.signal.reason, 'why');
  const bare = new RequestAbort();
  bare.abort();
  assert.ok(bare.reason instanceof DOMException);
  assert.equal((bare.reason as DOMException).name, 'AbortError');
  assert.equal(bare.signal.reason, bare.reason);
});
