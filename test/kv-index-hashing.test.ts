// Block hashing (CONTRACT.md §4) against the shared vectors and an independent XXH3 (hash-wasm),
// plus the u64 wire-string conversions the index relies on.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { xxhash3 } from 'hash-wasm';
import { GENERATED_PATH, renderXxh3Module } from '../scripts/gen-xxh3-wasm.js';
import {
  computeBlockHashes,
  keysFromBigUint64,
  keysFromU64Strings,
  keyToBigInt,
  localBlockKeys,
  parseU64Into,
  u64String,
  xxh3Seeded,
} from '../src/kv-index/index.js';
import { seededRng as prng } from '../src/util/seeded-rng.js';

interface VectorCase {
  name: string;
  block_size: number;
  tokens: number[];
  local_hashes: string[];
  sequence_hashes: string[];
}
const vectors: { cases: VectorCase[] } = JSON.parse(
  readFileSync(new URL('../../shared/test-vectors/block_hashes.json', import.meta.url), 'utf8'),
);

async function referenceXxh3(bytes: Uint8Array): Promise<bigint> {
  return BigInt(`0x${await xxhash3(bytes, 1337, 0)}`);
}

function le64(values: bigint[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  for (const [i, v] of values.entries()) view.setBigUint64(i * 8, v, true);
  return out;
}

describe('computeBlockHashes', () => {
  test('reproduces every shared vector', () => {
    assert.ok(vectors.cases.length >= 5);
    for (const c of vectors.cases) {
      const { local, sequence } = computeBlockHashes(c.tokens, c.block_size);
      assert.deepEqual([...local].map(String), c.local_hashes, `${c.name} local`);
      assert.deepEqual([...sequence].map(String), c.sequence_hashes, `${c.name} sequence`);
      const fromTyped = computeBlockHashes(Uint32Array.from(c.tokens), c.block_size);
      assert.deepEqual(fromTyped.local, local, `${c.name} from Uint32Array`);
    }
  });

  test('XXH3-64 seed 1337 agrees with hash-wasm for every length class 0..1100 bytes', async () => {
    const random = prng(7);
    for (let len = 0; len <= 1100; len++) {
      const bytes = new Uint8Array(len);
      for (let i = 0; i < len; i++) bytes[i] = Math.floor(random() * 256);
      assert.equal(xxh3Seeded(bytes), await referenceXxh3(bytes), `length ${len}`);
    }
  });

  test('block sizes 1..70 match a reference built from hash-wasm, tail ignored', async () => {
    const random = prng(11);
    for (let blockSize = 1; blockSize <= 70; blockSize++) {
      const blocks = 1 + Math.floor(random() * 5);
      const tokens = Array.from({ length: blocks * blockSize + Math.floor(random() * blockSize) }, () =>
        Math.floor(random() * 4294967296),
      );
      const expectedLocal: bigint[] = [];
      const expectedSeq: bigint[] = [];
      for (let b = 0; b < blocks; b++) {
        const bytes = new Uint8Array(
          Uint32Array.from(tokens.slice(b * blockSize, (b + 1) * blockSize)).buffer,
        );
        const local = await referenceXxh3(bytes);
        expectedLocal.push(local);
        expectedSeq.push(b === 0 ? local : await referenceXxh3(le64([expectedSeq[b - 1]!, local])));
      }
      const { local, sequence } = computeBlockHashes(tokens, blockSize);
      assert.deepEqual([...local], expectedLocal, `block size ${blockSize}`);
      assert.deepEqual([...sequence], expectedSeq, `block size ${blockSize}`);
    }
  });

  test('localBlockKeys gives the local hashes as (low, high) halves', () => {
    const random = prng(3);
    const tokens = Array.from({ length: 16 * 40 + 5 }, () => Math.floor(random() * 200_000));
    const keys = localBlockKeys(tokens, 16);
    const { local } = computeBlockHashes(tokens, 16);
    assert.equal(keys.length, 80);
    assert.deepEqual(keys, keysFromBigUint64(local));
    for (let i = 0; i < local.length; i++) assert.equal(keyToBigInt(keys, i), local[i]);
    // A large prompt grows the module memory; later small calls still see fresh views.
    assert.equal(localBlockKeys(new Uint32Array(300_000), 16).length, 300_000 / 8);
    assert.deepEqual(localBlockKeys(tokens, 16), keys);
  });

  test('rejects block sizes that are not positive integers', () => {
    for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => computeBlockHashes([1, 2, 3], bad), RangeError);
      assert.throws(() => localBlockKeys([1, 2, 3], bad), RangeError);
    }
  });

  test('the committed WebAssembly module is what xxh3.wat assembles to', async () => {
    assert.equal(readFileSync(GENERATED_PATH, 'utf8'), await renderXxh3Module());
  });
});

describe('u64 wire strings', () => {
  test('parse and format round-trip exactly, including the extremes', () => {
    const random = prng(5);
    const samples = [0n, 1n, 4294967295n, 4294967296n, 9007199254740993n, 2n ** 64n - 1n];
    for (let i = 0; i < 2000; i++) {
      samples.push(BigInt.asUintN(64, (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(i * 7919)));
    }
    const out = new Uint32Array(2);
    for (const v of samples) {
      assert.ok(parseU64Into(v.toString(), out, 0), v.toString());
      assert.equal(keyToBigInt(out, 0), v);
      assert.equal(u64String(out[0]!, out[1]!), v.toString());
    }
  });

  test('rejects everything that is not a canonical u64 decimal', () => {
    const out = new Uint32Array(2);
    for (const bad of [
      '',
      '-1',
      '+1',
      '01',
      '1.0',
      '1e3',
      ' 1',
      '0x10',
      'abc',
      '18446744073709551616',
      '99999999999999999999',
      '123456789012345678901',
      12,
      null,
      undefined,
      12n,
      {},
    ]) {
      assert.equal(parseU64Into(bad, out, 0), false, String(bad));
    }
    assert.throws(() => keysFromU64Strings(['1', 'x']), /not an unsigned 64-bit decimal: "x"/);
  });
});
