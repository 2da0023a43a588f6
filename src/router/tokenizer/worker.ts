// Piscina worker: encodes one text. Runs as compiled JS from dist/ (tsx does not reach worker
// threads on Node 20). The ids go back as a Uint32Array whose buffer is moved, not copied.

import { move } from 'piscina';
import { encodeText } from './vocabulary.js';

export default function encode(text: string): Uint32Array {
  return move(Uint32Array.from(encodeText(text))) as Uint32Array;
}
