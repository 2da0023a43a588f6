// The one telemetry setup for router and workers: turns the OTEL_* variables (see config.ts) into
// a tracer. When tracing is on, a LeanTracer (lean-tracer.ts) with the configured sampler and exporters;
// when off, a no-op tracer whose spans carry an incoming parent's span context unchanged, so a
// `traceparent` still flows from client to router to worker at near-zero cost.

import { ProxyTracerProvider, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter as OtlpHttpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  type Sampler,
  SimpleSpanProcessor,
  type SpanProcessor,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import { resolveTelemetryConfig, type TelemetryConfig } from './config.js';
import { registerGlobalContext } from './context.js';
import {
  createProtobufTraceDelivery,
  EagerOtlpSpanProcessor,
  stderrReporter,
} from './eager-otlp-processor.js';
import { LeanTracer } from './lean-tracer.js';
import { PooledIdGenerator } from './pooled-id-generator.js';
import {
  followsParent,
  isParentBased,
  rootsNeverSampled,
  UnsampledShortcutTracer,
} from './unsampled-shortcut.js';

export type { TelemetryConfig } from './config.js';
export { resolveTelemetryConfig } from './config.js';
export {
  bindIterableToCurrentContext,
  extractFromHeaders,
  type HeaderCarrier,
  injectToHeaders,
  isValidTraceparent,
  recordFailure,
  registerGlobalContext,
  spawnInCurrentContext,
  withRootContext,
} from './context.js';
export { isSpanContextValid } from './trace-context-propagator.js';

export interface Telemetry {
  /** Start every span of this component with this tracer (not `trace.getTracer()`). */
  readonly tracer: Tracer;
  /** True when spans are recorded and exported; false in pass-through mode. */
  readonly enabled: boolean;
  readonly config: TelemetryConfig;
  /** Flushes pending spans and stops the exporters. Idempotent; a no-op when disabled. */
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  /** service.name unless OTEL_SERVICE_NAME overrides it: `kvroute-router`, `kvroute-<role>-worker`. */
  serviceName: string;
  /** Where to read OTEL_* from (default process.env). */
  env?: NodeJS.ProcessEnv;
}

function buildSampler({ kind, ratio }: TelemetryConfig['sampler']): Sampler {
  switch (kind) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(ratio);
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
  }
}

function buildProcessors(config: TelemetryConfig): SpanProcessor[] {
  return config.exporters.map((kind) => {
    if (kind === 'console') return new SimpleSpanProcessor(new ConsoleSpanExporter());
    if (config.protocol === 'http/json') {
      return new BatchSpanProcessor(new OtlpHttpJsonExporter({ url: config.otlpTracesUrl }), config.batch);
    }
    // The default protocol: spans encoded as they end (eager-otlp-processor.ts explains why).
    // The delivery hears of rejected spans before the processor exists: hand them on late-bound.
    let processor: EagerOtlpSpanProcessor | undefined;
    const delivery = createProtobufTraceDelivery(config.otlpTracesUrl, (count, message) =>
      processor?.noteRejected(count, message),
    );
    processor = new EagerOtlpSpanProcessor(delivery, config.batch);
    return processor;
  });
}

/**
 * Builds this component's tracer from the environment. Safe to call any number of times in one
 * process (tests start several routers and workers): the context manager and propagators are
 * registered globally once, and each call gets its own tracer (with its own service.name,
 * processors and exporter) that is NOT registered as the API's global tracer provider, so shutting
 * one down never silences another. Throws UsageError for an invalid OTEL_* value.
 */
export function initTelemetry(options: TelemetryOptions): Telemetry {
  const config = resolveTelemetryConfig(options.serviceName, options.env ?? process.env);
  registerGlobalContext();
  if (!config.enabled) {
    // A ProxyTracerProvider with no delegate hands out the API's no-op tracer: its spans are
    // non-recording and reuse the parent's span context, so propagation passes straight through.
    return {
      tracer: new ProxyTracerProvider().getTracer(config.serviceName),
      enabled: false,
      config,
      shutdown: async () => {},
    };
  }
  const processors = buildProcessors(config);
  const recordingTracer = new LeanTracer({
    // The SDK's default resource (telemetry.sdk.*, process) with our service.name over it.
    resource: defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.serviceName })),
    scope: { name: 'kvroute' },
    sampler: buildSampler(config.sampler),
    sampledParentsSample: isParentBased(config.sampler.kind),
    idGenerator: new PooledIdGenerator(),
    processors,
    limits: config.limits,
  });
  let shuttingDown: Promise<void> | undefined;
  return {
    tracer: followsParent(config.sampler.kind)
      ? new UnsampledShortcutTracer(recordingTracer, {
          rootsUnsampled: rootsNeverSampled(config.sampler.kind, config.sampler.ratio),
        })
      : recordingTracer,
    enabled: true,
    config,
    shutdown: () => {
      // A processor that could not deliver its last spans (the SDK's batch processor of http/json
      // rejects then; ours reports and resolves) is one stderr line, as losses are on the default
      // path: a collector that is down must not turn a clean shutdown into exit 1 with a stack.
      shuttingDown ??= Promise.all(
        processors.map((p) =>
          p.shutdown().catch((err: unknown) => {
            stderrReporter()(
              `spans not exported at shutdown (${err instanceof Error ? err.message : String(err)})`,
              true,
            );
          }),
        ),
      ).then(() => {});
      return shuttingDown;
    },
  };
}
