// JSON.parse over the request body's bytes, for the bodies the router gets most: objects, arrays,
// strings, numbers. V8's JSON.parse needs the body as a string first and reads a 1k-token prompt
// (~6.6 KB of integers) in ~13 µs; walking the bytes in JS takes about half that, and the body
// is never decoded into a string at all. Anything this reader does not handle exactly as
// JSON.parse would (a `\u` escape, nesting deeper than MAX_DEPTH, any syntax error) makes it give
// up: the caller then runs JSON.parse on the decoded text, so the values and the errors are
// always JSON.parse's own.
//
// Pure: no I/O. Not reentrant (the position is module state; parsing is synchronous).

import { rememberIdArrayText } from '../openai/token-id-text.js';

/** What parseJsonBytes returns when it leaves the body to JSON.parse. */
export const NOT_PARSED: unique symbol = Symbol('not parsed');

/** Deeper nesting goes to JSON.parse (no recursion here deep enough to overflow the stack). */
const MAX_DEPTH = 256;

/** Thrown internally to give up; never escapes parseJsonBytes. */
const GIVE_UP = new Error('json-bytes: left to JSON.parse');

let src: Buffer = Buffer.alloc(0);
let pos = 0;

/** The body's value as JSON.parse(body.toString('utf8')) gives it, or NOT_PARSED to leave it to JSON.parse. */
export function parseJsonBytes(body: Buffer): unknown {
  src = body;
  pos = 0;
  quoteAt = -1;
  backslashAt = -1;
  try {
    const value = parseValue(0);
    skipSpace();
    if (pos !== body.length) return NOT_PARSED;
    return value;
  } catch (err) {
    if (err === GIVE_UP) return NOT_PARSED;
    throw err;
  } finally {
    src = EMPTY;
  }
}

const EMPTY = Buffer.alloc(0);

function skipSpace(): void {
  const s = src;
  let p = pos;
  for (;;) {
    const c = s[p];
    if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) p++;
    else break;
  }
  pos = p;
}

function parseValue(depth: number): unknown {
  skipSpace();
  const c = src[pos];
  if (c === 0x22) return parseString();
  if (c === 0x2d || (c !== undefined && c >= 0x30 && c <= 0x39)) return parseNumber();
  if (c === 0x5b) return parseArray(depth + 1);
  if (c === 0x7b) return parseObject(depth + 1);
  if (c === 0x74) return literal(TRUE_BYTES, true);
  if (c === 0x66) return literal(FALSE_BYTES, false);
  if (c === 0x6e) return literal(NULL_BYTES, null);
  throw GIVE_UP;
}

const TRUE_BYTES = [0x74, 0x72, 0x75, 0x65];
const FALSE_BYTES = [0x66, 0x61, 0x6c, 0x73, 0x65];
const NULL_BYTES = [0x6e, 0x75, 0x6c, 0x6c];

function literal<T>(bytes: readonly number[], value: T): T {
  for (let i = 0; i < bytes.length; i++) if (src[pos + i] !== bytes[i]) throw GIVE_UP;
  pos += bytes.length;
  return value;
}

const isSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/**
 * Where an array's plain integers (token ids) are read before being copied out at their exact
 * length: pushing onto a fresh array grows it by copying, ~3.5x a 1k prompt's 8 KiB allocated.
 * Only Smi-range values go in, so it stays an array of small integers. One array at a time uses
 * it (an array that meets anything else takes its integers out first).
 */
let scratch: number[] = [];
/** A scratch grown past this (a very long prompt) is dropped after use rather than kept. */
const SCRATCH_KEEP = 1 << 16;

/** Arrays of at least this many integers get their text recorded (token-id-text.ts). */
const RECORD_TEXT_FROM = 16;

function takeInts(n: number): unknown[] {
  const out = scratch.slice(0, n);
  if (scratch.length > SCRATCH_KEEP) scratch = [];
  return out;
}

