// The aggregated executor: one `generate` call on the decode worker, which prefills the prompt
// itself. A failure before the first chunk that is safe to retry (unreachable, refused, gone
// before answering, overloaded) moves the request to another worker (`ctx.rerouteDecode`, which
// re-books it) up to `maxAttempts`; after the first chunk a failure ends the stream.

import type { GenerateChunk, GenerateRequest } from '../../protocols/worker-plane.js';
import type { ExecutionContext, ExecutionPlan, Executor } from './types.js';
import { callGenerate, failureKind, isRetryable, toClientError } from './worker-call.js';

export function generateBody(plan: ExecutionPlan): GenerateRequest {
  return {
    request_id: plan.requestId,
    token_ids: plan.routing.tokenIds,
    max_tokens: plan.maxTokens,
    ...(plan.stopTokenIds.length > 0 ? { stop_token_ids: plan.stopTokenIds } : {}),
  };
}

export const aggregatedExecutor: Executor = {
  async *run(plan: ExecutionPlan, ctx: ExecutionContext): AsyncGenerator<GenerateChunk> {
    const body = generateBody(plan);
    const failed = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const worker = plan.decode.worker;
      let received = false;
      try {
        for await (const chunk of callGenerate(ctx, worker.address, body, plan.httpRequestId)) {
          received = true;
          yield chunk;
        }
        return;
      } catch (err) {
        if (received || ctx.signal.aborted || !isRetryable(err) || attempt >= ctx.maxAttempts) {
          throw toClientError(err, ctx.signal);
        }
        failed.add(worker.id);
        try {
          ctx.rerouteDecode(failed);
        } catch {
          // No other worker can take it: the client hears about the failure itself.
          throw toClientError(err, ctx.signal);
        }
        ctx.metrics.retries.inc({ reason: failureKind(err) });
      }
    }
  },
};
