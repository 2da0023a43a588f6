// `kvroute router` as a process (compiled, from dist/): --help lists every option with its
// environment variable (even when one of them is bad), a bad option exits 2 with one line, options
// come from KVROUTE_* too, and SIGTERM / SIGINT close the router and exit 0. Also the usage errors
// of `kvroute` itself and of `kvroute bench`: one line on stderr and exit 2, like every other.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { envName } from '../src/cli/options.js';
import { ENDPOINTS } from '../src/protocols/worker-plane.js';
import { ROUTER_OPTION_SPECS } from '../src/router/config.js';
import { encodeJson, isTransportError, RequestPlaneClient, RequestPlaneServer } from '../src/tcp/index.js';
import {
  CLI_MAIN,
  postCompletion,
  registerWorker,
  spawnWorker,
  waitForWorkers,
  waitUntil,
} from './helpers/fleet.js';

/**
 * `kvroute router --port 0 ...args` as a child process, untraced: its output so far (stdout and
 * stderr), its URL once it listens, and its exit.
 */
async function routerChild(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(process.execPath, [CLI_MAIN, 'router', '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...env, OTEL_TRACES_EXPORTER: 'none' },
  });
  const exit = once(child, 'exit');
  const output = { text: '' };
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (output.text += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (output.text += s));
  try {
    const url = await waitUntil(
      async () => /listening on (http:\/\/\S+)/.exec(output.text)?.[1],
      'the router listening',
    );
    return { child, exit, output, url };
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
}

test('--help lists every option with its environment variable', () => {
  const r = spawnSync(process.execPath, [CLI_MAIN, 'router', '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  for (const o of ROUTER_OPTION_SPECS) {
    assert.ok(r.stdout.includes(`--${o.name}`), `--${o.name} in help`);
    assert.ok(r.stdout.includes(envName(o.name)), `${envName(o.name)} in help`);
  }
});

test('bad options exit 2 with one line', () => {
  for (const args of [['--policy', 'fastest'], ['--port', 'eighty'], ['--block-size', '0'], ['--nope']]) {
    const r = spawnSync(process.execPath, [CLI_MAIN, 'router', ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, args.join(' '));
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^kvroute router: /);
  }
  const env = spawnSync(process.execPath, [CLI_MAIN, 'router'], {
    encoding: 'utf8',
    env: { ...process.env, KVROUTE_MAX_ATTEMPTS: '0' },
  });
  assert.equal(env.status, 2);
  assert.match(env.stderr, /KVROUTE_MAX_ATTEMPTS/);
});

// Node runs a timer longer than 2^31-1 ms after 1 ms: --stream-idle-timeout-ms 3000000000 made
// every request a 504. A router that did start would listen until killed: the timeout ends it.
test('a duration past the longest Node timer (2^31-1 ms) exits 2 with one line', () => {
  const durations = ROUTER_OPTION_SPECS.filter((o) => o.name.endsWith('-ms'));
  assert.ok(durations.length >= 5);
  for (const o of durations) {
    const r = spawnSync(process.execPath, [CLI_MAIN, 'router', '--port', '0', `--${o.name}`, '3000000000'], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
    });
    assert.equal(r.status, 2, `--${o.name} 3000000000: ${r.stdout}${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^kvroute router: --${o.name}: must be <= 2147483647, got 3000000000`));
  }
  const env = spawnSync(process.execPath, [CLI_MAIN, 'router', '--port', '0'], {
    encoding: 'utf8',
    timeout: 10_000,
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', KVROUTE_STREAM_IDLE_TIMEOUT_MS: '2147483648' },
  });
  assert.equal(env.status, 2, env.stdout + env.stderr);
  assert.match(env.stderr, /KVROUTE_STREAM_IDLE_TIMEOUT_MS: must be <= 2147483647/);
});

/**
 * `kvroute worker` with each of `cases` ([flags, env, the one stderr line]) exits 2 with that one
 * line. The router is never reached (port 9): a worker that did start would retry until killed,
 * which the timeout does.
 */
