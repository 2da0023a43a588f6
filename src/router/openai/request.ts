// Validates an OpenAI completions or chat-completions body and normalises it into the one shape
// the router works with. Pure: no I/O. Every rejection is a KvrouteError('invalid_request') that
// names the offending field in `param`, so the HTTP layer answers 400 in OpenAI's error shape.

import { KvrouteError } from '../../errors.js';
import { describeRejected } from '../../util/describe-rejected.js';
import { flattenChat } from './chat-template.js';

export type EndpointKind = 'completion' | 'chat';

export interface RequestLimits {
  /** Largest accepted max_tokens. */
  maxOutputTokens: number;
  /** max_tokens when the body does not say (OpenAI's completions default is 16). */
  defaultMaxTokens: number;
  /** Largest accepted prompt, in tokens. Token-id prompts are checked here; text by the router once tokenized. */
  maxPromptTokens: number;
}

export const DEFAULT_LIMITS: RequestLimits = {
  maxOutputTokens: 8192,
  defaultMaxTokens: 16,
  maxPromptTokens: 131_072,
};

export type PromptInput = { kind: 'text'; text: string } | { kind: 'tokens'; tokenIds: number[] };

export interface NormalizedRequest {
  endpoint: EndpointKind;
  model: string;
  prompt: PromptInput;
  maxTokens: number;
  stream: boolean;
  /** `stream_options.include_usage`: the last SSE chunk carries `usage`. */
  includeUsage: boolean;
  /** Token ids that end generation early (from the body's `stop_token_ids`, a common extension). */
  stopTokenIds: number[];
  /** Stop sequences (OpenAI's `stop`): the output ends right before the first one it contains. */
  stop: string[];
}

function invalid(message: string, param: string): KvrouteError {
  return new KvrouteError('invalid_request', message, { param });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The largest token id anything accepts: the block hash reads ids as LE u32 (CONTRACT.md §4). One
 * bound for a prompt's ids, a logit_bias key and a prefill worker's first token.
 */
export const MAX_TOKEN_ID = 0xffff_ffff;

/**
 * Non-negative integer token ids that fit in u32 (the block hash reads them as LE u32). `path`
 * names the array in the message when it is not `param` itself (`prompt[0]` in a batch).
 */
export function validateTokenIds(value: unknown[], param: string, path = param): number[] {
  for (let i = 0; i < value.length; i++) {
    const t = value[i];
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t > MAX_TOKEN_ID) {
      throw invalid(
        `${path}[${i}] must be a non-negative integer token id, got ${describeRejected(t)}`,
        param,
      );
    }
  }
  return value as number[];
}

/**
 * OpenAI's four forms of `prompt`: a string, an array of strings, an array of token ids, an array
 * of token-id arrays; the first element tells the array forms apart. An array form of one prompt
 * is unwrapped; larger batches would need n responses in one body, which this router does not do.
 * Nothing nests deeper (`[[[5]]]` is a 400, as at OpenAI), and no level is parsed by recursion:
 * a prompt 20,000 arrays deep is a 400, not a stack overflow.
 */
function parsePrompt(prompt: unknown, limits: RequestLimits): PromptInput {
  if (typeof prompt === 'string') return textPrompt(prompt);
  if (!Array.isArray(prompt)) {
    throw invalid(
      'prompt must be a string, an array of strings, an array of token ids or an array of token-id arrays',
      'prompt',
    );
  }
  if (prompt.length === 0) throw invalid('prompt must not be empty', 'prompt');
  const first: unknown = prompt[0];
  if (typeof first !== 'string' && !Array.isArray(first)) return tokenPrompt(prompt, limits, 'prompt');
  if (prompt.length !== 1)
    throw invalid('batched prompts are not supported: send one prompt per request', 'prompt');
  return typeof first === 'string' ? textPrompt(first) : tokenPrompt(first, limits, 'prompt[0]');
}

function textPrompt(text: string): PromptInput {
  if (text.length === 0) throw invalid('prompt must not be empty', 'prompt');
  return { kind: 'text', text };
}

function tokenPrompt(ids: unknown[], limits: RequestLimits, path: string): PromptInput {
  if (ids.length === 0) throw invalid('prompt must not be empty', 'prompt');
  if (ids.length > limits.maxPromptTokens) {
    throw new KvrouteError(
      'context_length_exceeded',
      `prompt has ${ids.length} tokens, more than the limit of ${limits.maxPromptTokens}`,
      { param: 'prompt' },
    );
  }
  return { kind: 'tokens', tokenIds: validateTokenIds(ids, 'prompt', path) };
}

