// Helpers for the engine tests: a stand-in block hasher (the engine is hash-agnostic; this one is
// FNV-1a 64 chained like CONTRACT.md §4 so distinct prefixes get distinct sequence hashes) and a
// fake-clock driver that runs an engine until it is idle.

import type { BlockHasher, EngineOutput, MockEngine } from '../src/engine/index.js';

const MASK = (1n << 64n) - 1n;

function fnv64(values: readonly bigint[]): bigint {
  let h = 0xcbf29ce484222325n;
  for (const v of values) h = ((h ^ (v & MASK)) * 0x100000001b3n) & MASK;
  return h;
}

export const testHasher: BlockHasher = (tokens, blockSize) => {
  const n = Math.floor(tokens.length / blockSize);
  const local = new BigUint64Array(n);
  const sequence = new BigUint64Array(n);
  for (let i = 0; i < n; i++) {
    local[i] = fnv64(tokens.slice(i * blockSize, (i + 1) * blockSize).map(BigInt));
    sequence[i] = i === 0 ? local[i]! : fnv64([sequence[i - 1]!, local[i]!]);
  }
  return { local, sequence };
};

/** Ticks the engine at each wake-up time until idle; returns all outputs and the final clock. */
export function runUntilIdle(engine: MockEngine, now = 0): { outputs: EngineOutput[]; now: number } {
  const outputs = engine.tick(now);
  for (let at = engine.nextWakeAt(); at !== null; at = engine.nextWakeAt()) {
    now = at;
    outputs.push(...engine.tick(now));
  }
  return { outputs, now };
}

export function tokensOf(outputs: readonly EngineOutput[], id: string): number[] {
  return outputs.filter((o) => o.requestId === id).flatMap((o) => o.tokenIds);
}

export function range(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}
