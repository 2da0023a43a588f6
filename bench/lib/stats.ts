// Summary statistics every bench reports: nearest-rank percentiles over sorted samples, mean,
// median, coefficient of variation, a confidence interval for a median. One copy for all benches.

/**
 * The nearest-rank q-th percentile of an ascending-sorted array: the smallest sample with at least
 * q · n samples at or below it (rank ceil(q · n), 1-based); 0 when empty. So p99 of 100 samples is
 * the 99th, not the maximum, and p50 of 4 is the 2nd.
 */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/**
 * The smallest and largest value, in one loop; undefined when empty. Not Math.min(...values): a
 * spread passes every value as an argument and overflows the stack past ~125k (a replay of a
 * large trace crashed there).
 */
export function extent(values: Iterable<number>): { min: number; max: number } | undefined {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return min <= max ? { min, max } : undefined;
}

export function mean(values: ArrayLike<number>): number {
  if (values.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum / values.length;
}

/** The middle value (the mean of the two middle ones for an even count); 0 when empty. */
export function median(values: ArrayLike<number>): number {
  if (values.length === 0) return 0;
  const sorted = Float64Array.from(values).sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * A distribution-free confidence interval for the median of the population `values` were drawn
 * from: the k-th smallest and k-th largest value, with k the largest rank whose coverage,
 * 1 - 2·P(Binomial(n, 1/2) < k), is still at least `level`. Assumes only independent draws, so it
 * suits a handful of noisy rounds where a normal approximation would claim too much. With fewer
 * than 6 values no interval reaches 95% and the result is null. Coverage is the exact level the
 * interval has (≥ `level`).
 */
export function medianConfidenceInterval(
  values: ArrayLike<number>,
  level = 0.95,
): { low: number; high: number; coverage: number } | null {
  const n = values.length;
  const sorted = Float64Array.from(values).sort();
  // P(Binomial(n, 1/2) <= j) for j = 0, 1, ...: the chance that the median lies below the (j+1)-th value.
  let choose = 1;
  let below = 0;
  let best: { low: number; high: number; coverage: number } | null = null;
  for (let k = 1; 2 * k <= n; k++) {
    below += choose / 2 ** n; // adds P(Binomial = k - 1)
    choose = (choose * (n - (k - 1))) / k;
    const coverage = 1 - 2 * below;
    if (coverage < level) break;
    best = { low: sorted[k - 1]!, high: sorted[n - k]!, coverage };
  }
  return best;
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

export type GoalVerdict = 'met' | 'not met' | 'unresolved';

/**
 * A loss goal judged on the loss's interval: `met` when all of it is at or under the bound, `not
 * met` when all of it is over, `unresolved` when it straddles the bound or is missing (too few
 * rounds). With a control (the interval of a difference known to be zero: an A/A pair measured in
 * the same run), a control interval that leaves out zero means the run's noise made a difference
 * out of nothing, so no interval of that run is trusted: `unresolved`.
 */
/** Whether an A/A control's interval leaves out 0: the run made a difference out of none. */
export function controlFailed(control: readonly number[] | null | undefined): boolean {
  return !!control && (control[0]! > 0 || control[1]! < 0);
}

export function goalVerdict(
  interval: readonly number[] | null,
  maxLossPct: number,
  control?: readonly number[] | null,
): GoalVerdict {
  if (interval === null) return 'unresolved';
  if (controlFailed(control)) return 'unresolved';
  if (interval[1]! <= maxLossPct) return 'met';
  return interval[0]! > maxLossPct ? 'not met' : 'unresolved';
}

/**
 * A goal of "at most `goal`" judged on a measured value: null when the value was not measured (a
 * configuration the run left out), so that a goal nobody measured never reads as missed.
 */
export function atMost(value: number | null, goal: number): boolean | null {
  return value === null ? null : value <= goal;
}
