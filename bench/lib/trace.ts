// Mooncake-format request traces (one JSON object per line: `timestamp` ms, `input_length`,
// `output_length`, `hash_ids` with 512 tokens per id) and their expansion into token-id prompts.
// Pure and deterministic: the replay bench reads the file and hands the text in.

/** Tokens one hash id stands for in the Mooncake trace format. */
export const TOKENS_PER_HASH_ID = 512;

/**
 * Token ids are drawn below this bound: every id in [0, 199998) is a regular o200k_base token
 * (199999 and up are special tokens or unassigned), so the prompts are valid o200k token arrays.
 */
export const TOKEN_ID_BOUND = 199_998;

export interface TraceRequest {
  /** 1-based line of the file the request came from. */
  line: number;
  /** Arrival time in ms relative to the trace start. */
  timestamp: number;
  inputLength: number;
  outputLength: number;
  hashIds: number[];
}

export interface TraceError {
  line: number;
  message: string;
}

export interface ParsedTrace {
  requests: TraceRequest[];
  /** Lines that are not a valid request, with why; blank lines are not errors. */
  errors: TraceError[];
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** Why one parsed line is not a request, or undefined when it is. */
function invalidReason(v: Record<string, unknown>): string | undefined {
  const { timestamp, input_length, output_length, hash_ids } = v;
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp) || timestamp < 0)
    return 'timestamp must be a non-negative number (ms)';
  if (!isCount(input_length) || input_length < 1) return 'input_length must be a positive integer';
  if (!isCount(output_length) || output_length < 1) return 'output_length must be a positive integer';
  if (!Array.isArray(hash_ids) || !hash_ids.every(isCount))
    return 'hash_ids must be an array of non-negative integers';
  const expected = Math.ceil(input_length / TOKENS_PER_HASH_ID);
  if (hash_ids.length !== expected)
    return `hash_ids has ${hash_ids.length} ids, input_length ${input_length} needs ${expected}`;
  return undefined;
}

/** Parses a whole JSONL trace. Valid lines become requests in file order; the rest are reported. */
export function parseTrace(text: string): ParsedTrace {
  const requests: TraceRequest[] = [];
  const errors: TraceError[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === '') continue;
    const line = i + 1;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      errors.push({ line, message: `not JSON: ${(err as Error).message}` });
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      errors.push({ line, message: 'not a JSON object' });
      continue;
    }
    const v = value as Record<string, unknown>;
    const reason = invalidReason(v);
    if (reason) {
      errors.push({ line, message: reason });
      continue;
    }
    requests.push({
      line,
      timestamp: v.timestamp as number,
      inputLength: v.input_length as number,
      outputLength: v.output_length as number,
      hashIds: v.hash_ids as number[],
    });
  }
  return { requests, errors };
}

export interface ScheduledRequest {
  request: TraceRequest;
  /** When to send it: ms after the earliest arrival, divided by the replay's time scale. */
  dueMs: number;
}

/**
 * The requests in arrival order, each due at its timestamp less the earliest one, over `timeScale`.
 * Sorted by timestamp (a stable sort: equal timestamps keep their file order), because a trace's
 * timestamps are arrival times: sent in file order, a line earlier in time than the one before it
 * went out late, and the first line's timestamp, not the earliest, was time 0.
 */
export function arrivalSchedule(requests: readonly TraceRequest[], timeScale: number): ScheduledRequest[] {
  const inOrder = [...requests].sort((a, b) => a.timestamp - b.timestamp);
  const first = inOrder[0]?.timestamp ?? 0;
  return inOrder.map((request) => ({ request, dueMs: (request.timestamp - first) / timeScale }));
}

/** splitmix32-style finaliser: spreads consecutive seeds over the whole u32 range. */
function mix32(x: number): number {
  let z = x >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * The 512 token ids hash id `id` stands for. A function of the id alone, so equal ids give equal
 * blocks wherever they appear (and equal ids at equal positions give equal prefixes).
 */
export function hashIdTokens(id: number, out = new Uint32Array(TOKENS_PER_HASH_ID)): Uint32Array {
  // mulberry32 seeded from the id (hi and lo halves mixed, so ids above 2^32 stay distinct).
  let state = mix32(mix32(id % 0x1_0000_0000) ^ Math.floor(id / 0x1_0000_0000) ^ 0x9e3779b9);
  for (let i = 0; i < out.length; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) % TOKEN_ID_BOUND) >>> 0;
  }
  return out;
}

/** The request's prompt: its hash ids' blocks in order, the last one cut to `inputLength`. */
export function expandPrompt(req: Pick<TraceRequest, 'inputLength' | 'hashIds'>): number[] {
  const prompt = new Array<number>(req.inputLength);
  const block = new Uint32Array(TOKENS_PER_HASH_ID);
  for (let b = 0; b < req.hashIds.length; b++) {
    hashIdTokens(req.hashIds[b]!, block);
    const start = b * TOKENS_PER_HASH_ID;
    const end = Math.min(req.inputLength, start + TOKENS_PER_HASH_ID);
    for (let i = start; i < end; i++) prompt[i] = block[i - start]!;
  }
  return prompt;
}
