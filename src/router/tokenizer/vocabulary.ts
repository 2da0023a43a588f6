// The one BPE vocabulary kvroute tokenizes with: o200k_base (GPT-4o family) from gpt-tokenizer,
// whose ranks ship inside the npm package (no download at run time). Pure and synchronous; both
// the main thread and the pool's worker threads load it.
//
// Why not gpt-tokenizer's own decode(): it shares ONE module-level TextDecoder in streaming mode
// and never flushes it, so a call that ends inside a multi-byte character leaves bytes behind
// that get prepended to the next, unrelated call. We decode from the rank table ourselves.

import bpeRanks from 'gpt-tokenizer/bpeRanks/o200k_base';
import {
  decode as libraryDecode,
  encode as libraryEncode,
  vocabularySize,
} from 'gpt-tokenizer/encoding/o200k_base';
import { KvrouteError } from '../../errors.js';

export const ENCODING_NAME = 'o200k_base';

/** Number of ids in the vocabulary, special tokens included (gpt-tokenizer's count). */
export const VOCAB_SIZE: number = vocabularySize;

/** Ids 0 .. TEXT_TOKEN_COUNT-1 are ordinary byte-pair tokens (no gaps); special tokens follow. */
export const TEXT_TOKEN_COUNT: number = bpeRanks.length;

// Special-token text looks like `<|endoftext|>`. User text that contains it is tokenized as plain
// characters (tiktoken's encode_ordinary): a prompt can never inject a control token.
const ORDINARY_TEXT = { disallowedSpecial: new Set<string>() };

/** Text to token ids. Cost is linear in the text; see the README for measured throughput. */
export function encodeText(text: string): number[] {
  return libraryEncode(text, ORDINARY_TEXT);
}

/** A token's contents: a string when its bytes are whole UTF-8, else the raw bytes. */
export type TokenPiece = string | Uint8Array;

const byteTokens = new Map<number, Uint8Array>();
const specialTokens = new Map<number, string>();

export function tokenPiece(id: number): TokenPiece {
  const rank = bpeRanks[id];
  if (typeof rank === 'string') return rank;
  if (rank !== undefined) {
    let bytes = byteTokens.get(id);
    if (bytes === undefined) {
      bytes = Uint8Array.from(rank);
      byteTokens.set(id, bytes);
    }
    return bytes;
  }
  let special = specialTokens.get(id);
  if (special === undefined) {
    // Special tokens decode to a whole string, a path of libraryDecode that never touches its
    // shared TextDecoder. Unknown ids throw there.
    try {
      special = libraryDecode([id]);
    } catch {
      throw new KvrouteError('invalid_request', `token id ${id} is not in the ${ENCODING_NAME} vocabulary`);
    }
    specialTokens.set(id, special);
  }
  return special;
}
