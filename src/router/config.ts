// The router's typed configuration and the `kvroute router` options that fill it. Each option is
// declared once (name, type, default, help, env KVROUTE_*); the config field is the option's
// camelCase name, so `resolveRouterConfig` is defaults + overrides with no mapping table. A default
// that a module has too (the registry's lease, the scheduler's weights, the request limits, the
// approximate index's TTL, the engine's block size) is that module's constant, not a second copy:
// the router and whatever builds the module alone (tests, benches) must not drift apart, and a
// `kvroute worker` and a `kvroute router` left at their defaults must agree on the block size.

import { camelCase, type OptionSpec, type ParsedOptions } from '../cli/options.js';
import { ENGINE_DEFAULTS } from '../engine/engine.js';
import { UsageError } from '../errors.js';
import { DEFAULT_APPROX_TTL_MS } from '../kv-index/index.js';
import { DEFAULT_LIMITS } from './openai/request.js';
import {
  DEFAULT_BASE_EJECTION_MS,
  DEFAULT_FAILURES_TO_EJECT,
  DEFAULT_LEASE_TTL_MS,
} from './registry/index.js';
import { DEFAULT_SCHEDULER_CONFIG, POLICY_NAMES, type PolicyName, type Rng } from './scheduling/index.js';

export interface RouterConfig {
  host: string;
  port: number;
  policy: PolicyName;
  blockSize: number;
  overlapWeight: number;
  temperature: number;
  /** Prompts with at most this many uncached tokens prefill on the decode worker. */
  maxLocalPrefill: number;
  /** Always prefill on a prefill worker when one exists. */
  enforceDisagg: boolean;
  /** Start decode while remote prefill runs (the KV handoff is awaited by the decode worker). */
  overlappedPrefill: boolean;
  /** Decode's bound on waiting for a KV handoff from remote prefill. */
  prefillWaitMs: number;
  leaseTtlMs: number;
  /** Attempts per request across workers (1 = no retry). */
  maxAttempts: number;
  /** Calls a worker fails in a row (by its own fault) before it is taken out of routing; 0: never. */
  ejectAfterFailures: number;
  /** A worker's first ejection (ms); each repeat without a success between doubles it, up to 5 min. */
  ejectionMs: number;
  busyPrefillTokens: number;
  busyDecodeFraction: number;
  /** Requests in flight (routed, not yet finished) before new ones get 503. */
  maxInflight: number;
  /** Largest request body in bytes (413 beyond). */
  bodyLimit: number;
  /** Open client connections at most; one past it is closed at once. */
  maxConnections: number;
  /** Bytes of request bodies over 64 KiB (or chunked, or encoded) received at once; 503 past it. */
  maxReceivingBytes: number;
  maxOutputTokens: number;
  maxPromptTokens: number;
  firstTokenTimeoutMs: number;
  streamIdleTimeoutMs: number;
  /** How long a stream waits for a client that takes none of it (its socket full) before it is cut. */
  clientStallTimeoutMs: number;
  /** How long an approximate-mode credit lasts. */
  approxTtlMs: number;
  /** How long `drain()` (SIGTERM) lets requests in flight finish before close() ends them. */
  drainMs: number;
  /**
   * Shared secret a worker must send (`Authorization: Bearer <token>`) to register, heartbeat and
   * deregister; unset, anyone who reaches the port may. Never logged, printed or traced.
   */
  workerToken?: string;
  /** Seed of the policies' random choices (random policy, ties, temperature); unset: Math.random. */
  seed?: number;
  verbose: boolean;
  /** Not a CLI option: random source of the policy (seed it in tests). */
  rng?: Rng;
  /** Not a CLI option: fastify logging (default: on at warn, or info with verbose; false = off). */
  logger?: boolean;
}

