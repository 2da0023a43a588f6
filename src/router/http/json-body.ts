// The request-body JSON parser. Fastify's own (secure-json-parse, prototype and constructor
// poisoning rejected) runs JSON.parse and then scans the whole body with two regular expressions,
// ~2.5 µs on a 1k-token prompt. Those expressions can only match a body that contains
// `__proto__` or `constructor` literally or spelled with `\u00XX` escapes, so a body with none of
// these is read straight from its bytes (json-bytes.ts, ~30% quicker than decoding it and running
// JSON.parse on a token-id prompt), or with JSON.parse when that reader leaves it. Anything else,
// and any body JSON.parse rejects, goes to fastify's parser unchanged: the same values and the
// same errors either way.
//
// A body sent gzip- or deflate-encoded (content-encoding) is decoded on its way to the parser, so
// the body limit applies to the decoded bytes (a small body cannot inflate past it); any other
// encoding is refused with 415 rather than handed, still encoded, to the JSON parser; so is a
// body whose content-type names a charset other than UTF-8.

import { pipeline, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import type { FastifyInstance } from 'fastify';
import { KvrouteError } from '../../errors.js';
import { NOT_PARSED, parseJsonBytes } from './json-bytes.js';
import type { ReceivingBudget } from './receiving-budget.js';

/** Whether fastify's poisoning scan could find anything in `body` (else JSON.parse alone is exact). */
function mayBePoisoned(body: Buffer): boolean {
  return body.includes('__proto__') || body.includes('constructor') || body.includes('\\u');
}

/** A decoder for a content-encoding; undefined for none, null for one we do not decode. */
function decoderFor(encoding: string | undefined): zlib.Gunzip | zlib.Inflate | undefined | null {
  const name = encoding?.trim().toLowerCase();
  if (name === undefined || name === '' || name === 'identity') return undefined;
  if (name === 'gzip' || name === 'x-gzip') return zlib.createGunzip();
  if (name === 'deflate') return zlib.createInflate();
  return null;
}

/** The request body decoded as it arrives; fastify checks content-length against `receivedEncodedLength`. */
function decoded(payload: Readable, decoder: zlib.Gunzip | zlib.Inflate): Readable {
  const out = decoder as typeof decoder & { receivedEncodedLength: number };
  out.receivedEncodedLength = 0;
  payload.on('data', (chunk: Buffer) => {
    out.receivedEncodedLength += chunk.length;
  });
  // A request that ends early or fails destroys the decoder, which fastify's reader hears.
  pipeline(payload, decoder, () => {});
  return out;
}

/** A `charset` parameter of a content-type (JSON is UTF-8, RFC 8259 §8.1; the body is read as such). */
const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/i;

/** Refuses a body its content-type says is not UTF-8, instead of reading it as UTF-8 anyway. */
function checkCharset(contentType: string | undefined): KvrouteError | undefined {
  const charset = contentType === undefined ? undefined : CHARSET.exec(contentType)?.[1]?.toLowerCase();
  if (charset === undefined || charset === 'utf-8' || charset === 'utf8') return undefined;
  return new KvrouteError(
    'unsupported_media_type',
    `charset ${charset} is not supported: send JSON as UTF-8`,
  );
}

type ParserDone = (err: Error | null, body?: unknown) => void;

/**
 * fastify's parser refuses a `__proto__` or `constructor.prototype` key (prototype poisoning) with
 * the error it gives a syntax error, "Body is not valid JSON": for `text` that is valid JSON, the
 * refusal says which keys instead.
 */
function namingPoisonedKeys(text: string, done: ParserDone): ParserDone {
  return (err, body) => {
    if (err === null) return done(null, body);
    try {
      JSON.parse(text);
    } catch {
      return done(err);
    }
    done(
      new KvrouteError(
        'invalid_request',
        'request body has a __proto__ or constructor.prototype key, which is refused',
      ),
    );
  };
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The route reads no body (a heartbeat, a DELETE): an empty one is accepted even when its
     * content-type says JSON, as clients that set that header on every call send it.
     */
    takesNoBody?: boolean;
  }
}

/**
 * The JSON body parser, with bodies that may be large counted against `receiving` while they
 * arrive (receiving-budget.ts).
 */
export function registerJsonBodyParser(
  app: FastifyInstance,
  bodyLimit: number,
  receiving: ReceivingBudget,
): void {
  // Fastify's text/plain parser would hand a route the body as a string, answered "must be a JSON
  // object" even when it is one: without it, text/plain is refused like any other media type
  // (toHttpError: "content-type must be application/json").
  app.removeContentTypeParser('text/plain');
  app.addHook('preParsing', (request, reply, payload, done) => {
    const decoder = decoderFor(request.headers['content-encoding']);
    const counted = receiving.counts(request.headers['content-length'], decoder !== undefined);
    if (decoder === undefined && !counted) return done(null, payload);
    if (decoder === null) {
      const encoding = request.headers['content-encoding'];
      return done(
        new KvrouteError(
          'unsupported_media_type',
          `content-encoding ${encoding} is not supported: send the body as is, gzip or deflate`,
        ),
      );
    }
    const body = decoder === undefined ? payload : decoded(payload, decoder);
    done(
      null,
      receiving.watch(body, reply.raw, () => reply.header('connection', 'close')),
    );
  });
  const secure = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit }, (request, body, done) => {
    const wrongCharset = checkCharset(request.headers['content-type']);
    if (wrongCharset) return done(wrongCharset, undefined);
    const bytes = body as Buffer;
    if (bytes.length === 0 && request.routeOptions.config.takesNoBody === true) return done(null, undefined);
    if (bytes.length === 0 || mayBePoisoned(bytes)) {
      const text = bytes.toString('utf8');
      return secure(request, text, namingPoisonedKeys(text, done));
    }
    const read = parseJsonBytes(bytes);
    if (read !== NOT_PARSED) return done(null, read);
    const text = bytes.toString('utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Fastify's parser produces the error (empty or invalid body) exactly as before.
      return secure(request, text, done);
    }
    done(null, parsed);
  });
}
