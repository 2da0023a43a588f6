// Builds OpenAI response bodies and SSE chunks for completions and chat completions. Pure.

import type { EndpointKind } from './request.js';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export type FinishReason = 'stop' | 'length' | null;

export function makeUsage(promptTokens: number, completionTokens: number, cachedTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}

export interface ResponseIdentity {
  id: string;
  created: number;
  model: string;
}

export function responseId(endpoint: EndpointKind, requestId: string): string {
  return `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${requestId}`;
}

/** The whole (non-streaming) response body. */
export function completionBody(
  endpoint: EndpointKind,
  who: ResponseIdentity,
  text: string,
  finishReason: FinishReason,
  usage: Usage,
): object {
  if (endpoint === 'chat') {
    return {
      id: who.id,
      object: 'chat.completion',
      created: who.created,
      model: who.model,
      choices: [
        {
          index: 0,
          // refusal: required by OpenAI's schema (string | null); the mock never refuses.
          message: { role: 'assistant', content: text, refusal: null },
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
      usage,
    };
  }
  return {
    id: who.id,
    object: 'text_completion',
    created: who.created,
    model: who.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }],
    usage,
  };
}

/**
 * One streamed chunk. `first` marks the chat stream's opening chunk (it carries the role).
 * `usage`, as OpenAI writes it: the figures on the trailing usage chunk (whose `choices` is
 * empty); `null` on every other chunk of a stream with `include_usage` (written out as
 * `"usage": null`, which strict clients read); absent (no field) when `include_usage` is off.
 */
export function streamChunk(
  endpoint: EndpointKind,
  who: ResponseIdentity,
  delta: { text: string; finishReason: FinishReason; first?: boolean } | null,
  usage?: Usage | null,
): object {
  const object = endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  let choices: object[] = [];
  if (delta) {
    choices =
      endpoint === 'chat'
        ? [
            {
              index: 0,
              delta: delta.first ? { role: 'assistant', content: delta.text } : { content: delta.text },
              logprobs: null,
              finish_reason: delta.finishReason,
            },
          ]
        : [{ index: 0, text: delta.text, logprobs: null, finish_reason: delta.finishReason }];
  }
  const chunk = { id: who.id, object, created: who.created, model: who.model, choices };
  return usage === undefined ? chunk : { ...chunk, usage };
}

export function sseData(payload: object | '[DONE]'): string {
  return `data: ${payload === '[DONE]' ? payload : JSON.stringify(payload)}\n\n`;
}
