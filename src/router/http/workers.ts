// Control plane for workers: register (201 {worker_id, lease_ttl_ms}), heartbeat (404 = register
// again), deregister, and the list with load and index figures. With a worker token
// (--worker-token) the three calls that change the registry need it (401 otherwise); without one
// they refuse a worker that sends a token (401: the router could not call it). The list is
// read-only and stays open, like /metrics.

import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { KvrouteError } from '../../errors.js';
import type { RegisterWorkerResponse } from '../../protocols/registration.js';
import { SecretCheck } from '../../util/secret-check.js';
import { type Fleet, leaseClock } from '../fleet/fleet.js';

/**
 * Lets a request through only with `Authorization: Bearer <token>`; else 401 `unauthorized`.
 * Runs on onRequest, before a body is read: a stranger cannot make the router parse one. The
 * tokens are compared in constant time (SecretCheck). No message quotes what was sent.
 */
function requireWorkerToken(token: string): onRequestHookHandler {
  const check = new SecretCheck(token);
  return (request, reply, done) => {
    const header = request.headers.authorization;
    const given = header === undefined ? undefined : /^bearer +(\S+)$/i.exec(header)?.[1];
    if (check.matches(given)) return done();
    reply.header('www-authenticate', 'Bearer realm="kvroute workers"');
    done(
      new KvrouteError(
        'unauthorized',
        header === undefined
          ? "this router takes workers only with its worker token: send 'Authorization: Bearer <token>' (the router's --worker-token)"
          : "the worker token is not the router's --worker-token",
      ),
    );
  };
}

/**
 * A router without a worker token refuses a worker that sends one (401 `unauthorized`): such a
 * worker serves its request plane only to callers with its token (docs/protocol.md), so this
 * router could register it but never call it. Accepted, it was listed, chosen and answered every
 * request sent to it with a 502, while its KV-event subscription was refused every 2 s. Refused,
 * the worker exits with one line that names the setting (docs/worker.md).
 */
const refuseTokenedWorker: onRequestHookHandler = (request, _reply, done) => {
  const header = request.headers.authorization;
  if (header === undefined || !/^bearer /i.test(header)) return done();
  done(
    new KvrouteError(
      'unauthorized',
      'this router has no worker token, so it cannot call a worker that requires one: give the router the same --worker-token (KVROUTE_WORKER_TOKEN), or start the worker without one',
    ),
  );
};

export function registerWorkerRoutes(app: FastifyInstance, fleet: Fleet, workerToken?: string): void {
  const { registry } = fleet;
  // The calls that change the registry: with a worker token, only for the workers that send it;
  // without one, for every worker that sends none.
  const guarded = {
    onRequest: workerToken === undefined ? refuseTokenedWorker : requireWorkerToken(workerToken),
  };

  app.post('/v1/workers', guarded, async (request, reply) => {
    const worker = fleet.register(request.body, leaseClock(), request.socket.remoteAddress);
    const answer: RegisterWorkerResponse = { worker_id: worker.id, lease_ttl_ms: registry.leaseTtlMs };
    return reply.status(201).send(answer);
  });

  // Neither reads a body: an empty one sent with content-type: application/json is not refused.
  // Both change the registry, so both are guarded like the registration.
  const takesNoBody = { config: { takesNoBody: true }, ...guarded };

  app.post<{ Params: { id: string } }>('/v1/workers/:id/heartbeat', takesNoBody, async (request) => {
    const worker = fleet.heartbeat(request.params.id, leaseClock());
    return { worker_id: worker.id, lease_ttl_ms: registry.leaseTtlMs };
  });

  app.delete<{ Params: { id: string } }>('/v1/workers/:id', takesNoBody, async (request, reply) => {
    fleet.deregister(request.params.id);
    return reply.status(204).send();
  });

  app.get('/v1/workers', async () => {
    const now = leaseClock();
    const indexBlocksOf = fleet.indexBlocksByWorker();
    return {
      object: 'list',
      data: registry.list().map((w) => {
        const health = registry.health.view(w.id, now);
        return {
          worker_id: w.id,
          role: w.role,
          address: w.address,
          model: w.model,
          block_size: w.blockSize,
          kv_blocks: w.kvBlocks,
          max_batched_tokens: w.maxBatchedTokens,
          kv_events: w.kvEvents,
          index_mode: fleet.subscribed(w.id) ? 'events' : 'approximate',
          lease_expires_in_ms: Math.max(0, w.leaseExpiresAt - now),
          load: {
            active_prefill_tokens: w.load.activePrefillTokens,
            active_decode_blocks: w.load.activeDecodeBlocks,
            active_context_blocks: w.load.activeContextBlocks,
            active_requests: w.load.activeRequests,
          },
          index_blocks: indexBlocksOf(w.id),
          // Outlier ejection: calls failed in a row by its fault, and how long it stays out of routing.
          health: {
            consecutive_failures: health.consecutiveFailures,
            ejected_for_ms: health.ejectedForMs,
            on_probation: health.onProbation,
          },
        };
      }),
    };
  });
}
