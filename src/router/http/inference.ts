// The OpenAI endpoints (completions, chat completions) and `/v1/route`, which explains the routing
// decision for the same body and runs nothing. A client disconnect (the response closes before it
// finished) aborts the request, which cancels the worker stream; so does a streaming client that
// takes nothing for `clientStallTimeoutMs` (client-stall.ts).

import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KvrouteError } from '../../errors.js';
import { RequestAbort } from '../execute/request-abort.js';
import type { EndpointKind } from '../openai/request.js';
import type { InflightLimit } from '../pipeline/admission.js';
import type { PipelineDeps } from '../pipeline/deps.js';
import { handleInference } from '../pipeline/handle.js';
import { parseStage, routeStage } from '../pipeline/route.js';
import type { CandidateScore } from '../scheduling/index.js';
import { inRequestContext, shuttingDown } from './app.js';
import { watchClientStall } from './client-stall.js';

export interface InferenceRouteDeps {
  pipeline: PipelineDeps;
  limit: InflightLimit;
  /** Requests in flight, so close() can abort them. */
  active: Set<RequestAbort>;
  /** True while the router drains: new requests are refused, those in flight finish. */
  isDraining: () => boolean;
  /** How long a stream waits for a client that takes nothing before it is cut (client-stall.ts). */
  clientStallTimeoutMs: number;
}

const clientClosed = () => new KvrouteError('client_closed', 'the client disconnected');

function requestAbort(reply: FastifyReply, active: Set<RequestAbort>): RequestAbort {
  const ac = new RequestAbort();
  active.add(ac);
  reply.raw.once('close', () => {
    active.delete(ac);
    if (!reply.raw.writableFinished) ac.abort(clientClosed());
  });
  return ac;
}

export function registerInferenceRoutes(app: FastifyInstance, deps: InferenceRouteDeps): void {
  const serve = (endpoint: EndpointKind) => async (request: FastifyRequest, reply: FastifyReply) => {
    if (deps.isDraining()) throw shuttingDown('the router is draining: send this request to another');
    const arrivedAt = performance.now();
    const abort = requestAbort(reply, deps.active);
    const result = await inRequestContext(request, () =>
      handleInference(deps.pipeline, deps.limit, {
        body: request.body,
        endpoint,
        abort,
        arrivedAt,
        requestId: request.id,
      }),
    );
    reply.headers(result.headers);
    if (result.kind === 'json') return reply.send(result.body);
    reply.header('content-type', 'text/event-stream; charset=utf-8').header('cache-control', 'no-cache');
    const stallMs = deps.clientStallTimeoutMs;
    const events = watchClientStall(result.events, stallMs, () => {
      // Counted and traced as a client that left (499, outcome cancelled): the close below
      // ends the request through the same path, with this reason.
      abort.abort(new KvrouteError('client_closed', `the client took no data for ${stallMs} ms`));
      reply.raw.destroy();
    });
    const stream = Readable.from(events, { objectMode: false });
    // fastify destroys, unread, a stream handed to a reply whose client already left: the events'
    // generator then never starts, and its cleanup (the in-flight slot, the bookings, the worker
    // stream) never runs. After a read, the generator has finished the request itself by 'close'.
    stream.once('close', () => result.abandon(abort.reason ?? clientClosed()));
    return reply.send(stream);
  };

  app.post('/v1/completions', serve('completion'));
  app.post('/v1/chat/completions', serve('chat'));

  app.post('/v1/route', async (request) =>
    inRequestContext(request, async () => {
      const endpoint: EndpointKind =
        typeof request.body === 'object' && request.body !== null && 'messages' in request.body
          ? 'chat'
          : 'completion';
      const parsed = parseStage(deps.pipeline, request.body, endpoint);
      const plan = await routeStage(deps.pipeline, parsed, 'explain');
      const chosen = (d: typeof plan.decode) => ({ ...explainScore(d.chosen), address: d.worker.address });
      return {
        model: parsed.model,
        prompt_tokens: plan.routing.promptTokens,
        policy: plan.decode.policy,
        decode: chosen(plan.decode),
        prefill: plan.prefill ? chosen(plan.prefill) : null,
        prefill_reason: plan.prefillReason,
        candidates: plan.decode.candidates.map(explainScore),
        prefill_candidates: plan.prefill ? plan.prefill.candidates.map(explainScore) : [],
      };
    }),
  );
}

/** A candidate's score in the HTTP API's casing (snake_case, like the rest of the answer). */
function explainScore(c: CandidateScore) {
  return {
    worker_id: c.workerId,
    overlap_blocks: c.overlapBlocks,
    cached_tokens: c.cachedTokens,
    uncached_tokens: c.uncachedTokens,
    new_blocks: c.newBlocks,
    prefill_blocks: c.prefillBlocks,
    decode_blocks: c.decodeBlocks,
    cost: c.cost,
    load: c.load,
    busy: c.busy,
    fits: c.fits,
  };
}