function workerRefuses(cases: readonly (readonly [readonly string[], Record<string, string>, RegExp])[]) {
  for (const [args, env, reason] of cases) {
    const r = spawnSync(
      process.execPath,
      [CLI_MAIN, 'worker', '--role', 'both', '--router', 'http://127.0.0.1:9', ...args],
      { encoding: 'utf8', timeout: 10_000, env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', ...env } },
    );
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, reason);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
}

// The worker's --drain-ms is a Node timer too: --drain-ms 3000000000 (the operator asking for a
// long drain) drained for 1 ms and cut every in-flight stream on SIGTERM.
test('worker: a --drain-ms past the longest Node timer exits 2 with one line', () => {
  workerRefuses([
    [
      ['--drain-ms', '3000000000'],
      {},
      /^kvroute worker: --drain-ms: must be <= 2147483647, got 3000000000\n$/,
    ],
    [[], { KVROUTE_DRAIN_MS: '2147483648' }, /^kvroute worker: KVROUTE_DRAIN_MS: must be <= 2147483647/],
  ]);
});

// The engine allocates its block pool's bookkeeping up front: --kv-blocks 100000000000 died with a
// RangeError stack trace (exit 1), and 2^32-1 ran the process out of memory.
test('worker: a --kv-blocks too large to allocate exits 2 with one line', () => {
  workerRefuses([
    [
      ['--kv-blocks', '100000000000'],
      {},
      /^kvroute worker: --kv-blocks: must be <= 16777216, got 100000000000\n$/,
    ],
    [[], { KVROUTE_KV_BLOCKS: '4294967295' }, /^kvroute worker: KVROUTE_KV_BLOCKS: must be <= 16777216/],
  ]);
});

// The router refuses a registration whose model is empty or longer than 256 characters (400): a
// worker so refused never served (it now stops), and `demo --model=` waited out its ready timeout.
// Both refuse the name up front.
test('worker and demo: a model name the router would refuse exits 2 with one line', () => {
  for (const [command, model] of [
    ['worker', ''],
    ['worker', 'm'.repeat(257)],
    ['demo', ''],
  ] as const) {
    const args =
      command === 'worker'
        ? ['worker', '--role', 'both', '--router', 'http://127.0.0.1:9']
        : ['demo', '--port', '0', '--prefill', '0', '--decode', '1'];
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args, `--model=${model}`], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
    });
    assert.equal(r.status, 2, `${command} --model of ${model.length}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^kvroute ${command}: --model: `));
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

// A router takes block sizes up to 65536 (--block-size), and registration needs the worker's to be
// equal: a larger worker block size could never register, and the worker retried quietly for ever.
test("worker: a --block-size larger than any router's exits 2 with one line", () => {
  const r = spawnSync(
    process.execPath,
    [CLI_MAIN, 'worker', '--role', 'both', '--router', 'http://127.0.0.1:9', '--block-size', '65537'],
    { encoding: 'utf8', timeout: 10_000, env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } },
  );
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /^kvroute worker: --block-size: must be <= 65536, got 65537\n$/);
});

// `--host "$HOST"` with HOST unset: an empty host made the router and the worker listen on every
// interface (the router printing 'listening on http://:PORT'), not on loopback, and the demo never
// found its router. An empty value is refused like any other bad one (an empty KVROUTE_* variable
// still counts as unset).
test('an empty --host exits 2 with one line (router, worker, demo)', () => {
  for (const args of [
    ['router', '--port', '0', '--host='],
    ['worker', '--role', 'both', '--router', 'http://127.0.0.1:9', '--host', ''],
    ['demo', '--port', '0', '--prefill', '0', '--decode', '1', '--host='],
  ]) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
    });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^kvroute ${args[0]}: --host: `));
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

test('--help wins over a bad environment variable or a bad flag', () => {
  for (const [args, env] of [
    [['router', '--help'], { KVROUTE_ENFORCE_DISAGG: 'maybe' }],
    [['router', '--policy', 'fastest', '-h'], {}],
    [['worker', '--help'], { KVROUTE_ROLE: 'boss', KVROUTE_PORT: 'eighty' }],
  ] as const) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
    });
    assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Usage: kvroute ${args[0]} `));
    assert.equal(r.stderr, '');
  }
});

