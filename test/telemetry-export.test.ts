// Export end to end: a child process inits telemetry from OTEL_* variables, records spans and shuts
// down; an OTLP/HTTP receiver in this test must have received them by the time the child exits
// (proves shutdown flushes the batch processor), in both OTLP encodings.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const childScript = fileURLToPath(new URL('./telemetry-export-child.ts', import.meta.url));

interface Received {
  path: string | undefined;
  headers: IncomingHttpHeaders;
  body: Buffer;
}
const received: Received[] = [];
const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
    // An empty ExportTraceServiceResponse is valid in both encodings for a JSON/proto client.
    const json = req.headers['content-type'] === 'application/json';
    res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
    res.end(json ? '{}' : undefined);
  });
});
let endpoint = '';

before(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server.close());

async function runChild(env: Record<string, string>): Promise<{ traceId: string; enabled: boolean }> {
  received.length = 0;
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OTEL_')));
  const { stdout } = await run(process.execPath, ['--import', 'tsx', childScript], {
    env: { ...clean, ...env },
    timeout: 30_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { traceId: string; enabled: boolean };
}

test('http/json: spans reach the receiver before the process exits, with service.name', async () => {
  const out = await runChild({
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
  });
  assert.equal(out.enabled, true);
  assert.equal(received.length, 1);
  const [req] = received;
  assert.equal(req!.path, '/v1/traces');
  assert.equal(req!.headers['content-type'], 'application/json');
  const body = JSON.parse(req!.body.toString('utf8'));
  const rs = body.resourceSpans[0];
  const serviceName = rs.resource.attributes.find((a: { key: string }) => a.key === 'service.name');
  assert.equal(serviceName.value.stringValue, 'kvroute-test-child');
  const sdkLanguage = rs.resource.attributes.find((a: { key: string }) => a.key === 'telemetry.sdk.language');
  assert.equal(sdkLanguage.value.stringValue, 'nodejs');
  const spans = rs.scopeSpans.flatMap((s: { spans: unknown[] }) => s.spans) as {
    name: string;
    traceId: string;
    spanId: string;
    parentSpanId?: string;
  }[];
  assert.deepEqual(spans.map((s) => s.name).sort(), ['fixture-child', 'fixture-parent']);
  const parent = spans.find((s) => s.name === 'fixture-parent')!;
  const child = spans.find((s) => s.name === 'fixture-child')!;
  assert.equal(parent.traceId, out.traceId);
  assert.equal(child.traceId, out.traceId);
  assert.equal(child.parentSpanId, parent.spanId);
});

test('http/protobuf (default protocol): a protobuf body naming the spans arrives at the traces URL', async () => {
  const out = await runChild({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${endpoint}/custom/traces` });
  assert.equal(out.enabled, true);
  assert.equal(received.length, 1);
  const [req] = received;
  assert.equal(req!.path, '/custom/traces');
  assert.equal(req!.headers['content-type'], 'application/x-protobuf');
  assert.ok(req!.body.length > 0);
  // Protobuf carries strings and bytes verbatim: the span name and the raw 16-byte trace id.
  assert.ok(req!.body.includes(Buffer.from('fixture-parent')));
  assert.ok(req!.body.includes(Buffer.from(out.traceId, 'hex')));
});

test('sampler ratio 0: nothing is exported', async () => {
  const out = await runChild({
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_TRACES_SAMPLER: 'traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0',
  });
  assert.equal(out.enabled, true);
  assert.equal(received.length, 0);
});

test('http/json with the collector down: shutdown reports the lost spans in one line and the process exits 0', async () => {
  // The SDK's batch processor rejects its shutdown when the last export fails: that rejection
  // reached the router's and the worker's SIGTERM path, which exited 1 with a stack trace.
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OTEL_')));
  const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', childScript], {
    env: {
      ...clean,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9',
      OTEL_EXPORTER_OTLP_TIMEOUT: '500',
    },
    timeout: 30_000,
  });
  assert.equal(JSON.parse(stdout.trim().split('\n').at(-1)!).enabled, true);
  assert.match(stderr, /^kvroute tracing: spans not exported at shutdown \(.+\)$/m);
  assert.doesNotMatch(stderr, /\n\s+at /, 'a stack trace, not one line');
});

test('off mode: no exporter configured means nothing is sent and the SDK is not built', async () => {
  const out = await runChild({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: endpoint });
  assert.equal(out.enabled, false);
  assert.equal(received.length, 0);
});
