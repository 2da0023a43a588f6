// What a failed remote prefill leg means for the request: fall back to prefilling on the decode
// worker (counted in `kvroute_prefill_fallbacks_total` by reason), or not at all when the client
// itself went away. Pure classification of the error the request-plane client threw.

import { isKvrouteError, KvrouteError } from '../../errors.js';
import { isTransportError } from '../../tcp/index.js';

/** The `reason` label of a prefill fallback. */
export type FallbackReason = 'connect_failed' | 'remote_error' | 'timeout' | 'disconnect' | 'invalid_answer';

/**
 * Maps a prefill leg's failure to a fallback reason, or `null` when the failure is the caller's
 * cancellation (nothing to fall back to: the request is over).
 */
export function fallbackReason(err: unknown, callerAborted: boolean): FallbackReason | null {
  if (callerAborted) return null;
  if (isTransportError(err)) {
    switch (err.kind) {
      case 'connect_failed':
      // Not sent: the worker has not read what was sent before. As good as unreachable.
      case 'peer_not_reading':
        return 'connect_failed';
      case 'remote_error':
        return 'remote_error';
      case 'timeout':
        return 'timeout';
      case 'disconnected_before_response':
      case 'disconnected_mid_stream':
        return 'disconnect';
      case 'cancelled':
        // The client was closed under us (router shutting down) or the pool of a deregistered
        // worker was closed: the prefill worker is gone.
        return 'disconnect';
      case 'protocol_error':
        return 'invalid_answer';
    }
  }
  if (isKvrouteError(err) && err.code === 'timeout') return 'timeout';
  return 'invalid_answer';
}

/**
 * The error a request fails with when `--enforce-disagg` forbids the local fallback: 504 for a
 * timeout, 502 for everything else.
 */
export function enforcedDisaggError(reason: FallbackReason, workerId: string, cause: unknown): KvrouteError {
  const message = `remote prefill on ${workerId} failed (${reason}) and --enforce-disagg forbids prefilling locally`;
  return new KvrouteError(reason === 'timeout' ? 'timeout' : 'worker_error', message, { cause });
}