test('kvroute with no command, and bench without a name, exit 2 with one line on stderr', () => {
  for (const [args, reason] of [
    [[], /^kvroute: missing command \(see kvroute --help\)\n$/],
    [['bench'], /^kvroute bench: missing benchmark name \(see kvroute bench --help\)\n$/],
    [['bench', '--bogus'], /^kvroute bench: missing benchmark name before '--bogus' .*kvroute bench --help/],
    [['bench', '--json'], /^kvroute bench: missing benchmark name before '--json' /],
    [['bench', 'nope'], /^kvroute bench: unknown benchmark 'nope'/],
  ] as const) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, args.join(' '));
    assert.equal(r.stdout, '', args.join(' '));
    assert.match(r.stderr, reason);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  // Help asked for still goes to stdout with exit 0.
  for (const args of [['--help'], ['-h'], ['bench', '--help'], ['bench', '-h']]) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 0, args.join(' '));
    assert.match(r.stdout, /^Usage: kvroute /);
    assert.equal(r.stderr, '');
  }
});

test("kvroute --version (and -V, version) prints the package version and node's, exit 0", async () => {
  const { version } = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  for (const arg of ['--version', '-V', 'version']) {
    const r = spawnSync(process.execPath, [CLI_MAIN, arg], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${arg}: ${r.stderr}`);
    assert.equal(r.stdout, `kvroute ${version} (node ${process.versions.node})\n`);
    assert.equal(r.stderr, '');
  }
});

// `kvroute bench --help` read 'Usage: kvroute bench [options] <name> ...', but an option before the
// name is refused ('missing benchmark name before ...', which itself says 'kvroute bench <name> [options]').
test("bench --help's usage line puts the benchmark's options after its name, where they are taken", () => {
  const r = spawnSync(process.execPath, [CLI_MAIN, 'bench', '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  const usage = r.stdout.split('\n')[0]!;
  assert.match(usage, /^Usage: kvroute bench <name> \[options\]/);
  const refused = spawnSync(process.execPath, [CLI_MAIN, 'bench', '--json', 'scheduler'], {
    encoding: 'utf8',
  });
  assert.equal(refused.status, 2, 'an option before the name is refused');
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`options from the environment; ${signal} exits 0`, async () => {
    const child = spawn(process.execPath, [CLI_MAIN, 'router'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, KVROUTE_PORT: '0', KVROUTE_BLOCK_SIZE: '32', OTEL_TRACES_EXPORTER: 'none' },
    });
    const exit = once(child, 'exit');
    let out = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout!.setEncoding('utf8').on('data', (s: string) => {
        out += s;
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      void exit.then(() => reject(new Error(`router exited early: ${out}`)));
    });
    // Block size 32 from the environment: a 16-token worker is refused.
    const res = await registerWorker(url, { address: '127.0.0.1:9' });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: { param: string } }).error.param, 'block_size');
    child.kill(signal);
    const [code] = await exit;
    assert.equal(code, 0);
  });
}

test('a router whose stdout reader is gone (kvroute router | head -1) still drains on SIGTERM and exits 0', {
  timeout: 30_000,
}, async () => {
  const child = spawn(process.execPath, [CLI_MAIN, 'router', '--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
  });
  const exit = once(child, 'exit');
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err += s;
  });
  try {
    await new Promise<void>((resolve) => {
      let out = '';
      child.stdout!.setEncoding('utf8').on('data', (s: string) => {
        out += s;
        if (out.includes('listening on')) resolve();
      });
    });
    // SIGTERM the moment the line is read: the router must handle signals before it prints it
    // (when it printed first, ~2 runs in 5 ended by the signal's default action, not the drain).
    // What `head -1` does after its line: the pipe's reading end closes.
    child.stdout!.destroy();
    // The draining line then meets EPIPE: unheard, that error ended the router with a stack trace.
    child.kill('SIGTERM');
    const [code, signal] = await exit;
    assert.equal(err, '');
    assert.deepEqual([code, signal], [0, null]);
  } finally {
    child.kill('SIGKILL');
  }
});

test('SIGTERM drains: a stream in flight finishes; meanwhile new requests and /ready get 503 and /health answers; then exit 0', {
  timeout: 60_000,
}, async () => {
  const child = spawn(process.execPath, [CLI_MAIN, 'router', '--port', '0', '--drain-ms', '30000'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
  });
  const exit = once(child, 'exit');
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  const url = await waitUntil(
    async () => /listening on (http:\/\/\S+)/.exec(out)?.[1],
    'the router listening',
  );
  // Slow tokens (speedup 0.5): the stream is still running when the signal comes.
  const worker = await spawnWorker(url, ['--speedup', '0.5']);
  try {
    await waitForWorkers(url, 1);
    const res = await postCompletion(url, { prompt: 'drain me', max_tokens: 24, stream: true });
    assert.equal(res.status, 200);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let sse = (await reader.read()).value ?? '';
    child.kill('SIGTERM');
    await waitUntil(async () => out.includes('draining'), 'the draining line');
    const refused = await postCompletion(url, { prompt: 'too late' });
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('connection'), 'close');
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'shutting_down');
    assert.equal((await fetch(`${url}/ready`)).status, 503);
    assert.equal((await fetch(`${url}/health`)).status, 200);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      sse += value;
    }
    assert.ok(sse.trimEnd().endsWith('data: [DONE]'), sse.slice(-300));
    assert.ok(!sse.includes('"error"'), 'the stream in flight was not cut');
    const [code] = await exit;
    assert.equal(code, 0);
  } finally {
    child.kill('SIGKILL');
    worker.kill();
  }
});

test('--worker-token (KVROUTE_WORKER_TOKEN): a kvroute worker with it registers and deregisters, one with another or none exits 2 saying so; the token is never printed', {
  timeout: 60_000,
}, async () => {
  const token = `rc-${Math.random().toString(36).slice(2)}-secret`;
  // Verbose logs and console spans on stdout: whatever the router says, the token must not be in it.
  const child = spawn(
    process.execPath,
    [CLI_MAIN, 'router', '--port', '0', '--verbose', '--lease-ttl-ms', '60000'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, KVROUTE_WORKER_TOKEN: token, OTEL_TRACES_EXPORTER: 'console' },
    },
  );
  const exit = once(child, 'exit');
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (out += s));
  const url = await waitUntil(
    async () => /listening on (http:\/\/\S+)/.exec(out)?.[1],
    'the router listening',
  );
  const worker = await spawnWorker(url, [], { KVROUTE_WORKER_TOKEN: token });
  try {
    await waitForWorkers(url, 1);
    // The request plane: the router's frames carry the token, so the worker serves them...
    const completion = await postCompletion(url, { prompt: 'the request plane takes the token' });
    assert.equal(completion.status, 200, await completion.clone().text());
    // ...and nobody else's: a client without it, or with another, is refused before any handler.
    for (const stranger of [
      new RequestPlaneClient(),
      new RequestPlaneClient({ authToken: `${token}-not` }),
    ]) {
      try {
        for (const endpoint of [ENDPOINTS.generate, ENDPOINTS.kvEvents, ENDPOINTS.stats]) {
          const err = await stranger.unary(worker.address, endpoint, encodeJson({})).then(
            () => assert.fail(`${endpoint} served without the token`),
            (e: unknown) => e,
          );
          assert.ok(isTransportError(err), String(err));
          assert.equal(err.remoteCode, 'unauthorized', err.message);
          assert.ok(!err.message.includes(token));
        }
      } finally {
        await stranger.close();
      }
    }
    // A stranger is refused, and nothing is registered for it.
    const stranger = await registerWorker(url, { address: '127.0.0.1:9' });
    assert.equal(stranger.status, 401);
    assert.equal(((await stranger.json()) as { error: { code: string } }).error.code, 'unauthorized');
    // A worker with another token, or with none: one line that says which, exit 2, no retry loop.
    const { KVROUTE_WORKER_TOKEN: _, ...envWithout } = process.env;
    for (const [args, reason] of [
      [
        ['--worker-token', 'not-the-token'],
        /\(401\): .*worker token.*this worker's --worker-token \/ KVROUTE_WORKER_TOKEN must be the router's/,
      ],
      [
        [],
        /\(401\): .*this worker sent no token: give it the router's with --worker-token or KVROUTE_WORKER_TOKEN/,
      ],
    ] as const) {
      const r = spawnSync(
        process.execPath,
        [CLI_MAIN, 'worker', '--role', 'both', '--router', url, ...args],
        {
          encoding: 'utf8',
          timeout: 20_000,
          env: { ...envWithout, OTEL_TRACES_EXPORTER: 'none' },
        },
      );
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0]!, /^kvroute worker: the router refused this worker's registration \(401\)/);
      assert.match(lines[0]!, reason);
      assert.ok(!r.stderr.includes(token));
    }
    assert.equal((await waitForWorkers(url, 1))[0]!.address, worker.address);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert.ok(!metrics.includes(token), 'not in /metrics');
    // SIGTERM: the worker deregisters (the lease of 60 s cannot have run out meanwhile).
    worker.kill('SIGTERM');
    assert.equal((await worker.exit).code, 0);
    await waitForWorkers(url, 0);
    child.kill('SIGTERM');
    assert.equal((await exit)[0], 0);
    assert.match(out, /"route":"\/v1\/workers"/, 'the verbose router logged the control-plane calls');
    assert.match(out, /http-request/, 'and exported their spans');
    assert.match(out, /request_plane generate/, 'the request-plane call spans too');
    assert.ok(!out.includes(token), 'the token is in neither logs nor spans');
    const help = spawnSync(process.execPath, [CLI_MAIN, 'router', '--help'], {
      encoding: 'utf8',
      env: { ...process.env, KVROUTE_WORKER_TOKEN: token },
    });
    assert.match(help.stdout, /--worker-token <value>.*\[env KVROUTE_WORKER_TOKEN\]/s);
    assert.ok(!help.stdout.includes(token), 'not in --help');
  } finally {
    child.kill('SIGKILL');
    worker.kill();
  }
});

// The router without a token takes any worker; one started with a token refuses the router's
// frames. The client gets a 502 that says why, at once (tried once per worker, not forever), not a
// 401 as if its own request lacked credentials.
test('a worker whose request plane wants a token the router does not send: completions fail 502 worker_error naming the token, without it in any answer', {
  timeout: 60_000,
}, async () => {
  // A kvroute worker with a token is refused at registration by a router without one
  // (worker-lifecycle). A worker registered some other way, without the token on the control plane,
  // still refuses the router's frames: the router's clients see a 502 that names the setting.
  const token = `rc-${Math.random().toString(36).slice(2)}-only-the-worker`;
  const { KVROUTE_WORKER_TOKEN: _, ...envWithout } = process.env;
  const router = await routerChild([], envWithout);
  let served = 0;
  const worker = new RequestPlaneServer({ authToken: token }).handle(ENDPOINTS.generate, async function* () {
    served++;
    yield encodeJson({ token_ids: [1], finish_reason: 'length' });
  });
  try {
    await worker.listen(0);
    const { url } = router;
    const registered = await registerWorker(url, { address: worker.address, kv_events: false });
    assert.equal(registered.status, 201, await registered.text());
    const res = await postCompletion(url, { prompt: 'no token from this router' });
    const body = await res.text();
    assert.equal(res.status, 502, body);
    const { error } = JSON.parse(body) as { error: { code: string; message: string } };
    assert.equal(error.code, 'worker_error');
    assert.match(error.message, /worker-token/);
    assert.ok(!body.includes(token));
    const streamed = await postCompletion(url, { prompt: 'no token, streamed', stream: true });
    assert.equal(streamed.status, 502, await streamed.text());
    assert.equal(served, 0, 'no frame without the token reached the handler');
  } finally {
    router.child.kill('SIGKILL');
    await worker.close({ deadlineMs: 100 });
  }
  assert.ok(!router.output.text.includes(token));
});

test('a worker token that cannot travel in an HTTP header exits 2 with one line that does not quote it (router, worker, demo)', () => {
  const bad = 'two words';
  workerRefuses([[[], { KVROUTE_WORKER_TOKEN: bad }, /KVROUTE_WORKER_TOKEN\): must be visible ASCII/]]);
  for (const args of [
    ['router', '--port', '0'],
    ['demo', '--port', '0', '--prefill', '0', '--decode', '1'],
  ]) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args, '--worker-token', bad], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
    });
    assert.equal(r.status, 2, `${args[0]}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /^kvroute \w+: --worker-token \(KVROUTE_WORKER_TOKEN\): must be visible ASCII/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!r.stderr.includes(bad));
  }
});

