// The documented stand-in chat template, used until a model-specific chat-template issue lands.
// Each message becomes `<|role|>\n{content}\n`, and the prompt ends with `<|assistant|>\n` so the
// model continues as the assistant. Because earlier turns render identically, a multi-turn
// conversation's prompt extends the previous turn's prompt: KV prefixes stay shareable.
//
// What a real template renders besides the text is rendered too, so the worker sees (and the
// router counts and hashes) what a serving engine would: the `tools` definitions as one
// `<|tools|>\n{json}\n` block before the conversation (where common templates put them, so the
// same tools make the same prefix), an assistant turn's `tool_calls` as `<|tool_calls|>\n{json}\n`
// after its text (the deprecated `function_call` likewise), which call a `tool` message answers
// (`<|tool|> "call_id"`) and which function a `function` message comes from. An assistant's
// refusal (a `refusal` part or field) is its text. The deprecated `functions` are rendered as the
// function tools they stand for. JSON here is stableJson's: the same definitions give the same
// text whatever their key order.

import { KvrouteError } from '../../errors.js';

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'function']);

function invalid(message: string, param = 'messages'): KvrouteError {
  return new KvrouteError('invalid_request', message, { param });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A message's text: its content (text parts, and an assistant's refusal parts) and its refusal. */
function messageText(m: Record<string, unknown>, role: string, index: number): string {
  const { content, refusal } = m;
  let text = '';
  if (typeof content === 'string') text = content;
  else if (Array.isArray(content)) {
    for (const part of content) text += partText(part, role, index);
  } else if (content !== null && content !== undefined) {
    throw invalid(`messages[${index}].content must be a string or an array of parts`);
  } else if (role !== 'assistant' && !(role === 'function' && content === null)) {
    // As in OpenAI's API: an assistant's turn may be without content (it made tool calls, or
    // refused), a function result's content may be null; every other message needs its content.
    throw invalid(`messages[${index}].content is required for a ${role} message`);
  }
  if (role !== 'assistant' || refusal === null || refusal === undefined) return text;
  if (typeof refusal !== 'string') throw invalid(`messages[${index}].refusal must be a string`);
  return text + refusal;
}

/** A content part's text: a text part's, or an assistant's refusal part's (the only other kind it sends). */
function partText(part: unknown, role: string, index: number): string {
  const type = isPlainObject(part) ? part.type : undefined;
  const field = type === 'text' ? 'text' : type === 'refusal' && role === 'assistant' ? 'refusal' : undefined;
  if (field === undefined) {
    throw invalid(
      `messages[${index}].content: only text parts (and an assistant's refusal parts) are supported`,
    );
  }
  const t = (part as Record<string, unknown>)[field];
  if (typeof t !== 'string')
    throw invalid(`messages[${index}].content: a ${type} part needs a string '${field}'`);
  return t;
}

/** Deeper than any real tool schema; bounds stableJson's recursion (a body can nest 20,000 deep). */
const MAX_JSON_DEPTH = 64;

/**
 * A JSON value written the same way whatever order its object keys came in: keys sorted (by UTF-16
 * code units), no whitespace. Undefined when it nests deeper than MAX_JSON_DEPTH.
 */
function stableJson(value: unknown, depth = 0): string | undefined {
  if (typeof value !== 'object' || value === null) return JSON.stringify(value);
  if (depth >= MAX_JSON_DEPTH) return undefined;
  const items: string[] = [];
  if (Array.isArray(value)) {
    for (const v of value) {
      const item = stableJson(v, depth + 1);
      if (item === undefined) return undefined;
      items.push(item);
    }
    return `[${items.join(',')}]`;
  }
  for (const key of Object.keys(value).sort()) {
    const member = stableJson((value as Record<string, unknown>)[key], depth + 1);
    if (member === undefined) return undefined;
    items.push(`${JSON.stringify(key)}:${member}`);
  }
  return `{${items.join(',')}}`;
}

/** stableJson of a value from the body; `what` names it in the 400 when it nests too deeply. */
function jsonText(value: unknown, what: string, param: string): string {
  const json = stableJson(value);
  if (json === undefined) throw invalid(`${what}: nested more than ${MAX_JSON_DEPTH} levels deep`, param);
  return json;
}

/** jsonText of an array of objects, or '' for null, absent or []. */
function objectListJson(value: unknown, what: string, param: string): string {
  if (value === undefined || value === null) return '';
  if (!Array.isArray(value) || !value.every(isPlainObject))
    throw invalid(`${what} must be an array of objects`, param);
  return value.length === 0 ? '' : jsonText(value, what, param);
}

/**
 * The `<|role|>` line of a message: a tool result names the call it answers (when given), a
 * function result the function (required, as at OpenAI).
 */
function header(role: string, m: Record<string, unknown>, index: number): string {
  if (role === 'function') {
    if (typeof m.name !== 'string') throw invalid(`messages[${index}].name: a function message needs one`);
    return `<|function|> ${JSON.stringify(m.name)}`;
  }
  if (role !== 'tool' || m.tool_call_id === undefined || m.tool_call_id === null) return `<|${role}|>`;
  if (typeof m.tool_call_id !== 'string') throw invalid(`messages[${index}].tool_call_id must be a string`);
  return `<|tool|> ${JSON.stringify(m.tool_call_id)}`;
}

/** An assistant turn's calls, after its text: `tool_calls`, and the deprecated `function_call`. */
function callsText(m: Record<string, unknown>, index: number): string {
  const calls = objectListJson(m.tool_calls, `messages[${index}].tool_calls`, 'messages');
  const text = calls === '' ? '' : `<|tool_calls|>\n${calls}\n`;
  const call = m.function_call;
  if (call === undefined || call === null) return text;
  if (!isPlainObject(call)) throw invalid(`messages[${index}].function_call must be an object`);
  return `${text}<|function_call|>\n${jsonText(call, `messages[${index}].function_call`, 'messages')}\n`;
}

/**
 * The definitions block's JSON: `tools`, then the deprecated `functions` as the function tools
 * they stand for (as OpenAI takes them), so the same definitions make the same prefix either way.
 */
function definitionsJson(tools: unknown, functions: unknown): string {
  const toolsJson = objectListJson(tools, 'tools', 'tools');
  const functionsJson = objectListJson(functions, 'functions', 'functions');
  if (functionsJson === '') return toolsJson;
  const asTools = (functions as object[]).map((f) => ({ type: 'function', function: f }));
  return jsonText([...((tools as object[] | null | undefined) ?? []), ...asTools], 'functions', 'functions');
}

/** The prompt for `messages`, after the definitions of `tools` and `functions` (the body's fields, unchecked). */
export function flattenChat(messages: unknown, tools?: unknown, functions?: unknown): string {
  if (!Array.isArray(messages) || messages.length === 0) throw invalid('messages must be a non-empty array');
  const toolsJson = definitionsJson(tools, functions);
  let prompt = toolsJson === '' ? '' : `<|tools|>\n${toolsJson}\n`;
  messages.forEach((m, i) => {
    if (!isPlainObject(m)) throw invalid(`messages[${i}] must be an object`);
    const role = m.role;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw invalid(`messages[${i}].role must be one of ${[...ROLES].join(', ')}`);
    }
    prompt += `${header(role, m, i)}\n${messageText(m, role, i)}\n`;
    if (role === 'assistant') prompt += callsText(m, i);
  });
  return `${prompt}<|assistant|>\n`;
}