function parseMaxTokens(body: Record<string, unknown>, limits: RequestLimits): number {
  // The newer field wins when it is given. null is "not given", as everywhere in OpenAI's API
  // (clients send every field they know, unset ones as null): `max_completion_tokens: null,
  // max_tokens: 3` means 3, not the default.
  const given = body.max_completion_tokens !== undefined && body.max_completion_tokens !== null;
  const param = given ? 'max_completion_tokens' : 'max_tokens';
  const raw = body[param];
  if (raw === undefined || raw === null) return limits.defaultMaxTokens;
  if (typeof raw !== 'number' || !Number.isInteger(raw)) throw invalid(`${param} must be an integer`, param);
  if (raw <= 0) throw invalid(`${param} must be at least 1, got ${raw}`, param);
  if (raw > limits.maxOutputTokens) {
    throw invalid(`${param} must be at most ${limits.maxOutputTokens}, got ${raw}`, param);
  }
  return raw;
}

function parseStream(body: Record<string, unknown>): { stream: boolean; includeUsage: boolean } {
  const stream = body.stream ?? false;
  if (typeof stream !== 'boolean') throw invalid('stream must be a boolean', 'stream');
  const options = body.stream_options;
  if (options === undefined || options === null) return { stream, includeUsage: false };
  if (!isPlainObject(options)) throw invalid('stream_options must be an object', 'stream_options');
  // As OpenAI and vLLM answer: a client that sets it without streaming expected usage or other
  // stream behaviour it would silently not get.
  if (!stream) throw invalid('stream_options is only allowed when stream is true', 'stream_options');
  const includeUsage = options.include_usage ?? false;
  if (typeof includeUsage !== 'boolean') {
    throw invalid('stream_options.include_usage must be a boolean', 'stream_options.include_usage');
  }
  return { stream, includeUsage };
}

function parseStopTokenIds(body: Record<string, unknown>): number[] {
  const raw = body.stop_token_ids;
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw invalid('stop_token_ids must be an array of token ids', 'stop_token_ids');
  return validateTokenIds(raw, 'stop_token_ids');
}

/** OpenAI's bound on `stop` sequences. */
export const MAX_STOP_SEQUENCES = 4;
/**
 * Longest stop sequence, in UTF-16 units. The router holds back up to this much output that might
 * be the start of one, and looks for a match after every chunk: the bound keeps both small.
 */
export const MAX_STOP_SEQUENCE_LENGTH = 128;

/** `stop`: a string or an array of up to four; null, absent or [] is none. */
function parseStop(body: Record<string, unknown>): string[] {
  const raw = body.stop;
  if (raw === undefined || raw === null) return [];
  const list: unknown[] = typeof raw === 'string' ? [raw] : Array.isArray(raw) ? raw : [raw];
  if (list.length > MAX_STOP_SEQUENCES)
    throw invalid(`stop: at most ${MAX_STOP_SEQUENCES} sequences`, 'stop');
  for (const s of list) {
    if (typeof s !== 'string' || s.length === 0 || s.length > MAX_STOP_SEQUENCE_LENGTH) {
      throw invalid(
        `stop must be a string of 1 to ${MAX_STOP_SEQUENCE_LENGTH} characters or an array of them, got ${describeRejected(s)}`,
        'stop',
      );
    }
  }
  return list as string[];
}

/** Whether `v` is one of `offs` (null and absent always are: SDKs send unset fields as null). */
function isOff(v: unknown, ...offs: unknown[]): boolean {
  return v === undefined || v === null || offs.includes(v);
}

/** `{type: 'allowed_tools', allowed_tools: {mode: 'auto'}}`: a subset of the tools, not forced. */
function isAllowedToolsAuto(v: unknown): boolean {
  return (
    isPlainObject(v) &&
    v.type === 'allowed_tools' &&
    isPlainObject(v.allowed_tools) &&
    v.allowed_tools.mode === 'auto'
  );
}

/**
 * Parameters that change what the answer contains, which the mock engine cannot produce. Answered
 * 200 anyway, a client would read a response that silently lacks what it asked for (no logprobs,
 * no echoed prompt, no cited search results, prose where a forced tool call or JSON was
 * promised), so each is a 400 naming it unless it has its "off" value. What only tunes sampling
 * (temperature, penalties, seed, logit_bias) cannot be told apart in a mock's output and is
 * accepted, as is `tools` with a choice that lets the model answer in text. (`stop` is honoured: parseStop, respond.ts.)
 */
const UNPRODUCIBLE: { param: string; asks: (v: unknown) => boolean; what: string }[] = [
  { param: 'logprobs', asks: (v) => !isOff(v, false), what: 'log probabilities' },
  { param: 'top_logprobs', asks: (v) => !isOff(v), what: 'log probabilities' },
  { param: 'echo', asks: (v) => !isOff(v, false), what: 'echoing the prompt' },
  { param: 'suffix', asks: (v) => !isOff(v, ''), what: 'suffix (insert) completions' },
  { param: 'best_of', asks: (v) => !isOff(v, 1), what: 'best_of > 1' },
  {
    param: 'response_format',
    asks: (v) => !isOff(v) && !(isPlainObject(v) && v.type === 'text'),
    what: 'structured (JSON) output',
  },
  {
    param: 'tool_choice',
    asks: (v) => !isOff(v, 'none', 'auto') && !isAllowedToolsAuto(v),
    what: 'forced tool calls',
  },
  { param: 'function_call', asks: (v) => !isOff(v, 'none', 'auto'), what: 'forced function calls' },
  {
    param: 'modalities',
    asks: (v) => !isOff(v) && !(Array.isArray(v) && v.every((m) => m === 'text')),
    what: 'output other than text',
  },
  { param: 'audio', asks: (v) => !isOff(v), what: 'audio output' },
  { param: 'web_search_options', asks: (v) => !isOff(v), what: 'web search' },
];

