// Test harness for cross-process traces: an OTLP/HTTP JSON receiver (what a collector would be)
// and a spawner for the compiled `kvroute` CLI whose processes export to it.

import { createHook } from 'node:async_hooks';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { context, createContextKey, ROOT_CONTEXT } from '@opentelemetry/api';
import { registerGlobalContext } from '../src/telemetry/index.js';

export const DIST_MAIN = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));

/** One span as received, flattened out of resourceSpans/scopeSpans. Ids are lower-case hex. */
export interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, string | number | boolean>;
  statusCode: number;
}

interface OtlpAnyValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
}
interface OtlpKeyValue {
  key: string;
  value: OtlpAnyValue;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: OtlpKeyValue[];
  status?: { code?: number };
}
interface OtlpExport {
  resourceSpans?: {
    resource?: { attributes?: OtlpKeyValue[] };
    scopeSpans?: { spans?: OtlpSpan[] }[];
  }[];
}

function anyValue(v: OtlpAnyValue): string | number | boolean {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.boolValue !== undefined) return v.boolValue;
  return '';
}

function attributes(list: OtlpKeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const kv of list ?? []) out[kv.key] = anyValue(kv.value);
  return out;
}

/** Hex as sent by the JSON exporter; base64 (the protobuf-JSON default of other SDKs) is converted. */
function hexId(id: string | undefined): string {
  if (id === undefined || id === '') return '';
  if (/^[0-9a-f]+$/i.test(id) && (id.length === 16 || id.length === 32)) return id.toLowerCase();
  return Buffer.from(id, 'base64').toString('hex');
}

/** Flattens one OTLP/JSON ExportTraceServiceRequest body. */
export function decodeOtlpJson(body: OtlpExport): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  for (const rs of body.resourceSpans ?? []) {
    const service = String(attributes(rs.resource?.attributes)['service.name'] ?? '');
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        spans.push({
          service,
          traceId: hexId(s.traceId),
          spanId: hexId(s.spanId),
          parentSpanId: hexId(s.parentSpanId),
          name: s.name,
          kind: s.kind,
          startNs: BigInt(s.startTimeUnixNano),
          endNs: BigInt(s.endTimeUnixNano),
          attributes: attributes(s.attributes),
          statusCode: s.status?.code ?? 0,
        });
      }
    }
  }
  return spans;
}

