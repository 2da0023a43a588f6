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
  encodeGenerator as libraryEncodePieces,
  vocabularySize,
} from 'gpt-tokenizer/encoding/o200k_base';
import { KvrouteError } from '../../errors.js';

export const ENCODING_NAME = 'o200k_base';

/** Number of ids in the vocabulary, special tokens included (gpt-tokenizer's count). */
export const VOCAB_SIZE: number = vocabularySize;

/** Ids 0 .. TEXT_TOKEN_COUNT-1 are ordinary byte-pair tokens (no gaps); special tokens follow. */
export const TEXT_TOKEN_COUNT: number = bpeRanks.length;

/**
 * The longest token, in UTF-8 bytes: 128 spaces (id 72056). A test holds it to the vocabulary.
 */
export const MAX_TOKEN_BYTES = 128;

/**
 * A lower bound of `text`'s token count, from its length alone (O(1)). The ids' bytes are the
 * text's UTF-8 bytes, at least one per UTF-16 code unit (a lone surrogate becomes U+FFFD's three),
 * and a token holds at most MAX_TOKEN_BYTES of them. Reached by runs of spaces; English averages
 * ~4 code units per token, so the bound is far below most counts: it serves to refuse a text far
 * over a limit without reading it.
 */
export function minTokenCount(text: string): number {
  return Math.ceil(text.length / MAX_TOKEN_BYTES);
}

// Special-token text looks like `<|endoftext|>`. User text that contains it is tokenized as plain
// characters (tiktoken's encode_ordinary): a prompt can never inject a control token.
const ORDINARY_TEXT = { disallowedSpecial: new Set<string>() };

/**
 * Longest run of one character class (letters and marks; symbols and punctuation; whitespace)
 * encoded as one piece. BPE merges inside a piece in time quadratic in its length (64 K CJK
 * characters with no punctuation took 12 s, and the body limit allows 4 MiB), so a longer run is
 * encoded in slices of this length. Natural text has no such run, so its ids are o200k_base's.
 */
export const MAX_RUN_CHARS = 256;

// o200k_base's pieces never cross from one of these classes to another, except for one leading
// character and a punctuation piece's tail of line breaks and slashes, which has no bound of its
// own: `!` then `/\n` repeated is one piece that alternates between whitespace and not at every
// character (160 K characters of it took 9.9 s). So a run of line breaks and slashes is a class
// of its own here. Splitting these runs bounds every piece.
export const LONG_RUN = new RegExp(
  `[\\p{L}\\p{M}]{${MAX_RUN_CHARS},}|[^\\s\\p{L}\\p{N}]{${MAX_RUN_CHARS},}|\\s{${MAX_RUN_CHARS},}|[\\r\\n/]{${MAX_RUN_CHARS},}`,
  'gu',
);

/** JavaScript's \s, by code unit (all of it is in the BMP). */
function isSpace(c: number): boolean {
  if (c < 0x80) return c === 0x20 || (c >= 0x09 && c <= 0x0d);
  return (
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000 ||
    c === 0xfeff
  );
}

/**
 * Whether `text` has MAX_RUN_CHARS code units in a row that are all whitespace, all not, or all
 * line breaks and slashes: every long run of one class is one of these. A plain scan, far cheaper
 * than LONG_RUN on every text.
 */
function mayHoldLongRun(text: string): boolean {
  let run = 0;
  let space = false;
  let breaksAndSlashes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a || c === 0x0d || c === 0x2f) {
      if (++breaksAndSlashes >= MAX_RUN_CHARS) return true;
    } else breaksAndSlashes = 0;
    const s = isSpace(c);
    if (s === space) {
      if (++run >= MAX_RUN_CHARS) return true;
    } else {
      space = s;
      run = 1;
    }
  }
  return false;
}

/** Each class's maximal runs: a greedy `+` reads each run once, so finding them is linear. */
const CLASS_RUNS = [/[\p{L}\p{M}]+/gu, /[^\s\p{L}\p{N}]+/gu, /\s+/gu, /[\r\n/]+/gu];

