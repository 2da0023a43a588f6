// One streamed `/v1/completions` call as a load generator sees it: when the first token arrived,
// when the last did, how many chunks, the usage the router reported, and which decode worker
// served it (response header `x-kvroute-decode-worker`). Times come from an injected clock.

import { type Dispatcher, request } from 'undici';

export interface CompletionTiming {
  ok: boolean;
  /** HTTP status, or 0 when the connection failed. */
  status: number;
  /** Error message (status >= 400, a mid-stream error event, or a network failure). */
  error?: string;
  /** ms from sending to the first chunk with a choice (the first token). */
  ttftMs?: number;
  /** ms from sending to the end of the stream. */
  totalMs: number;
  /** ms between the first and the last content chunk. */
  decodeMs?: number;
  /** Content chunks received. */
  contentChunks: number;
  promptTokens?: number;
  completionTokens?: number;
  cachedTokens?: number;
  decodeWorker?: string;
  prefillWorker?: string;
}

interface UsageChunk {
  usage?: {
    prompt_tokens?: number;
    completion_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number };
  };
  choices?: unknown[];
  error?: { message?: string };
}

function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * POSTs `body` (a completions request; `stream: true` and `include_usage` are set here) to
 * `${baseUrl}/v1/completions` and reads the SSE stream to its end.
 */
export async function streamCompletion(
  dispatcher: Dispatcher,
  baseUrl: string,
  body: Record<string, unknown>,
  now: () => number = performance.now.bind(performance),
): Promise<CompletionTiming> {
  const start = now();
  const out: CompletionTiming = { ok: false, status: 0, totalMs: 0, contentChunks: 0 };
  let firstAt: number | undefined;
  let lastAt: number | undefined;
  try {
    const res = await request(`${baseUrl}/v1/completions`, {
      method: 'POST',
      dispatcher,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
    out.status = res.statusCode;
    out.decodeWorker = header(res.headers, 'x-kvroute-decode-worker');
    out.prefillWorker = header(res.headers, 'x-kvroute-prefill-worker');
    if (res.statusCode >= 400) {
      const text = await res.body.text();
      out.error = `HTTP ${res.statusCode}: ${text.slice(0, 200)}`;
      out.totalMs = now() - start;
      return out;
    }
    let pending = '';
    let done = false;
    for await (const chunk of res.body) {
      pending += (chunk as Buffer).toString('utf8');
      let cut = pending.indexOf('\n\n');
      while (cut !== -1) {
        const event = pending.slice(0, cut);
        pending = pending.slice(cut + 2);
        cut = pending.indexOf('\n\n');
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') {
            done = true;
            continue;
          }
          const parsed = JSON.parse(data) as UsageChunk;
          if (parsed.error) out.error = parsed.error.message ?? 'stream error';
          if (parsed.choices && parsed.choices.length > 0) {
            const t = now();
            firstAt ??= t;
            lastAt = t;
            out.contentChunks++;
          }
          if (parsed.usage) {
            out.promptTokens = parsed.usage.prompt_tokens;
            out.completionTokens = parsed.usage.completion_tokens;
            out.cachedTokens = parsed.usage.prompt_tokens_details?.cached_tokens ?? 0;
          }
        }
      }
    }
    if (!done && !out.error) out.error = 'stream ended without [DONE]';
    out.ok = out.error === undefined;
  } catch (err) {
    out.error = err instanceof Error ? err.message : String(err);
  }
  out.totalMs = now() - start;
  if (firstAt !== undefined) out.ttftMs = firstAt - start;
  if (firstAt !== undefined && lastAt !== undefined) out.decodeMs = lastAt - firstAt;
  return out;
}
