// `kvroute bench kv-index` as a process: its JSON line and how it judges its goals.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

test('bench kv-index without 64 workers judges the 64-worker goal null (not measured), not missed', () => {
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      MAIN,
      'bench',
      'kv-index',
      '--quick',
      '--workers',
      '8',
      '--queries',
      '10',
      '--rounds',
      '1',
      '--json',
    ],
    { encoding: 'utf8', env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' }, timeout: 120_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const result = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  assert.deepEqual(
    result.configs.map((c: { workers: number }) => c.workers),
    [8],
  );
  assert.equal(result.goals.findMatches8k64WorkersP99Us, null);
  assert.equal(result.met.findMatches, null);
  // The goals it did measure are judged.
  assert.equal(typeof result.met.apply, 'boolean');
  assert.equal(typeof result.met.hashing, 'boolean');
});
