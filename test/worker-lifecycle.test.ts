import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GenerateChunk } from '../src/protocols/worker-plane.js';
import { isRetryable } from '../src/router/execute/worker-call.js';
import { createRouter } from '../src/router/service.js';
import { decodeJson, encodeJson, RequestPlaneClient, TransportError } from '../src/tcp/index.js';
import { type RegistrationRefused, RouterLease } from '../src/worker/router-lease.js';
import type { WorkerStats } from '../src/worker/stats.js';
import { runWorkerCli, StandInRouter, spawnWorker } from './worker-helpers.js';

/** The remote error `call` fails with (it must fail with one). */
async function remoteFailure(call: Promise<unknown>): Promise<TransportError> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof TransportError && err.kind === 'remote_error', String(err));
    return err;
  }
  assert.fail('expected an error response, the request was served');
}

async function drain(chunks: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of chunks);
}

async function waitUntil(check: () => boolean): Promise<void> {
  while (!check()) await sleep(20);
}

function logEvents(stderr: readonly string[], event: string): Record<string, unknown>[] {
  return stderr
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((e) => e.event === event);
}

test('without --verbose, a router it cannot reach is said once on stderr, and so is reaching it', {
  timeout: 60_000,
}, async () => {
  const router = new StandInRouter(300, 'n');
  // A port nothing listens on yet: the worker's first attempts are refused.
  const port = await router.listen();
  await router.close();
  const worker = await spawnWorker(['--role', 'decode', '--router', `http://127.0.0.1:${port}`]);
  try {
    const down = (line: string) => line.startsWith('kvroute worker: cannot reach the router at');
    await waitUntil(() => worker.stderr.some(down));
    assert.match(
      worker.stderr.find(down)!,
      new RegExp(
        `^kvroute worker: cannot reach the router at http://127\\.0\\.0\\.1:${port} \\(.+\\); retrying until it answers$`,
      ),
    );
    // Several retries later (100 ms backoff doubling), still the one line: a reminder only every 30 s.
    await sleep(1500);
    assert.equal(worker.stderr.filter((l) => l !== '').length, 1, worker.stderr.join('\n'));

    const revived = new StandInRouter(300, 'n');
    await revived.listen(port);
    try {
      await revived.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers');
      await waitUntil(() => worker.stderr.some((l) => l.startsWith('kvroute worker: reached the router')));
      assert.match(
        worker.stderr.filter((l) => l !== '').at(-1)!,
        /^kvroute worker: reached the router at \S+ after \d+ failed attempts$/,
      );
      worker.child.kill('SIGTERM');
      assert.deepEqual(await worker.exit, { code: 0, signal: null });
    } finally {
      await revived.close();
    }
  } finally {
    worker.child.kill('SIGKILL');
  }
});

test('registers, heartbeats, backs off while the router is down, registers again after its restart', {
  timeout: 60_000,
}, async () => {
  const router = new StandInRouter(300, 'a');
  const port = await router.listen();
  const restarted = new StandInRouter(300, 'b');
  const worker = await spawnWorker([
    '--role',
    'decode',
    '--router',
    router.url,
    '--kv-blocks',
    '512',
    '--max-batched-tokens',
    '2048',
    '--model',
    'mock-x',
    '--verbose',
  ]);
  try {
    const registration = await router.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers');
    const { instance_id, ...fields } = registration.body as { instance_id?: unknown };
    assert.deepEqual(fields, {
      role: 'decode',
      address: worker.address,
      model: 'mock-x',
      block_size: 16,
      kv_blocks: 512,
      max_batched_tokens: 2048,
      kv_events: true,
    });
    // One id per process: every registration of this process sends it (checked again below).
    assert.match(String(instance_id), /^[0-9a-f-]{36}$/);
    const beat = (c: { method: string; url: string }) =>
      c.method === 'POST' && c.url === '/v1/workers/a1/heartbeat';
    await router.waitFor(beat);
    await router.waitFor(beat, router.calls.length);

    await router.close(); // the router crashes
    await waitUntil(() => logEvents(worker.stderr, 'router_unreachable').length >= 3);
    const retries = logEvents(worker.stderr, 'router_unreachable').slice(0, 3);
    assert.deepEqual(
      retries.map((e) => e.attempt),
      [1, 2, 3],
    );
    assert.ok(retries.every((e) => typeof e.retry_in_ms === 'number' && e.retry_in_ms > 0));

    await restarted.listen(port); // a new router on the same port knows nobody
    const again = await restarted.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers');
    assert.deepEqual(again.body, registration.body);
    const lostLease = restarted.calls.find((c) => c.url === '/v1/workers/a1/heartbeat');
    assert.ok(lostLease, 'the old id was tried first and answered 404');
    await restarted.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers/b1/heartbeat');

    worker.child.kill('SIGTERM');
    assert.deepEqual(await worker.exit, { code: 0, signal: null });
    assert.ok(restarted.calls.some((c) => c.method === 'DELETE' && c.url === '/v1/workers/b1'));
  } finally {
    worker.child.kill('SIGKILL');
    await router.close();
    await restarted.close();
  }
});

