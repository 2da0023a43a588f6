// `kvroute demo` as a newcomer runs it: one process that starts the router and 2 + 2 workers,
// serves the official OpenAI client on the disaggregated path, and stops every child on Ctrl-C.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, test } from 'node:test';
import OpenAI from 'openai';
import { CLI_MAIN } from './helpers/fleet.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
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
