// 64-bit hashes inside the index. Outside they are exact u64 (BigInt, or decimal strings on the
// wire, see src/protocols/kv-events.ts); inside they are two u32 halves so that hash tables stay in
// typed arrays and no BigInt or string is created on the hot path. Nothing is narrowed: the index
// compares all 64 bits, so its collision odds are XXH3-64's own (see README.md).

import { describeRejected } from '../util/describe-rejected.js';

/**
 * Keys of consecutive blocks as interleaved u32 halves: block i is (keys[2i] = low 32 bits,
 * keys[2i + 1] = high 32 bits). Produced by `localBlockKeys` and `keysFromU64Strings`.
 */
export type BlockKeys = Uint32Array;

const TWO_32 = 4294967296;

/**
 * Parses a canonical unsigned decimal (no sign, no leading zeros, at most 2^64-1) into
 * out[at] = low, out[at + 1] = high. Returns false (leaving out[at..at+1] unspecified) when
 * `text` is not such a string. Works in 5-digit chunks so every intermediate stays exact in a
 * double (low * 10^5 + chunk < 2^53) — about 4x faster than BigInt(text).
 */
export function parseU64Into(text: unknown, out: Uint32Array, at: number): boolean {
  if (typeof text !== 'string') return false;
  const n = text.length;
  if (n === 0 || n > 20 || (n > 1 && text.charCodeAt(0) === 48)) return false;
  let lo = 0;
  let hi = 0;
  let i = 0;
  while (i < n) {
    const end = Math.min(n, i + 5);
    let chunk = 0;
    let scale = 1;
    for (; i < end; i++) {
      const d = text.charCodeAt(i) - 48;
      if (d < 0 || d > 9) return false;
      chunk = chunk * 10 + d;
      scale *= 10;
    }
    const wide = lo * scale + chunk;
    const carry = Math.floor(wide / TWO_32);
    lo = wide - carry * TWO_32;
    hi = hi * scale + carry;
    if (hi >= TWO_32) return false;
  }
  out[at] = lo;
  out[at + 1] = hi;
  return true;
}

/** Decimal string of the u64 whose halves are (lo, hi): the wire form. */
export function u64String(lo: number, hi: number): string {
  if (hi === 0) return String(lo);
  return ((BigInt(hi) << 32n) | BigInt(lo)).toString();
}

/** Keys of wire hashes; throws RangeError naming the first string that is not a canonical u64. */
export function keysFromU64Strings(hashes: readonly string[]): BlockKeys {
  const keys = new Uint32Array(hashes.length * 2);
  for (let i = 0; i < hashes.length; i++) {
    if (!parseU64Into(hashes[i], keys, 2 * i)) {
      throw new RangeError(`not an unsigned 64-bit decimal: ${describeRejected(hashes[i])}`);
    }
  }
  return keys;
}

/** Keys of exact hashes (e.g. computeBlockHashes().local). */
export function keysFromBigUint64(hashes: BigUint64Array): BlockKeys {
  return new Uint32Array(hashes.buffer.slice(hashes.byteOffset, hashes.byteOffset + hashes.byteLength));
}

/** The exact value of block i of `keys`. */
export function keyToBigInt(keys: BlockKeys, i: number): bigint {
  return (BigInt(keys[2 * i + 1]!) << 32n) | BigInt(keys[2 * i]!);
}
