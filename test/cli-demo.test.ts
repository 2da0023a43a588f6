// `kvroute demo` as a newcomer runs it: one process that starts the router and 2 + 2 workers,
// serves the official OpenAI client on the disaggregated path, and stops every child on Ctrl-C.
// A terminal's Ctrl-C (SIGINT to the whole process group) lets an in-flight stream finish;
// Ctrl-\ (SIGQUIT) and a second signal while stopping kill everything at once; a port held by
// something that never answers ends the demo instead of hanging it.

import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Socket } from 'node:net';
import { after, test } from 'node:test';
import OpenAI from 'openai';
import { alive, CLI_MAIN, waitForWorkers, waitUntil } from './helpers/fleet.js';

/** POST /v1/workers for a stand-in worker (no process behind it), with the demo's token if given. */
function registerStandIn(url: string, fields: Record<string, unknown>, token?: string): Promise<Response> {
  return fetch(`${url}/v1/workers`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
    },
    body: JSON.stringify({ role: 'both', model: 'mock-llm', block_size: 16, kv_blocks: 1024, ...fields }),
  });
}

/** The demo's child processes (router and workers), by parent pid. */
function childrenOf(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)])
      .toString()
      .trim()
      .split('\n')
      .map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

interface Demo {
  child: ChildProcess;
  exited: Promise<[number | null, NodeJS.Signals | null]>;
  ready: Promise<string>;
  stdout: () => string;
  stderr: () => string;
}

/**
 * Starts `kvroute demo --port 0 ...args` as the leader of its own process group, as a shell runs
 * a foreground job, so `process.kill(-pid, 'SIGINT')` is what a terminal's Ctrl-C does. After the
 * test: the demo and any child it left are killed (its children run in groups of their own).
 */
function startDemo(args: readonly string[], env: NodeJS.ProcessEnv = {}): Demo {
  const child = spawn(process.execPath, [CLI_MAIN, 'demo', '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', ...env },
    detached: true,
  });
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const seen = new Set<number>();
  const remember = setInterval(() => {
    for (const pid of childrenOf(child.pid!)) seen.add(pid);
  }, 200);
  after(() => {
    clearInterval(remember);
    for (const pid of [...seen, ...childrenOf(child.pid!)]) if (alive(pid)) process.kill(pid, 'SIGKILL');
    child.kill('SIGKILL');
  });
  void exited.then(() => clearInterval(remember));
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err += s;
  });
  let out = '';
  const ready = new Promise<string>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      const m = /kvroute demo ready: (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    void exited.then(() => reject(new Error(`demo exited early:\n${out}\n${err}`)));
  });
  ready.catch(() => {}); // a test that expects an early exit never awaits it
  return { child, exited, ready, stdout: () => out, stderr: () => err };
}

test('demo serves the openai client through prefill and decode workers, and SIGINT stops every process', async () => {
  const demo = spawn(process.execPath, [CLI_MAIN, 'demo', '--port', '0', '--speedup', '20'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
  });
  after(() => demo.kill('SIGKILL'));
  const exited = once(demo, 'exit');
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    demo.stdout!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      const m = /kvroute demo ready: (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    void exited.then(() => reject(new Error(`demo exited early:\n${out}`)));
  });

  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const models = await client.models.list();
  assert.deepEqual(
    models.data.map((m) => m.id),
    ['mock-llm'],
  );
  // Long enough (> --max-local-prefill 512 tokens) to take the remote-prefill path.
  const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(80);
  const { data, response } = await client.completions
    .create({ model: 'mock-llm', prompt, max_tokens: 8 })
    .withResponse();
  assert.equal(data.usage?.completion_tokens, 8);
  const prefillWorker = response.headers.get('x-kvroute-prefill-worker');
  const decodeWorker = response.headers.get('x-kvroute-decode-worker');
  assert.ok(prefillWorker && decodeWorker, 'both legs are named in the response headers');
  assert.notEqual(prefillWorker, decodeWorker);

  // Every child the demo started, by the request-plane addresses the router lists.
  const listed = (await (await fetch(`${url}/v1/workers`)).json()) as { data: { role: string }[] };
  assert.deepEqual(listed.data.map((w) => w.role).sort(), ['decode', 'decode', 'prefill', 'prefill']);
  const childPids = (await import('node:child_process'))
    .execFileSync('pgrep', ['-P', String(demo.pid)])
    .toString()
    .trim()
    .split('\n')
    .map(Number);
  assert.equal(childPids.length, 5, 'router + 4 workers');

  demo.kill('SIGINT');
  const [code] = await exited;
  assert.equal(code, 0);
  for (const pid of childPids) assert.equal(alive(pid), false, `child ${pid} still running`);
});

