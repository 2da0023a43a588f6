// Engine phases as spans, children of the request's `handle_payload`: `engine.prefill` from submit
// to the first output (queueing + prompt compute, with the prompt accounting), then
// `engine.decode` from the first output to the last (output tokens, finish reason). A prefill-only
// request (remote prefill: one token) has no decode span.
//
// The engine driver reports each output here as the engine produces it, synchronously, so the
// spans cost nothing per token beyond a counter: no wrapper around the request's output stream
// (an async generator there cost a few promises per token on every traced request).

import { type Context, context, type Span, SpanStatusCode, type Tracer } from '@opentelemetry/api';
import type { EngineOutput } from '../engine/index.js';

export const ENGINE_SPAN = { prefill: 'engine.prefill', decode: 'engine.decode' } as const;

export type PhaseOutcome = 'finished' | 'cancelled' | 'error';

export class EnginePhaseSpans {
  private open: Span | undefined;
  private generated = 0;
  private finishReason: string | undefined;

  private constructor(
    private readonly tracer: Tracer,
    private readonly parent: Context,
    private readonly prefill: Span,
    private readonly promptTokens: number,
  ) {
    this.open = prefill;
  }

  /**
   * Starts `engine.prefill` now, in the active context (the handler's). Undefined when that span
   * does not record (tracing off or sampled out): the request then pays nothing.
   */
  static start(tracer: Tracer, promptTokens: number): EnginePhaseSpans | undefined {
    const parent = context.active();
    const prefill = tracer.startSpan(ENGINE_SPAN.prefill, undefined, parent);
    return prefill.isRecording() ? new EnginePhaseSpans(tracer, parent, prefill, promptTokens) : undefined;
  }

  /** One output of the request, as the engine emits it. */
  observe(out: EngineOutput): void {
    if (out.prompt && this.open === this.prefill) {
      const a = out.prompt.accounting;
      this.prefill.setAttributes({
        'kvroute.prompt_tokens': this.promptTokens,
        'kvroute.computed_tokens': a.computedTokens,
        'kvroute.cached_tokens': a.cachedTokens,
        'kvroute.transferred_tokens': a.transferredTokens,
        'kvroute.installed_blocks': a.installedBlocks,
      });
      this.prefill.end();
      this.open =
        out.finishReason === null
          ? this.tracer.startSpan(ENGINE_SPAN.decode, undefined, this.parent)
          : undefined;
    }
    this.generated += out.tokenIds.length;
    if (out.finishReason !== null) this.finishReason = out.finishReason;
  }

  /** The request is over: ends the open span with the closing attributes (once). */
  finish(outcome: PhaseOutcome, err?: unknown): void {
    const open = this.open;
    if (open === undefined) return;
    this.open = undefined;
    if (outcome === 'error') {
      open.setStatus({
        code: SpanStatusCode.ERROR,
        message: err instanceof Error ? err.message : String(err),
      });
    }
    // One write; undefined attributes are skipped.
    open.setAttributes({
      'kvroute.prompt_tokens': open === this.prefill ? this.promptTokens : undefined,
      'kvroute.output_tokens': open === this.prefill ? undefined : this.generated,
      'kvroute.finish_reason': this.finishReason,
      'kvroute.cancelled': outcome === 'cancelled' ? true : undefined,
    });
    open.end();
  }
}
