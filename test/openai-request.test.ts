import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvrouteError } from '../src/errors.js';
import { flattenChat } from '../src/router/openai/chat-template.js';
import { DEFAULT_LIMITS, parseInferenceRequest } from '../src/router/openai/request.js';
import { completionBody, makeUsage, streamChunk } from '../src/router/openai/response.js';

function rejects(body: unknown, param: RegExp | string, endpoint: 'completion' | 'chat' = 'completion') {
  try {
    parseInferenceRequest(body, endpoint);
  } catch (err) {
    assert.ok(err instanceof KvrouteError, String(err));
    assert.equal(err.status, 400);
    assert.match(err.param ?? '', typeof param === 'string' ? new RegExp(`^${param}$`) : param);
    return;
  }
  assert.fail(`accepted ${JSON.stringify(body)}`);
}

test('text and token-id prompts normalise', () => {
  const text = parseInferenceRequest(
    { model: 'm', prompt: 'hello', max_tokens: 5, stream: true },
    'completion',
  );
  assert.deepEqual(text.prompt, { kind: 'text', text: 'hello' });
  assert.equal(text.maxTokens, 5);
  assert.equal(text.stream, true);
  const ids = parseInferenceRequest({ model: 'm', prompt: [[1, 2, 3]] }, 'completion');
  assert.deepEqual(ids.prompt, { kind: 'tokens', tokenIds: [1, 2, 3] });
  assert.equal(ids.maxTokens, DEFAULT_LIMITS.defaultMaxTokens);
  const usage = parseInferenceRequest(
    { model: 'm', prompt: 'x', stream: true, stream_options: { include_usage: true } },
    'completion',
  );
  assert.equal(usage.includeUsage, true);
});

test("prompt takes OpenAI's four forms, a batch of one unwrapped, and nothing nested deeper", () => {
  const prompt = (p: unknown) => parseInferenceRequest({ model: 'm', prompt: p }, 'completion').prompt;
  assert.deepEqual(prompt('hi'), { kind: 'text', text: 'hi' });
  assert.deepEqual(prompt(['hi']), { kind: 'text', text: 'hi' });
  assert.deepEqual(prompt([5, 6, 7]), { kind: 'tokens', tokenIds: [5, 6, 7] });
  assert.deepEqual(prompt([[5, 6, 7]]), { kind: 'tokens', tokenIds: [5, 6, 7] });
  for (const bad of [[[[5, 6, 7]]], [['hi']], [[5, 'x']], [[]], [''], [[5], [6]], [[5], 'x'], ['a', 'b']]) {
    rejects({ model: 'm', prompt: bad }, 'prompt');
  }
  // One level per element used to be one stack frame per element: 20,000 levels threw RangeError
  // (a 500 with a stack in the log) instead of a 400.
  let deep: unknown = [5];
  for (let i = 0; i < 20_000; i++) deep = [deep];
  rejects({ model: 'm', prompt: deep }, 'prompt');
});

test('a null max_completion_tokens counts as absent: max_tokens applies', () => {
  const parse = (body: object) =>
    parseInferenceRequest({ model: 'm', messages: [{ role: 'user', content: 'x' }], ...body }, 'chat');
  assert.equal(parse({ max_completion_tokens: null, max_tokens: 3 }).maxTokens, 3);
  assert.equal(parse({ max_completion_tokens: 5, max_tokens: 3 }).maxTokens, 5, 'the newer field wins');
  assert.equal(
    parse({ max_completion_tokens: null, max_tokens: null }).maxTokens,
    DEFAULT_LIMITS.defaultMaxTokens,
  );
  rejects({ model: 'm', prompt: 'x', max_completion_tokens: null, max_tokens: 0 }, 'max_tokens');
});

