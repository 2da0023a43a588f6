// The bound on a streaming client that stops reading. An SSE response is pulled from its events
// only as fast as the client's socket takes bytes (backpressure), so a client that reads nothing
// while keeping its connection open would hold its in-flight slot, its booked load on the worker
// and the worker's stream for as long as it liked: no other timer runs while the router waits on
// the client (the stream-idle bound counts only the wait for the worker).
//
// "Takes nothing" is seen from the events' side: an event handed over and no request for the next
// one within `stallMs`. The stream asks for the next event while its own buffer, the response's
// and the socket's have room, so a request for the next one is the client's progress. The router
// sees that progress only in steps: the kernel's send buffer (Linux grows it to 4 MB) wakes the
// writer again only once a good part of it is free, measured here at somewhere between 0.6 and
// 1.8 MB. So a client that takes less than that per `stallMs` looks the same as one that takes
// nothing, and is cut too: at the default of 120 s, one reading under ~5-15 KB/s while the router
// has more for it. A client that keeps up with the worker never fills the buffer, and is never cut.
// One timer per stream, armed when an event is handed over and re-armed at most once per `stallMs`.

/**
 * `events`, watched: `onStall` runs once when an event was handed over and the next one was not
 * asked for within `stallMs`. The caller cuts the response there; the stream's own close then
 * ends the request as for a client that left.
 */
export function watchClientStall<T>(
  events: AsyncIterable<T>,
  stallMs: number,
  onStall: () => void,
): AsyncIterable<T> {
  const inner = events[Symbol.asyncIterator]();
  /** performance.now() when the last event was handed over, -1 while the next one is asked for. */
  let handedAt = -1;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const check = () => {
    timer = undefined;
    if (stopped || handedAt < 0) return;
    const waited = performance.now() - handedAt;
    if (waited >= stallMs) {
      stopped = true;
      onStall();
    } else {
      timer = setTimeout(check, stallMs - waited);
    }
  };
  const stop = () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
  const iterator: AsyncIterator<T> = {
    next: async () => {
      handedAt = -1;
      const step = await inner.next();
      if (step.done) stop();
      else if (!stopped) {
        handedAt = performance.now();
        if (timer === undefined) timer = setTimeout(check, stallMs);
      }
      return step;
    },
    return: async (value?: unknown) => {
      stop();
      return inner.return ? inner.return(value) : { done: true, value: value as T };
    },
    throw: async (err?: unknown) => {
      stop();
      if (inner.throw) return inner.throw(err);
      throw err;
    },
  };
  return { [Symbol.asyncIterator]: () => iterator };
}
