// Engine phases as spans, children of the request's `handle_payload`: `engine.prefill` from submit
// to the first output (queueing + prompt compute, with the prompt accounting), then
// `engine.decode` from the first output to the last (output tokens, finish reason). A prefill-only
// request (remote prefill: one token) has no decode span.

import { type Context, context, type Span, SpanStatusCode, type Tracer } from '@opentelemetry/api';
import type { EngineOutput } from '../engine/index.js';

export const ENGINE_SPAN = { prefill: 'engine.prefill', decode: 'engine.decode' } as const;

/**
 * Wraps one request's outputs so its phases are timed as spans. Starts `engine.prefill` now, in
 * the active context (the handler's). When that span does not record (tracing off or sampled
 * out) the outputs are returned as they are: no per-token cost.
 */
export function traceEnginePhases(
  tracer: Tracer,
  outputs: AsyncIterable<EngineOutput>,
  promptTokens: number,
): AsyncIterable<EngineOutput> {
  const parent = context.active();
  const prefill = tracer.startSpan(
    ENGINE_SPAN.prefill,
    { attributes: { 'kvroute.prompt_tokens': promptTokens } },
    parent,
  );
  if (!prefill.isRecording()) return outputs;
  return phases(tracer, parent, prefill, outputs);
}

async function* phases(
  tracer: Tracer,
  parent: Context,
  prefill: Span,
  outputs: AsyncIterable<EngineOutput>,
): AsyncGenerator<EngineOutput> {
  let open: Span | undefined = prefill;
  let generated = 0;
  let outcome: 'finished' | 'cancelled' | 'error' = 'cancelled';
  try {
    for await (const out of outputs) {
      if (out.prompt) {
        const a = out.prompt.accounting;
        prefill.setAttributes({
          'kvroute.computed_tokens': a.computedTokens,
          'kvroute.cached_tokens': a.cachedTokens,
          'kvroute.transferred_tokens': a.transferredTokens,
          'kvroute.installed_blocks': a.installedBlocks,
        });
        prefill.end();
        open = undefined;
        if (out.finishReason === null) {
          open = tracer.startSpan(ENGINE_SPAN.decode, {}, parent);
        }
      }
      generated += out.tokenIds.length;
      if (out.finishReason !== null) {
        open?.setAttribute('kvroute.finish_reason', out.finishReason);
        outcome = 'finished';
      }
      yield out;
    }
    outcome = 'finished';
  } catch (err) {
    outcome = 'error';
    open?.setStatus({
      code: SpanStatusCode.ERROR,
      message: err instanceof Error ? err.message : String(err),
    });
    throw err;
  } finally {
    if (open !== undefined) {
      if (open !== prefill) open.setAttribute('kvroute.output_tokens', generated);
      if (outcome === 'cancelled') open.setAttribute('kvroute.cancelled', true);
      open.end();
    }
  }
}
