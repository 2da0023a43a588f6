// The aggregated executor: one `generate` call on the decode worker, which prefills the prompt
// itself. A failure before the first chunk that is safe to retry (unreachable, refused, gone
// before answering, overloaded) moves the request to another worker (`ctx.rerouteDecode`, which
// re-books it) up to `maxAttempts`; after the first chunk a failure ends the stream.

import type { GenerateChunk, GenerateRequest } from '../../protocols/worker-plane.js';
import type { Worker } from '../registry/index.js';
import type { ExecutionContext, ExecutionPlan, Executor } from './types.js';
import { callGenerate, DONE, isRetryable, toClientError } from './worker-call.js';

export function generateBody(plan: ExecutionPlan): GenerateRequest {
  return {
    request_id: plan.requestId,
    token_ids: plan.routing.tokenIds,
    max_tokens: plan.maxTokens,
    ...(plan.stopTokenIds.length > 0 ? { stop_token_ids: plan.stopTokenIds } : {}),
  };
}

export const aggregatedExecutor: Executor = {
  run(plan: ExecutionPlan, ctx: ExecutionContext): AsyncIterableIterator<GenerateChunk> {
    return new AggregatedRun(plan, ctx);
  },
};

/**
 * One aggregated request's chunks: the current attempt's call, replaced by a call to another
 * worker when it fails before its first chunk. An iterator rather than an async generator, for
 * the promises a generator layer adds per chunk (see GenerateCall).
 */
class AggregatedRun implements AsyncIterableIterator<GenerateChunk> {
  /** Workers that failed this request (made on the first retry). */
  #failed: Set<string> | undefined;
  #body: GenerateRequest | undefined;
  #attempt = 1;
  #worker: Worker | undefined;
  #call: AsyncIterator<GenerateChunk> | undefined;
  #received = false;
  #done = false;

  constructor(
    private readonly plan: ExecutionPlan,
    private readonly ctx: ExecutionContext,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<GenerateChunk>> {
    if (this.#done) return Promise.resolve(DONE);
    if (this.#call === undefined) {
      const { plan } = this;
      this.#body ??= generateBody(plan);
      this.#worker = plan.decode.worker;
      this.#call = callGenerate(this.ctx, this.#worker, this.#body, plan.httpRequestId);
    }
    return this.#call.next().then(this.#onChunk, this.#onError);
  }

  return(): Promise<IteratorResult<GenerateChunk>> {
    this.#done = true;
    const call = this.#call;
    this.#call = undefined;
    return call?.return ? call.return().then(() => DONE) : Promise.resolve(DONE);
  }

  readonly #onChunk = (result: IteratorResult<GenerateChunk>): IteratorResult<GenerateChunk> => {
    if (result.done) this.#done = true;
    else this.#received = true;
    return result;
  };

  readonly #onError = (err: unknown): Promise<IteratorResult<GenerateChunk>> => {
    const { ctx } = this;
    if (this.#received || ctx.abort.aborted || !isRetryable(err) || this.#attempt >= ctx.maxAttempts) {
      this.#done = true;
      throw toClientError(err, ctx.abort);
    }
    this.#failed ??= new Set<string>();
    this.#failed.add(this.#worker!.id);
    try {
      ctx.rerouteDecode(this.#failed, err);
    } catch {
      // No other worker can take it: the client hears about the failure itself.
      this.#done = true;
      throw toClientError(err, ctx.abort);
    }
    this.#attempt++;
    this.#call = undefined;
    return this.next();
  };
}
