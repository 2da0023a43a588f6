// A small seeded random source (mulberry32-style: 32-bit state, full period), so tests and
// benchmarks make the same choices on every run. Production may pass Math.random instead.

import type { Rng } from './types.js';

export function seededRng(seed: number): Rng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
