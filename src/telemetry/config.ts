// Pure core of the telemetry setup: reads the standard OTEL_* variables (CONTRACT.md §5) from an
// env object and decides what to build. No SDK objects, no I/O, so every rule (when tracing is
// off, which sampler, which URL) is testable with a plain object.

import { UsageError } from '../errors.js';

export type TraceExporterKind = 'otlp' | 'console';
export type OtlpProtocol = 'http/protobuf' | 'http/json';
export type SamplerKind =
  | 'always_on'
  | 'always_off'
  | 'traceidratio'
  | 'parentbased_always_on'
  | 'parentbased_always_off'
  | 'parentbased_traceidratio';

/** The batch processor's bounds: the standard OTEL_BSP_* variables, with the SDK's defaults. */
export interface BatchLimits {
  /** Spans buffered or in flight at most; more are dropped (OTEL_BSP_MAX_QUEUE_SIZE, 2048). */
  maxQueueSize: number;
  /** Spans per export request (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512; at most maxQueueSize). */
  maxExportBatchSize: number;
  /** A partial batch is sent this long after its first span (OTEL_BSP_SCHEDULE_DELAY, 5000 ms). */
  scheduledDelayMillis: number;
}

/** What one span keeps: the standard OTEL_*_LIMIT variables, with the SDK's defaults. */
export interface SpanLimits {
  /** OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT; no limit by default. */
  attributeValueLengthLimit: number;
  /** OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, else OTEL_ATTRIBUTE_COUNT_LIMIT, else 128. */
  attributeCountLimit: number;
  /** OTEL_SPAN_EVENT_COUNT_LIMIT (128); the oldest event goes first. */
  eventCountLimit: number;
  /** OTEL_SPAN_LINK_COUNT_LIMIT (128). */
  linkCountLimit: number;
  /** OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT (128). */
  attributePerEventCountLimit: number;
  /** OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT (128). */
  attributePerLinkCountLimit: number;
}

export interface TelemetryConfig {
  /** False means no SDK provider and no exporter: spans are non-recording pass-throughs. */
  enabled: boolean;
  serviceName: string;
  /** Exporters to build, each with its own span processor. Empty when disabled. */
  exporters: TraceExporterKind[];
  protocol: OtlpProtocol;
  /** Full URL of the OTLP traces endpoint (already ends in /v1/traces when derived from the base). */
  otlpTracesUrl: string;
  sampler: { kind: SamplerKind; ratio: number };
  batch: BatchLimits;
  limits: SpanLimits;
}

const SAMPLERS: readonly SamplerKind[] = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
];

const DEFAULT_OTLP_BASE = 'http://localhost:4318';

function read(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === '' ? undefined : v;
}

/** `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL; the spec appends the signal path to it. */
function tracesUrlFromBase(base: string): string {
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

/**
 * `url` (the traces URL made from these variables), checked: the exporter would otherwise throw
 * its own error from deep in startup, a stack trace and exit 1 instead of a usage error naming
 * the variable.
 */
function checkedTracesUrl(
  url: string,
  tracesEndpoint: string | undefined,
  baseEndpoint: string | undefined,
): string {
  const name =
    tracesEndpoint !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  const value = tracesEndpoint ?? baseEndpoint ?? DEFAULT_OTLP_BASE;
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch {
    throw new UsageError(`${name}: not a URL, got '${value}'`);
  }
  if (protocol !== 'http:' && protocol !== 'https:') {
    throw new UsageError(`${name}: must be an http:// or https:// URL, got '${value}'`);
  }
  return url;
}

function parseSampler(env: NodeJS.ProcessEnv): TelemetryConfig['sampler'] {
  const arg = read(env, 'OTEL_TRACES_SAMPLER_ARG');
  // An explicit ratio with no sampler named means the operator wants ratio sampling that still
  // honours the caller's decision: parentbased_traceidratio. Without either: parentbased_always_on.
  const name =
    read(env, 'OTEL_TRACES_SAMPLER') ?? (arg ? 'parentbased_traceidratio' : 'parentbased_always_on');
  if (!(SAMPLERS as readonly string[]).includes(name)) {
    throw new UsageError(`OTEL_TRACES_SAMPLER: must be one of ${SAMPLERS.join('|')}, got '${name}'`);
  }
  let ratio = 1;
  if (arg !== undefined && name.endsWith('traceidratio')) {
    ratio = Number(arg);
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
      throw new UsageError(`OTEL_TRACES_SAMPLER_ARG: expected a ratio in [0, 1], got '${arg}'`);
    }
  }
  return { kind: name as SamplerKind, ratio };
}

function integerAtLeast(min: number, env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = read(env, name);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`${name}: expected an integer of at least ${min}, got '${raw}'`);
  }
  return value;
}

function positiveInteger(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  return integerAtLeast(1, env, name, fallback);
}

