// One connected trace per request across real processes: a router, a prefill worker and a decode
// worker (`node dist/src/cli/main.js ...`, so run `npm run build` first), each exporting OTLP/JSON
// to a receiver in this test. The prompt is longer than --max-local-prefill, so every request
// takes the remote-prefill path. Checked per request: exact parent links
//   caller -> http-request -> kv_find_best_match                      (decode worker choice)
//                          -> prefill_routing -> kv_find_best_match   (prefill worker choice)
//                          -> remote_prefill -> request_plane prefill -> handle_payload (prefill worker) -> engine.prefill
//                          -> request_plane generate -> handle_payload (decode worker) -> engine.prefill, engine.decode
// no orphan spans, the request id on every hop, and no background span (heartbeats, KV-event
// subscriptions, health checks) in a user's trace.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { injectToHeaders, registerGlobalContext } from '../src/telemetry/index.js';
import {
  eventually,
  exportTo,
  type KvrouteProcess,
  OtlpReceiver,
  type ReceivedSpan,
  renderWaterfall,
  spawnKvroute,
} from './trace-helpers.js';

const receiver = new OtlpReceiver();
const callerTracer = new BasicTracerProvider().getTracer('trace-e2e-caller');
let router: KvrouteProcess;
let prefillWorker: KvrouteProcess;
let decodeWorker: KvrouteProcess;
let url: string;

/**
 * Far over --max-local-prefill 32 tokens, and unique from its first token (no worker has any of
 * it cached), so every request takes the remote-prefill path.
 */
function promptFor(requestId: string): string {
  // Under 2048 characters, so the router tokenizes it inline (200 at once would fill the pool queue).
  return `${requestId}: ${Array.from({ length: 8 }, (_, i) => `step ${i} of the prompt`).join(', ')}`;
}
/** Endpoints a user request may call on a worker; anything else in a user trace is background leaking in. */
const USER_ENDPOINTS = new Set(['prefill', 'generate', 'kv_handoff']);

before(async () => {
  registerGlobalContext();
  await receiver.listen();
  const env = exportTo(receiver.url);
  router = spawnKvroute(
    'router',
    ['router', '--port', '0', '--max-local-prefill', '32', '--lease-ttl-ms', '2000'],
    env,
  );
  url = (await router.waitForStdout(/https?:\/\/[^\s"]+/))[0];
  const workerArgs = (role: string) => ['worker', '--role', role, '--router', url, '--speedup', '1000'];
  prefillWorker = spawnKvroute('prefill', workerArgs('prefill'), env);
  decodeWorker = spawnKvroute('decode', workerArgs('decode'), env);
  await Promise.all([prefillWorker, decodeWorker].map((w) => w.waitForStdout(/listening on (\S+),/)));
  assert.ok(await waitForFleet(), `fleet never became ready; router stderr: ${router.stderr.join('')}`);
});

after(async () => {
  await Promise.all([prefillWorker, decodeWorker].map((w) => w?.stop()));
  await router?.stop();
  await receiver.close();
});

/** Both workers registered with the router and the router ready. */
async function waitForFleet(): Promise<boolean> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const ready = await fetch(`${url}/ready`).then(
      (r) => r.ok,
      () => false,
    );
    const workers = await fetch(`${url}/v1/workers`).then(
      async (r) =>
        r.ok ? ((await r.json()) as { data?: { role?: string }[]; workers?: { role?: string }[] }) : null,
      () => null,
    );
    const list = workers?.data ?? workers?.workers ?? [];
    if (ready && list.some((w) => w.role === 'prefill') && list.some((w) => w.role === 'decode')) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

interface Sent {
  requestId: string;
  /** The test's client span: the parent the router must use ('' when the request had no traceparent). */
  callerSpanId: string;
  traceId: string | undefined;
  status: number;
  returnedRequestId: string | null;
  prefillWorkerHeader: string | null;
  /** The error body of a failed request (empty on 200). */
  body: string;
}

async function complete(requestId: string, withTraceparent: boolean): Promise<Sent> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'x-request-id': requestId };
  let callerSpanId = '';
  let traceId: string | undefined;
  if (withTraceparent) {
    const caller = callerTracer.startSpan('caller');
    ({ spanId: callerSpanId, traceId } = caller.spanContext());
    injectToHeaders(trace.setSpan(ROOT_CONTEXT, caller), headers);
    caller.end();
  }
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ model: 'mock-llm', prompt: promptFor(requestId), max_tokens: 4 }),
  });
  const text = await res.text();
  return {
    body: res.status === 200 ? '' : text,
    requestId,
    callerSpanId,
    traceId,
    status: res.status,
    returnedRequestId: res.headers.get('x-request-id'),
    prefillWorkerHeader: res.headers.get('x-kvroute-prefill-worker'),
  };
}

/** The request id a span carries (ours is `kvroute.request_id` on every hop). */
function requestIdOf(span: ReceivedSpan): unknown {
  return span.attributes['kvroute.request_id'];
}