test('bad bodies are rejected naming the field', () => {
  rejects(null, 'body');
  rejects([], 'body');
  rejects({ prompt: 'x' }, 'model');
  rejects({ model: 'm' }, 'prompt');
  rejects({ model: 'm', prompt: '' }, 'prompt');
  rejects({ model: 'm', prompt: [] }, 'prompt');
  rejects({ model: 'm', prompt: [1, -2] }, 'prompt');
  rejects({ model: 'm', prompt: [1, 2.5] }, 'prompt');
  rejects({ model: 'm', prompt: [1, '2'] }, 'prompt');
  rejects({ model: 'm', prompt: ['a', 'b'] }, 'prompt');
  rejects({ model: 'm', prompt: 'x', max_tokens: 0 }, 'max_tokens');
  rejects({ model: 'm', prompt: 'x', max_tokens: -1 }, 'max_tokens');
  rejects({ model: 'm', prompt: 'x', max_tokens: 1.5 }, 'max_tokens');
  rejects({ model: 'm', prompt: 'x', max_tokens: DEFAULT_LIMITS.maxOutputTokens + 1 }, 'max_tokens');
  rejects({ model: 'm', prompt: 'x', stream: 'yes' }, 'stream');
  rejects({ model: 'm', prompt: 'x', n: 2 }, 'n');
  rejects({ model: 'm' }, 'messages', 'chat');
  rejects({ model: 'm', messages: [] }, 'messages', 'chat');
  rejects({ model: 'm', messages: [{ role: 'wizard', content: 'x' }] }, 'messages', 'chat');
  rejects({ model: 'm', messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }, 'messages', 'chat');
  // Only an assistant's turn may come without content.
  for (const role of ['system', 'developer', 'user', 'tool']) {
    rejects({ model: 'm', messages: [{ role }] }, 'messages', 'chat');
    rejects({ model: 'm', messages: [{ role, content: null }] }, 'messages', 'chat');
  }
  rejects({ model: 'm', messages: [{ role: 'function', name: 'f' }] }, 'messages', 'chat');
  assert.equal(
    flattenChat([{ role: 'function', name: 'f', content: null }]),
    flattenChat([{ role: 'function', name: 'f', content: '' }]),
  );
});

test('an over-long token prompt is a context-length error', () => {
  assert.throws(
    () =>
      parseInferenceRequest({ model: 'm', prompt: new Array(20).fill(1) }, 'completion', {
        ...DEFAULT_LIMITS,
        maxPromptTokens: 10,
      }),
    (err: unknown) => err instanceof KvrouteError && err.code === 'context_length_exceeded',
  );
});

test('chat flattening keeps earlier turns as a prefix of later ones', () => {
  const turn1 = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'hi' },
  ];
  const turn2 = [
    ...turn1,
    { role: 'assistant', content: 'hello' },
    { role: 'user', content: [{ type: 'text', text: 'more' }] },
  ];
  const a = flattenChat(turn1);
  const b = flattenChat(turn2);
  assert.equal(a, '<|system|>\nYou are terse.\n<|user|>\nhi\n<|assistant|>\n');
  assert.ok(b.startsWith(a.slice(0, -'<|assistant|>\n'.length)));
  assert.ok(b.endsWith('<|user|>\nmore\n<|assistant|>\n'));
});

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

test('tools are rendered before the conversation, the same text whatever their key order', () => {
  // They were dropped: the worker's prompt, its token count and its KV blocks lacked them.
  const messages = [{ role: 'user', content: 'Weather in Oslo?' }];
  const plain = flattenChat(messages);
  const withTools = flattenChat(messages, [WEATHER_TOOL]);
  assert.ok(withTools.startsWith('<|tools|>\n[{"function":{"description":"The weather in a city",'));
  assert.ok(withTools.includes('"required":["city"]'));
  assert.ok(withTools.endsWith(`]\n${plain}`), 'the conversation follows, rendered as without tools');
  const reordered = {
    function: {
      parameters: { required: ['city'], properties: { city: { type: 'string' } }, type: 'object' },
      description: 'The weather in a city',
      name: 'get_weather',
    },
    type: 'function',
  };
  assert.equal(flattenChat(messages, [reordered]), withTools);
  for (const none of [undefined, null, []]) assert.equal(flattenChat(messages, none), plain);
  // Through the request parser too, and not for the completions endpoint (no tools there).
  const chat = parseInferenceRequest({ model: 'm', messages, tools: [WEATHER_TOOL] }, 'chat');
  assert.deepEqual(chat.prompt, { kind: 'text', text: withTools });
  for (const bad of ['f', [1], [null], { type: 'function' }]) {
    rejects({ model: 'm', messages, tools: bad }, 'tools', 'chat');
  }
  let deep: unknown = {};
  for (let i = 0; i < 20_000; i++) deep = { d: deep };
  rejects({ model: 'm', messages, tools: [deep] }, 'tools', 'chat');
});

