// Disaggregation's pure rules (placement, fallback classification, reused-token reporting), the
// prefill planner's spans when choosing fails, and the decode worker's handoff board (real timers,
// real AbortSignals).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SpanStatusCode, type Tracer } from '@opentelemetry/api';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { KvHandoffBoard } from '../src/decode/handoff-board.js';
import { KvrouteError } from '../src/errors.js';
import { decidePlacement, fallbackReason, reusedPromptTokens } from '../src/router/disagg/index.js';
import { KvPrefillPlanner } from '../src/router/execute/prefill-planner.js';
import type { RoutingInput } from '../src/router/execute/types.js';
import { failureKind, toClientError } from '../src/router/execute/worker-call.js';
import { RouterMetrics } from '../src/router/metrics.js';
import { WorkerRegistry } from '../src/router/registry/index.js';
import {
  type Candidate,
  createPolicy,
  type RouteDecision,
  type RoutingPolicy,
  seededRng,
} from '../src/router/scheduling/index.js';
import { TransportError } from '../src/tcp/index.js';
import { markersSeenByNewResources } from './trace-helpers.js';

const BLOCK = 16;
const policy = createPolicy({ policy: 'kv', blockSize: BLOCK, rng: seededRng(1) });

function worker(id: string, activePrefillTokens = 0): Candidate {
  return { id, kvBlocks: 1000, load: { activePrefillTokens, activeDecodeBlocks: 0, activeContextBlocks: 0 } };
}

/** The prefill planner over `registry` and `policy`, no short-prompt rules, not enforced. */
function plannerOver(
  registry: WorkerRegistry,
  routingPolicy: RoutingPolicy,
  tracer: Tracer,
  metrics: RouterMetrics,
): KvPrefillPlanner {
  return new KvPrefillPlanner({
    registry,
    policy: routingPolicy,
    tracer,
    metrics,
    maxLocalPrefill: 0,
    enforceDisagg: false,
  });
}

/** Routing input for the planner: a prompt of `promptTokens` (no token ids, nothing cached). */
function routingOf(promptTokens: number, outputTokens: number): RoutingInput {
  return {
    model: 'mock',
    tokenIds: [],
    keys: new Uint32Array(0),
    overlaps: new Map(),
    promptTokens,
    outputTokens,
  };
}

function selected(d: RouteDecision): Extract<RouteDecision, { outcome: 'selected' }> {
  assert.equal(d.outcome, 'selected');
  return d as Extract<RouteDecision, { outcome: 'selected' }>;
}

function place(opts: {
  prefill: Candidate[];
  promptTokens: number;
  overlaps?: Map<string, number>;
  decodeId?: string;
  max?: number;
}) {
  const decode = selected(
    policy.select({
      candidates: [worker(opts.decodeId ?? 'd')],
      promptTokens: opts.promptTokens,
      overlaps: opts.overlaps,
      overlapWeight: 0,
    }),
  );
  const prefill = policy.select({
    candidates: opts.prefill,
    promptTokens: opts.promptTokens,
    overlaps: opts.overlaps,
  });
  return decidePlacement({ prefill, decode, maxLocalPrefill: opts.max ?? 512 });
}

test('a long uncached prompt goes to the best prefill worker', () => {
  const d = place({
    prefill: [worker('p1'), worker('p2')],
    promptTokens: 2000,
    overlaps: new Map([['p2', 10]]),
  });
  assert.equal(d.placement, 'remote');
  assert.equal(d.reason, 'long_prompt');
  assert.equal(d.prefill?.worker.id, 'p2');
});

test('uncached part under max-local-prefill on the best prefill candidate: local short_prompt', () => {
  // 600 tokens, 10 blocks (160) cached on p1: 440 uncached < 512.
  const d = place({ prefill: [worker('p1')], promptTokens: 600, overlaps: new Map([['p1', 10]]) });
  assert.deepEqual([d.placement, d.reason, d.prefill], ['local', 'short_prompt', null]);
  // The threshold is strict: exactly 512 uncached goes remote.
  assert.equal(place({ prefill: [worker('p1')], promptTokens: 512 }).placement, 'remote');
  assert.equal(place({ prefill: [worker('p1')], promptTokens: 511 }).reason, 'short_prompt');
});

test('the decode worker holding most of the prompt keeps it local: cached_on_decode', () => {
  const d = place({ prefill: [worker('p1')], promptTokens: 2000, overlaps: new Map([['d', 100]]) });
  assert.deepEqual([d.placement, d.reason], ['local', 'cached_on_decode']);
});

