// The router's fastify app: request ids, the per-request `http-request` SERVER span, request
// metrics, one access-log line per request (info level), and the one error handler that renders
// every failure as OpenAI's `{error: {message, type, code}}` with its status (+ Retry-After).
// Routes live one group per module beside this file.

import { randomUUID } from 'node:crypto';
import { type ServerResponse, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Tracer } from '@opentelemetry/api';
import {
  type Context,
  context,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import { ERROR_CODES, type ErrorCode, isErrorCode, isKvrouteError, KvrouteError } from '../../errors.js';
import { extractFromHeaders } from '../../telemetry/index.js';
import type { RouterConfig } from '../config.js';
import type { RouterMetrics } from '../metrics.js';
import { registerJsonBodyParser } from './json-body.js';
import { LazyRequestLogger } from './lazy-logger.js';
import { ReceivingBudget } from './receiving-budget.js';

interface RequestTrace {
  span: Span;
  ctx: Context;
}

const traces = new WeakMap<FastifyRequest, RequestTrace>();

/** Runs `fn` inside the request's `http-request` span (never AsyncLocalStorage.enterWith in hooks). */
export function inRequestContext<T>(request: FastifyRequest, fn: () => T): T {
  const t = traces.get(request);
  return t ? context.with(t.ctx, fn) : fn();
}

// Client-chosen request ids are echoed back, so keep them short and printable.
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** Maps fastify's own errors (body parsing, limits, 404) onto our codes. */
export function toHttpError(err: unknown): KvrouteError {
  if (isKvrouteError(err)) return err;
  const e = err as { code?: string; statusCode?: number; message?: string };
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new KvrouteError('payload_too_large', 'request body is larger than the limit');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new KvrouteError('invalid_json', `request body is not valid JSON: ${e.message}`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new KvrouteError('invalid_request', 'content-type must be application/json');
  }
  // zlib's codes: a body that does not decode as its content-encoding says (json-body.ts).
  if (e.code?.startsWith('Z_')) {
    return new KvrouteError(
      'invalid_request',
      `request body does not decode (content-encoding): ${e.message}`,
    );
  }
  if (err instanceof SyntaxError || (e.statusCode === 400 && /JSON/i.test(e.message ?? ''))) {
    return new KvrouteError('invalid_json', `request body is not valid JSON: ${e.message}`);
  }
  if (e.statusCode === 413)
    return new KvrouteError('payload_too_large', 'request body is larger than the limit');
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new KvrouteError('invalid_request', e.message ?? 'bad request');
  }
  return new KvrouteError('internal_error', 'internal error', { cause: err });
}

/** Maps a failure node's HTTP parser reports ('clientError': malformed, oversized, stalled) onto our codes. */
function parserErrorToHttp(err: { code?: string }): KvrouteError {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new KvrouteError('request_timeout', 'the request was not received in time');
    case 'HPE_HEADER_OVERFLOW':
      return new KvrouteError('headers_too_large', 'the request headers are larger than the limit');
    default:
      return new KvrouteError('invalid_request', `malformed HTTP request (${err.code ?? 'parse error'})`);
  }
}

/** The request each socket last started, so a client error while its body arrives names it. */
const socketRequests = new WeakMap<Socket, { id: string; res: ServerResponse }>();

/**
 * The error a request was answered with on its socket (a client error), counted when it closes
 * with that code and its status, whatever its handler's own failure (the body cut off) says later.
 */
const answeredOnSocket = new WeakMap<ServerResponse, ErrorCode>();

/**
 * The error code each error answer carried, for the `code` label of kvroute_http_requests_total
 * (a success has none: ''). Written only on the error path, so a success costs one lookup.
 */
const answeredCode = new WeakMap<ServerResponse, ErrorCode>();

/** Records `code` as the answer's; only our fixed set reaches the label (anything else: internal_error). */
function recordCode(res: ServerResponse, code: string): void {
  answeredCode.set(res, isErrorCode(code) ? code : 'internal_error');
}

const LEVEL_RANK: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

/** Whether `log` writes lines at `level` (pino's ranks; a logger without a level, e.g. disabled, writes nothing). */
function logs(log: FastifyBaseLogger, level: 'debug' | 'info'): boolean {
  const threshold = LEVEL_RANK[log.level];
  return threshold !== undefined && LEVEL_RANK[level]! >= threshold;
}

/** What a request gets while the router drains or closes: 503 with Retry-After. */
export const shuttingDown = (message = 'the router is shutting down') =>
  new KvrouteError('shutting_down', message, { retryAfterSeconds: 1 });