function parseArray(depth: number): unknown[] {
  if (depth > MAX_DEPTH) throw GIVE_UP;
  // Reads past the end give undefined (typed as number here), which compares false with every
  // byte: the loops need no bounds checks, and a truncated body ends in GIVE_UP.
  const s = src;
  let p = pos + 1; // after [
  let c = s[p]!;
  while (isSpace(c)) c = s[++p]!;
  if (c === 0x5d) {
    pos = p + 1;
    return [];
  }
  const ints = scratch;
  const open = pos;
  let n = 0;
  let digitBytes = 0;
  for (;;) {
    // A plain integer of up to 10 digits in Smi range, read right here; anything else ends the run.
    // Digits as (byte - 0x30) in 0..9: one range test per byte (a read past the end is NaN).
    const start = p;
    let d = c - 0x30;
    let v = d;
    if (d > 0 && d <= 9) {
      d = s[++p]! - 0x30;
      while (d >= 0 && d <= 9) {
        v = v * 10 + d;
        d = s[++p]! - 0x30;
      }
      c = d + 0x30;
    } else if (d === 0) {
      c = s[++p]!;
    } else {
      pos = start;
      return parseArrayFrom(takeInts(n), depth);
    }
    if (c === 0x2c && p - start <= 10 && v <= 0x7fffffff) {
      // The common case: a comma right after the integer.
      ints[n++] = v;
      digitBytes += p - start;
      c = s[++p]!;
      while (isSpace(c)) c = s[++p]!;
      continue;
    }
    if (
      c === 0x2e ||
      c === 0x65 ||
      c === 0x45 ||
      (c >= 0x30 && c <= 0x39) ||
      p - start > 10 ||
      v > 0x7fffffff
    ) {
      pos = start;
      return parseArrayFrom(takeInts(n), depth);
    }
    ints[n++] = v;
    digitBytes += p - start;
    while (isSpace(c)) c = s[++p]!;
    if (c === 0x2c) {
      c = s[++p]!;
      while (isSpace(c)) c = s[++p]!;
      continue;
    }
    if (c === 0x5d) {
      pos = p + 1;
      const out = takeInts(n);
      // No byte but digits, commas and the brackets: the text is JSON.stringify(out).
      if (n >= RECORD_TEXT_FROM && pos - open === digitBytes + n + 1) {
        rememberIdArrayText(out as number[], s.subarray(open, pos));
      }
      return out;
    }
    throw GIVE_UP;
  }
}

/** The rest of an array from the element at `pos`, appended to `out` (its elements so far). */
function parseArrayFrom(out: unknown[], depth: number): unknown[] {
  const s = src;
  for (;;) {
    out.push(parseValue(depth));
    let p = pos;
    let c = s[p]!;
    while (isSpace(c)) c = s[++p]!;
    pos = p + 1;
    if (c === 0x2c) continue;
    if (c === 0x5d) return out;
    throw GIVE_UP;
  }
}

function parseObject(depth: number): Record<string, unknown> {
  if (depth > MAX_DEPTH) throw GIVE_UP;
  pos++; // {
  const out: Record<string, unknown> = {};
  skipSpace();
  if (src[pos] === 0x7d) {
    pos++;
    return out;
  }
  for (;;) {
    if (src[pos] !== 0x22) throw GIVE_UP;
    const key = parseString();
    // JSON.parse makes an own property even of this name; an assignment would set the prototype.
    if (key === '__proto__') throw GIVE_UP;
    skipSpace();
    if (src[pos++] !== 0x3a) throw GIVE_UP; // :
    out[key] = parseValue(depth);
    skipSpace();
    const sep = src[pos++];
    if (sep === 0x2c) {
      skipSpace();
      continue;
    }
    if (sep === 0x7d) return out;
    throw GIVE_UP;
  }
}

/** A JSON number: integers of up to 15 digits computed here (exact), any other by Number() of its text. */
function parseNumber(): number {
  const s = src;
  const start = pos;
  let p = pos;
  const negative = s[p] === 0x2d;
  if (negative) p++;
  let c = s[p];
  if (c === 0x30) {
    c = s[++p]; // a leading 0 is the whole integer part
  } else if (c !== undefined && c >= 0x31 && c <= 0x39) {
    do c = s[++p];
    while (c !== undefined && c >= 0x30 && c <= 0x39);
  } else {
    throw GIVE_UP;
  }
  const intEnd = p;
  let plainInteger = true;
  if (c === 0x2e) {
    plainInteger = false;
    c = s[++p];
    if (c === undefined || c < 0x30 || c > 0x39) throw GIVE_UP;
    do c = s[++p];
    while (c !== undefined && c >= 0x30 && c <= 0x39);
  }
  if (c === 0x65 || c === 0x45) {
    plainInteger = false;
    c = s[++p];
    if (c === 0x2b || c === 0x2d) c = s[++p];
    if (c === undefined || c < 0x30 || c > 0x39) throw GIVE_UP;
    do c = s[++p];
    while (c !== undefined && c >= 0x30 && c <= 0x39);
  }
  pos = p;
  const digitsStart = negative ? start + 1 : start;
  if (plainInteger && intEnd - digitsStart <= 15) {
    let v = 0;
    for (let i = digitsStart; i < intEnd; i++) v = v * 10 + (s[i]! - 0x30);
    return negative ? -v : v;
  }
  // The text is a valid JSON number, which is valid for Number() too, rounded the same way.
  return Number(latin1(start, p));
}

