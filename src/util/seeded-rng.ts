// The project's one seeded random source (mulberry32: 32-bit state, full period, well mixed).
// Tests, benchmarks, the mock engine's token sampler and the scheduler's tie-breaking all use it,
// so a failing seed reproduces everywhere. Production scheduling may pass Math.random instead.

/** Uniform numbers in [0, 1), the same sequence for the same seed. */
export function seededRng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
