// A request's cancellation (the client went away, the router is shutting down) without an
// AbortController per request. Worker calls listen with an object and cancel their stream
// themselves; an AbortSignal is made only when something asks for one (the remote-prefill legs,
// which hand it on). Under load, Node's AbortController/EventTarget with a listener per worker
// call was ~3% of the router's CPU and most requests never abort.

export interface AbortListener {
  onAbort(reason: unknown): void;
}

export class RequestAbort {
  aborted = false;
  /** Why it aborted (what AbortSignal.reason would be). */
  reason: unknown = undefined;
  #controller: AbortController | undefined;
  #listeners: AbortListener[] | undefined;

  /** An AbortSignal following this (made on first use; aborted already if this is). */
  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.aborted) this.#controller.abort(this.reason);
    }
    return this.#controller.signal;
  }

  /** Aborts once: the signal (if made) first, then the listeners in the order they listened. */
  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    // As AbortController does for a missing reason.
    this.reason =
      reason === undefined ? new DOMException('This operation was aborted', 'AbortError') : reason;
    this.#controller?.abort(this.reason);
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners !== undefined) for (const l of listeners) l.onAbort(this.reason);
  }

  /** Calls `l.onAbort(reason)` when this aborts (not if it already has: check `aborted` first). */
  listen(l: AbortListener): void {
    if (this.aborted) return;
    if (this.#listeners === undefined) this.#listeners = [l];
    else this.#listeners.push(l);
  }

  unlisten(l: AbortListener): void {
    const listeners = this.#listeners;
    if (listeners === undefined) return;
    const i = listeners.indexOf(l);
    if (i >= 0) listeners.splice(i, 1);
  }
}