/** A control character, which JSON does not allow raw inside a string. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching raw control characters is the point
const CONTROL = /[\u0000-\u001f]/;

/** Strings up to this many bytes are checked byte by byte in JS; longer ones by native scans. */
const SHORT_STRING = 32;

/** The string starting at the opening quote at `pos`; `pos` ends after the closing quote. */
function parseString(): string {
  const s = src;
  const start = ++pos;
  let p = start;
  let ascii = true;
  for (; p - start < SHORT_STRING; p++) {
    const c = s[p]!;
    if (c === 0x22) {
      pos = p + 1;
      return ascii ? latin1(start, p) : utf8(start, p);
    }
    if (c === 0x5c) return parseEscapedString(start, p);
    if (!(c >= 0x20)) throw GIVE_UP; // a raw control character, or the end of the body
    if (c >= 0x80) ascii = false;
  }
  // Long text (a prompt, a message): the closing quote and any backslash found by native scans,
  // the text decoded at once, control characters looked for in the decoded text.
  const quote = nextQuote(p);
  const backslash = nextBackslash(p);
  if (backslash < quote) return parseEscapedString(start, backslash);
  const text = utf8(start, quote);
  if (CONTROL.test(text)) throw GIVE_UP;
  pos = quote + 1;
  return text;
}

// The next quote and backslash at or after a position, remembered: each search starts past the
// last one found, so a body is scanned once for each however many strings and escapes it has.
let quoteAt = -1;
let backslashAt = -1;

/** The next quote at or after `from`; none is a truncated body. */
function nextQuote(from: number): number {
  if (quoteAt < from) {
    quoteAt = src.indexOf(0x22, from);
    if (quoteAt < 0) throw GIVE_UP;
  }
  return quoteAt;
}

/** The next backslash at or after `from` (the body's length if none). */
function nextBackslash(from: number): number {
  if (backslashAt < from) {
    const i = src.indexOf(0x5c, from);
    backslashAt = i < 0 ? src.length : i;
  }
  return backslashAt;
}

/** The rest of a string from its first backslash at `p` (its text so far is src[start, p)). */
function parseEscapedString(start: number, p: number): string {
  const s = src;
  let out = utf8(start, p);
  if (CONTROL.test(out)) throw GIVE_UP;
  for (;;) {
    // s[p] is a backslash.
    const e = s[p + 1];
    if (e === 0x22) out += '"';
    else if (e === 0x5c) out += '\\';
    else if (e === 0x2f) out += '/';
    else if (e === 0x6e) out += '\n';
    else if (e === 0x74) out += '\t';
    else if (e === 0x72) out += '\r';
    else if (e === 0x62) out += '\b';
    else if (e === 0x66) out += '\f';
    else throw GIVE_UP; // \uXXXX (surrogate pairs and all) is left to JSON.parse
    p += 2;
    const quote = nextQuote(p);
    const backslash = nextBackslash(p);
    const runEnd = Math.min(backslash, quote);
    if (runEnd > p) {
      const run = utf8(p, runEnd);
      if (CONTROL.test(run)) throw GIVE_UP;
      out += run;
    }
    p = runEnd;
    if (p === quote) {
      pos = quote + 1;
      return out;
    }
  }
}

/** ASCII text (every byte below 0x80). */
function latin1(from: number, to: number): string {
  return src.toString('latin1', from, to);
}

/**
 * Non-ASCII text, decoded as Buffer#toString('utf8') decodes the whole body: a quote or backslash
 * is always a character boundary, so decoding the run between them gives the same characters
 * (U+FFFD for the same malformed bytes).
 */
function utf8(from: number, to: number): string {
  return src.toString('utf8', from, to);
}