/** Trace id of the request's router span (for requests sent without traceparent). */
function traceOfRequest(requestId: string): string | undefined {
  return receiver.spans.find((s) => s.name === 'http-request' && requestIdOf(s) === requestId)?.traceId;
}

/**
 * Every problem with one request's trace, [] when it is complete and exactly right. A list rather
 * than asserts so the caller can poll while spans are still arriving, then show all of them.
 */
function traceProblems(sent: Sent): string[] {
  const traceId = sent.traceId ?? traceOfRequest(sent.requestId);
  if (traceId === undefined) return [`${sent.requestId}: no http-request span carries the request id`];
  const spans = receiver.byTrace(traceId);
  const problems: string[] = [];
  const where = (s: ReceivedSpan) => `${s.service}/${s.name}`;
  const one = (name: string, pred: (s: ReceivedSpan) => boolean = () => true): ReceivedSpan | undefined => {
    const found = spans.filter((s) => s.name === name && pred(s));
    if (found.length !== 1) problems.push(`${sent.requestId}: ${found.length} spans '${name}' (want 1)`);
    return found[0];
  };
  const childOf = (child: ReceivedSpan | undefined, parent: ReceivedSpan | undefined, label: string) => {
    if (child && parent && child.parentSpanId !== parent.spanId) {
      const actual = spans.find((s) => s.spanId === child.parentSpanId);
      problems.push(`${sent.requestId}: ${label}: parent is ${actual ? where(actual) : child.parentSpanId}`);
    }
  };

  const http = one('http-request');
  if (http) {
    if (http.service !== 'kvroute-router') problems.push(`http-request from ${http.service}`);
    if (http.kind !== 2) problems.push('http-request is not SERVER kind');
    if (http.parentSpanId !== sent.callerSpanId) {
      problems.push(
        `${sent.requestId}: http-request parent '${http.parentSpanId}' != caller '${sent.callerSpanId}'`,
      );
    }
  }
  const routing = one('prefill_routing');
  childOf(routing, http, 'prefill_routing under http-request');
  const match = spans.find((s) => s.name === 'kv_find_best_match' && s.parentSpanId === routing?.spanId);
  if (!match) problems.push(`${sent.requestId}: no kv_find_best_match under prefill_routing`);

  const decodeMatch = spans.find((s) => s.name === 'kv_find_best_match' && s.parentSpanId === http?.spanId);
  if (!decodeMatch) problems.push(`${sent.requestId}: no kv_find_best_match (decode) under http-request`);

  // The remote prefill runs after routing, as its own step of the request.
  const remotePrefill = one('remote_prefill');
  childOf(remotePrefill, http, 'remote_prefill under http-request');
  const prefillCall = one('request_plane prefill');
  childOf(prefillCall, remotePrefill, 'request_plane prefill under remote_prefill');
  const prefillHandler = one('handle_payload', (s) => s.attributes['kvroute.endpoint'] === 'prefill');
  childOf(prefillHandler, prefillCall, 'prefill handle_payload under request_plane prefill');
  if (prefillHandler && prefillHandler.service !== 'kvroute-prefill-worker') {
    problems.push(`prefill handle_payload from ${prefillHandler.service}`);
  }
  const prefillEngine = one('engine.prefill', (s) => s.service === 'kvroute-prefill-worker');
  childOf(prefillEngine, prefillHandler, 'engine.prefill under the prefill worker handle_payload');

  const generateCall = one('request_plane generate');
  childOf(generateCall, http, 'request_plane generate under http-request');
  const generateHandler = one('handle_payload', (s) => s.attributes['kvroute.endpoint'] === 'generate');
  childOf(generateHandler, generateCall, 'generate handle_payload under request_plane generate');
  if (generateHandler && generateHandler.service !== 'kvroute-decode-worker') {
    problems.push(`generate handle_payload from ${generateHandler.service}`);
  }
  childOf(
    one('engine.decode', (s) => s.service === 'kvroute-decode-worker'),
    generateHandler,
    'engine.decode under the decode worker handle_payload',
  );

  // No orphans: every parent is in the trace, or is the caller's span; one entry point only.
  const ids = new Set(spans.map((s) => s.spanId));
  for (const s of spans) {
    if (s.parentSpanId !== sent.callerSpanId && !ids.has(s.parentSpanId)) {
      problems.push(`${sent.requestId}: orphan ${where(s)} (parent ${s.parentSpanId || 'none'})`);
    }
  }
  const entries = spans.filter((s) => s.parentSpanId === sent.callerSpanId);
  if (entries.length !== 1)
    problems.push(`${sent.requestId}: ${entries.length} spans hang off the caller (want 1)`);

  // The request id on every hop; nothing of another request or of background work in here.
  for (const s of spans) {
    const hop =
      s.name === 'http-request' || s.name === 'handle_payload' || s.name.startsWith('request_plane ');
    const rid = requestIdOf(s);
    if (hop && rid !== sent.requestId)
      problems.push(`${sent.requestId}: ${where(s)} has request id ${String(rid)}`);
    if (!hop && rid !== undefined && rid !== sent.requestId)
      problems.push(`${where(s)} of request ${String(rid)}`);
    const endpoint = s.attributes['kvroute.endpoint'];
    if (endpoint !== undefined && !USER_ENDPOINTS.has(String(endpoint))) {
      problems.push(`${sent.requestId}: background ${where(s)} (${String(endpoint)}) in a user trace`);
    }
  }
  return problems;
}