test('an empty KVROUTE_WORKER_TOKEN exits 2 with one line instead of leaving the control plane open (router, worker, demo); --help still shows', () => {
  workerRefuses([[[], { KVROUTE_WORKER_TOKEN: '' }, /KVROUTE_WORKER_TOKEN is set but empty/]]);
  for (const args of [
    ['router', '--port', '0'],
    ['demo', '--port', '0', '--prefill', '0', '--decode', '1'],
  ]) {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none', KVROUTE_WORKER_TOKEN: '' },
    });
    assert.equal(r.status, 2, `${args[0]}: ${r.stdout}${r.stderr}`);
    assert.match(
      r.stderr,
      /^kvroute \w+: KVROUTE_WORKER_TOKEN is set but empty: unset it, or give it a value\n$/,
    );
    const help = spawnSync(process.execPath, [CLI_MAIN, args[0]!, '--help'], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, KVROUTE_WORKER_TOKEN: '' },
    });
    assert.equal(help.status, 0, help.stderr);
  }
});

test('--verbose logs one line for a request whose client left (499), as for any other', {
  timeout: 30_000,
}, async () => {
  // A worker that accepts the request plane's connection and never answers: the request waits for
  // its first token until the client gives up.
  const silent = createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const { port } = silent.address() as { port: number };
  const router = await routerChild(['--verbose']);
  const { url } = router;
  try {
    assert.equal((await registerWorker(url, { address: `127.0.0.1:${port}` })).status, 201);
    const gone = new AbortController();
    const leaving = fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-llm', prompt: 'never answered', max_tokens: 4, stream: true }),
      signal: gone.signal,
    }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    gone.abort();
    await leaving;
    await waitUntil(
      () => /"event":"request"[^\n]*"route":"\/v1\/completions"[^\n]*"status":499/.test(router.output.text),
      'a request line with status 499',
    );
  } finally {
    router.child.kill('SIGTERM');
    await router.exit;
    silent.close();
  }
});