function parseSpanLimits(env: NodeJS.ProcessEnv): SpanLimits {
  const count = (name: string, fallback: number) => integerAtLeast(0, env, name, fallback);
  return {
    attributeValueLengthLimit: positiveInteger(
      env,
      'OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT',
      positiveInteger(env, 'OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT', Number.POSITIVE_INFINITY),
    ),
    attributeCountLimit: count('OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT', count('OTEL_ATTRIBUTE_COUNT_LIMIT', 128)),
    eventCountLimit: count('OTEL_SPAN_EVENT_COUNT_LIMIT', 128),
    linkCountLimit: count('OTEL_SPAN_LINK_COUNT_LIMIT', 128),
    attributePerEventCountLimit: count('OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT', 128),
    attributePerLinkCountLimit: count('OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT', 128),
  };
}

function parseBatchLimits(env: NodeJS.ProcessEnv): BatchLimits {
  const maxQueueSize = positiveInteger(env, 'OTEL_BSP_MAX_QUEUE_SIZE', 2048);
  return {
    maxQueueSize,
    // As the SDK's processor does: a batch larger than the queue is cut to the queue.
    maxExportBatchSize: Math.min(positiveInteger(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512), maxQueueSize),
    scheduledDelayMillis: positiveInteger(env, 'OTEL_BSP_SCHEDULE_DELAY', 5000),
  };
}

function parseProtocol(env: NodeJS.ProcessEnv): OtlpProtocol {
  const raw =
    read(env, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ??
    read(env, 'OTEL_EXPORTER_OTLP_PROTOCOL') ??
    'http/protobuf';
  if (raw === 'http/protobuf' || raw === 'http/json') return raw;
  throw new UsageError(
    `OTEL_EXPORTER_OTLP_PROTOCOL: must be http/protobuf or http/json (grpc is not bundled), got '${raw}'`,
  );
}

/**
 * The "off" rule. Tracing is ON when OTEL_TRACES_EXPORTER names otlp or console, or when it is
 * unset and an OTLP endpoint variable is set. It is OFF when OTEL_TRACES_EXPORTER is `none`, when
 * OTEL_SDK_DISABLED=true, or when neither the exporter nor an endpoint is configured (a service
 * started without any tracing configuration pays nothing and never dials localhost:4318).
 * Invalid values throw UsageError, except where they cannot matter: with OTEL_SDK_DISABLED=true
 * nothing else is read, and the OTLP protocol only when an OTLP exporter is on.
 */
export function resolveTelemetryConfig(
  defaultServiceName: string,
  env: NodeJS.ProcessEnv = process.env,
): TelemetryConfig {
  const tracesEndpoint = read(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const baseEndpoint = read(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  // Disabled means nothing else is read: a cluster-wide OTEL_* meant for other signals or other
  // SDKs must not stop a process whose tracing is switched off.
  const disabled = read(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true';
  const exporterVar = disabled ? undefined : read(env, 'OTEL_TRACES_EXPORTER');
  let exporters: TraceExporterKind[];
  if (disabled) {
    exporters = [];
  } else if (exporterVar === undefined) {
    exporters = tracesEndpoint || baseEndpoint ? ['otlp'] : [];
  } else {
    // Empty entries ("otlp,") are skipped, as the SDK's list parser does.
    const names = [...new Set(exporterVar.split(',').map((s) => s.trim().toLowerCase()))].filter(Boolean);
    for (const n of names) {
      if (n !== 'otlp' && n !== 'console' && n !== 'none') {
        throw new UsageError(`OTEL_TRACES_EXPORTER: must be otlp, console or none, got '${n}'`);
      }
    }
    exporters = names.includes('none') ? [] : (names as TraceExporterKind[]);
  }
  // Disabled, every setting is its default (nothing read, nothing to reject).
  const settingsEnv = disabled ? {} : env;
  const tracesUrl = tracesEndpoint ?? tracesUrlFromBase(baseEndpoint ?? DEFAULT_OTLP_BASE);
  return {
    enabled: exporters.length > 0,
    serviceName: read(env, 'OTEL_SERVICE_NAME') ?? defaultServiceName,
    exporters,
    // The protocol variables are shared with metrics and logs (grpc is common there): read only
    // when an OTLP trace exporter will use them.
    protocol: exporters.includes('otlp') ? parseProtocol(env) : 'http/protobuf',
    // Checked only when an OTLP trace exporter will dial it, like the protocol.
    otlpTracesUrl: exporters.includes('otlp')
      ? checkedTracesUrl(tracesUrl, tracesEndpoint, baseEndpoint)
      : tracesUrl,
    sampler: parseSampler(settingsEnv),
    batch: parseBatchLimits(settingsEnv),
    limits: parseSpanLimits(settingsEnv),
  };
}
