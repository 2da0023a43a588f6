// Piscina worker: encodes one text, stopping past its token limit if it has one. Runs as compiled
// JS from dist/ (tsx does not reach worker threads on Node 20). The ids go back as a Uint32Array
// whose buffer is moved, not copied.

import { move } from 'piscina';
import { encodeText } from './vocabulary.js';

/** One pooled encode: the text, and the token count past which to stop (none: encode it all). */
export interface EncodeTask {
  text: string;
  maxTokens?: number;
}

export default function encode({ text, maxTokens }: EncodeTask): Uint32Array {
  return move(Uint32Array.from(encodeText(text, maxTokens))) as Uint32Array;
}