test('the deprecated functions render as the function tools they stand for', () => {
  // They were dropped: the prompt lacked the definitions a model is given for them.
  const messages = [{ role: 'user', content: 'Weather in Oslo?' }];
  const fn = WEATHER_TOOL.function;
  const parse = (extra: object) => parseInferenceRequest({ model: 'm', messages, ...extra }, 'chat').prompt;
  assert.deepEqual(parse({ functions: [fn], function_call: 'auto' }), parse({ tools: [WEATHER_TOOL] }));
  const other = { type: 'function', function: { name: 'lookup_user' } };
  assert.deepEqual(parse({ tools: [other], functions: [fn] }), parse({ tools: [other, WEATHER_TOOL] }));
  for (const none of [null, []]) assert.deepEqual(parse({ functions: none }), parse({}));
  for (const bad of ['f', [1], [null], { name: 'f' }]) {
    rejects({ model: 'm', messages, functions: bad }, 'functions', 'chat');
  }
});

test("an assistant's tool_calls and the call a tool message answers are rendered", () => {
  // Both were lost: an assistant turn that only called a tool rendered as an empty turn, and a
  // tool result did not say which call it answers.
  const call = {
    id: 'call_1',
    type: 'function',
    function: { name: 'get_weather', arguments: '{"city":"Oslo"}' },
  };
  const prompt = flattenChat([
    { role: 'user', content: 'Weather in Oslo?' },
    { role: 'assistant', content: null, tool_calls: [call] },
    { role: 'tool', tool_call_id: 'call_1', content: '12 C, rain' },
  ]);
  assert.equal(
    prompt,
    '<|user|>\nWeather in Oslo?\n' +
      '<|assistant|>\n\n<|tool_calls|>\n' +
      '[{"function":{"arguments":"{\\"city\\":\\"Oslo\\"}","name":"get_weather"},"id":"call_1","type":"function"}]\n' +
      '<|tool|> "call_1"\n12 C, rain\n<|assistant|>\n',
  );
  const chat = (messages: unknown[]) => ({ model: 'm', messages });
  rejects(chat([{ role: 'assistant', content: 'x', tool_calls: 'f' }]), 'messages', 'chat');
  rejects(chat([{ role: 'tool', content: 'x', tool_call_id: 7 }]), 'messages', 'chat');
});

test("messages the official client can send: a function result, an assistant's refusal and function_call", () => {
  // openai v6 types them (ChatCompletionFunctionMessageParam, ChatCompletionContentPartRefusal,
  // the assistant's refusal and function_call); role 'function' and refusal parts were a 400, and
  // the refusal field and function_call were dropped from the prompt.
  assert.equal(
    flattenChat([{ role: 'function', name: 'get_weather', content: '12 C' }]),
    '<|function|> "get_weather"\n12 C\n<|assistant|>\n',
  );
  const refused = '<|user|>\nx\n<|assistant|>\nNo.\n<|assistant|>\n';
  assert.equal(
    flattenChat([
      { role: 'user', content: 'x' },
      { role: 'assistant', content: [{ type: 'refusal', refusal: 'No.' }] },
    ]),
    refused,
  );
  assert.equal(
    flattenChat([
      { role: 'user', content: 'x' },
      { role: 'assistant', content: null, refusal: 'No.' },
    ]),
    refused,
  );
  assert.equal(
    flattenChat([{ role: 'assistant', content: null, function_call: { name: 'f', arguments: '{}' } }]),
    '<|assistant|>\n\n<|function_call|>\n{"arguments":"{}","name":"f"}\n<|assistant|>\n',
  );
  const chat = (messages: unknown[]) => ({ model: 'm', messages });
  rejects(chat([{ role: 'user', content: [{ type: 'refusal', refusal: 'No.' }] }]), 'messages', 'chat');
  rejects(chat([{ role: 'function', content: 'x' }]), 'messages', 'chat');
  rejects(chat([{ role: 'assistant', content: null, refusal: 5 }]), 'messages', 'chat');
  rejects(chat([{ role: 'assistant', content: null, function_call: 'f' }]), 'messages', 'chat');
});

