// Summary statistics every bench reports: nearest-rank percentiles over sorted samples, mean,
// coefficient of variation. One copy for all benches.

/** The sample at rank floor(q · n) of an ascending-sorted array (clamped to the last); 0 when empty. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export function mean(values: ArrayLike<number>): number {
  if (values.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum / values.length;
}

/** Population standard deviation over the mean; 0 when the mean is 0 or there are no values. */
export function coefficientOfVariation(values: ArrayLike<number>): number {
  const m = mean(values);
  if (m === 0) return 0;
  let sq = 0;
  for (let i = 0; i < values.length; i++) sq += (values[i]! - m) ** 2;
  return Math.sqrt(sq / values.length) / m;
}

/** Rounds to `digits` decimals (benches print µs with 2, ms with 1). */
export function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export interface Distribution {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Sorts a copy of `samples` and summarises it, rounded to `digits` decimals. */
export function distribution(samples: ArrayLike<number>, digits = 2): Distribution {
  const sorted = Float64Array.from(samples).sort();
  return {
    count: sorted.length,
    mean: round(mean(sorted), digits),
    p50: round(percentile(sorted, 0.5), digits),
    p90: round(percentile(sorted, 0.9), digits),
    p99: round(percentile(sorted, 0.99), digits),
    max: round(sorted.length === 0 ? 0 : sorted[sorted.length - 1]!, digits),
  };
}
