// Turns a decision that selected nothing into the error the HTTP layer renders: 503 with
// Retry-After for both, `overloaded` and `no_workers` (workers register within seconds of a
// router restart: a client told when to retry does not spin); 400 `context_length_exceeded` for
// `too_large`, like a prompt over --max-prompt-tokens or a worker's own refusal: no worker of the
// model can ever hold it, so retrying cannot help. One place, so every route answers alike.

import { KvrouteError } from '../../errors.js';
import type { NoWorkersDecision, OverloadedDecision, TooLargeDecision } from './types.js';

export function decisionError(
  decision: OverloadedDecision | TooLargeDecision | NoWorkersDecision,
  what = 'workers',
): KvrouteError {
  if (decision.outcome === 'too_large') {
    return new KvrouteError(
      'context_length_exceeded',
      `the prompt plus max_tokens needs ${decision.requiredBlocks} KV blocks of ${decision.blockSize} tokens; the largest KV pool among the ${decision.candidateCount} ${what} holds ${decision.largestKvBlocks}`,
      { param: 'prompt' },
    );
  }
  if (decision.outcome === 'overloaded') {
    return new KvrouteError(
      'overloaded',
      `all ${decision.candidates.length} ${what} are busy; retry in ${decision.retryAfterSeconds} s`,
      { retryAfterSeconds: decision.retryAfterSeconds },
    );
  }
  return new KvrouteError('no_workers', `no ${what} registered for this model`, { retryAfterSeconds: 1 });
}
