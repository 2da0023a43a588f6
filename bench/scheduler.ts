// `kvroute bench scheduler`: how long one routing decision takes at 8 … 4,096 candidates, per
// policy. Each decision scores every candidate (overlap lookup, cost, busy check) and picks one,
// exactly as the router does per request; building the overlap map is the KV index's cost and is
// measured by its own bench. Prints a table, and with --json one JSON object as the last line.

import type { CommandSpec, ParsedOptions } from '../src/cli/options.js';
import {
  type Candidate,
  createPolicy,
  POLICY_NAMES,
  type PolicyName,
  seededRng,
} from '../src/router/scheduling/index.js';
import { mean, percentile, round } from './lib/stats.js';

export const spec: CommandSpec = {
  usage: 'kvroute bench scheduler',
  summary: 'Latency of one scheduling decision (p50/p99 µs) at 8, 64, 512 and 4096 workers, per policy.',
  options: [
    {
      name: 'iterations',
      type: 'integer',
      default: 3000,
      min: 10,
      help: 'timed decisions per size and policy',
    },
    { name: 'prompt-tokens', type: 'integer', default: 2048, min: 1, help: 'prompt length of each request' },
    { name: 'seed', type: 'integer', default: 1, help: 'seed of the synthetic loads and overlaps' },
    {
      name: 'json',
      type: 'boolean',
      default: false,
      help: 'print one JSON object as the last line',
    },
  ],
};

const SIZES = [8, 64, 512, 4096];
const BLOCK_SIZE = 16;
/** Distinct overlap maps rotated through, so no decision sees the same input twice in a row. */
const OVERLAP_VARIANTS = 16;

interface Row {
  policy: PolicyName;
  workers: number;
  p50_us: number;
  p99_us: number;
  mean_us: number;
}

/** Workers with mixed loads (none busy) and overlap maps where a quarter of them hold some prefix. */
function fixture(workers: number, promptTokens: number, seed: number) {
  const rng = seededRng(seed + workers);
  const candidates: Candidate[] = Array.from({ length: workers }, (_, i) => ({
    id: `w-${i + 1}`,
    kvBlocks: 8192,
    load: {
      activePrefillTokens: Math.floor(rng() * 8192),
      activeDecodeBlocks: Math.floor(rng() * 4096),
      activeContextBlocks: Math.floor(rng() * 8192),
    },
  }));
  const promptBlocks = Math.floor(promptTokens / BLOCK_SIZE);
  const overlaps = Array.from({ length: OVERLAP_VARIANTS }, () => {
    const m = new Map<string, number>();
    for (const c of candidates) if (rng() < 0.25) m.set(c.id, 1 + Math.floor(rng() * promptBlocks));
    return m;
  });
  return { candidates, overlaps };
}

function measure(
  policy: PolicyName,
  workers: number,
  iterations: number,
  promptTokens: number,
  seed: number,
): Row {
  const p = createPolicy({ policy, blockSize: BLOCK_SIZE, rng: seededRng(seed) });
  const { candidates, overlaps } = fixture(workers, promptTokens, seed);
  const run = (i: number) =>
    p.select({ candidates, promptTokens, outputTokens: 256, overlaps: overlaps[i % OVERLAP_VARIANTS] });
  for (let i = 0; i < Math.min(500, iterations); i++) run(i); // warm the JIT
  const samples = new Float64Array(iterations);
  let sink = 0;
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    const d = run(i);
    samples[i] = Number(process.hrtime.bigint() - t0) / 1000;
    if (d.outcome === 'selected') sink += d.chosen.overlapBlocks;
  }
  if (sink < 0) process.stderr.write('unreachable\n'); // keeps the decisions observable
  samples.sort();
  return {
    policy,
    workers,
    p50_us: round(percentile(samples, 0.5)),
    p99_us: round(percentile(samples, 0.99)),
    mean_us: round(mean(samples)),
  };
}

export async function run(options: ParsedOptions): Promise<number> {
  const iterations = options.iterations as number;
  const promptTokens = options.promptTokens as number;
  const seed = options.seed as number;
  const rows: Row[] = [];
  for (const policy of POLICY_NAMES) {
    for (const workers of SIZES) {
      process.stderr.write(`scheduler: ${policy} at ${workers} workers…\n`);
      rows.push(measure(policy, workers, iterations, promptTokens, seed));
    }
  }
  const lines = [
    `${'policy'.padEnd(14)}${'workers'.padStart(8)}${'p50 µs'.padStart(10)}${'p99 µs'.padStart(10)}${'mean µs'.padStart(10)}`,
  ];
  for (const r of rows) {
    lines.push(
      `${r.policy.padEnd(14)}${String(r.workers).padStart(8)}${r.p50_us.toFixed(2).padStart(10)}${r.p99_us.toFixed(2).padStart(10)}${r.mean_us.toFixed(2).padStart(10)}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (options.json) {
    const kv4096 = rows.find((r) => r.policy === 'kv' && r.workers === 4096)!;
    const summary = {
      bench: 'scheduler',
      block_size: BLOCK_SIZE,
      prompt_tokens: promptTokens,
      iterations,
      node: process.version,
      kv_4096_p99_us: kv4096.p99_us,
      results: rows,
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  }
  return 0;
}
