// The router end to end with the official `openai` client: a router in-process, two real worker
// processes. Completions and chat, streaming and not, usage with cached_tokens, and KV-aware
// placement: requests sharing a long prefix land on the worker that holds it.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { createRouter, type RouterService } from '../src/router/service.js';
import { encodeText } from '../src/router/tokenizer/vocabulary.js';
import { TestFleet, waitForWorkers, waitUntil } from './helpers/fleet.js';

const MODEL = 'mock-llm';
let router: RouterService;
let fleet: TestFleet;
let client: OpenAI;

before(async () => {
  // Aggregated placement only: no prompt here is long enough to prefill on another worker.
  router = await createRouter({ port: 0, logger: false, leaseTtlMs: 1500, maxLocalPrefill: 1_000_000 });
  const url = await router.listen();
  fleet = new TestFleet(url);
  await fleet.spawn(2);
  await waitForWorkers(url, 2);
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 20_000 });
});
after(async () => {
  await fleet?.killAll();
  await router?.close();
});

/** POSTs a streaming request and returns its SSE data payloads, parsed, up to `[DONE]`. */
async function sseChunks(path: string, body: object): Promise<Record<string, unknown>[]> {
  const res = await fetch(`${router.url}/v1/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  const lines = (await res.text()).split('\n').filter((l) => l.startsWith('data: '));
  assert.equal(lines.at(-1), 'data: [DONE]');
  return lines.slice(0, -1).map((l) => JSON.parse(l.slice('data: '.length)) as Record<string, unknown>);
}

/** Token ids of a prompt unique to `seed`: `blocks` full blocks of 16. */
function tokenPrompt(seed: number, blocks: number): number[] {
  return Array.from({ length: blocks * 16 }, (_, i) => 1000 + ((seed * 7919 + i * 31) % 50_000));
}

describe('models', () => {
  test('the served model is listed and the router is ready', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      [MODEL],
    );
    assert.equal((await fetch(`${router.url}/ready`)).status, 200);
  });

  test('models.retrieve answers the served model; an unknown model is a NotFoundError, there and in a completion', async () => {
    // Before: retrieve had no route (404 'no route'), and an unknown model in a completion was a
    // 400, a BadRequestError, where OpenAI's NotFoundError is what clients catch for a wrong name.
    const model = await client.models.retrieve(MODEL);
    assert.deepEqual(
      { id: model.id, object: model.object, owned_by: model.owned_by },
      { id: MODEL, object: 'model', owned_by: 'kvroute' },
    );
    for (const call of [
      () => client.models.retrieve('org/no-such-model'),
      () => client.completions.create({ model: 'no-such-model', prompt: 'hi', max_tokens: 1 }),
      () =>
        client.chat.completions.create({
          model: 'no-such-model',
          messages: [{ role: 'user', content: 'hi' }],
        }),
    ]) {
      await assert.rejects(call(), (err: unknown) => {
        assert.ok(err instanceof OpenAI.NotFoundError, String(err));
        assert.equal(err.code, 'model_not_found');
        assert.equal(err.param, 'model');
        return true;
      });
    }
  });
});

describe('completions', () => {
  test('non-streaming: text, finish reason and usage with cached_tokens', async () => {
    const res = await client.completions.create({
      model: MODEL,
      prompt: 'The quick brown fox jumps over',
      max_tokens: 8,
    });
    assert.equal(res.object, 'text_completion');
    assert.equal(res.choices.length, 1);
    assert.ok(res.choices[0]!.text.length > 0);
    assert.equal(res.choices[0]!.finish_reason, 'length');
    assert.equal(res.usage?.completion_tokens, 8);
    assert.ok((res.usage?.prompt_tokens ?? 0) > 0);
    assert.equal(typeof res.usage?.prompt_tokens_details?.cached_tokens, 'number');
  });

  test('streaming with include_usage: same text as non-streaming, usage on the last chunk', async () => {
    const prompt = 'Streaming answers arrive one token at a time, said the router.';
    const whole = await client.completions.create({ model: MODEL, prompt, max_tokens: 12 });
    const stream = await client.completions.create({
      model: MODEL,
      prompt,
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const chunks: OpenAI.Completions.Completion[] = [];
    for await (const chunk of stream) {
      chunks.push(chunk);
      text += chunk.choices[0]?.text ?? '';
    }
    assert.equal(text, whole.choices[0]!.text, 'the mock engine is deterministic per prompt');
    const last = chunks.at(-1)!;
    assert.equal(last.choices.length, 0);
    assert.equal(last.usage?.completion_tokens, 12);
    assert.equal(typeof last.usage?.prompt_tokens_details?.cached_tokens, 'number');
  });

  test('include_usage: every chunk before the usage chunk says usage: null; without it, no usage field', async () => {
    // OpenAI sends "usage": null on each content chunk when include_usage is on (clients that read
    // chunk.usage strictly rely on it) and no field at all when it is off. Raw SSE lines, since a
    // parsed chunk hides how the field was written.
    for (const endpoint of ['completions', 'chat/completions'] as const) {
      const input =
        endpoint === 'completions'
          ? { prompt: 'Usage fields on every chunk.' }
          : { messages: [{ role: 'user', content: 'Usage fields on every chunk.' }] };
      for (const includeUsage of [true, false]) {
        const chunks = await sseChunks(endpoint, {
          model: MODEL,
          ...input,
          max_tokens: 5,
          stream: true,
          stream_options: { include_usage: includeUsage },
        });
        const label = `${endpoint}, include_usage ${includeUsage}`;
        if (!includeUsage) {
          assert.ok(chunks.length >= 5, label);
          assert.ok(
            chunks.every((c) => !('usage' in c)),
            label,
          );
          continue;
        }
        const last = chunks.at(-1)!;
        assert.deepEqual(last.choices, [], label);
        assert.equal((last.usage as { completion_tokens: number }).completion_tokens, 5, label);
        const content = chunks.slice(0, -1);
        assert.ok(content.length >= 5, label);
        for (const c of content) {
          assert.ok('usage' in c && c.usage === null, `${label}: ${JSON.stringify(c)}`);
        }
      }
    }
  });

  test('a token-id prompt is served and counts its tokens', async () => {
    const prompt = tokenPrompt(1, 3);
    const res = await client.completions.create({ model: MODEL, prompt, max_tokens: 4 });
    assert.equal(res.usage?.prompt_tokens, prompt.length);
  });
});

describe('prompt length', () => {
  // The router's default --max-prompt-tokens.
  const LIMIT = 131_072;

  test('a text prompt over the limit is refused with context_length_exceeded naming the limit', async () => {
    // ~2x the limit (" hello" is one token); the router stops encoding one token past the limit,
    // so it can only say "more than", not how many.
    const prompt = ' hello'.repeat(2 * LIMIT);
    const err = await client.completions.create({ model: MODEL, prompt, max_tokens: 2 }).then(
      () => assert.fail('an over-limit prompt was served'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof OpenAI.BadRequestError, String(err));
    assert.equal(err.code, 'context_length_exceeded');
    assert.equal(err.message, `400 prompt has more than the limit of ${LIMIT} tokens`);
  });

  test('a long text prompt within the limit counts every token of it', async () => {
    // Long enough to reach the limit by its length alone, so the router encodes it piece by piece.
    const prompt = 'Tokens of a long prompt: 日本語, émoji 🎉, code `x => x + 1`.\n'.repeat(900);
    assert.ok(3 * prompt.length > LIMIT);
    const res = await client.completions.create({ model: MODEL, prompt, max_tokens: 2 });
    assert.equal(res.usage?.prompt_tokens, encodeText(prompt).length);
  });
});

describe('chat', () => {
  test('non-streaming chat completion', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'Say something.' },
      ],
      max_tokens: 6,
    });
    assert.equal(res.object, 'chat.completion');
    assert.equal(res.choices[0]!.message.role, 'assistant');
    assert.ok((res.choices[0]!.message.content ?? '').length > 0);
    assert.equal(typeof res.usage?.prompt_tokens_details?.cached_tokens, 'number');
  });

  test("the message says refusal: null, which OpenAI's schema requires and the client types as string | null", async () => {
    // It was missing: a typed client checking `message.refusal !== null` read undefined as a
    // refusal. (The SDK's own stream helpers fill it in; a plain create passes the body through.)
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'No refusal here.' }],
      max_tokens: 2,
    });
    assert.equal(res.choices[0]!.message.refusal, null);
    assert.ok((res.choices[0]!.message.content ?? '').length > 0);
  });

  test('max_completion_tokens: null counts as absent: max_tokens bounds the answer', async () => {
    // What a client that fills every field it knows sends; null was taken as "the default" (16).
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Three tokens, please.' }],
      max_completion_tokens: null,
      max_tokens: 3,
    });
    assert.equal(res.usage?.completion_tokens, 3);
    assert.equal(res.choices[0]!.finish_reason, 'length');
  });

  test('streaming chat: role first, content deltas, [DONE] ends the stream', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Stream me a few words.' }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    });
    let content = '';
    let role: string | undefined;
    let finish: string | null | undefined;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      role ??= choice?.delta.role;
      content += choice?.delta.content ?? '';
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(role, 'assistant');
    assert.ok(content.length > 0);
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 6);
    assert.equal(typeof usage?.prompt_tokens_details?.cached_tokens, 'number');
  });
});

describe('tools', () => {
  /** A function tool whose description makes it about `words` words long. */
  const tool = (name: string, words: number): OpenAI.Chat.ChatCompletionFunctionTool => ({
    type: 'function',
    function: {
      name,
      description: Array.from({ length: words }, (_, i) => `${name}${i}`).join(' '),
      parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
    },
  });

  test('tool definitions are in the prompt: they count, and the same tools share a cached prefix', async () => {
    // They were dropped by the chat template: prompt_tokens was the same with and without tools,
    // and the tools' blocks were never cached or matched.
    const tools = [tool('search_docs', 120), tool('lookup_user', 120)];
    const ask = (content: string, withTools: boolean) =>
      client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content }],
        max_tokens: 2,
        ...(withTools ? { tools, tool_choice: 'auto' as const } : {}),
      });
    const plain = await ask('Which tool fits?', false);
    const first = await ask('Which tool fits?', true);
    assert.ok(
      first.usage!.prompt_tokens > plain.usage!.prompt_tokens + 200,
      `${first.usage!.prompt_tokens} prompt tokens with tools, ${plain.usage!.prompt_tokens} without`,
    );
    // The same tools again (as another client might order their keys), another question: the
    // prompt starts with the same blocks, which the index finds and the worker reuses.
    const reordered = tools.map(({ function: f, type }) => ({
      function: { parameters: f.parameters, name: f.name, description: f.description },
      type,
    }));
    const body = {
      model: MODEL,
      messages: [{ role: 'user', content: 'And this time?' }],
      max_tokens: 2,
      tools: reordered,
    };
    const toolBlocks = Math.floor(200 / 16);
    await waitUntil(async () => {
      const res = await fetch(`${router.url}/v1/route`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const explained = (await res.json()) as { decode: { overlap_blocks: number } };
      return explained.decode.overlap_blocks >= toolBlocks ? true : undefined;
    }, 'the tools prefix in the index');
    const second = await client.chat.completions.create(
      body as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming,
    );
    const cached = second.usage!.prompt_tokens_details!.cached_tokens!;
    assert.ok(cached >= toolBlocks * 16, `cached_tokens ${cached}`);
  });

  test('the deprecated functions are in the prompt as the tools they stand for', async () => {
    // They were dropped: prompt_tokens was the same with and without them.
    const tools = [tool('search_docs', 60), tool('lookup_user', 60)];
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Which one?' }];
    const promptTokens = async (extra: object) =>
      (await client.chat.completions.create({ model: MODEL, messages, max_tokens: 2, ...extra })).usage!
        .prompt_tokens;
    const plain = await promptTokens({});
    const asTools = await promptTokens({ tools });
    const asFunctions = await promptTokens({
      functions: tools.map((t) => t.function),
      function_call: 'auto',
    });
    assert.ok(asTools > plain + 100, `${asTools} prompt tokens with tools, ${plain} without`);
    assert.equal(asFunctions, asTools);
  });

  test('an assistant turn that only called a tool keeps its tool_calls in the prompt', async () => {
    const conversation = (args: string): OpenAI.Chat.ChatCompletionMessageParam[] => [
      { role: 'user', content: 'Find the docs.' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_7', type: 'function', function: { name: 'search_docs', arguments: args } }],
      },
      { role: 'tool', tool_call_id: 'call_7', content: 'three results' },
    ];
    const count = async (args: string) =>
      (await client.chat.completions.create({ model: MODEL, messages: conversation(args), max_tokens: 2 }))
        .usage!.prompt_tokens;
    const short = await count('{}');
    const long = await count(JSON.stringify({ query: 'kv cache routing '.repeat(20) }));
    assert.ok(long > short + 40, `${long} prompt tokens with long arguments, ${short} with {}`);
  });
});

describe('stop sequences', () => {
  test('the output ends before the first stop sequence, finish_reason stop, streaming or not', async () => {
    const prompt = 'Stop sequences end an answer early, the router said.';
    const whole = (await client.completions.create({ model: MODEL, prompt, max_tokens: 16 })).choices[0]!;
    assert.equal(whole.finish_reason, 'length');
    // Two words from the middle (each output token is one word with its leading space): a
    // sequence that spans two tokens, so the streaming answer must hold back its first half.
    const words = whole.text.match(/ [^ ]+/g)!;
    const stop = `${words[5]}${words[6]}`;
    const expected = whole.text.slice(0, whole.text.indexOf(stop));
    assert.ok(expected.length > 0);

    const cut = (
      await client.completions.create({ model: MODEL, prompt, max_tokens: 16, stop: ['@@', stop] })
    ).choices[0]!;
    assert.equal(cut.text, expected);
    assert.equal(cut.finish_reason, 'stop');

    const stream = await client.completions.create({
      model: MODEL,
      prompt,
      max_tokens: 16,
      stop,
      stream: true,
    });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      assert.ok(!text.includes(stop), `sent past the stop sequence: ${JSON.stringify(text)}`);
    }
    assert.equal(text, expected);
    assert.equal(finish, 'stop');

    // A stop sequence that never occurs changes nothing; the worker's streams were cancelled
    // early above, and nothing stays booked.
    const none = (await client.completions.create({ model: MODEL, prompt, max_tokens: 16, stop: '\u0000' }))
      .choices[0]!;
    assert.equal(none.text, whole.text);
    assert.equal(none.finish_reason, 'length');
    await waitUntil(() => router.registry.load.size === 0, 'bookings released');
  });

  test('chat honours stop too; a bad stop is a BadRequestError naming it', async () => {
    const messages = [{ role: 'user' as const, content: 'Say something long.' }];
    const whole = (await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12 }))
      .choices[0]!;
    const words = whole.message.content!.match(/ [^ ]+/g)!;
    const cut = (
      await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, stop: words[3]! })
    ).choices[0]!;
    assert.equal(
      cut.message.content,
      whole.message.content!.slice(0, whole.message.content!.indexOf(words[3]!)),
    );
    assert.equal(cut.finish_reason, 'stop');
    await assert.rejects(
      client.chat.completions.create({ model: MODEL, messages, stop: ['a', 'b', 'c', 'd', 'e'] }),
      (err: unknown) => err instanceof OpenAI.BadRequestError && err.param === 'stop',
    );
  });
});

describe('parameters the mock cannot honour', () => {
  test('the client gets a BadRequestError naming the parameter, not an answer without it', async () => {
    // Was a 200 whose choices carried logprobs: null, read by the client as "no logprobs to give".
    await assert.rejects(
      client.completions.create({ model: MODEL, prompt: 'hello', max_tokens: 2, logprobs: 1 }),
      (err: unknown) =>
        err instanceof OpenAI.BadRequestError && err.param === 'logprobs' && /logprobs/.test(err.message),
    );
    await assert.rejects(
      client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'JSON please' }],
        response_format: { type: 'json_object' },
      }),
      (err: unknown) => err instanceof OpenAI.BadRequestError && err.param === 'response_format',
    );
  });
});

describe('KV-aware placement', () => {
  test('requests sharing a long prefix land on the worker that holds it', async () => {
    const prefixBlocks = 32;
    for (let seed = 10; seed < 13; seed++) {
      const prefix = tokenPrompt(seed, prefixBlocks);
      const first = await client.completions
        .create({ model: MODEL, prompt: [...prefix, 1, 2, 3], max_tokens: 2 })
        .withResponse();
      const holder = first.response.headers.get('x-kvroute-decode-worker');
      assert.ok(holder);
      // KV events reach the router asynchronously: wait until the index shows the prefix on the holder.
      const explained = await waitUntil(async () => {
        const res = await fetch(`${router.url}/v1/route`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt: [...prefix, 9, 9, 9], max_tokens: 2 }),
        });
        const body = (await res.json()) as {
          decode: { worker_id: string; overlap_blocks: number };
          prefill: unknown;
          candidates: { worker_id: string; overlap_blocks: number; cost: number }[];
        };
        return body.decode.overlap_blocks >= prefixBlocks ? body : undefined;
      }, 'the prefix in the index');
      assert.equal(explained.decode.worker_id, holder);
      assert.equal(explained.prefill, null);
      assert.equal(explained.candidates.length, 2);
      const other = explained.candidates.find((c) => c.worker_id !== holder)!;
      assert.equal(other.overlap_blocks, 0);
      const second = await client.completions
        .create({ model: MODEL, prompt: [...prefix, 9, 9, 9], max_tokens: 2 })
        .withResponse();
      assert.equal(second.response.headers.get('x-kvroute-decode-worker'), holder);
      assert.ok(
        (second.data.usage?.prompt_tokens_details?.cached_tokens ?? 0) >= prefixBlocks * 16,
        `cached_tokens ${second.data.usage?.prompt_tokens_details?.cached_tokens}`,
      );
    }
  });
});

describe('tracing input', () => {
  test('an invalid traceparent starts a fresh trace and the request is still served', async () => {
    const res = await fetch(`${router.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: '00-zzzz-not-a-trace-01' },
      body: JSON.stringify({ model: MODEL, prompt: 'hello', max_tokens: 2 }),
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { choices: { text: string }[] };
    assert.ok(body.choices[0]!.text.length > 0);
  });
});
