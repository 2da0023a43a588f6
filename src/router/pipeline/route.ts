// The routing stages of the pipeline: parse -> tokenize -> hash -> match -> select. Each routing
// phase is timed into `routing_decision_seconds{phase}`. `select` books nothing, so `/v1/route`
// (explain) runs exactly these stages and stops.

import { context, trace } from '@opentelemetry/api';
import { KvrouteError } from '../../errors.js';
import { type BlockKeys, localBlockKeys } from '../../kv-index/index.js';
import { recordFailure } from '../../telemetry/index.js';
import type { RequestAbort } from '../execute/request-abort.js';
import type { ExecutionPlan, RoutingInput, WorkerDecision } from '../execute/types.js';
import { type EndpointKind, type NormalizedRequest, parseInferenceRequest } from '../openai/request.js';
import type { Worker } from '../registry/index.js';
import { decisionError, decodeOverlapWeight, type OverlapSource } from '../scheduling/index.js';
import { minTokenCount } from '../tokenizer/index.js';
import type { PipelineDeps } from './deps.js';

/** Seconds since `startMs` (a performance.now() reading): a double, no BigInt per phase. */
function elapsedSeconds(startMs: number): number {
  return (performance.now() - startMs) / 1000;
}

/** The answer for a model no registered worker serves: 404, as OpenAI answers it. */
export function modelNotFound(model: string): KvrouteError {
  return new KvrouteError('model_not_found', `model '${model}' is not served by any worker`, {
    param: 'model',
  });
}

/** Validates the body; an unknown model is a 404, a router without any worker a 503. */
export function parseStage(deps: PipelineDeps, body: unknown, endpoint: EndpointKind): NormalizedRequest {
  const req = parseInferenceRequest(body, endpoint, deps.limits);
  const { registry } = deps.fleet;
  if (!registry.models().includes(req.model)) {
    if (registry.size === 0)
      throw new KvrouteError('no_workers', 'no workers are registered', { retryAfterSeconds: 1 });
    throw modelNotFound(req.model);
  }
  return req;
}

/**
 * The prompt's token ids: given ones, or short text encoded on the event loop, at once (no promise
 * on those paths, the common ones); longer text through the tokenizer's pool, dropped while it
 * waits for a thread if the client leaves (`abort`). Either way checked against the limits. Text is
 * encoded only up to one token past `maxPromptTokens`: a prompt over it is refused anyway, and a
 * 4 MiB body (~1.3 M tokens of English) was encoded in full first, ~3x the work (tokenizer README).
 * A text longer than `maxPromptTokens` of the longest tokens is over it whatever it holds: refused
 * from its length, so the work to refuse a prompt is bounded by the limit, not by the body (16 MiB
 * against 8,192 tokens took 60 ms of English, 560 ms of CJK, to scan for long runs).
 */
export function tokenizeStage(
  deps: PipelineDeps,
  req: NormalizedRequest,
  abort?: RequestAbort,
): number[] | Promise<number[]> {
  const start = performance.now();
  if (req.prompt.kind === 'tokens') return checkedPrompt(deps, req.prompt.tokenIds, start);
  const { maxPromptTokens } = deps.limits;
  const { text } = req.prompt;
  if (minTokenCount(text) > maxPromptTokens) {
    observeTokenize(deps, start);
    throw promptOverLimit(maxPromptTokens);
  }
  const inline = deps.tokenizer.encodeInline(text, maxPromptTokens);
  if (inline !== undefined) return checkedPrompt(deps, inline, start);
  // Only here is the request's AbortSignal made (RequestAbort makes one on demand).
  return deps.tokenizer
    .encode(text, abort?.signal, maxPromptTokens)
    .then((ids) => checkedPrompt(deps, Array.from(ids), start));
}

function observeTokenize(deps: PipelineDeps, start: number): void {
  deps.metrics.routingPhase.tokenize.observe(elapsedSeconds(start));
}

/** Text stops encoding one token past the limit (or is not encoded), so its count is only a lower bound. */
function promptOverLimit(limit: number): KvrouteError {
  return new KvrouteError('context_length_exceeded', `prompt has more than the limit of ${limit} tokens`, {
    param: 'prompt',
  });
}

function checkedPrompt(deps: PipelineDeps, ids: number[], start: number): number[] {
  observeTokenize(deps, start);
  if (ids.length === 0)
    throw new KvrouteError('invalid_request', 'prompt has no tokens', { param: 'prompt' });
  if (ids.length > deps.limits.maxPromptTokens) throw promptOverLimit(deps.limits.maxPromptTokens);
  return ids;
}

