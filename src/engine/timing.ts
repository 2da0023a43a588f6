// The mock engine's performance model: how long a prefill and a decode step take. Fitted curves
// (milliseconds on the reference GPU), divided by the `speedup` divisor so tests and benches can
// run the same schedule faster than real time.

/** Prefill of `tokens` uncached tokens: 4.21e-7·t² + 1.518e-2·t + 16.5 ms. Zero tokens cost nothing. */
export function prefillMs(tokens: number, speedup = 1): number {
  if (tokens <= 0) return 0;
  return (4.21e-7 * tokens * tokens + 1.518e-2 * tokens + 16.5) / speedup;
}

/** One decode step when a fraction `usage` (0..1) of the KV pool holds tokens: −25.74·p² + 54.01·p + 5.74 ms. */
export function decodeStepMs(usage: number, speedup = 1): number {
  const p = Math.min(1, Math.max(0, usage));
  return (-25.74 * p * p + 54.01 * p + 5.74) / speedup;
}