/**
 * Starts a stream of `maxTokens` through the demo at `url`, sends Ctrl-C (SIGINT to the demo's
 * process group) once its first text arrives, and reads it to its end: its SSE `data:` events.
 */
async function streamThroughCtrlC(demo: Demo, url: string, maxTokens: number) {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'mock-llm',
      prompt: 'Tell me a long story',
      max_tokens: maxTokens,
      stream: true,
    }),
  });
  assert.equal(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  while (!text.includes('"text"')) text += (await reader.read()).value ?? '';
  process.kill(-demo.child.pid!, 'SIGINT');
  for (let r = await reader.read(); !r.done; r = await reader.read()) text += r.value;
  return text.split('\n\n').filter((e) => e.startsWith('data: '));
}

test('a terminal Ctrl-C (SIGINT to the process group) lets an in-flight stream finish, then exits 0', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1']);
  const url = await demo.ready;
  const childPids = childrenOf(demo.child.pid!);
  assert.equal(childPids.length, 2, 'router + 1 worker');
  // ~400 decode steps of ~6 ms at speedup 1: the stream is still running when the signal lands.
  const events = await streamThroughCtrlC(demo, url, 400);
  assert.equal(events.at(-1), 'data: [DONE]', 'the stream ran to its end');
  const chunks = events
    .slice(0, -1)
    .map((e) => JSON.parse(e.slice(6)) as { choices: { finish_reason: string | null }[]; error?: unknown });
  assert.ok(
    chunks.every((c) => c.error === undefined),
    'no error event',
  );
  assert.equal(chunks.at(-1)?.choices[0]?.finish_reason, 'length');
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
  for (const pid of childPids) assert.equal(alive(pid), false, `child ${pid} still running`);
});

// The demo SIGKILLed each child 5 s after its SIGTERM, well inside the drains the children were
// promised (a worker's --drain-ms 10 s, the router's 30 s): a stream with more than 5 s to go was
// cut. Now every child gets the demo's --drain-ms (30 s) and is killed only once that has passed.
// KVROUTE_DRAIN_MS, which the children read too, makes the drain far longer than the stream even on
// a slow machine: before, they drained for it and were killed at 5 s all the same.
test('Ctrl-C lets a stream with more than 5 s to go finish: the demo waits as long as the drain', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1'], { KVROUTE_DRAIN_MS: '300000' });
  const url = await demo.ready;
  // ~1,500 decode steps of ~6 ms at speedup 1 (~9 s); a busy machine only makes it longer.
  const events = await streamThroughCtrlC(demo, url, 1500);
  assert.equal(events.at(-1), 'data: [DONE]', 'the stream ran to its end');
  const last = JSON.parse(events.at(-2)!.slice(6)) as { choices?: { finish_reason: string | null }[] };
  assert.equal(last.choices?.[0]?.finish_reason, 'length', `not cut: ${events.at(-2)}`);
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
});

test('SIGQUIT (Ctrl-\\, which no longer reaches the children) kills every child and exits 1', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1']);
  await demo.ready;
  const childPids = childrenOf(demo.child.pid!);
  assert.equal(childPids.length, 2, 'router + 1 worker');
  process.kill(-demo.child.pid!, 'SIGQUIT');
  const [code] = await demo.exited;
  assert.equal(code, 1);
  await waitUntil(() => childPids.every((pid) => !alive(pid)), 'every child to be gone', 2000);
});

test('--host 0.0.0.0: the demo is ready though the router lists its worker at the peer address', async () => {
  // A worker on every interface registers 0.0.0.0:port and is listed at 127.0.0.1:port: matching
  // the announced address alone never saw it registered.
  const demo = startDemo([
    '--host',
    '0.0.0.0',
    '--prefill',
    '0',
    '--decode',
    '1',
    '--ready-timeout-ms',
    '20000',
  ]);
  const url = await demo.ready;
  const listed = (await (await fetch(`${url}/v1/workers`)).json()) as { data: { address: string }[] };
  assert.match(listed.data[0]!.address, /^127\.0\.0\.1:\d+$/);
  process.kill(-demo.child.pid!, 'SIGINT');
  const [code] = await demo.exited;
  assert.equal(code, 0);
});

