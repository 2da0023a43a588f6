// Public entry of the router's tokenizer (see README.md).

export { TokenStreamDecoder } from './stream-decoder.js';
export {
  DEFAULT_INLINE_MAX_CHARS,
  resolveWorkerFile,
  Tokenizer,
  type TokenizerOptions,
  type TokenizerStats,
} from './tokenizer.js';
export { ENCODING_NAME, MAX_TOKEN_BYTES, minTokenCount, TEXT_TOKEN_COUNT, VOCAB_SIZE } from './vocabulary.js';
