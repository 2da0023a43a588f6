// `kvroute bench tokenizer`: where encoding a prompt on the event loop stops being cheaper than a
// hop to the piscina pool. Times o200k_base encoding inline and through a one-thread pool at
// sizes from 16 to 131,072 characters. Two figures per hop: its latency (pooled minus inline at
// the smallest size), and the event loop's own busy time per pooled encode (eventLoopUtilization),
// what a hop costs every other request; for each, the length at which encoding inline costs as
// much. And the length at which an inline encode of this English-like text takes 1 ms: the rule
// behind DEFAULT_INLINE_MAX_CHARS is to offload only work of a millisecond or more, and its 2048
// stays under that for any script (CJK costs ~10× more per character; the tokenizer README).
// Prints a table, and with --json one JSON object as the last line.

import type { CommandSpec, ParsedOptions } from '../src/cli/options.js';
import { DEFAULT_INLINE_MAX_CHARS, Tokenizer } from '../src/router/tokenizer/index.js';
import { ENCODING_NAME, encodeText } from '../src/router/tokenizer/vocabulary.js';
import { seededRng } from '../src/util/seeded-rng.js';
import { percentile, round } from './lib/stats.js';

export const spec: CommandSpec = {
  usage: 'kvroute bench tokenizer',
  summary:
    'Inline vs pooled prompt encoding (p50/p99 µs) by prompt length, the event loop time per pool hop, and the lengths where inline costs as much.',
  options: [
    {
      name: 'iterations',
      type: 'integer',
      default: 300,
      min: 10,
      help: 'timed encodes per size (fewer for long texts)',
    },
    { name: 'seed', type: 'integer', default: 1, help: 'seed of the synthetic prompt text' },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

const SIZES = [16, 64, 256, 512, 1024, 2048, 4096, 8192, 32768, 131072];
/** Caps the characters encoded per size and mode so the long sizes finish in seconds. */
const CHARS_PER_SIZE = 4_000_000;

const COMMON =
  'the of and to in is that for it as with was on be by this are from at or an have not but which you all can more one has were their there will your when what about into than them some would other its out time only also most may these model request prompt token cache worker router latency'.split(
    ' ',
  );

/**
 * Prompt-like text: mostly common words, a fifth made-up words (so BPE merges and the merge cache
 * see unfamiliar pieces), numbers, punctuation and line breaks.
 */
function corpus(chars: number, seed: number): string {
  const rand = seededRng(seed);
  const parts: string[] = [];
  let length = 0;
  while (length < chars) {
    const r = rand();
    let word: string;
    if (r < 0.75) word = COMMON[Math.floor(rand() * COMMON.length)]!;
    else if (r < 0.95) {
      word = '';
      const n = 3 + Math.floor(rand() * 8);
      for (let i = 0; i < n; i++) word += String.fromCharCode(97 + Math.floor(rand() * 26));
    } else word = String(Math.floor(rand() * 100000));
    const sep = rand() < 0.08 ? '.\n' : rand() < 0.1 ? ', ' : ' ';
    parts.push(word, sep);
    length += word.length + sep.length;
  }
  return parts.join('');
}

interface Row {
  chars: number;
  tokens: number;
  samples: number;
  inline_p50_us: number;
  inline_p99_us: number;
  pooled_p50_us: number;
  pooled_p99_us: number;
}

function elapsedUs(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1000;
}

export async function run(options: ParsedOptions): Promise<number> {
  const iterations = options.iterations as number;
  const seed = options.seed as number;
  const text = corpus(SIZES.at(-1)! * 4, seed);
  // One thread, so each sample is one hop to one warm worker, like a quiet router.
  const tokenizer = new Tokenizer({ inlineMaxChars: 0, maxThreads: 1, maxQueue: 1 });
  const rows: Row[] = [];
  let hopLoopUs = 0;
  try {
    process.stderr.write('tokenizer: warming up the pool thread and both merge caches…\n');
    for (let i = 0; i < 50; i++) {
      const sample = text.slice(i * 997, i * 997 + 4096);
      encodeText(sample);
      await tokenizer.encode(sample);
    }
    for (const size of SIZES) {
      const samples = Math.max(10, Math.min(iterations, Math.floor(CHARS_PER_SIZE / size)));
      process.stderr.write(`tokenizer: ${size} chars × ${samples}…\n`);
      const inline: number[] = [];
      const pooled: number[] = [];
      let tokens = 0;
      for (let i = 0; i < samples; i++) {
        // A different slice each time, so no sample re-encodes the previous one's text.
        const offset = (i * 7919) % (text.length - size);
        const sample = text.slice(offset, offset + size);
        // Alternate the order so neither mode always runs with the caches just warmed by the other.
        const inlineFirst = i % 2 === 0;
        if (!inlineFirst) pooled.push(await timePooled(tokenizer, sample));
        const start = process.hrtime.bigint();
        tokens += encodeText(sample).length;
        inline.push(elapsedUs(start));
        if (inlineFirst) pooled.push(await timePooled(tokenizer, sample));
      }
      inline.sort((a, b) => a - b);
      pooled.sort((a, b) => a - b);
      rows.push({
        chars: size,
        tokens: Math.round(tokens / samples),
        samples,
        inline_p50_us: round(percentile(inline, 0.5), 1),
        inline_p99_us: round(percentile(inline, 0.99), 1),
        pooled_p50_us: round(percentile(pooled, 0.5), 1),
        pooled_p99_us: round(percentile(pooled, 0.99), 1),
      });
    }
    hopLoopUs = await loopTimePerHop(tokenizer, text.slice(0, SIZES[0]!), iterations);
  } finally {
    await tokenizer.close();
  }

  // The hop: what the pool adds around the same work, at the smallest size where the work is ~0.
  const hopUs = round(rows[0]!.pooled_p50_us - rows[0]!.inline_p50_us, 1);
  // The crossover: the length at which encoding inline blocks the event loop as long as the hop
  // would add to this request, interpolated linearly between the two measured sizes around it.
  const crossoverChars = crossover(rows, hopUs);
  // The loop crossover: the length at which encoding inline blocks the event loop as long as a hop
  // keeps the loop itself busy (posting, the reply's message, the promise).
  const loopCrossoverChars = crossover(rows, hopLoopUs);
  // Where inline encoding reaches a millisecond of the loop's time: offload only work past that.
  const oneMsChars = crossover(rows, 1000);
  const charsPerUs = rows.at(-1)!.chars / rows.at(-1)!.inline_p50_us;
  const header = ['chars', 'tokens', 'inline p50 µs', 'inline p99 µs', 'pooled p50 µs', 'pooled p99 µs'];
  const lines = [header.join('\t')];
  for (const r of rows) {
    lines.push(
      [r.chars, r.tokens, r.inline_p50_us, r.inline_p99_us, r.pooled_p50_us, r.pooled_p99_us].join('\t'),
    );
  }
  lines.push(
    '',
    `pool hop p50: ${hopUs} µs; inline throughput: ${round(charsPerUs, 1)} chars/µs`,
    `crossover (inline p50 = hop p50): ${crossoverChars ?? 'beyond the largest size'} chars`,
    `event loop busy per pooled encode: ${hopLoopUs} µs; loop crossover (inline p50 = that): ${loopCrossoverChars ?? 'beyond the largest size'} chars`,
    `inline p50 reaches 1 ms at: ${oneMsChars ?? 'beyond the largest size'} chars (this text)`,
    `DEFAULT_INLINE_MAX_CHARS = ${DEFAULT_INLINE_MAX_CHARS}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
  if (options.json) {
    const summary = {
      bench: 'tokenizer',
      encoding: ENCODING_NAME,
      hop_p50_us: hopUs,
      inline_chars_per_us: round(charsPerUs, 1),
      crossover_chars: crossoverChars,
      hop_loop_us: hopLoopUs,
      loop_crossover_chars: loopCrossoverChars,
      inline_1ms_chars: oneMsChars,
      default_inline_max_chars: DEFAULT_INLINE_MAX_CHARS,
      rows,
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  }
  return 0;
}

function crossover(rows: Row[], hopUs: number): number | null {
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1]!;
    const b = rows[i]!;
    if (b.inline_p50_us >= hopUs) {
      if (a.inline_p50_us >= hopUs) return a.chars;
      const f = (hopUs - a.inline_p50_us) / (b.inline_p50_us - a.inline_p50_us);
      return Math.round(a.chars + f * (b.chars - a.chars));
    }
  }
  return null;
}

/** The event loop's busy µs per pooled encode of a tiny sample (the work is on the thread). */
async function loopTimePerHop(tokenizer: Tokenizer, sample: string, n: number): Promise<number> {
  const before = performance.eventLoopUtilization();
  for (let i = 0; i < n; i++) await tokenizer.encode(sample);
  return round((performance.eventLoopUtilization(before).active * 1000) / n, 1);
}

async function timePooled(tokenizer: Tokenizer, sample: string): Promise<number> {
  const start = process.hrtime.bigint();
  await tokenizer.encode(sample);
  return elapsedUs(start);
}
