// Child process for telemetry-export.test.ts: inits telemetry from its environment, records one
// parent and one child span, shuts down (which must flush) and prints the trace id it used.

import { context, trace } from '@opentelemetry/api';
import { initTelemetry } from '../src/telemetry/index.js';

const telemetry = initTelemetry({ serviceName: 'kvroute-test-child' });
const parent = telemetry.tracer.startSpan('fixture-parent', { attributes: { 'fixture.attr': 42 } });
const child = telemetry.tracer.startSpan('fixture-child', {}, trace.setSpan(context.active(), parent));
child.end();
parent.end();
await telemetry.shutdown();
process.stdout.write(
  `${JSON.stringify({ traceId: parent.spanContext().traceId, enabled: telemetry.enabled })}\n`,
);
