// Keeps this worker registered with the router (CONTRACT.md §2): POST /v1/workers, then a heartbeat
// every third of the lease TTL; a 404 means the router forgot us (restart, expired lease), so we
// register again; while the router is unreachable we retry with capped exponential backoff and
// jitter. A registration the router refuses (a 4xx other than 408/429: this worker's block size,
// model name or address is not acceptable to it) ends the loop and is told through onRefused:
// asking again would get the same answer forever, and only the operator can fix it. So is a
// heartbeat answered 401 or 403: the router (restarted with --worker-token, or another one) no
// longer takes this worker's token, which no retry changes. Every call carries the worker token,
// when there is one, as `Authorization: Bearer`; it is never logged. An outage is told to the
// operator through `notice` (once, then every 30 s, and its end), the one thing a worker says
// without logs. stop() deregisters (after a registration in flight has its answer). All traffic
// runs in the ROOT context: control-plane calls must never appear inside (or parent to) a user
// request's trace.

import { setTimeout as delay } from 'node:timers/promises';
import type { RegisterWorkerRequest, RegisterWorkerResponse } from '../protocols/registration.js';
import { withRootContext } from '../telemetry/index.js';
import { type BackoffPolicy, backoffDelay, DEFAULT_BACKOFF } from '../util/backoff.js';

export interface RouterLeaseOptions {
  /** Router base URL, e.g. http://127.0.0.1:8000 */
  routerUrl: string;
  registration: RegisterWorkerRequest;
  /** The router's --worker-token, sent on every call (register, heartbeat, deregister). */
  workerToken?: string;
  backoff?: BackoffPolicy;
  /** Per-call HTTP timeout. */
  requestTimeoutMs?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
  random?: () => number;
  /** HTTP client (default: the global fetch); tests wrap it to see the context calls run in. */
  fetch?: typeof fetch;
  /** The router refused the registration (see RegistrationRefused); the lease has stopped trying. */
  onRefused?: (err: RegistrationRefused) => void;
  /**
   * One plain line for the operator when the router cannot be reached (the first failure of an
   * outage, then at most every `noticeEveryMs` while it lasts) and when it answers again: a worker
   * pointed at a wrong --router otherwise retries forever without a word unless logs are on.
   */
  notice?: (line: string) => void;
  /** Least time between two "still unreachable" notices of one outage (default 30 s). */
  noticeEveryMs?: number;
}

/** The router answered the registration (or a heartbeat) with a 4xx that asking again cannot change. */
export class RegistrationRefused extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly call: 'registration' | 'heartbeat' = 'registration',
  ) {
    super(`the router refused this worker's ${call} (${status}): ${reason}`);
    this.name = 'RegistrationRefused';
  }
}

/** 4xx answers that say "not now" rather than "never": retried like an unreachable router. */
const RETRYABLE_4XX = new Set([408, 429]);

/** Whether a refusal says this worker's token is not (or no longer) the router's. */
export function isTokenRefusal(status: number): boolean {
  return status === 401 || status === 403;
}

/** The message of an OpenAI-shaped error body, else the body itself (one line, bounded). */
function refusalReason(body: string): string {
  try {
    const message = (JSON.parse(body) as { error?: { message?: unknown } }).error?.message;
    if (typeof message === 'string' && message !== '') return message;
  } catch {}
  return body.replace(/\s+/g, ' ').trim().slice(0, 500) || 'no reason given';
}

export class RouterLease {
  private id: string | null = null;
  private ttlMs = 0;
  private readonly stopped = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly base: string;
  /** Registrations the router accepted (1 normally; more after router restarts). */
  registrations = 0;

  constructor(private readonly opts: RouterLeaseOptions) {
    this.base = opts.routerUrl.replace(/\/+$/, '');
  }

  /** The id the router gave us, null while unregistered. */
  get workerId(): string | null {
    return this.id;
  }

  /** Starts the register/heartbeat loop in the background (idempotent). */
  start(): void {
    this.loop ??= withRootContext(() => this.run());
  }

  /**
   * Stops heartbeating and deregisters (best effort). A registration in flight is let finish first,
   * so both calls are bounded by the request timeout.
   */
  async stop(): Promise<void> {
    this.stopped.abort();
    await this.loop?.catch(() => {});
    const id = this.id;
    this.id = null;
    if (id === null) return;
    await withRootContext(() =>
      this.call('DELETE', `/v1/workers/${encodeURIComponent(id)}`, undefined, new AbortController().signal),
    )
      // A refused DELETE (a router restarted with another token, an id it already dropped) is not
      // a deregistration: logged as what it is.
      .then((res) =>
        this.log(res.ok ? 'deregistered' : 'deregister_refused', { worker_id: id, status: res.status }),
      )
      .catch((err: unknown) => this.log('deregister_failed', { worker_id: id, error: String(err) }));
  }