test('a second signal while stopping kills every child at once and exits 1', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1']);
  await demo.ready;
  const childPids = childrenOf(demo.child.pid!);
  assert.equal(childPids.length, 2, 'router + 1 worker');
  // Children that do not react to SIGTERM: stopping would wait out their drain (30 s) and 5 s more.
  for (const pid of childPids) process.kill(pid, 'SIGSTOP');
  demo.child.kill('SIGTERM');
  await waitUntil(() => demo.stderr().includes('stopping every process'), 'the demo to start stopping');
  const secondAt = performance.now();
  demo.child.kill('SIGINT');
  const [code] = await demo.exited;
  assert.ok(performance.now() - secondAt < 2000, 'exited well before the SIGKILL fallback');
  assert.equal(code, 1);
  await waitUntil(() => childPids.every((pid) => !alive(pid)), 'every child to be gone', 2000);
});

test('a port held by something that accepts and never answers: the demo exits 1, it does not hang', async () => {
  const held: Socket[] = [];
  const holder = createServer((socket) => held.push(socket)); // accepts, reads nothing, answers nothing
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  after(() => {
    for (const s of held) s.destroy();
    holder.close();
  });
  const port = (holder.address() as { port: number }).port;
  const demo = startDemo(['--port', String(port), '--prefill', '0', '--decode', '1']);
  const timer = setTimeout(() => demo.child.kill('SIGKILL'), 15_000);
  const [code, signal] = await demo.exited;
  clearTimeout(timer);
  assert.equal(signal, null, `the demo hung and was killed:\n${demo.stderr()}`);
  assert.equal(code, 1);
  assert.match(demo.stderr(), /the router exited/);
});

// The demo took a fixed --port's URL as its router's as soon as /health answered there: another
// router on that port made it print "ready" and start its workers against that router, and only
// then did its own router report the port taken. Now the URL comes from the router child's own
// "listening on" line, which a router that cannot listen never prints.
test('a --port another router serves: the router says the port is taken, the demo exits 1, never ready', async () => {
  const registrations: string[] = [];
  // Answers as a router with three workers would, and records every worker that registers with it.
  const other = createHttpServer((req, res) => {
    if (req.method === 'POST') registrations.push(req.url ?? '');
    res.setHeader('content-type', 'application/json');
    if (req.url === '/v1/workers' && req.method === 'GET') {
      const row = (i: number) => ({ worker_id: `w${i}`, role: 'decode', address: `127.0.0.1:${40000 + i}` });
      res.end(JSON.stringify({ object: 'list', data: [row(1), row(2), row(3)] }));
    } else if (req.url === '/health') res.end('{"status":"ok"}');
    else res.writeHead(503).end('{}');
  });
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  after(() => other.close());
  const port = (other.address() as { port: number }).port;
  const demo = startDemo(['--port', String(port), '--prefill', '0', '--decode', '1']);
  const [code] = await demo.exited;
  assert.equal(code, 1);
  assert.match(
    demo.stderr(),
    new RegExp(`kvroute router: cannot listen on 127\\.0\\.0\\.1:${port}: the address is already in use`),
  );
  assert.doesNotMatch(demo.stdout(), /kvroute demo ready/);
  assert.deepEqual(registrations, [], 'no worker of the demo registered with the other router');
});

// The demo was ready once the router listed as many workers as it had started, whoever's they
// were: a worker registered by someone else made it print "ready" before its own had registered.
// Now it waits for the addresses its own workers print, as the router lists them.
// (The demo's router takes workers only with its token: the one given here, KVROUTE_WORKER_TOKEN.)
test('a worker the demo did not start does not make it ready before its own has registered', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1'], { KVROUTE_WORKER_TOKEN: 'demo-shared-token' });
  const url = await waitUntil(
    () => /\[router\] kvroute router listening on (\S+)/.exec(demo.stdout())?.[1],
    'the router to listen',
  );
  const res = await registerStandIn(url, { role: 'decode', address: '127.0.0.1:9' }, 'demo-shared-token');
  assert.equal(res.status, 201);
  await demo.ready;
  const beforeReady = demo.stdout().slice(0, demo.stdout().indexOf('kvroute demo ready'));
  const own = /\[decode-1\] kvroute worker \(decode\) listening on (\S+),/.exec(beforeReady)?.[1];
  assert.ok(own, `the demo was ready before its worker listened:\n${demo.stdout()}`);
  const listed = (await (await fetch(`${url}/v1/workers`)).json()) as { data: { address: string }[] };
  assert.ok(listed.data.some((w) => w.address === own));
  demo.child.kill('SIGINT');
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
});