test('--verbose logs a retried request with the worker it left and the one it went to', {
  timeout: 60_000,
}, async () => {
  // Before: a retry was a counter and a span event only, so with tracing off nothing named the
  // worker that failed (short of an ejection).
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const deadPort = (closed.address() as { port: number }).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const router = await routerChild(['--verbose']);
  const { url } = router;
  let worker: Awaited<ReturnType<typeof spawnWorker>> | undefined;
  try {
    worker = await spawnWorker(url, []);
    await waitForWorkers(url, 1);
    const dead = await registerWorker(url, { address: `127.0.0.1:${deadPort}`, kv_events: false });
    const deadId = ((await dead.json()) as { worker_id: string }).worker_id;
    // Ties between the two break at random: some request meets the dead one first.
    for (let i = 0; i < 20 && !router.output.text.includes('"event":"request_retried"'); i++) {
      const res = await postCompletion(url, { prompt: `retry me ${i}` });
      assert.equal(res.status, 200, await res.text());
    }
    const line = router.output.text.split('\n').find((l) => l.includes('"event":"request_retried"'));
    assert.ok(line, router.output.text);
    const fields = JSON.parse(line) as Record<string, unknown>;
    assert.equal(fields.leg, 'decode');
    assert.equal(fields.reason, 'connect_failed');
    assert.equal(fields.failed_worker_id, deadId);
    assert.notEqual(fields.worker_id, deadId);
    assert.equal(fields.attempt, 2);
    assert.equal(typeof fields.request_id, 'string');
  } finally {
    router.child.kill('SIGTERM');
    await router.exit;
    worker?.kill();
  }
});