test('SIGTERM deregisters, lets an in-flight stream finish, then exits 0', { timeout: 60_000 }, async () => {
  const router = new StandInRouter(10_000);
  await router.listen();
  const worker = await spawnWorker(['--role', 'both', '--router', router.url]);
  const client = new RequestPlaneClient();
  try {
    await router.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers');
    const maxTokens = 150; // ~150 decode steps of ~6 ms: still streaming when the signal lands
    const stream = client.stream(
      worker.address,
      'generate',
      encodeJson({ request_id: 'r1', token_ids: [1, 2, 3, 4, 5], max_tokens: maxTokens }),
    );
    const chunks: GenerateChunk[] = [];
    for await (const buf of stream) {
      chunks.push(decodeJson<GenerateChunk>(buf));
      if (chunks.length === 1) worker.child.kill('SIGTERM');
    }
    assert.equal(chunks.flatMap((c) => c.token_ids).length, maxTokens);
    assert.equal(chunks.at(-1)!.finish_reason, 'length');
    assert.deepEqual(await worker.exit, { code: 0, signal: null });
    assert.ok(router.calls.some((c) => c.method === 'DELETE' && c.url === '/v1/workers/w1'));
  } finally {
    worker.child.kill('SIGKILL');
    await client.close();
    await router.close();
  }
});

test('bad options exit 2 with one line; --help lists every option with its variable', async () => {
  for (const args of [
    ['--router', 'http://127.0.0.1:1'],
    ['--role', 'nope', '--router', 'http://127.0.0.1:1'],
    ['--role', 'both'],
    ['--role', 'both', '--router', 'ftp://x'],
    ['--role', 'both', '--router', 'http://127.0.0.1:1', '--kv-blocks', '0'],
  ]) {
    const { code, stderr } = await runWorkerCli(args);
    assert.equal(code, 2, args.join(' '));
    assert.equal(stderr.trim().split('\n').length, 1, stderr);
  }
  const help = await runWorkerCli(['--help']);
  assert.equal(help.code, 0);
  for (const name of [
    'role',
    'router',
    'host',
    'port',
    'model',
    'block-size',
    'kv-blocks',
    'max-batched-tokens',
    'speedup',
  ]) {
    assert.match(
      help.stdout,
      new RegExp(`--${name} .*KVROUTE_${name.toUpperCase().replaceAll('-', '_')}`, 's'),
    );
  }
});

