// The documented stand-in chat template, used until a model-specific chat-template issue lands.
// Each message becomes `<|role|>\n{content}\n`, and the prompt ends with `<|assistant|>\n` so the
// model continues as the assistant. Because earlier turns render identically, a multi-turn
// conversation's prompt extends the previous turn's prompt: KV prefixes stay shareable.

import { KvrouteError } from '../../errors.js';

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

function invalid(message: string): KvrouteError {
  return new KvrouteError('invalid_request', message, { param: 'messages' });
}

function contentText(content: unknown, index: number): string {
  if (typeof content === 'string') return content;
  if (content === null || content === undefined) return '';
  if (!Array.isArray(content))
    throw invalid(`messages[${index}].content must be a string or an array of parts`);
  let text = '';
  for (const part of content) {
    if (typeof part !== 'object' || part === null || (part as { type?: unknown }).type !== 'text') {
      throw invalid(`messages[${index}].content: only text parts are supported`);
    }
    const t = (part as { text?: unknown }).text;
    if (typeof t !== 'string') throw invalid(`messages[${index}].content: a text part needs a string 'text'`);
    text += t;
  }
  return text;
}

export function flattenChat(messages: unknown): string {
  if (!Array.isArray(messages) || messages.length === 0) throw invalid('messages must be a non-empty array');
  let prompt = '';
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null) throw invalid(`messages[${i}] must be an object`);
    const role = (m as { role?: unknown }).role;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw invalid(`messages[${i}].role must be one of ${[...ROLES].join(', ')}`);
    }
    prompt += `<|${role}|>\n${contentText((m as { content?: unknown }).content, i)}\n`;
  });
  return `${prompt}<|assistant|>\n`;
}
