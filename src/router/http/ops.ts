// Operations endpoints: liveness, readiness (a decode-capable worker is registered), Prometheus
// metrics, and the models (the list, or one) served by registered workers (those with a
// decode-capable worker: a model whose only workers prefill cannot answer a request).

import type { FastifyInstance } from 'fastify';
import { KvrouteError } from '../../errors.js';
import type { Fleet } from '../fleet/fleet.js';
import type { RouterMetrics } from '../metrics.js';
import { modelNotFound } from '../pipeline/route.js';
import type { WorkerRegistry } from '../registry/index.js';
import { shuttingDown } from './app.js';

/** Models a request can be served for now: at least one decode-capable worker registered. */
function servedModels(registry: WorkerRegistry): string[] {
  return registry.models().filter((m) => registry.candidates(m, 'decode').length > 0);
}

/**
 * The readiness rule, one for `GET /ready` and the `kvroute_ready` gauge: why the router cannot
 * take inference requests now (draining, or no decode-capable worker: prefill workers alone serve
 * nothing), or undefined when it can.
 */
export function notReady(registry: WorkerRegistry, draining: boolean): 'draining' | 'no_workers' | undefined {
  if (draining) return 'draining';
  if (servedModels(registry).length === 0) return 'no_workers';
  return undefined;
}

export function registerOpsRoutes(
  app: FastifyInstance,
  fleet: Fleet,
  metrics: RouterMetrics,
  /** True while the router drains (SIGTERM): not ready, so a load balancer stops sending. */
  isDraining: () => boolean = () => false,
): void {
  const { registry } = fleet;

  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/ready', async () => {
    switch (notReady(registry, isDraining())) {
      case 'draining':
        throw shuttingDown('the router is draining');
      case 'no_workers':
        throw new KvrouteError('no_workers', 'no decode-capable worker is registered');
    }
    return { status: 'ready', workers: registry.size };
  });

  app.get('/metrics', async (_request, reply) => {
    const text = await metrics.registry.metrics();
    return reply.header('content-type', metrics.registry.contentType).send(text);
  });

  const modelEntry = (id: string) => ({ id, object: 'model', created: 0, owned_by: 'kvroute' });

  app.get('/v1/models', async () => ({ object: 'list', data: servedModels(registry).map(modelEntry) }));

  // One model (the openai client's models.retrieve): a wildcard, since model names hold slashes
  // (`org/name`), sent raw or as %2F.
  app.get<{ Params: { '*': string } }>('/v1/models/*', async (request) => {
    const id = request.params['*'];
    if (!servedModels(registry).includes(id)) throw modelNotFound(id);
    return modelEntry(id);
  });
}