  private async run(): Promise<void> {
    const { signal } = this.stopped;
    const policy = this.opts.backoff ?? DEFAULT_BACKOFF;
    const noticeEveryMs = this.opts.noticeEveryMs ?? 30_000;
    let failures = 0;
    let outageNoticed = false;
    let lastNoticeAt = 0;
    while (!signal.aborted) {
      try {
        // A registration is not cut by stop(): the router may have taken it already, and only
        // its answer names the id stop() must deregister (it waits at most the request timeout).
        if (this.id === null) await this.register(new AbortController().signal);
        else await this.heartbeat(signal);
        if (outageNoticed) {
          this.opts.notice?.(`reached the router at ${this.base} after ${failures} failed attempts`);
          outageNoticed = false;
        }
        failures = 0;
        // After a 404 the id is gone: register again at once. Otherwise beat again in a third of the TTL.
        if (this.id !== null) await sleep(this.ttlMs / 3, signal);
      } catch (err) {
        if (signal.aborted) break;
        if (err instanceof RegistrationRefused) {
          // `registration_refused` or `heartbeat_refused`: which call the router refused.
          this.log(`${err.call}_refused`, { status: err.status, reason: err.reason });
          this.opts.onRefused?.(err);
          return;
        }
        const delay = backoffDelay(failures++, policy, (this.opts.random ?? Math.random)());
        this.log('router_unreachable', { error: errorText(err), retry_in_ms: delay, attempt: failures });
        const now = Date.now();
        if (this.opts.notice !== undefined && (failures === 1 || now - lastNoticeAt >= noticeEveryMs)) {
          this.opts.notice(
            failures === 1
              ? `cannot reach the router at ${this.base} (${errorText(err)}); retrying until it answers`
              : `still cannot reach the router at ${this.base} after ${failures} attempts (${errorText(err)})`,
          );
          outageNoticed = true;
          lastNoticeAt = now;
        }
        await sleep(delay, signal);
      }
    }
  }

  private async register(signal: AbortSignal): Promise<void> {
    const res = await this.call('POST', '/v1/workers', this.opts.registration, signal);
    if (res.status >= 400 && res.status < 500 && !RETRYABLE_4XX.has(res.status)) {
      throw new RegistrationRefused(res.status, refusalReason(await res.text().catch(() => '')));
    }
    if (res.status !== 201 && res.status !== 200) {
      throw new Error(`POST /v1/workers answered ${res.status}: ${await res.text().catch(() => '')}`);
    }
    const body = (await res.json()) as RegisterWorkerResponse;
    if (typeof body.worker_id !== 'string' || !(body.lease_ttl_ms > 0)) {
      throw new Error('POST /v1/workers answered without worker_id and lease_ttl_ms');
    }
    this.id = body.worker_id;
    this.ttlMs = body.lease_ttl_ms;
    this.registrations++;
    this.log('registered', { worker_id: this.id, lease_ttl_ms: this.ttlMs });
  }

  private async heartbeat(signal: AbortSignal): Promise<void> {
    const id = this.id!;
    const res = await this.call('POST', `/v1/workers/${encodeURIComponent(id)}/heartbeat`, undefined, signal);
    if (isTokenRefusal(res.status)) {
      throw new RegistrationRefused(res.status, refusalReason(await res.text().catch(() => '')), 'heartbeat');
    }
    await res.body?.cancel();
    if (res.status === 404) {
      this.log('lease_lost', { worker_id: id });
      this.id = null; // register again on the next turn, without waiting
      return;
    }
    if (res.status < 200 || res.status >= 300) throw new Error(`heartbeat answered ${res.status}`);
  }

  private call(method: string, path: string, body: unknown, signal: AbortSignal): Promise<Response> {
    const timeout = AbortSignal.timeout(this.opts.requestTimeoutMs ?? 2_000);
    const headers: Record<string, string> = {};
    if (this.opts.workerToken !== undefined) headers.authorization = `Bearer ${this.opts.workerToken}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    return (this.opts.fetch ?? fetch)(this.base + path, {
      method,
      signal: AbortSignal.any([signal, timeout]),
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  }

  private log(event: string, fields: Record<string, unknown>): void {
    this.opts.log?.(event, fields);
  }
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${err.message}${cause}`;
  }
  return String(err);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => {});
}