test('response shapes carry usage with cached tokens', () => {
  const who = { id: 'cmpl-1', created: 1, model: 'm' };
  const usage = makeUsage(10, 3, 4);
  assert.deepEqual(usage, {
    prompt_tokens: 10,
    completion_tokens: 3,
    total_tokens: 13,
    prompt_tokens_details: { cached_tokens: 4 },
  });
  const chat = completionBody('chat', who, 'hey', 'length', usage) as {
    choices: { message: { content: string } }[];
  };
  assert.equal(chat.choices[0]!.message.content, 'hey');
  const first = streamChunk('chat', who, { text: 'a', finishReason: null, first: true }) as {
    choices: { delta: { role?: string } }[];
  };
  assert.equal(first.choices[0]!.delta.role, 'assistant');
  const tail = streamChunk('completion', who, null, usage) as { choices: unknown[]; usage: unknown };
  assert.deepEqual(tail.choices, []);
  assert.deepEqual(tail.usage, usage);
});

test('a stream chunk writes "usage": null when asked (include_usage on), no field when not', () => {
  // null was dropped like undefined, so no chunk could carry OpenAI's "usage": null.
  const who = { id: 'cmpl-1', created: 1, model: 'm' };
  for (const endpoint of ['completion', 'chat'] as const) {
    const delta = { text: 'a', finishReason: null };
    assert.match(JSON.stringify(streamChunk(endpoint, who, delta, null)), /"usage":null}$/);
    assert.ok(!('usage' in streamChunk(endpoint, who, delta)));
  }
});

test('parameters whose answer the mock cannot produce are refused naming them, not ignored', () => {
  // Each was answered 200 with plain text: a client asking for logprobs, an echoed prompt, a forced
  // tool call or JSON output read a response that silently lacked what it asked for.
  const completion = { model: 'm', prompt: 'x' };
  const chat = { model: 'm', messages: [{ role: 'user', content: 'x' }] };
  rejects({ ...completion, logprobs: 2 }, 'logprobs');
  rejects({ ...completion, logprobs: 0 }, 'logprobs');
  rejects({ ...chat, logprobs: true }, 'logprobs', 'chat');
  rejects({ ...chat, logprobs: false, top_logprobs: 2 }, 'top_logprobs', 'chat');
  rejects({ ...completion, echo: true }, 'echo');
  rejects({ ...completion, suffix: 'end' }, 'suffix');
  rejects({ ...completion, best_of: 3 }, 'best_of');
  rejects({ ...chat, response_format: { type: 'json_object' } }, 'response_format', 'chat');
  rejects(
    { ...chat, response_format: { type: 'json_schema', json_schema: { name: 's' } } },
    'response_format',
    'chat',
  );
  rejects({ ...chat, tool_choice: 'required' }, 'tool_choice', 'chat');
  rejects({ ...chat, tool_choice: { type: 'function', function: { name: 'f' } } }, 'tool_choice', 'chat');
  rejects({ ...chat, function_call: { name: 'f' } }, 'function_call', 'chat');
  rejects({ ...chat, modalities: ['text', 'audio'] }, 'modalities', 'chat');
  rejects({ ...chat, audio: { voice: 'alloy', format: 'wav' } }, 'audio', 'chat');
  // openai v6 sends it to search models, whose answer cites what they found; {} asks for it too.
  rejects({ ...chat, web_search_options: {} }, 'web_search_options', 'chat');
  // Their "off" values (what SDKs send for unset fields) and what only tunes sampling still pass.
  const accepted: Record<string, unknown>[] = [
    { logprobs: null, top_logprobs: null, echo: false, suffix: null, best_of: 1, stop: null },
    {
      stop: [],
      response_format: { type: 'text' },
      tool_choice: 'none',
      modalities: ['text'],
      audio: null,
      web_search_options: null,
    },
    { tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: 'auto', function_call: 'auto' },
    { seed: 1, user: 'u', logit_bias: { '50': -100 }, presence_penalty: 1, frequency_penalty: -1 },
    { temperature: 0.7, top_p: 0.9, metadata: { a: 'b' }, store: false, parallel_tool_calls: true },
  ];
  for (const extra of accepted) {
    parseInferenceRequest({ ...completion, ...extra }, 'completion');
    parseInferenceRequest({ ...chat, ...extra }, 'chat');
  }
});

