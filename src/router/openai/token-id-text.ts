// The JSON text a client sent for an array of token ids, kept when it is exactly the text
// JSON.stringify gives for that array (integers only, no whitespace: what compact JSON encoders
// write). The body reader records it (http/json-bytes.ts) and the `generate` payload copies those
// bytes instead of writing every id's digits again (execute/generate-payload.ts): for a 1k-token
// prompt a 6.6 KB copy instead of ~7 µs of digit writing. Keyed weakly by the array, and taken by
// the first payload that uses it: the text is a view into the whole request body, as large as the
// prompt again (740 KB beside the array's 1 MiB for 131,072 ids), and a request waiting for its
// worker would otherwise hold both until it ends. A later payload of the same ids (a retry on
// another worker) writes the digits instead: the same bytes. The router never modifies a
// request's token-id array; the length and end ids are checked on use anyway, so an array that
// did change is encoded afresh.

interface IdArrayText {
  bytes: Uint8Array;
  length: number;
  first: number;
  last: number;
}

const texts = new WeakMap<readonly number[], IdArrayText>();

/** Records that `bytes` is exactly JSON.stringify(ids) (a non-empty array of integers). */
export function rememberIdArrayText(ids: readonly number[], bytes: Uint8Array): void {
  texts.set(ids, { bytes, length: ids.length, first: ids[0]!, last: ids[ids.length - 1]! });
}

/** JSON.stringify(ids) as the client sent it, if recorded (and the array still looks the same). */
export function idArrayText(ids: readonly number[]): Uint8Array | undefined {
  const t = texts.get(ids);
  if (t === undefined || t.length !== ids.length || t.first !== ids[0] || t.last !== ids[ids.length - 1])
    return undefined;
  return t.bytes;
}

/** idArrayText, forgotten as it is handed over: the caller's copy is the last one. */
export function takeIdArrayText(ids: readonly number[]): Uint8Array | undefined {
  const bytes = idArrayText(ids);
  texts.delete(ids);
  return bytes;
}