test('SIGTERM while an overlapped generate waits for its kv_handoff: new generate and prefill are refused with overloaded (the router tries another worker), the waiting generate still takes its handoff and finishes', {
  timeout: 60_000,
}, async () => {
  const router = new StandInRouter(10_000);
  await router.listen();
  const worker = await spawnWorker([
    ...['--role', 'both', '--router', router.url, '--drain-ms', '10000', '--verbose'],
  ]);
  const client = new RequestPlaneClient();
  try {
    await router.waitFor((c) => c.method === 'POST' && c.url === '/v1/workers');
    const waiting = (async () => {
      const out: number[] = [];
      const body = {
        request_id: 'h1',
        token_ids: [1, 2, 3],
        max_tokens: 4,
        await_kv_handoff: { timeout_ms: 30_000 },
      };
      for await (const buf of client.stream(worker.address, 'generate', encodeJson(body))) {
        out.push(...decodeJson<GenerateChunk>(buf).token_ids);
      }
      return out;
    })();
    waiting.catch(() => {});
    const stats = () =>
      client.unary(worker.address, 'stats', encodeJson({})).then((b) => decodeJson<WorkerStats>(b));
    while ((await stats()).handoffs_waiting === 0) await sleep(20);

    worker.child.kill('SIGTERM');
    await waitUntil(() => logEvents(worker.stderr, 'draining').length > 0);
    // A router that has not yet seen the deregistration still sends new work: refused at once, with
    // the code the router moves a request to another worker on (not served, which would extend
    // the drain and risk being cut at its deadline).
    const refusedGenerate = await remoteFailure(
      drain(
        client.stream(
          worker.address,
          'generate',
          encodeJson({ request_id: 'g2', token_ids: [7, 8], max_tokens: 2 }),
        ),
      ),
    );
    assert.equal(refusedGenerate.remoteCode, 'overloaded', refusedGenerate.message);
    assert.ok(isRetryable(refusedGenerate), 'the router retries it on another worker');
    const refusedPrefill = await remoteFailure(
      client.unary(worker.address, 'prefill', encodeJson({ request_id: 'p2', token_ids: [7, 8] })),
    );
    assert.equal(refusedPrefill.remoteCode, 'overloaded', refusedPrefill.message);
    // The other endpoints still answer while the worker drains.
    assert.equal((await stats()).handoffs_waiting, 1);
    const health = decodeJson<{ ok: boolean }>(await client.unary(worker.address, 'health', encodeJson({})));
    assert.equal(health.ok, false);
    // The generate that was already waiting gets its handoff and finishes.
    const answer = decodeJson(
      await client.unary(worker.address, 'kv_handoff', encodeJson({ request_id: 'h1' })),
    );
    assert.deepEqual(answer, { delivered: 'waiting' });
    assert.equal((await waiting).length, 4);
    assert.deepEqual(await worker.exit, { code: 0, signal: null });
  } finally {
    worker.child.kill('SIGKILL');
    await client.close();
    await router.close();
  }
});

test('SIGTERM while the registration is in flight: the worker the router registered is deregistered', {
  timeout: 60_000,
}, async () => {
  const router = new StandInRouter(10_000);
  await router.listen();
  const release = router.holdRegistrations();
  const worker = await spawnWorker(['--role', 'both', '--router', router.url, '--verbose']);
  try {
    // The router has taken the registration (worker w1 exists there) but not answered yet.
    await waitUntil(() => router.calls.some((c) => c.method === 'POST' && c.url === '/v1/workers'));
    worker.child.kill('SIGTERM');
    await waitUntil(() => logEvents(worker.stderr, 'signal').length > 0);
    release();
    assert.deepEqual(await worker.exit, { code: 0, signal: null });
    assert.ok(
      router.calls.some((c) => c.method === 'DELETE' && c.url === '/v1/workers/w1'),
      'no ghost registration left behind',
    );
  } finally {
    release();
    worker.child.kill('SIGKILL');
    await router.close();
  }
});

test('a registration the router refuses (another block size) ends the worker: one line, exit 2, no retry loop', {
  timeout: 60_000,
}, async () => {
  const router = await createRouter({ port: 0, logger: false, blockSize: 16 });
  const url = await router.listen();
  try {
    const started = performance.now();
    const { code, stdout, stderr } = await runWorkerCli([
      ...['--role', 'both', '--router', url, '--port', '0', '--block-size', '32'],
    ]);
    assert.equal(code, 2, stderr);
    assert.match(stdout, /listening on/);
    const lines = stderr.trim().split('\n');
    assert.equal(lines.length, 1, stderr);
    assert.match(
      lines[0]!,
      /^kvroute worker: the router refused this worker's registration \(400\): .*block/,
    );
    // Before, it retried with backoff for as long as it ran (silent without --verbose).
    assert.ok(performance.now() - started < 30_000);
    assert.equal(router.registry.size, 0);
  } finally {
    await router.close();
  }
});