/** Answers with `e`'s status and OpenAI body (+ Retry-After). */
function sendError(reply: FastifyReply, e: KvrouteError): void {
  recordCode(reply.raw, e.code);
  if (e.retryAfterSeconds !== undefined) reply.header('retry-after', String(e.retryAfterSeconds));
  reply.status(e.status).send(e.toJSON());
}

export interface AppDeps {
  config: RouterConfig;
  metrics: RouterMetrics;
  tracer: Tracer;
  /** True once close() started: new requests get 503. */
  isClosing(): boolean;
  /** True once drain() started: every response says connection: close (clients move on). */
  isDraining(): boolean;
}

export function createApp(deps: AppDeps): FastifyInstance {
  const { config, metrics, tracer } = deps;
  const app = Fastify({
    logger: config.logger === false ? false : { level: config.verbose ? 'info' : 'warn' },
    // Fastify's two lines per request are replaced by our one line in onResponse.
    logController: new LogController({ disableRequestLogging: true }),
    // Each request's pino child is made on its first line (most requests write none).
    ...(config.logger === false
      ? {}
      : {
          childLoggerFactory: (logger, bindings, options) => new LazyRequestLogger(logger, bindings, options),
        }),
    bodyLimit: config.bodyLimit,
    // A client must finish sending its request within this (node's receive timeout; responses,
    // streams included, are not bounded by it): a stalled upload cannot hold a socket forever.
    requestTimeout: 30_000,
    requestIdHeader: false,
    genReqId: (raw) => {
      const given = raw.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // Our onRequest hook answers requests that arrive while closing (503 shutting_down, OpenAI's
    // error shape, Retry-After); fastify's own answer has neither.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    // A request fastify answers before routing it (a URL that does not decode, a path parameter
    // past its length): no hook runs, so the id, the count and the error shape are set here.
    frameworkErrors: (err, request, reply) => {
      reply.header('x-request-id', request.id);
      reply.raw.once('finish', () =>
        metrics.requests.inc({
          route: 'unmatched',
          status: String(reply.statusCode),
          code: answeredCode.get(reply.raw) ?? '',
        }),
      );
      sendError(reply, toHttpError(err));
    },
    // What node's HTTP parser rejects (malformed, headers too large, cut short, a body stalled past
    // requestTimeout) never becomes a request: it is answered on the socket, in our error shape.
    clientErrorHandler: (err, socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      const last = socketRequests.get(socket);
      const open = last !== undefined && !last.res.writableFinished;
      // After a response has started on this socket, another one would corrupt it: just close.
      if (!socket.writable || (open && last.res.headersSent)) return void socket.destroy();
      const e = parserErrorToHttp(err);
      const body = JSON.stringify(e.toJSON());
      // An open request is counted when its socket closes (onClientGone).
      if (open) answeredOnSocket.set(last.res, e.code);
      else metrics.requests.inc({ route: 'unmatched', status: String(e.status), code: e.code });
      socket.end(
        `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
          `content-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${open ? last.id : randomUUID()}\r\n` +
          `connection: close\r\n\r\n${body}`,
        () => socket.destroy(),
      );
    },
  });
  registerJsonBodyParser(app, config.bodyLimit, new ReceivingBudget(config.maxReceivingBytes));

  /**
   * The access-log line of a request (`--verbose`): control-plane chatter (heartbeats, scrapes,
   * probes) only at debug level. Built only when it will be written (the default level is warn).
   */
  const logRequest = (request: FastifyRequest, reply: FastifyReply, route: string, status: number) => {
    const level =
      route === '/v1/workers/:id/heartbeat' ||
      route === '/metrics' ||
      route === '/health' ||
      route === '/ready'
        ? 'debug'
        : 'info';
    if (logs(request.log, level)) {
      request.log[level](
        {
          event: 'request',
          method: request.method,
          route,
          status,
          ms: Math.round(reply.elapsedTime),
          worker: reply.getHeader('x-kvroute-decode-worker'),
        },
        'request',
      );
    }
  };

  const onClientGone = (request: FastifyRequest, reply: FastifyReply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    // A client that left before its response finished: client_closed, nginx's 499.
    const code = answeredOnSocket.get(reply.raw) ?? 'client_closed';
    const status = ERROR_CODES[code].status;
    metrics.requests.inc({ route, status: String(status), code });
    // Logged like any other request: a client that left, or one cut for not reading, is what an
    // operator looks for in the log.
    logRequest(request, reply, route, status);
    const span = traces.get(request)?.span;
    if (span?.isRecording()) {
      span.setAttributes({
        'http.route': route,
        'kvroute.outcome': 'cancelled',
        ...(reply.raw.headersSent ? { 'http.response.status_code': reply.statusCode } : {}),
      });
      span.end();
    }
  };

  // Callback hooks, not async ones: an async hook costs a promise and a microtask hop per request
  // and hook (fastify runs the next step from the promise's then).
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id);
    socketRequests.set(request.raw.socket, { id: request.id, res: reply.raw });
    // Extract on ROOT: a malformed traceparent starts a fresh trace instead of inheriting anything.
    const parent = extractFromHeaders(request.headers, ROOT_CONTEXT);
    const span = tracer.startSpan('http-request', { kind: SpanKind.SERVER }, parent);
    // Sampled out, the span records nothing: skip building its attributes.
    if (span.isRecording()) {
      span.setAttributes({
        'http.request.method': request.method,
        'url.path': request.url.split('?')[0],
        'kvroute.request_id': request.id,
      });
    }
    traces.set(request, { span, ctx: trace.setSpan(parent, span) });
    // A client that goes away before its response finished never gets onResponse (fastify runs it
    // on 'finish'): count it and end its span here, one turn later, so the pipeline's own abort
    // handling (which records the request's workers and tokens) lands on the span first.
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) setImmediate(onClientGone, request, reply);
    });
    if (deps.isClosing()) return done(shuttingDown());
    // Draining: this connection is not reused, so a client's next request opens a new one, which
    // a load balancer sends to another router.
    if (deps.isDraining()) reply.header('connection', 'close');
    done();
  });

  // A request whose body was still arriving when close() began passed onRequest, and close()
  // aborts only the requests already handled: started now, it would run past the grace and be
  // cut mid-answer. Refused here instead, once its body is in (handlers start in the same turn).
  app.addHook('preHandler', (_request, _reply, done) => {
    if (deps.isClosing()) return done(shuttingDown());
    done();
  });

  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const status = reply.statusCode;
    metrics.requests.inc({ route, status: String(status), code: answeredCode.get(reply.raw) ?? '' });
    const span = traces.get(request)?.span;
    if (span?.isRecording()) {
      span.setAttributes({ 'http.route': route, 'http.response.status_code': status });
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    }
    logRequest(request, reply, route, status);
    done();
  });

  app.setErrorHandler((err, request, reply) => {
    const e = toHttpError(err);
    if (e.code === 'internal_error') request.log.error({ err, request_id: request.id }, 'internal error');
    const span = traces.get(request)?.span;
    if (span?.isRecording()) {
      span.recordException(e);
      // A request refused before the pipeline finished it (bad input, unknown model, no worker,
      // no capacity) has no other place that says how it ended and for which model.
      const model = (request.body as { model?: unknown } | undefined)?.model;
      span.setAttributes({
        'kvroute.outcome': e.code === 'client_closed' ? 'cancelled' : 'error',
        ...(typeof model === 'string' ? { 'kvroute.model': model } : {}),
      });
    }
    // While closing (a request refused, or aborted in flight), the connection is about to go: said
    // so, a client sends its next request on a new one instead of racing the close on this one.
    if (deps.isClosing()) reply.header('connection', 'close');
    sendError(reply, e);
  });

  // Every route's path (`:param` segments as wildcards) and methods: a request for a path that
  // exists, with a method it does not serve, is a 405 naming the ones it does (Allow), not a 404.
  const routePaths = new Map<string, { pattern: RegExp; methods: string[] }>();
  app.addHook('onRoute', (route) => {
    let entry = routePaths.get(route.url);
    if (!entry) {
      const source = route.url.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/:[^/]+/g, '[^/]+');
      entry = { pattern: new RegExp(`^${source}$`), methods: [] };
      routePaths.set(route.url, entry);
    }
    entry.methods.push(...[route.method].flat());
  });

  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!;
    const allow = [...routePaths.values()].filter((r) => r.pattern.test(path)).flatMap((r) => r.methods);
    if (allow.length > 0) {
      reply.header('allow', allow.join(', '));
      sendError(
        reply,
        new KvrouteError(
          'method_not_allowed',
          `${request.method} ${path} is not served: use ${allow.join(', ')}`,
        ),
      );
      return;
    }
    sendError(reply, new KvrouteError('not_found', `no route for ${request.method} ${path}`));
  });

  return app;
}