async function settled(sent: Sent[]): Promise<string[]> {
  let problems: string[] = [];
  await eventually(() => {
    problems = sent.flatMap(traceProblems);
    return problems.length === 0;
  }, 20_000);
  return problems;
}

test('a request with traceparent: one trace with that id, exact parent links, request id on every hop', async (t) => {
  const sent = await complete('trace-e2e-one', true);
  assert.equal(sent.status, 200);
  assert.equal(sent.returnedRequestId, 'trace-e2e-one');
  assert.ok(sent.prefillWorkerHeader, 'the remote-prefill path was taken');
  assert.deepEqual(await settled([sent]), []);
  // The picture in docs/tracing.md comes from here.
  for (const line of renderWaterfall(receiver.byTrace(sent.traceId!)).split('\n')) t.diagnostic(line);
});

test('a request without traceparent gets a fresh root trace with the same structure', async () => {
  const sent = await complete('trace-e2e-root', false);
  assert.equal(sent.status, 200);
  assert.equal(sent.returnedRequestId, 'trace-e2e-root');
  assert.deepEqual(await settled([sent]), []);
  const traceId = traceOfRequest('trace-e2e-root')!;
  assert.equal(receiver.byTrace(traceId).filter((s) => s.parentSpanId === '').length, 1);
});

test('200 concurrent requests: 200 distinct complete traces, no span in the wrong trace', async () => {
  const sent = await Promise.all(Array.from({ length: 200 }, (_, i) => complete(`trace-e2e-c${i}`, true)));
  assert.deepEqual(
    sent
      .filter((s) => s.status !== 200 || s.returnedRequestId !== s.requestId)
      .map((s) => `${s.requestId} ${s.status} ${s.body}`),
    [],
  );
  assert.equal(new Set(sent.map((s) => s.traceId)).size, 200);
  assert.deepEqual(await settled(sent), []);
});

test('SIGTERM: every process flushes and exits 0; the receiver got only OTLP JSON', async () => {
  const results = await Promise.all([prefillWorker, decodeWorker].map((w) => w.stop()));
  results.push(await router.stop());
  assert.deepEqual(
    results.map((r) => r.code),
    [0, 0, 0],
  );
  assert.equal(receiver.rejected, 0);
});

test('background work (heartbeats, KV-event subscriptions) never shares a user trace id', async () => {
  // After the SIGTERM above: a KV-event subscription's spans end (and are exported) only when it
  // ends. Sanity first: background spans exist, so the checks below can fail.
  const subscriptions = receiver.spans.filter((s) => s.attributes['kvroute.endpoint'] === 'kv_events');
  assert.ok(
    subscriptions.some((s) => s.service === 'kvroute-router'),
    'the router exported its subscriptions',
  );
  assert.ok(
    subscriptions.some((s) => s.service.endsWith('-worker')),
    'the workers exported theirs',
  );
  assert.ok(
    receiver.spans.some(
      (s) => s.name === 'http-request' && String(s.attributes['url.path']).endsWith('/heartbeat'),
    ),
    'heartbeats were traced',
  );
  // A subscription is its own root trace: it does not even hang off the registration that started it.
  for (const s of subscriptions.filter((x) => x.service === 'kvroute-router'))
    assert.equal(s.parentSpanId, '');
  const subscriptionTraces = new Set(subscriptions.map((s) => s.traceId));
  assert.deepEqual(
    receiver.spans.filter(
      (s) => subscriptionTraces.has(s.traceId) && s.attributes['kvroute.endpoint'] !== 'kv_events',
    ),
    [],
  );
  const userTraces = new Set(
    receiver.spans.filter((s) => String(requestIdOf(s) ?? '').startsWith('trace-e2e-')).map((s) => s.traceId),
  );
  assert.ok(userTraces.size >= 202);
  const leaked = receiver.spans.filter((s) => {
    const endpoint = s.attributes['kvroute.endpoint'];
    const background =
      (endpoint !== undefined && !USER_ENDPOINTS.has(String(endpoint))) ||
      (s.name === 'http-request' && !String(requestIdOf(s) ?? '').startsWith('trace-e2e-'));
    return background && userTraces.has(s.traceId);
  });
  assert.deepEqual(
    leaked.map((s) => `${s.service}/${s.name}`),
    [],
  );
});