function refuseUnproducible(body: Record<string, unknown>): void {
  for (const { param, asks, what } of UNPRODUCIBLE) {
    if (asks(body[param])) throw invalid(`${param}: this server does not support ${what}`, param);
  }
  // A choice among no tools is a client's mistake (tools dropped on the way); OpenAI refuses it
  // and vLLM refuses all but 'none', which chooses nothing and is let through as vLLM does.
  const noTools = isOff(body.tools) || (Array.isArray(body.tools) && body.tools.length === 0);
  if (!isOff(body.tool_choice, 'none') && noTools) {
    throw invalid('tool_choice is only allowed when tools are given', 'tool_choice');
  }
}

/** Sampling knobs the mock has no use for, checked against OpenAI's ranges (it answers 400 outside them). */
const SAMPLING_RANGES: { param: string; min: number; max: number }[] = [
  { param: 'temperature', min: 0, max: 2 },
  { param: 'top_p', min: 0, max: 1 },
  { param: 'presence_penalty', min: -2, max: 2 },
  { param: 'frequency_penalty', min: -2, max: 2 },
];

/**
 * Accepted and unused, but checked as OpenAI checks them: a client's mistake (temperature 20 for
 * 0.20, a string seed) is a 400 here too instead of passing unnoticed until it meets OpenAI.
 */
function checkSampling(body: Record<string, unknown>): void {
  for (const { param, min, max } of SAMPLING_RANGES) {
    const v = body[param];
    if (isOff(v)) continue;
    if (typeof v !== 'number' || v < min || v > max) {
      throw invalid(`${param} must be a number from ${min} to ${max}, got ${describeRejected(v)}`, param);
    }
  }
  if (!isOff(body.seed) && !Number.isInteger(body.seed)) throw invalid('seed must be an integer', 'seed');
  if (!isOff(body.user) && typeof body.user !== 'string') throw invalid('user must be a string', 'user');
  const bias = body.logit_bias;
  if (isOff(bias)) return;
  if (!isPlainObject(bias)) throw invalid('logit_bias must be an object of token id to bias', 'logit_bias');
  for (const [token, b] of Object.entries(bias)) {
    // Keys are token ids, as JSON object keys (strings of digits), as OpenAI requires.
    if (!TOKEN_ID_KEY.test(token) || Number(token) > MAX_TOKEN_ID) {
      throw invalid(
        `logit_bias keys must be token ids (non-negative integers), got ${describeRejected(token)}`,
        'logit_bias',
      );
    }
    if (typeof b !== 'number' || b < -100 || b > 100) {
      throw invalid(`logit_bias[${describeRejected(token)}] must be a number from -100 to 100`, 'logit_bias');
    }
  }
}

/** A logit_bias key's form: a decimal integer without sign or leading zeros (at most 10 digits; MAX_TOKEN_ID bounds its value). */
const TOKEN_ID_KEY = /^(?:0|[1-9][0-9]{0,9})$/;

/**
 * Validates and normalises a request body. Whether the model is served is checked later, against
 * the registry (an unknown model is a 400, no registered worker at all a 503).
 */
export function parseInferenceRequest(
  body: unknown,
  endpoint: EndpointKind,
  limits: RequestLimits = DEFAULT_LIMITS,
): NormalizedRequest {
  // No body at all is what fastify gives a request sent without a content-type.
  if (body === undefined) throw invalid('send the body as JSON with content-type: application/json', 'body');
  if (!isPlainObject(body)) throw invalid('the request body must be a JSON object', 'body');
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0)
    throw invalid('model must be a non-empty string', 'model');
  const n = body.n ?? 1;
  if (n !== 1) throw invalid('only n = 1 is supported', 'n');
  refuseUnproducible(body);
  checkSampling(body);

  let prompt: PromptInput;
  if (endpoint === 'chat') {
    if (body.messages === undefined) throw invalid('messages is required', 'messages');
    prompt = { kind: 'text', text: flattenChat(body.messages, body.tools, body.functions) };
  } else {
    if (body.prompt === undefined) throw invalid('prompt is required', 'prompt');
    prompt = parsePrompt(body.prompt, limits);
  }
  return {
    endpoint,
    model,
    prompt,
    maxTokens: parseMaxTokens(body, limits),
    ...parseStream(body),
    stopTokenIds: parseStopTokenIds(body),
    stop: parseStop(body),
  };
}
