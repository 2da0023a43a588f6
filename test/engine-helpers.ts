// Helpers for the engine tests: a fake-clock driver that runs an engine until it is idle.

import type { EngineOutput, MockEngine } from '../src/engine/index.js';

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
