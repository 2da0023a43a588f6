// A tracer in front of the SDK's for samplers that follow the parent's decision (the
// parentbased_* family, and always_off). Under those, a span whose parent is a valid span context
// that was NOT sampled is always non-recording; the SDK still generates ids and asks the sampler
// to learn that. This answers it directly with a non-recording span carrying the parent's
// context, so a sampled-out request costs no SDK span per hop: what keeps "sampled out" close to
// "off" (bench tracing). Nothing is recorded either way, so the propagated span id (the parent's
// instead of a fresh one) is never seen by a backend.
//
// When the root sampler can never sample either (always_off, parentbased_always_off, a ratio of
// 0), a new root is answered the same way: fresh random ids (pooled-id-generator.ts) in a
// non-recording span, so a sampled-out request makes no SDK span at all, only the trace context
// that travels downstream.

import {
  type Context,
  context,
  type Span,
  type SpanOptions,
  TraceFlags,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { isTracingSuppressed } from '@opentelemetry/core';
import { startActiveSpanOf } from './context.js';
import { PooledIdGenerator } from './pooled-id-generator.js';
import { isSpanContextValid } from './trace-context-propagator.js';

export interface ShortcutRules {
  /** True when the root sampler never samples: new roots skip the SDK too. */
  rootsUnsampled: boolean;
}

export class UnsampledShortcutTracer implements Tracer {
  private readonly ids = new PooledIdGenerator();

  constructor(
    private readonly sdk: Tracer,
    private readonly rules: ShortcutRules = { rootsUnsampled: false },
  ) {}

  startSpan(name: string, options?: SpanOptions, ctx: Context = context.active()): Span {
    const parent = options?.root === true ? undefined : trace.getSpanContext(ctx);
    if (
      parent !== undefined &&
      (parent.traceFlags & TraceFlags.SAMPLED) === 0 &&
      isSpanContextValid(parent)
    ) {
      return trace.wrapSpanContext(parent);
    }
    if (
      this.rules.rootsUnsampled &&
      (parent === undefined || !isSpanContextValid(parent)) &&
      !isTracingSuppressed(ctx)
    ) {
      return trace.wrapSpanContext({
        traceId: this.ids.generateTraceId(),
        spanId: this.ids.generateSpanId(),
        traceFlags: TraceFlags.NONE,
      });
    }
    return this.sdk.startSpan(name, options, ctx);
  }

  startActiveSpan: Tracer['startActiveSpan'] = (name: string, ...rest: unknown[]) =>
    startActiveSpanOf(this, name, rest) as never;
}

/** Whether a sampler of this kind decides a child with a parent exactly as its parent was decided. */
export function followsParent(samplerKind: string): boolean {
  return isParentBased(samplerKind) || samplerKind === 'always_off';
}

/**
 * Whether a sampler of this kind is the SDK's ParentBasedSampler as index.ts builds it (only the
 * root sampler given): every child of a valid sampled parent is then recorded and sampled.
 */
export function isParentBased(samplerKind: string): boolean {
  return samplerKind.startsWith('parentbased_');
}

/** Whether a sampler of this kind (and ratio) can never sample a new root. */
export function rootsNeverSampled(samplerKind: string, ratio: number): boolean {
  return (
    samplerKind === 'always_off' ||
    samplerKind === 'parentbased_always_off' ||
    (samplerKind === 'parentbased_traceidratio' && ratio === 0)
  );
}
