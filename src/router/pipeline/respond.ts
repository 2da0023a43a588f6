// The respond stage: worker chunks to an OpenAI response, either one JSON body or SSE events.
// Output ids are detokenized with one TokenStreamDecoder per stream, so a character split over
// two tokens never leaks between requests. Usage's cached_tokens is what the worker reported.
// Stop sequences (OpenAI's `stop`) are applied to the text here: the output ends right before the
// first one, finish_reason `stop`, and the worker's stream is cancelled. Text that might be the
// start of one is held back until the next chunk tells (at most the longest sequence less one
// character), so a stop sequence split over two chunks is never half sent.

import { isKvrouteError, KvrouteError } from '../../errors.js';
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
  /** A stop sequence ended the output here, not the worker: its stream is to be cancelled. */
  stoppedBySequence = false;
  /** Output not sent yet because it might be the start of a stop sequence. */
  private heldBack = '';

  constructor(
    promptTokens: number,
    private readonly decoder: TokenStreamDecoder,
    private readonly stops: readonly string[] = [],
  ) {
    this.promptTokens = promptTokens;
  }

  /** Adds a chunk; returns the text to send for it (nothing more once a stop sequence matched). */
  add(chunk: GenerateChunk): string {
    if (chunk.prompt_tokens !== undefined) this.promptTokens = chunk.prompt_tokens;
    if (chunk.cached_tokens !== undefined) this.cachedTokens = chunk.cached_tokens;
    if (!Array.isArray(chunk.token_ids))
      throw new KvrouteError('worker_error', 'worker sent a chunk without token_ids');
    if (this.stoppedBySequence) return '';
    let text = '';
    for (const id of chunk.token_ids) text += this.decode(id);
    this.completionTokens += chunk.token_ids.length;
    if (chunk.finish_reason) {
      this.finishReason = chunk.finish_reason;
      text += this.decoder.flush();
    }
    return this.stops.length === 0 ? text : this.cutAtStop(text);
  }

  /**
   * One output id's text. An id outside the vocabulary came from the worker: its failure (502), not
   * the decoder's invalid_request, which would tell the client its own request was wrong.
   */
  private decode(id: number): string {
    try {
      return this.decoder.push(id);
    } catch (err) {
      if (isKvrouteError(err) && err.code === 'invalid_request')
        throw new KvrouteError('worker_error', `worker sent an unknown token: ${err.message}`, {
          cause: err,
        });
      throw err;
    }
  }

  /** The text up to the first stop sequence (then finish_reason `stop`), less what is held back. */
  private cutAtStop(text: string): string {
    const output = this.heldBack + text;
    let at = -1;
    for (const stop of this.stops) {
      const i = output.indexOf(stop);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.heldBack = '';
      this.finishReason = 'stop';
      this.stoppedBySequence = true;
      return output.slice(0, at);
    }
    // The worker finished: nothing more can complete a stop sequence.
    const held = this.finishReason === null ? startOfStop(output, this.stops) : 0;
    this.heldBack = output.slice(output.length - held);
    return output.slice(0, output.length - held);
  }

  usage(): Usage {
    return makeUsage(this.promptTokens, this.completionTokens, this.cachedTokens);
  }
}

/** Length of the longest end of `text` that is the start of a stop sequence (shorter than it). */
function startOfStop(text: string, stops: readonly string[]): number {
  let longest = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        longest = n;
        break;
      }
    }
  }
  return longest;
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
    // A stop sequence ended the output: the worker is still generating, so cancel its stream.
    if (tally.stoppedBySequence) {
      await rest.return?.();
      break;
    }
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
  // OpenAI: "usage": null on every chunk before the usage chunk when include_usage is on.
  const contentUsage = opts.includeUsage ? null : undefined;
  let failure: unknown;
  try {
    yield sseData(
      streamChunk(
        endpoint,
        who,
        { text: firstText, finishReason: tally.finishReason, first: true },
        contentUsage,
      ),
    );
    while (tally.finishReason === null) {
      const next = await rest.next();
      if (next.done) break;
      opts.onChunk();
      const text = tally.add(next.value);
      yield sseData(streamChunk(endpoint, who, { text, finishReason: tally.finishReason }, contentUsage));
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