/** A stand-in collector: accepts POST /v1/traces (http/json), keeps every span. */
export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  /** Bodies that were not OTLP JSON (e.g. protobuf sent by mistake): counted so a test can fail on them. */
  rejected = 0;
  private server: Server | undefined;
  url = '';

  async listen(): Promise<string> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        try {
          this.spans.push(
            ...decodeOtlpJson(JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpExport),
          );
          res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        } catch {
          this.rejected++;
          res.writeHead(400).end();
        }
      });
    });
    server.keepAliveTimeout = 1000;
    this.server = server;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
    return this.url;
  }

  byTrace(traceId: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** The OTEL_* environment that makes a kvroute process export every span to `url` quickly. */
export function exportTo(url: string): NodeJS.ProcessEnv {
  return {
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '50',
    OTEL_BSP_MAX_QUEUE_SIZE: '20000',
    OTEL_TRACES_SAMPLER: 'parentbased_always_on',
  };
}

export interface KvrouteProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first match of `re` in stdout. */
  waitForStdout(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** SIGTERM (the process flushes its spans and exits), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns `node dist/src/cli/main.js <args>` (run `npm run build` first). */
export function spawnKvroute(name: string, args: string[], env: NodeJS.ProcessEnv): KvrouteProcess {
  if (!existsSync(DIST_MAIN)) throw new Error(`${DIST_MAIN} is missing: run 'npm run build' first`);
  const child = spawn(process.execPath, [DIST_MAIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (s: string) => stdout.push(s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => stderr.push(s));
  const exit = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  return {
    name,
    child,
    stdout,
    stderr,
    exit,
    waitForStdout(re, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(stdout.join(''));
          if (!m) return false;
          cleanup();
          resolve(m);
          return true;
        };
        const onData = () => void check();
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`${name}: no ${re} on stdout within ${timeoutMs} ms; stderr: ${stderr.join('')}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          child.stdout!.off('data', onData);
        };
        child.stdout!.on('data', onData);
        void exit.then(({ code, signal }) => {
          if (check()) return;
          cleanup();
          reject(new Error(`${name} exited (${signal ?? code}) early; stderr: ${stderr.join('')}`));
        });
        check();
      });
    },
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        const result = await exit;
        clearTimeout(timer);
        return result;
      }
      return exit;
    },
  };
}

/** Polls `predicate` every 50 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function eventually(predicate: () => boolean, timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/**
 * One trace as an ASCII waterfall (docs/tracing.md shows one from the e2e test): spans in tree
 * order, indented under their parent, with service, start offset, duration and a time bar.
 */
export function renderWaterfall(spans: readonly ReceivedSpan[], width = 40): string {
  if (spans.length === 0) return '(no spans)\n';
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map<string, ReceivedSpan[]>();
  for (const s of spans) {
    const key = ids.has(s.parentSpanId) ? s.parentSpanId : '';
    children.set(key, [...(children.get(key) ?? []), s]);
  }
  for (const list of children.values()) list.sort((a, b) => Number(a.startNs - b.startNs));
  // biome-ignore lint/complexity/useMathMinMax: bigint nanoseconds (Math.min takes numbers)
  const t0 = spans.reduce((m, s) => (s.startNs < m ? s.startNs : m), spans[0]!.startNs);
  // biome-ignore lint/complexity/useMathMinMax: as above
  const t1 = spans.reduce((m, s) => (s.endNs > m ? s.endNs : m), spans[0]!.endNs);
  const total = Number(t1 - t0) || 1;
  const rows: [string, string, string, string][] = [];
  const walk = (parent: string, depth: number) => {
    for (const s of children.get(parent) ?? []) {
      const from = Math.floor((Number(s.startNs - t0) / total) * width);
      const len = Math.max(1, Math.round((Number(s.endNs - s.startNs) / total) * width));
      const bar = `${' '.repeat(from)}${'█'.repeat(Math.min(len, width - from))}`.padEnd(width);
      const ms = (ns: bigint) => (Number(ns) / 1e6).toFixed(2);
      rows.push([
        `${'  '.repeat(depth)}${s.name}`,
        s.service,
        `+${ms(s.startNs - t0)} ${ms(s.endNs - s.startNs)}ms`,
        bar,
      ]);
      walk(s.spanId, depth + 1);
    }
  };
  walk('', 0);
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  const w2 = Math.max(...rows.map((r) => r[2].length));
  return `${rows.map((r) => `${r[0].padEnd(w0)}  ${r[1].padEnd(w1)}  ${r[2].padStart(w2)}  |${r[3]}|`).join('\n')}\n`;
}

/**
 * Runs `fn` (and awaits it) inside a context carrying a marker, and returns the marker as seen
 * at the creation of every async resource of the given `types` made meanwhile (undefined where
 * it was made outside the request's context). Types are async_hooks names: 'Timeout' (setTimeout,
 * setInterval), 'PROMISE', 'TCPWRAP', 'WORKER', ... A resource keeps the context it was made in
 * until it is gone, and its callbacks run in it: what outlives a request and serves everyone
 * must be made in the root context.
 */
export async function markersSeenByNewResources(
  types: readonly string[],
  fn: () => unknown,
): Promise<{ type: string; marker: unknown }[]> {
  registerGlobalContext();
  const marker = createContextKey('kvroute test request');
  const seen: { type: string; marker: unknown }[] = [];
  const hook = createHook({
    init(_id, type) {
      if (types.includes(type)) seen.push({ type, marker: context.active().getValue(marker) });
    },
  }).enable();
  try {
    await context.with(ROOT_CONTEXT.setValue(marker, 'a request'), fn);
  } finally {
    hook.disable();
  }
  return seen;
}
