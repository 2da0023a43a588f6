// Turns a decision that selected nothing into the error the HTTP layer renders: 503 with
// Retry-After for `overloaded`, 503 for `no_workers`. One place, so every route answers alike.

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
  return new KvrouteError('no_workers', `no ${what} registered for this model`);
}
