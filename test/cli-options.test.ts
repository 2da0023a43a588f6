import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  type CommandSpec,
  commaIntegers,
  commaList,
  decimalText,
  envName,
  formatHelp,
  parseOptions,
} from '../src/cli/options.js';
import { UsageError } from '../src/errors.js';

const spec: CommandSpec = {
  usage: 'kvroute test',
  summary: 'test command',
  options: [
    { name: 'block-size', type: 'integer', default: 16, min: 1, help: 'tokens per block' },
    { name: 'policy', type: 'string', default: 'kv', choices: ['kv', 'random'], help: 'policy' },
    { name: 'temperature', type: 'number', default: 0, min: 0, help: 'softmax temperature' },
    { name: 'enforce-disagg', type: 'boolean', default: false, help: 'no fallback' },
    { name: 'json', type: 'boolean', default: false, help: 'json' },
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

test('numbers are decimal only: no hex, no exponent, no blank', () => {
  for (const raw of ['0x10', '1e3', ' ', '12abc', 'Infinity']) {
    assert.throws(() => parseOptions(spec, ['--block-size', raw], {}), UsageError, raw);
  }
  assert.throws(() => parseOptions(spec, ['--temperature', '1e-3'], {}), /expected a number/);
  assert.equal(parseOptions(spec, ['--temperature', '0.25'], {}).options.temperature, 0.25);
  assert.equal(parseOptions(spec, ['--block-size', ' 32 '], {}).options.blockSize, 32);
});

test('a stray word is an error unless the command takes positionals', () => {
  assert.throws(() => parseOptions(spec, ['9000'], {}), /unexpected argument '9000'/);
  assert.throws(() => parseOptions(spec, ['-p', '9000'], {}), /unexpected argument '-p'/);
  const withPositionals = { ...spec, positionals: '<name>' };
  assert.deepEqual(parseOptions(withPositionals, ['replay', '--json'], {}).positionals, ['replay']);
  assert.equal(parseOptions(spec, ['stray', '--help'], {}).help, true);
});

test('comma lists: known items in the given order, duplicates dropped, anything else a UsageError', () => {
  assert.deepEqual(commaList('http, tcp,http', 'transports', ['tcp', 'http', 'raw']), ['http', 'tcp']);
  assert.throws(
    () => commaList('tcp,foo', 'transports', ['tcp', 'http']),
    /--transports: 'foo' is not one of tcp,http/,
  );
  assert.throws(() => commaList(' , ', 'parts', ['a']), /at least one/);
  assert.deepEqual(commaList('64,8', 'workers', [8, 64, 512]), [64, 8]);
  assert.throws(() => commaList('7', 'workers', [8, 64, 512]), /'7' is not one of 8,64,512/);
  assert.deepEqual(commaIntegers('8, 64,8', 'workers'), [8, 64]);
  assert.throws(() => commaIntegers('a,b', 'workers'), /expected whole numbers >= 1, got 'a'/);
  assert.throws(() => commaIntegers('0', 'workers'), /got '0'/);
  assert.throws(() => commaIntegers('', 'workers'), /at least one/);
});

test('every option has its environment variable, --json too (CONTRACT.md §1)', () => {
  assert.equal(parseOptions(spec, [], { KVROUTE_JSON: 'true' }).options.json, true);
  assert.equal(parseOptions(spec, ['--json', 'false'], { KVROUTE_JSON: 'true' }).options.json, false);
  for (const o of spec.options) assert.match(formatHelp(spec), new RegExp(`\\[env ${envName(o.name)}\\]`));
});

test('help lists every option with its env variable', () => {
  const help = formatHelp(spec);
  for (const o of spec.options) assert.match(help, new RegExp(`--${o.name}`));
  assert.match(help, new RegExp(envName('block-size')));
  assert.equal(parseOptions(spec, ['-h'], {}).help, true);
});

test('--help wins over a bad flag or environment variable anywhere', () => {
  const env = { KVROUTE_ENFORCE_DISAGG: 'maybe', KVROUTE_BLOCK_SIZE: 'abc' };
  assert.throws(() => parseOptions(spec, [], env), /KVROUTE_BLOCK_SIZE/);
  const withHelp = parseOptions(spec, ['--help'], env);
  assert.equal(withHelp.help, true);
  // The bad values fall back to the defaults; nothing uses them, but the shape stays whole.
  assert.equal(withHelp.options.enforceDisagg, false);
  assert.equal(withHelp.options.blockSize, 16);
  for (const argv of [
    ['--policy', 'fast', '-h'],
    ['--nope', '--help'],
    ['--help', '--block-size'],
    ['--block-size', '0', '--help'],
  ]) {
    assert.equal(parseOptions(spec, argv, {}).help, true, argv.join(' '));
  }
  // Without --help the first mistake on the line is the one reported.
  assert.throws(() => parseOptions(spec, ['--policy', 'fast', '--nope'], {}), /--policy: must be one of/);
});

test('decimalText gives back text the parser reads as the same number, without an exponent', () => {
  for (const n of [1e21, 1.5e300, 1.2345678901234569e23, 0.001, 3.5, 20, 1e-7]) {
    const text = decimalText(n);
    assert.doesNotMatch(text, /e/i, text);
    assert.equal(parseOptions(spec, ['--temperature', text], {}).options.temperature, n, text);
  }
});

test('refuseEmptyEnv: an empty variable is an error for that option (not "unset"), and only for it', () => {
  const secret: CommandSpec = {
    usage: 'kvroute test',
    summary: 'test command',
    options: [
      { name: 'token', type: 'string', refuseEmptyEnv: true, help: 'a secret' },
      { name: 'policy', type: 'string', default: 'kv', help: 'policy' },
    ],
  };
  assert.throws(() => parseOptions(secret, [], { KVROUTE_TOKEN: '' }), /KVROUTE_TOKEN is set but empty/);
  assert.equal(parseOptions(secret, [], { KVROUTE_POLICY: '' }).options.policy, 'kv');
  assert.equal(parseOptions(secret, [], {}).options.token, undefined);
  assert.equal(parseOptions(secret, [], { KVROUTE_TOKEN: 's3cret' }).options.token, 's3cret');
  assert.equal(parseOptions(secret, ['--help'], { KVROUTE_TOKEN: '' }).help, true);
});
