// Incremental detokenizer for output streamed one token at a time. A token may end in the middle
// of a multi-byte UTF-8 character (emoji, CJK are often split over two or three tokens); the
// partial bytes are held back until the character completes, so every emitted string is whole.
// Pure: one instance per stream, no shared state between streams.

import { type TokenPiece, tokenPiece } from './vocabulary.js';

const EMPTY = new Uint8Array(0);
// Without {stream: true} TextDecoder keeps no state between calls: safe to share. ignoreBOM keeps
// a U+FEFF that starts a call: each call decodes a piece from inside the text, never its start,
// and the default dropped that character from outputs (it is a zero-width no-break space too).
const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** Length of the longest prefix of `bytes` that does not end inside an incomplete character. */
function completeLength(bytes: Uint8Array): number {
  const n = bytes.length;
  let i = n - 1;
  // Walk back over at most three continuation bytes (10xxxxxx) to the lead byte.
  while (i >= 0 && n - i <= 3 && (bytes[i]! & 0xc0) === 0x80) i--;
  if (i < 0 || (bytes[i]! & 0xc0) === 0x80) return n; // no lead byte: invalid, emit as U+FFFD
  const lead = bytes[i]!;
  const need = lead >= 0xf0 && lead <= 0xf7 ? 4 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xc0 ? 2 : 1;
  return n - i < need ? i : n;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export class TokenStreamDecoder {
  #carry: Uint8Array = EMPTY;

  /** Adds one token; returns the text it completes (possibly '' while a character is split). */
  push(id: number): string {
    return this.#pushPiece(tokenPiece(id));
  }

  /** Ends the stream: bytes of a character that never completed come out as U+FFFD. */
  flush(): string {
    if (this.#carry.length === 0) return '';
    const text = utf8.decode(this.#carry);
    this.#carry = EMPTY;
    return text;
  }

  #pushPiece(piece: TokenPiece): string {
    if (typeof piece === 'string') {
      if (this.#carry.length === 0) return piece; // the common case: no bytes pending
      piece = utf8Encoder.encode(piece);
    }
    const bytes = this.#carry.length === 0 ? piece : concat(this.#carry, piece);
    const cut = completeLength(bytes);
    this.#carry = cut === bytes.length ? EMPTY : bytes.slice(cut);
    return cut === 0 ? '' : utf8.decode(cut === bytes.length ? bytes : bytes.subarray(0, cut));
  }
}

/** Whole-sequence detokenization with the same rules (never leaks state into another call). */
export function decodeTokens(ids: Iterable<number>): string {
  const decoder = new TokenStreamDecoder();
  let text = '';
  for (const id of ids) text += decoder.push(id);
  return text + decoder.flush();
}