test('a worker with a --worker-token and a router without one: the registration is refused, the worker ends with one line, exit 2', {
  timeout: 60_000,
}, async () => {
  // Before, the router registered it, chose it, and every request it was sent failed with a 502
  // (its request plane refused the router's frames), while the worker ran on as if all were well.
  const router = await createRouter({ port: 0, logger: false });
  const url = await router.listen();
  try {
    const { code, stderr } = await runWorkerCli([
      ...['--role', 'both', '--router', url, '--port', '0', '--worker-token', 'tok-only-worker'],
    ]);
    assert.equal(code, 2, stderr);
    const lines = stderr.trim().split('\n');
    assert.equal(lines.length, 1, stderr);
    assert.match(
      lines[0]!,
      /^kvroute worker: the router refused this worker's registration \(401\): this router has no worker token, .*must be the router's\)$/,
    );
    assert.ok(!stderr.includes('tok-only-worker'), 'the token is not printed');
    assert.equal(router.registry.size, 0);
  } finally {
    await router.close();
  }
});

test('a heartbeat refused with 401 (the router restarted with another --worker-token) ends the worker: one line that says so, exit 2', {
  timeout: 60_000,
}, async () => {
  // Before, the 401 was taken for an unreachable router: retried for ever, and said as
  // "cannot reach the router ... (heartbeat answered 401)".
  const first = await createRouter({ port: 0, logger: false, leaseTtlMs: 300, workerToken: 'old-token' });
  const url = await first.listen();
  const port = Number(new URL(url).port);
  const worker = await spawnWorker(['--role', 'both', '--router', url], {
    KVROUTE_WORKER_TOKEN: 'old-token',
  });
  let second: Awaited<ReturnType<typeof createRouter>> | undefined;
  try {
    await waitUntil(() => first.registry.size === 1);
    await first.close();
    second = await createRouter({ port, logger: false, leaseTtlMs: 300, workerToken: 'new-token' });
    await second.listen();
    const ended = await Promise.race([
      worker.exit,
      sleep(20_000, undefined, { ref: false }).then(() => 'still running' as const),
    ]);
    assert.deepEqual(ended, { code: 2, signal: null }, worker.stderr.join('\n'));
    const last = worker.stderr.filter((l) => l !== '').at(-1)!;
    assert.match(
      last,
      /^kvroute worker: the router refused this worker's heartbeat \(401\): .*must be the router's\)$/,
    );
    assert.ok(!worker.stderr.join('\n').includes('old-token'), 'the token is not printed');
    assert.equal(second.registry.size, 0);
  } finally {
    worker.child.kill('SIGKILL');
    await first.close();
    await second?.close();
  }
});

test("a refused heartbeat and a refused deregistration are logged as what they are, not as 'registration_refused' and 'deregistered'", async () => {
  const first = await createRouter({ port: 0, logger: false, leaseTtlMs: 300, workerToken: 'old-token' });
  const url = await first.listen();
  const port = Number(new URL(url).port);
  const events: [string, Record<string, unknown>][] = [];
  let refused: RegistrationRefused | undefined;
  const lease = new RouterLease({
    routerUrl: url,
    workerToken: 'old-token',
    registration: {
      role: 'decode',
      address: '127.0.0.1:1',
      model: 'mock-llm',
      block_size: 16,
      kv_blocks: 16,
      max_batched_tokens: 16,
    },
    log: (event, fields) => events.push([event, fields]),
    onRefused: (err) => {
      refused = err;
    },
  });
  let second: Awaited<ReturnType<typeof createRouter>> | undefined;
  try {
    lease.start();
    await waitUntil(() => first.registry.size === 1);
    await first.close();
    second = await createRouter({ port, logger: false, leaseTtlMs: 300, workerToken: 'new-token' });
    await second.listen();
    await waitUntil(() => refused !== undefined);
    await lease.stop();
    const names = events.map(([e]) => e);
    assert.ok(names.includes('heartbeat_refused'), names.join(', '));
    assert.ok(!names.includes('registration_refused'), names.join(', '));
    assert.ok(names.includes('deregister_refused'), names.join(', '));
    assert.ok(!names.includes('deregistered'), names.join(', '));
    assert.equal(events.find(([e]) => e === 'deregister_refused')![1].status, 401);
  } finally {
    await lease.stop();
    await first.close();
    await second?.close();
  }
});