test('no prefill workers, all busy, or the decode worker itself: local with that reason', () => {
  assert.equal(place({ prefill: [], promptTokens: 4000 }).reason, 'no_prefill_workers');
  assert.equal(place({ prefill: [worker('p1', 1e6)], promptTokens: 4000 }).reason, 'prefill_busy');
  assert.equal(place({ prefill: [worker('d')], promptTokens: 4000 }).reason, 'same_worker');
});

test('fallback reasons follow the transport failure; a caller abort is no fallback', () => {
  assert.equal(fallbackReason(new TransportError('connect_failed', 'x'), false), 'connect_failed');
  // Not sent (the worker reads nothing of what it was sent before): as good as unreachable.
  assert.equal(fallbackReason(new TransportError('peer_not_reading', 'x'), false), 'connect_failed');
  assert.equal(fallbackReason(new TransportError('remote_error', 'x'), false), 'remote_error');
  assert.equal(fallbackReason(new TransportError('timeout', 'x'), false), 'timeout');
  assert.equal(fallbackReason(new TransportError('disconnected_mid_stream', 'x'), false), 'disconnect');
  assert.equal(fallbackReason(new TransportError('disconnected_before_response', 'x'), false), 'disconnect');
  assert.equal(fallbackReason(new KvrouteError('timeout', 'x'), false), 'timeout');
  assert.equal(fallbackReason(new SyntaxError('bad json'), false), 'invalid_answer');
  assert.equal(fallbackReason(new TransportError('cancelled', 'x'), true), null);
});

test('a worker call that could not be sent (the worker reads nothing) is worker_disconnected for the client', () => {
  const notAborted = { aborted: false, reason: undefined };
  const err = toClientError(new TransportError('peer_not_reading', 'x'), notAborted);
  assert.equal(err.code, 'worker_disconnected');
  assert.equal(
    toClientError(new TransportError('connect_failed', 'x'), notAborted).code,
    'worker_disconnected',
  );
});

test('reused tokens: the prefill worker hits when remote prefill ran, else decode local hits', () => {
  assert.equal(reusedPromptTokens({ cached_tokens: 32 }, 640), 32);
  assert.equal(reusedPromptTokens(null, 48), 48);
});

test('handoff board: a waiting generate gets its handoff; an early handoff is held for it', async () => {
  const board = new KvHandoffBoard();
  const waiting = board.wait('r1', 5000);
  assert.equal(board.waitingCount, 1);
  assert.equal(board.deliver({ request_id: 'r1' }), 'waiting');
  assert.deepEqual(await waiting, { request_id: 'r1' });
  assert.equal(board.deliver({ request_id: 'r2' }), 'held');
  assert.deepEqual(await board.wait('r2', 5000), { request_id: 'r2' });
  assert.equal(board.waitingCount, 0);
  board.close();
});

test("handoff board: a held handoff's timer is not the kv_handoff request's to keep", async () => {
  const board = new KvHandoffBoard();
  const seen = await markersSeenByNewResources(['Timeout'], () => board.deliver({ request_id: 'early' }));
  assert.deepEqual(seen, [{ type: 'Timeout', marker: undefined }]);
  board.close();
});

test('handoff board: the wait is bounded, abortable, and one waiter per id', async () => {
  const board = new KvHandoffBoard();
  await assert.rejects(
    board.wait('slow', 20),
    (e: unknown) => e instanceof KvrouteError && e.code === 'timeout',
  );
  const ac = new AbortController();
  const aborted = board.wait('gone', 5000, ac.signal);
  ac.abort();
  await assert.rejects(aborted, (e: unknown) => e instanceof KvrouteError && e.code === 'client_closed');
  const first = board.wait('dup', 5000);
  await assert.rejects(
    board.wait('dup', 5000),
    (e: unknown) => e instanceof KvrouteError && e.code === 'invalid_request',
  );
  board.close();
  await assert.rejects(first, (e: unknown) => e instanceof KvrouteError && e.code === 'shutting_down');
  assert.equal(board.waitingCount, 0);
});

