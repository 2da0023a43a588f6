// Control plane for workers: register (201 {worker_id, lease_ttl_ms}), heartbeat (404 = register
// again), deregister, and the list with load and index figures.

import type { FastifyInstance } from 'fastify';
import type { RegisterWorkerResponse } from '../../protocols/registration.js';
import { type Fleet, leaseClock } from '../fleet/fleet.js';

export function registerWorkerRoutes(app: FastifyInstance, fleet: Fleet): void {
  const { registry } = fleet;

  app.post('/v1/workers', async (request, reply) => {
    const worker = fleet.register(request.body, leaseClock(), request.socket.remoteAddress);
    const answer: RegisterWorkerResponse = { worker_id: worker.id, lease_ttl_ms: registry.leaseTtlMs };
    return reply.status(201).send(answer);
  });

  // Neither reads a body: an empty one sent with content-type: application/json is not refused.
  const takesNoBody = { config: { takesNoBody: true } };

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
      data: registry.list().map((w) => ({
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
          active_requests: w.load.activeRequests,
        },
        index_blocks: indexBlocksOf(w.id),
      })),
    };
  });
}