/**
 * LONG_RUN's matches in `text` (start, length), as `text.matchAll(LONG_RUN)` finds them. That
 * regex alone is slow on text with many runs just short of the bound, such as CJK sentences: at
 * every position it reads to the end of the run before failing, so it cost as much as encoding
 * (~20 ms for 75 K characters). A match is a whole run of one class at least MAX_RUN_CHARS long,
 * so it lies inside one of that class's maximal runs of that length; the regex runs only over
 * those, merged where they overlap, and no match is lost, moved or added (the test holds it to
 * the whole-text scan).
 */
export function longRuns(text: string): [start: number, length: number][] {
  const spans: [number, number][] = [];
  for (const re of CLASS_RUNS) {
    for (const run of text.matchAll(re)) {
      // Code units: at least as many as the code points LONG_RUN counts.
      if (run[0].length >= MAX_RUN_CHARS) spans.push([run.index, run.index + run[0].length]);
    }
  }
  spans.sort((a, b) => a[0] - b[0]);
  const found: [number, number][] = [];
  for (let i = 0; i < spans.length; ) {
    const start = spans[i]![0];
    let end = spans[i]![1];
    for (i++; i < spans.length && spans[i]![0] < end; i++) end = Math.max(end, spans[i]![1]);
    for (const run of text.slice(start, end).matchAll(LONG_RUN))
      found.push([start + run.index, run[0].length]);
  }
  return found;
}

/**
 * Appends `text`'s ids to `ids`, stopping once they number more than `maxTokens` (then exactly
 * maxTokens + 1). False when it stopped. A token is at least one UTF-8 byte and a UTF-16 code unit
 * at most three, so a text that cannot reach the limit takes the library's plain encode; a longer
 * one is encoded piece by piece (the same pieces and ids) and the rest of it never is.
 */
function appendEncoded(ids: number[], text: string, maxTokens: number): boolean {
  if (ids.length + 3 * text.length <= maxTokens) {
    for (const id of libraryEncode(text, ORDINARY_TEXT)) ids.push(id);
    return true;
  }
  for (const piece of libraryEncodePieces(text, ORDINARY_TEXT)) {
    for (const id of piece) {
      ids.push(id);
      if (ids.length > maxTokens) return false;
    }
  }
  return true;
}

/**
 * Text to token ids. With `maxTokens`, encoding stops once the ids number more than it: the result
 * is then the first maxTokens + 1 ids of the whole text's (a count that is only a lower bound);
 * otherwise it is all of them, the same as without a limit. Cost is linear in the text, or in the
 * part encoded before the limit (plus a scan of the whole text for long runs); see the README.
 */
export function encodeText(text: string, maxTokens: number = Number.POSITIVE_INFINITY): number[] {
  const sliced = mayHoldLongRun(text);
  // The common path (no limit, or a text too short to reach it): the library's array, no copy.
  if (!sliced && 3 * text.length <= maxTokens) return libraryEncode(text, ORDINARY_TEXT);
  const ids: number[] = [];
  if (!sliced) {
    appendEncoded(ids, text, maxTokens);
    return ids;
  }
  let from = 0;
  for (const [runStart, runLength] of longRuns(text)) {
    if (!appendEncoded(ids, text.slice(from, runStart), maxTokens)) return ids;
    const end = runStart + runLength;
    for (let at = runStart; at < end; ) {
      let cut = Math.min(at + MAX_RUN_CHARS, end);
      // Never between the halves of a surrogate pair (each half would encode as U+FFFD).
      if (cut < end && isHighSurrogate(text.charCodeAt(cut - 1))) cut--;
      if (!appendEncoded(ids, text.slice(at, cut), maxTokens)) return ids;
      at = cut;
    }
    from = end;
  }
  appendEncoded(ids, text.slice(from), maxTokens);
  return ids;
}

function isHighSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
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
