// Turns a decision that selected nothing into the error the HTTP layer renders: 503 with
// Retry-After for both, `overloaded` and `no_workers` (workers register within seconds of a
// router restart: a client told when to retry does not spin). One place, so every route answers alike.

import { KvrouteError } from '../../errors.js';
import type { NoWorkersDecision, OverloadedDecision } from './types.js';

export function decisionError(
  decision: OverloadedDecision | NoWorkersDecision,
  what = 'workers',
): KvrouteError {
  if (decision.outcome === 'overloaded') {
    return new KvrouteError(
      'overloaded',
      `all ${decision.candidates.length} ${what} are busy; retry in ${decision.retryAfterSeconds} s`,
      { retryAfterSeconds: decision.retryAfterSeconds },
    );
  }
  return new KvrouteError('no_workers', `no ${what} registered for this model`, { retryAfterSeconds: 1 });
}
