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
  const prefill = tracer.startSpan(ENGINE_SPAN.prefill, undefined, parent);
  if (!prefill.isRecording()) return outputs;
  return phases(tracer, parent, prefill, promptTokens, outputs);
}

async function* phases(
  tracer: Tracer,
  parent: Context,
  prefill: Span,
  promptTokens: number,
  outputs: AsyncIterable<EngineOutput>,
): AsyncGenerator<EngineOutput> {
  let open: Span | undefined = prefill;
  let generated = 0;
  let finishReason: string | undefined;
  let outcome: 'finished' | 'cancelled' | 'error' = 'cancelled';
  try {
    for await (const out of outputs) {
      if (out.prompt) {
        const a = out.prompt.accounting;
        // The prefill span's attributes in one write, when it ends.
        prefill.setAttributes({
          'kvroute.prompt_tokens': promptTokens,
          'kvroute.computed_tokens': a.computedTokens,
          'kvroute.cached_tokens': a.cachedTokens,
          'kvroute.transferred_tokens': a.transferredTokens,
          'kvroute.installed_blocks': a.installedBlocks,
        });
        prefill.end();
        open = undefined;
        if (out.finishReason === null) {
          open = tracer.startSpan(ENGINE_SPAN.decode, undefined, parent);
        }
      }
      generated += out.tokenIds.length;
      if (out.finishReason !== null) {
        finishReason = out.finishReason;
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
      // The open span's closing attributes in one write (undefined ones are skipped).
      open.setAttributes({
        'kvroute.prompt_tokens': open === prefill ? promptTokens : undefined,
        'kvroute.output_tokens': open === prefill ? undefined : generated,
        'kvroute.finish_reason': finishReason,
        'kvroute.cancelled': outcome === 'cancelled' ? true : undefined,
      });
      open.end();
    }
  }
}