test('the prefill planner never picks a prefill worker whose pool cannot hold the prompt and its first token', () => {
  const registry = new WorkerRegistry({ blockSize: BLOCK });
  const register = (role: string, port: number, kvBlocks: number) =>
    registry.register(
      {
        role,
        address: `127.0.0.1:${port}`,
        model: 'mock',
        block_size: BLOCK,
        kv_blocks: kvBlocks,
        max_batched_tokens: 2048,
      },
      0,
    ).worker;
  const decodeWorker = register('decode', 1, 64);
  // 128 prompt tokens and the prefill's one output token: 9 blocks. 'small' holds 8 (it would
  // refuse the leg); it is also idle, so by cost alone it is the best candidate.
  register('prefill', 2, 8);
  const metrics = new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 });
  const planner = plannerOver(registry, policy, new BasicTracerProvider().getTracer('test'), metrics);
  const routing = routingOf(128, 4);
  const decode = selected(
    policy.select({ candidates: [decodeWorker], promptTokens: 128, outputTokens: 4 }),
  ) as never;
  // Only the small one: the decode worker prefills, with its own reason (not a remote leg that fails).
  assert.deepEqual(planner.choosePrefill(routing, decode), {
    prefill: null,
    reason: 'prefill_pool_too_small',
  });
  // A larger one, however loaded (not busy), is chosen over it.
  const large = register('prefill', 3, 9);
  registry.load.book(large.id, 'other', { prefillTokens: 4000, decodeBlocks: 0, contextBlocks: 0 });
  for (let i = 0; i < 10; i++) {
    const planned = planner.choosePrefill(routing, decode);
    assert.equal(planned.reason, 'long_prompt');
    assert.equal(planned.prefill?.worker.id, large.id);
  }
});

test('the prefill planner ends its spans failed when choosing throws (a policy error, the enforced 503)', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const registry = new WorkerRegistry({ blockSize: BLOCK });
  registry.register(
    {
      role: 'prefill',
      address: '127.0.0.1:9',
      model: 'mock',
      block_size: BLOCK,
      kv_blocks: 64,
      max_batched_tokens: 2048,
    },
    0,
  );
  const failing: RoutingPolicy = {
    ...policy,
    select: () => {
      throw new KvrouteError('internal_error', 'policy exploded');
    },
  };
  const planner = plannerOver(
    registry,
    failing,
    provider.getTracer('test'),
    new RouterMetrics({ workers: () => [], indexBlocks: () => 0, inflight: () => 0 }),
  );
  const routing = routingOf(64, 1);
  assert.throws(() => planner.choosePrefill(routing, {} as never), /policy exploded/);
  const spans = exporter.getFinishedSpans();
  assert.deepEqual(
    spans.map((s) => [s.name, s.status.code, s.events.map((e) => e.name)]),
    [
      ['kv_find_best_match', SpanStatusCode.ERROR, ['exception']],
      ['prefill_routing', SpanStatusCode.ERROR, ['exception']],
    ],
  );
});

test('a retry reason is a transport kind or one of our codes: a worker cannot add label values', () => {
  const remote = (code: string) =>
    new TransportError('remote_error', 'x', { remoteCode: code, refused: true });
  assert.equal(failureKind(remote('overloaded')), 'overloaded');
  assert.equal(failureKind(remote('shutting_down')), 'shutting_down');
  assert.equal(failureKind(new TransportError('connect_failed', 'x')), 'connect_failed');
  // A worker's own codes, one label value each before; and names on Object.prototype.
  for (const code of ['req-7f3a', 'busy_9', 'constructor', '__proto__']) {
    assert.equal(failureKind(remote(code)), 'remote_error', code);
  }
  assert.equal(
    toClientError(remote('constructor'), { aborted: false, reason: undefined }).code,
    'worker_error',
  );
});

test('a worker refusing a call as it shuts down is a 503 with Retry-After for the client, not a 502', () => {
  const notAborted = { aborted: false, reason: undefined };
  const refused = toClientError(
    new TransportError('remote_error', 'server is shutting down', {
      remoteCode: 'shutting_down',
      refused: true,
    }),
    notAborted,
  );
  assert.equal(refused.code, 'overloaded');
  assert.equal(refused.status, 503);
  assert.equal(refused.retryAfterSeconds, 1);
  // A plane without the endpoint is the deployment's fault, not the client's: no 404.
  const missing = toClientError(
    new TransportError('remote_error', 'no handler', { remoteCode: 'not_found', refused: true }),
    notAborted,
  );
  assert.equal(missing.code, 'worker_error');
  assert.equal(missing.status, 502);
});
