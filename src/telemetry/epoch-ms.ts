// Epoch milliseconds (fractional, as performance.now() + an anchor gives them) split into an
// HrTime's whole seconds and nanoseconds. One rule for LeanSpan's HrTime getters and for the OTLP
// encoder, which writes a LeanSpan's times from the milliseconds without making the HrTime: both
// must give the same nanoseconds.

/** Whole seconds since the epoch of `ms`. */
export function epochSeconds(ms: number): number {
  return Math.floor(ms / 1000);
}

/** The nanoseconds of `ms` past `seconds` (= epochSeconds(ms)), exact to what a double holds. */
export function nanosPastSecond(ms: number, seconds: number): number {
  const nanos = Math.round((ms - seconds * 1000) * 1e6);
  return nanos >= 1e9 ? 999_999_999 : nanos;
}