// `kvroute demo | head -1`: the demo's stdout is a closed pipe once the first line is read. Each
// child line it relays then raised EPIPE, an unheard 'error' event: the demo died with a stack
// trace and SIGKILLed its children. Those lines are lost now (src/cli/main.ts); the demo runs on.
test('a demo whose stdout nobody reads any more runs on, and Ctrl-C stops every child with exit 0', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1']);
  const url = await waitUntil(
    () => /\[router\] kvroute router listening on (\S+)/.exec(demo.stdout())?.[1],
    'the router to listen',
  );
  demo.child.stdout!.destroy(); // as `head -1` exits
  await waitForWorkers(url, 1);
  const childPids = childrenOf(demo.child.pid!);
  assert.equal(childPids.length, 2, `router + 1 worker:\n${demo.stderr()}`);
  // The router's "draining" line is relayed after the pipe closed, whatever happened before.
  process.kill(-demo.child.pid!, 'SIGINT');
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
  assert.doesNotMatch(demo.stderr(), /EPIPE/);
  for (const pid of childPids) assert.equal(alive(pid), false, `child ${pid} still running`);
});

// A KVROUTE_* variable the demo passes on (its children read the environment) that no worker
// takes: every worker exits 2 at once. The demo waited out --ready-timeout-ms (30 s by default)
// before it said 'fewer than 1 workers registered in time'; the fleet could never be complete.
test('a worker that exits before the demo is ready stops the demo at once with exit 1', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1', '--ready-timeout-ms', '600000'], {
    KVROUTE_MAX_WAITING: '0',
  });
  const timer = setTimeout(() => demo.child.kill('SIGKILL'), 15_000);
  const [code, signal] = await demo.exited;
  clearTimeout(timer);
  assert.equal(signal, null, `the demo waited for the worker and was killed:\n${demo.stderr()}`);
  assert.equal(code, 1);
  assert.match(demo.stderr(), /KVROUTE_MAX_WAITING: must be >= 1/, 'the worker says why');
  assert.match(demo.stderr(), /decode-1 exited \(2\) before the demo was ready/);
});

// The demo hands its parsed --speedup to each worker as text: String(1e21) is '1e+21', which the
// worker's parser (decimal only) refuses, so the workers exited 2 and the demo never became ready.
test('a --speedup of 1e21 or more (given in decimal) reaches the workers as a number they take', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1', '--speedup', '1000000000000000000000']);
  await demo.ready;
  demo.child.kill('SIGINT');
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
});

// The demo's router listened with an open control plane: anything that reached its port (with
// --host 0.0.0.0, anyone on the network) could register a worker and be sent the users' prompts.
test('the demo protects its router with a random worker token, handed to its children by environment only and never printed', async () => {
  const demo = startDemo(['--prefill', '0', '--decode', '1']);
  const url = await demo.ready;
  const stranger = await registerStandIn(url, { address: '127.0.0.1:9' });
  assert.equal(stranger.status, 401, await stranger.text());
  const pids = childrenOf(demo.child.pid!);
  assert.equal(pids.length, 2, 'router + 1 worker');
  const tokenOf = (pid: number) =>
    readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .find((v) => v.startsWith('KVROUTE_WORKER_TOKEN='))
      ?.slice('KVROUTE_WORKER_TOKEN='.length);
  const tokens = pids.map(tokenOf);
  assert.ok(tokens[0] && tokens[0].length >= 32, 'a random token of 32 characters or more');
  assert.equal(tokens[1], tokens[0], 'router and worker share it');
  const token = tokens[0]!;
  for (const pid of pids) {
    assert.ok(!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(token), 'not in the process list');
  }
  const own = await registerStandIn(url, { address: '127.0.0.1:9' }, token);
  assert.equal(own.status, 201, "the token is the router's");
  demo.child.kill('SIGINT');
  const [code] = await demo.exited;
  assert.equal(code, 0, demo.stderr());
  assert.ok(!demo.stdout().includes(token) && !demo.stderr().includes(token), 'never printed');
});