test('stream_options without stream: true, and a tool_choice other than none without tools, are 400s as at OpenAI', () => {
  const chat = { model: 'm', messages: [{ role: 'user', content: 'x' }] };
  const usage = { include_usage: true };
  rejects({ model: 'm', prompt: 'x', stream_options: usage }, 'stream_options');
  rejects({ ...chat, stream: false, stream_options: usage }, 'stream_options', 'chat');
  rejects({ ...chat, stream_options: {} }, 'stream_options', 'chat');
  parseInferenceRequest({ ...chat, stream: false, stream_options: null }, 'chat');
  const tool = { type: 'function', function: { name: 'f' } };
  const autoAmong = { type: 'allowed_tools', allowed_tools: { mode: 'auto', tools: [tool] } };
  for (const tools of [undefined, null, []]) {
    rejects({ ...chat, tools, tool_choice: 'auto' }, 'tool_choice', 'chat');
    rejects({ ...chat, tools, tool_choice: autoAmong }, 'tool_choice', 'chat');
    parseInferenceRequest({ ...chat, tools, tool_choice: 'none' }, 'chat');
    parseInferenceRequest({ ...chat, tools, tool_choice: null }, 'chat');
  }
  parseInferenceRequest({ ...chat, tools: [tool], tool_choice: autoAmong }, 'chat');
});

test('tool_choice allowed_tools with mode auto lets the model answer in text: accepted; required is refused', () => {
  // openai v6's ChatCompletionAllowedToolChoice; mode auto was refused as a forced tool call.
  const chat = { model: 'm', messages: [{ role: 'user', content: 'x' }] };
  const allowed = (mode: string) => ({
    type: 'allowed_tools',
    allowed_tools: { mode, tools: [{ type: 'function', function: { name: 'f' } }] },
  });
  parseInferenceRequest(
    { ...chat, tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: allowed('auto') },
    'chat',
  );
  rejects({ ...chat, tool_choice: allowed('required') }, 'tool_choice', 'chat');
  rejects({ ...chat, tool_choice: { type: 'allowed_tools' } }, 'tool_choice', 'chat');
});

test('stop: a string or up to four, each 1 to 128 characters; null and [] are none', () => {
  const body = { model: 'm', prompt: 'x' };
  assert.deepEqual(parseInferenceRequest({ ...body, stop: 'o' }, 'completion').stop, ['o']);
  assert.deepEqual(parseInferenceRequest({ ...body, stop: ['a', '\n\n'] }, 'completion').stop, ['a', '\n\n']);
  for (const none of [undefined, null, []]) {
    assert.deepEqual(parseInferenceRequest({ ...body, stop: none }, 'completion').stop, []);
  }
  for (const bad of ['', ['a', ''], ['a', 'b', 'c', 'd', 'e'], [1], { s: 'a' }, 'x'.repeat(129)]) {
    rejects({ ...body, stop: bad }, 'stop');
  }
});

test("sampling parameters outside OpenAI's ranges or of the wrong type are refused naming them", () => {
  // Ignored, they were served as if valid: a client's bug (temperature 20 for 0.20, a string where
  // a number belongs) went unnoticed here and surfaced only against OpenAI, which answers 400.
  const body = { model: 'm', prompt: 'x' };
  const bad: [string, unknown][] = [
    ['temperature', 2.5],
    ['temperature', -0.1],
    ['temperature', 'hot'],
    ['top_p', 1.5],
    ['top_p', '0.9'],
    ['presence_penalty', 2.5],
    ['frequency_penalty', -3],
    ['frequency_penalty', true],
    ['seed', 1.5],
    ['seed', '7'],
    ['user', 42],
    ['logit_bias', [1, 2]],
    ['logit_bias', { '50': 101 }],
    ['logit_bias', { '50': 'ban' }],
    ['logit_bias', { abc: 1 }],
    ['logit_bias', { '-5': 1 }],
    ['logit_bias', { '1.5': 1 }],
    ['logit_bias', { '007': 1 }],
    // Past the largest token id a prompt may hold (0xffff_ffff): one rule for what a token id is.
    ['logit_bias', { '4294967296': 1 }],
    ['logit_bias', { '9999999999': 1 }],
  ];
  for (const [param, value] of bad) rejects({ ...body, [param]: value }, param);
  parseInferenceRequest(
    { ...body, temperature: 0, top_p: 1, presence_penalty: -2, frequency_penalty: 2, seed: -3, user: '' },
    'completion',
  );
  parseInferenceRequest(
    { ...body, temperature: null, top_p: null, seed: null, user: null, logit_bias: null },
    'completion',
  );
  parseInferenceRequest({ ...body, logit_bias: { '0': 1, '4294967295': -100 } }, 'completion');
});