/**
 * The longest duration a `*-ms` option takes: 2^31-1 ms (~24.8 days), the most a Node timer can
 * wait. Node runs a longer setTimeout after 1 ms instead (with a TimeoutOverflowWarning), so
 * `--stream-idle-timeout-ms 3000000000` failed every request with a 504; the lease TTL and the
 * KV handoff wait also become timers, on the workers.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const ROUTER_OPTION_SPECS: readonly OptionSpec[] = [
  { name: 'host', type: 'string', default: '127.0.0.1', help: 'HTTP listen address' },
  { name: 'port', type: 'integer', default: 8000, min: 0, max: 65535, help: 'HTTP port (0 = any free)' },
  { name: 'policy', type: 'string', default: 'kv', choices: POLICY_NAMES, help: 'worker selection policy' },
  {
    name: 'block-size',
    type: 'integer',
    default: ENGINE_DEFAULTS.blockSize,
    min: 1,
    max: 65536,
    help: 'tokens per KV block',
  },
  {
    name: 'overlap-weight',
    type: 'number',
    default: DEFAULT_SCHEDULER_CONFIG.overlapWeight,
    min: 0,
    help: 'weight of prefill work against decode blocks in the kv cost',
  },
  {
    name: 'temperature',
    type: 'number',
    default: DEFAULT_SCHEDULER_CONFIG.temperature,
    min: 0,
    help: '0 = cheapest worker; > 0 = softmax over normalised costs',
  },
  {
    name: 'max-local-prefill',
    type: 'integer',
    default: 512,
    min: 0,
    help: 'uncached prompt tokens below which prefill stays on the decode worker',
  },
  { name: 'enforce-disagg', type: 'boolean', default: false, help: 'always prefill on a prefill worker' },
  {
    name: 'overlapped-prefill',
    type: 'boolean',
    default: false,
    help: 'start decode while remote prefill runs',
  },
  {
    name: 'prefill-wait-ms',
    type: 'integer',
    default: 5000,
    min: 1,
    max: MAX_TIMER_MS,
    help: "decode's bound on waiting for a KV handoff",
  },
  {
    name: 'lease-ttl-ms',
    type: 'integer',
    default: DEFAULT_LEASE_TTL_MS,
    min: 100,
    max: MAX_TIMER_MS,
    help: 'worker lease length',
  },
  {
    name: 'max-attempts',
    type: 'integer',
    default: 3,
    min: 1,
    max: 16,
    help: 'attempts per request across workers before failing',
  },
  {
    name: 'eject-after-failures',
    type: 'integer',
    default: DEFAULT_FAILURES_TO_EJECT,
    min: 0,
    max: 1000,
    help: 'calls a worker fails in a row by its own fault (no first token in time, a broken stream, an error it answers) before it is taken out of routing for --ejection-ms; never the last decode-capable worker of its model (the last prefill worker may go: prefill then runs on decode workers); 0 never ejects',
  },
  {
    name: 'ejection-ms',
    type: 'integer',
    default: DEFAULT_BASE_EJECTION_MS,
    min: 1,
    max: MAX_TIMER_MS,
    help: "a worker's first ejection; it then comes back on probation, where one failure ejects it again for twice as long (at most 5 min) and one success clears it",
  },
  {
    name: 'busy-prefill-tokens',
    type: 'integer',
    default: DEFAULT_SCHEDULER_CONFIG.busyPrefillTokens,
    min: 0,
    help: 'a worker with more active prefill tokens is busy',
  },
  {
    name: 'busy-decode-fraction',
    type: 'number',
    default: DEFAULT_SCHEDULER_CONFIG.busyDecodeFraction,
    min: 0,
    help: 'a worker with more booked decode blocks than this fraction of its KV is busy',
  },
  {
    name: 'max-inflight',
    type: 'integer',
    default: 4096,
    min: 1,
    help: 'requests in flight before new ones get 503',
  },
  {
    name: 'body-limit',
    type: 'integer',
    default: 4 * 1024 * 1024,
    min: 1024,
    help: 'largest request body in bytes (413 beyond)',
  },
  {
    name: 'max-connections',
    type: 'integer',
    default: 16_384,
    min: 1,
    help: 'open client connections at most (one past it is closed at once): bounds sockets and memory under a connection flood',
  },
  {
    name: 'max-receiving-bytes',
    type: 'integer',
    default: 1024 * 1024 * 1024,
    min: 1024,
    help: 'bytes of request bodies (those over 64 KiB, chunked or encoded) being received at once; a body past it gets 503',
  },
  {
    name: 'max-output-tokens',
    type: 'integer',
    default: DEFAULT_LIMITS.maxOutputTokens,
    min: 1,
    help: 'largest accepted max_tokens',
  },
  {
    name: 'max-prompt-tokens',
    type: 'integer',
    default: DEFAULT_LIMITS.maxPromptTokens,
    min: 1,
    help: 'largest accepted prompt in tokens',
  },
  {
    name: 'first-token-timeout-ms',
    type: 'integer',
    default: 30_000,
    min: 1,
    max: MAX_TIMER_MS,
    help: "bound on waiting for a worker's first token (per attempt)",
  },
  {
    name: 'stream-idle-timeout-ms',
    type: 'integer',
    default: 30_000,
    min: 1,
    max: MAX_TIMER_MS,
    help: 'bound on the silence between two chunks of a stream',
  },
  {
    name: 'client-stall-timeout-ms',
    type: 'integer',
    default: 120_000,
    min: 1,
    max: MAX_TIMER_MS,
    help: 'a streaming client that takes no data for this long is cut (its slot and worker load freed); the router sees reading in steps of about a megabyte, so a client reading slower than that per this bound is cut too',
  },
  {
    name: 'approx-ttl-ms',
    type: 'integer',
    default: DEFAULT_APPROX_TTL_MS,
    min: 1,
    max: MAX_TIMER_MS,
    help: 'how long approximate-mode credits last (workers without KV events)',
  },
  {
    name: 'drain-ms',
    type: 'integer',
    default: 30_000,
    min: 0,
    max: MAX_TIMER_MS,
    help: 'on SIGTERM/SIGINT: how long requests in flight may finish (new ones get 503) before the rest are ended',
  },
  {
    // No default: the control plane is open unless given (and --help, which prints only
    // defaults, never shows a token).
    name: 'worker-token',
    type: 'string',
    refuseEmptyEnv: true,
    help: 'shared secret a worker must send (Authorization: Bearer) to register, heartbeat or deregister; set it whenever --host is not loopback, best through its variable (a flag shows in the process list) (default: unset: anyone who reaches the port may register a worker, and a worker with a token is refused)',
  },
  {
    // No default: unseeded (Math.random) unless given.
    name: 'seed',
    type: 'integer',
    min: 0,
    max: 2 ** 32 - 1,
    help: "seed of the policies' random choices (random policy, ties, --temperature), for reproducible runs (default: unseeded)",
  },
  {
    name: 'verbose',
    type: 'boolean',
    default: false,
    help: 'log one line per request, fleet event, retry and prefill fallback',
  },
];

export const DEFAULT_ROUTER_CONFIG: RouterConfig = Object.freeze(
  Object.fromEntries(ROUTER_OPTION_SPECS.map((o) => [camelCase(o.name), o.default])),
) as unknown as RouterConfig;

/** Defaults overlaid with the given fields (undefined fields keep the default). */
export function resolveRouterConfig(overrides: Partial<RouterConfig> = {}): RouterConfig {
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  return { ...DEFAULT_ROUTER_CONFIG, ...defined };
}

/** What a worker token may hold: visible ASCII, no spaces (it travels as an HTTP header value). */
const WORKER_TOKEN_FORM = /^[\x21-\x7e]+$/;

/**
 * Refuses a worker token that cannot travel in `Authorization: Bearer <token>` (a worker's fetch
 * would throw on it, taken for an unreachable router). The message never quotes the token.
 */
export function checkWorkerToken(token: string | undefined): void {
  if (token !== undefined && !WORKER_TOKEN_FORM.test(token)) {
    throw new UsageError(
      '--worker-token (KVROUTE_WORKER_TOKEN): must be visible ASCII characters without spaces',
    );
  }
}

/** The router's fields out of parsed CLI options (also for `kvroute demo`, which shares the specs). */
export function routerConfigFromOptions(options: ParsedOptions): Partial<RouterConfig> {
  const out: Record<string, unknown> = {};
  for (const spec of ROUTER_OPTION_SPECS) {
    const key = camelCase(spec.name);
    if (options[key] !== undefined) out[key] = options[key];
  }
  return out as Partial<RouterConfig>;
}
