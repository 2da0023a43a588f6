// Block hashing of CONTRACT.md §4 (NVIDIA Dynamo's KV-router scheme): XXH3-64, seed 1337, over each
// full block's tokens as little-endian u32; sequence hashes chain the local ones. The arithmetic
// runs in a small hand-written WebAssembly module (xxh3.wat) and a whole prompt is hashed in one
// call, because crossing into WebAssembly per 64-byte block would cost more than the hashing.

import type { BlockKeys } from './u64.js';
import { XXH3_WASM_BASE64 } from './xxh3-wasm.generated.js';

export const BLOCK_HASH_SEED = 1337n;

// The project's lib (ES2023, no DOM) does not type the WebAssembly global; this is the part used.
declare namespace WebAssembly {
  class Module {
    constructor(bytes: Uint8Array);
  }
  class Instance {
    constructor(module: Module, imports: object);
    readonly exports: unknown;
  }
  interface Memory {
    readonly buffer: ArrayBuffer;
    grow(pages: number): number;
  }
}

interface Xxh3Exports {
  memory: WebAssembly.Memory;
  init(seedLo: number, seedHi: number): void;
  hash_bytes(ptr: number, len: number): bigint;
  hash_blocks(src: number, blocks: number, blockBytes: number, outLocal: number, outSeq: number): void;
}

/** Bytes below this offset belong to the module (secrets, accumulators). */
const SCRATCH = 1024;

// One instance per thread, compiled synchronously at import (the module is ~2 KiB).
const wasm = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(XXH3_WASM_BASE64, 'base64')), {})
  .exports as unknown as Xxh3Exports;
wasm.init(Number(BLOCK_HASH_SEED & 0xffffffffn), Number(BLOCK_HASH_SEED >> 32n));

let words = new Uint32Array(wasm.memory.buffer);

/** Grows the module's memory to hold `bytes` past SCRATCH; refreshes the view after growth. */
function reserve(bytes: number): void {
  const needed = SCRATCH + bytes;
  const have = wasm.memory.buffer.byteLength;
  if (needed > have) wasm.memory.grow(Math.ceil((needed - have) / 65536));
  if (words.buffer !== wasm.memory.buffer) words = new Uint32Array(wasm.memory.buffer);
}

function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 1 || blockSize > 1 << 20) {
    throw new RangeError(`block size must be an integer in [1, 2^20], got ${blockSize}`);
  }
}

/**
 * Copies the full blocks of `tokens` into module memory and hashes them. Tokens are taken as u32
 * the way a Uint32Array stores numbers (callers pass token ids, which are u32 by definition).
 * Returns the byte offsets of the outputs and the block count.
 */
function hashInto(tokens: ArrayLike<number>, blockSize: number, withSequence: boolean) {
  checkBlockSize(blockSize);
  const blocks = Math.floor(tokens.length / blockSize);
  const tokenCount = blocks * blockSize;
  // Outputs start 8-aligned so BigUint64Array views can read them in place.
  const localOffset = (SCRATCH + tokenCount * 4 + 7) & ~7;
  const seqOffset = localOffset + blocks * 8;
  reserve(seqOffset + blocks * 8 - SCRATCH);
  const start = SCRATCH >>> 2;
  if (tokens instanceof Uint32Array) {
    words.set(tokens.length === tokenCount ? tokens : tokens.subarray(0, tokenCount), start);
  } else if (tokens.length === tokenCount && (Array.isArray(tokens) || ArrayBuffer.isView(tokens))) {
    words.set(tokens as ArrayLike<number>, start);
  } else {
    for (let i = 0; i < tokenCount; i++) words[start + i] = tokens[i]!;
  }
  wasm.hash_blocks(SCRATCH, blocks, blockSize * 4, localOffset, withSequence ? seqOffset : 0);
  return { blocks, localOffset, seqOffset };
}

/**
 * Exact local and sequence hashes of every full block (the partial tail is not hashed): what a
 * worker publishes in its KV events. Values are unsigned 64-bit.
 */
export function computeBlockHashes(
  tokens: ArrayLike<number>,
  blockSize: number,
): { local: BigUint64Array; sequence: BigUint64Array } {
  const { blocks, localOffset, seqOffset } = hashInto(tokens, blockSize, true);
  const buffer = wasm.memory.buffer;
  return {
    local: new BigUint64Array(buffer, localOffset, blocks).slice(),
    sequence: new BigUint64Array(buffer, seqOffset, blocks).slice(),
  };
}

/**
 * The router's hot path: the index keys of the local block hashes of a prompt, as interleaved
 * (low, high) u32 halves (see BlockKeys). No BigInt is created.
 */
export function localBlockKeys(tokens: ArrayLike<number>, blockSize: number): BlockKeys {
  const { blocks, localOffset } = hashInto(tokens, blockSize, false);
  return words.slice(localOffset >>> 2, (localOffset >>> 2) + blocks * 2);
}

/** XXH3-64 with seed 1337 of arbitrary bytes (tests, tools). */
export function xxh3Seeded(bytes: Uint8Array): bigint {
  reserve(bytes.length);
  new Uint8Array(wasm.memory.buffer).set(bytes, SCRATCH);
  if (words.buffer !== wasm.memory.buffer) words = new Uint32Array(wasm.memory.buffer);
  return BigInt.asUintN(64, wasm.hash_bytes(SCRATCH, bytes.length));
}
