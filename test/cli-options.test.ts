import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type CommandSpec, envName, formatHelp, parseOptions } from '../src/cli/options.js';
import { UsageError } from '../src/errors.js';

const spec: CommandSpec = {
  usage: 'kvroute test',
  summary: 'test command',
  options: [
    { name: 'block-size', type: 'integer', default: 16, min: 1, help: 'tokens per block' },
    { name: 'policy', type: 'string', default: 'kv', choices: ['kv', 'random'], help: 'policy' },
    { name: 'temperature', type: 'number', default: 0, min: 0, help: 'softmax temperature' },
    { name: 'enforce-disagg', type: 'boolean', default: false, help: 'no fallback' },
    { name: 'json', type: 'boolean', default: false, help: 'json', noEnv: true },
  ],
};

test('flags, = form, env and defaults resolve in that order', () => {
  const { options } = parseOptions(spec, ['--block-size', '32', '--policy=random', '--enforce-disagg'], {
    KVROUTE_TEMPERATURE: '0.5',
    KVROUTE_BLOCK_SIZE: '64',
  });
  assert.deepEqual(options, {
    blockSize: 32,
    policy: 'random',
    temperature: 0.5,
    enforceDisagg: true,
    json: false,
  });
});

test('bad values raise UsageError with a one-line reason', () => {
  assert.throws(() => parseOptions(spec, ['--block-size', '0'], {}), UsageError);
  assert.throws(() => parseOptions(spec, ['--block-size', '1.5'], {}), /whole number/);
  assert.throws(() => parseOptions(spec, ['--policy', 'fast'], {}), /one of kv\|random/);
  assert.throws(() => parseOptions(spec, ['--nope'], {}), /unknown option --nope/);
  assert.throws(() => parseOptions(spec, ['--block-size'], {}), /needs a value/);
  assert.throws(() => parseOptions(spec, [], { KVROUTE_BLOCK_SIZE: 'abc' }), /KVROUTE_BLOCK_SIZE/);
});

test('options marked noEnv ignore the environment', () => {
  const { options } = parseOptions(spec, [], { KVROUTE_JSON: 'true' });
  assert.equal(options.json, false);
});

test('help lists every option with its env variable', () => {
  const help = formatHelp(spec);
  for (const o of spec.options) assert.match(help, new RegExp(`--${o.name}`));
  assert.match(help, new RegExp(envName('block-size')));
  assert.equal(parseOptions(spec, ['-h'], {}).help, true);
});
