// The respond stage: worker chunks to an OpenAI response, either one JSON body or SSE events.
// Output ids are detokenized with one TokenStreamDecoder per stream, so a character split over
// two tokens never leaks between requests. Usage's cached_tokens is what the worker reported.

import { KvrouteError } from '../../errors.js';
import type { GenerateChunk } from '../../protocols/worker-plane.js';
import type { EndpointKind } from '../openai/request.js';
import {
  completionBody,
  type FinishReason,
  makeUsage,
  type ResponseIdentity,
  sseData,
  streamChunk,
  type Usage,
} from '../openai/response.js';
import type { TokenStreamDecoder } from '../tokenizer/index.js';

/** Prompt accounting and output counters of one stream, filled chunk by chunk. */
export class StreamTally {
  promptTokens: number;
  cachedTokens = 0;
  completionTokens = 0;
  finishReason: FinishReason = null;

  constructor(
    promptTokens: number,
    private readonly decoder: TokenStreamDecoder,
  ) {
    this.promptTokens = promptTokens;
  }

  /** Adds a chunk; returns its text. */
  add(chunk: GenerateChunk): string {
    if (chunk.prompt_tokens !== undefined) this.promptTokens = chunk.prompt_tokens;
    if (chunk.cached_tokens !== undefined) this.cachedTokens = chunk.cached_tokens;
    if (!Array.isArray(chunk.token_ids))
      throw new KvrouteError('worker_error', 'worker sent a chunk without token_ids');
    let text = '';
    for (const id of chunk.token_ids) text += this.decoder.push(id);
    this.completionTokens += chunk.token_ids.length;
    if (chunk.finish_reason) {
      this.finishReason = chunk.finish_reason;
      text += this.decoder.flush();
    }
    return text;
  }

  usage(): Usage {
    return makeUsage(this.promptTokens, this.completionTokens, this.cachedTokens);
  }
}

/** Drains the rest of the stream into one response body. */
export async function collectBody(
  endpoint: EndpointKind,
  who: ResponseIdentity,
  tally: StreamTally,
  firstText: string,
  rest: AsyncIterator<GenerateChunk>,
  onChunk: () => void,
): Promise<object> {
  let text = firstText;
  for (;;) {
    const next = await rest.next();
    if (next.done) break;
    onChunk();
    text += tally.add(next.value);
  }
  return completionBody(endpoint, who, text, tally.finishReason, tally.usage());
}

export interface SseOptions {
  endpoint: EndpointKind;
  who: ResponseIdentity;
  includeUsage: boolean;
  /** Called per chunk after the first (inter-token latency). */
  onChunk: () => void;
  /** Called once at the end with the error that ended the stream, if any. */
  onEnd: (err: unknown) => void;
  /** Renders a mid-stream failure for the client. */
  errorBody: (err: unknown) => object;
}

/** SSE events: the first chunk's text, then each following chunk, usage if asked, then [DONE]. */
export async function* sseEvents(
  opts: SseOptions,
  tally: StreamTally,
  firstText: string,
  rest: AsyncIterator<GenerateChunk>,
): AsyncGenerator<string> {
  const { endpoint, who } = opts;
  let failure: unknown;
  try {
    yield sseData(
      streamChunk(endpoint, who, { text: firstText, finishReason: tally.finishReason, first: true }),
    );
    while (tally.finishReason === null) {
      const next = await rest.next();
      if (next.done) break;
      opts.onChunk();
      const text = tally.add(next.value);
      yield sseData(streamChunk(endpoint, who, { text, finishReason: tally.finishReason }));
    }
    if (opts.includeUsage) yield sseData(streamChunk(endpoint, who, null, tally.usage()));
    yield sseData('[DONE]');
  } catch (err) {
    failure = err;
    // Headers are sent: the failure travels as an SSE error event, then the stream ends.
    yield sseData(opts.errorBody(err));
  } finally {
    opts.onEnd(failure);
    // Abandoning the iterator (client gone, failure) cancels the worker stream.
    await rest.return?.();
  }
}