export function hashStage(deps: PipelineDeps, tokenIds: number[]): BlockKeys {
  const start = performance.now();
  const keys = localBlockKeys(tokenIds, deps.config.blockSize);
  deps.metrics.routingPhase.hash.observe(elapsedSeconds(start));
  return keys;
}

export function matchStage(deps: PipelineDeps, keys: BlockKeys): OverlapSource {
  const start = performance.now();
  const overlaps = deps.fleet.overlaps(keys);
  deps.metrics.routingPhase.match.observe(elapsedSeconds(start));
  return overlaps;
}

/** Chooses a decode worker among the model's decode-capable ones, avoiding `exclude`. Books nothing. */
export function selectDecode(
  deps: PipelineDeps,
  routing: RoutingInput,
  exclude?: ReadonlySet<string>,
): WorkerDecision {
  const start = performance.now();
  let candidates: readonly Worker[] = deps.fleet.registry.candidates(routing.model, 'decode');
  if (exclude && exclude.size > 0) candidates = candidates.filter((w) => !exclude.has(w.id));
  // A fleet with prefill workers picks decode by load unless a decode worker already holds part
  // of the prompt (docs/disaggregation.md); an aggregated fleet uses the configured weight.
  const disaggregated =
    deps.prefillPlanner !== undefined && deps.fleet.registry.candidates(routing.model, 'prefill').length > 0;
  const decision = deps.policy.select({
    candidates,
    promptTokens: routing.promptTokens,
    outputTokens: routing.outputTokens,
    overlaps: routing.overlaps,
    ...(disaggregated
      ? { overlapWeight: decodeOverlapWeight(candidates, routing.overlaps, deps.policy.config.overlapWeight) }
      : {}),
  });
  deps.metrics.routingPhase.score.observe(elapsedSeconds(start));
  if (decision.outcome !== 'selected') throw decisionError(decision, 'decode workers');
  return decision;
}

export interface RoutedRequest {
  request: NormalizedRequest;
  plan: ExecutionPlan;
}

/**
 * tokenize -> hash -> match -> select (decode, then the prefill planner), inside a
 * `kv_find_best_match` span. Returns the plan; nothing is booked yet.
 */
export function routeStage(
  deps: PipelineDeps,
  request: NormalizedRequest,
  requestId: string,
  httpRequestId: string = requestId,
  abort?: RequestAbort,
): ExecutionPlan | Promise<ExecutionPlan> {
  // Synchronous when the prompt was tokenized inline (token ids, short text): no promise of its
  // own per request (each also runs the async-context hooks).
  const tokenized = tokenizeStage(deps, request, abort);
  if (Array.isArray(tokenized)) return planRoute(deps, request, tokenized, requestId, httpRequestId);
  return tokenized.then((tokenIds) => {
    // The client may have left while a long prompt was tokenized off the event loop: routing it
    // now would start spans under a request span already ended and send a prefill nobody waits for.
    if (abort?.aborted) throw abort.reason;
    return planRoute(deps, request, tokenIds, requestId, httpRequestId);
  });
}

function planRoute(
  deps: PipelineDeps,
  request: NormalizedRequest,
  tokenIds: number[],
  requestId: string,
  httpRequestId: string,
): ExecutionPlan {
  const outer = context.active();
  const span = deps.tracer.startSpan('kv_find_best_match');
  try {
    return context.with(trace.setSpan(context.active(), span), () => {
      const keys = hashStage(deps, tokenIds);
      const overlaps = matchStage(deps, keys);
      const routing: RoutingInput = {
        model: request.model,
        tokenIds,
        keys,
        overlaps,
        promptTokens: tokenIds.length,
        outputTokens: request.maxTokens,
      };
      const decode = selectDecode(deps, routing);
      // prefill_routing is a sibling of this span under http-request, not its child.
      const prefillChoice = context.with(outer, () =>
        deps.prefillPlanner?.choosePrefill(routing, decode),
      ) ?? {
        prefill: null,
        reason: 'aggregated',
      };
      if (span.isRecording()) {
        span.setAttributes({
          'kvroute.candidates': decode.candidateCount,
          'kvroute.worker_id': decode.worker.id,
          'kvroute.overlap_blocks': decode.chosen.overlapBlocks,
          'kvroute.cost': decode.chosen.cost,
          'kvroute.prompt_tokens': tokenIds.length,
          'kvroute.prefill_worker_id': prefillChoice.prefill?.worker.id,
        });
      }
      return {
        requestId,
        httpRequestId,
        routing,
        maxTokens: request.maxTokens,
        stopTokenIds: request.stopTokenIds,
        decode,
        prefill: prefillChoice.prefill,
        prefillReason: prefillChoice.reason,
      };
    });
  } catch (err) {
    recordFailure(span, err);
    throw err;
  } finally {
    span.end();
  }
}
