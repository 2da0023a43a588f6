// `kvroute worker`: one mock worker (engine + request-plane server) that registers with a router,
// heartbeats, and on SIGTERM/SIGINT deregisters, drains in-flight streams and exits 0.

import { ENGINE_DEFAULTS } from '../../engine/index.js';
import { UsageError } from '../../errors.js';
import { computeBlockHashes } from '../../kv-index/index.js';
import { WORKER_ROLES, type WorkerRole } from '../../protocols/registration.js';
import { checkWorkerToken, MAX_TIMER_MS, ROUTER_OPTION_SPECS } from '../../router/config.js';
import { initTelemetry } from '../../telemetry/index.js';
import { createLog } from '../../worker/log.js';
import { isTokenRefusal, type RegistrationRefused } from '../../worker/router-lease.js';
import { startWorker } from '../../worker/worker.js';
import type { CommandModule } from '../command.js';
import { modelName } from '../model-name.js';
import type { ParsedOptions } from '../options.js';

/**
 * The engine allocates its pool's bookkeeping up front (~20 bytes a block): 2^24 blocks (268M
 * tokens at 16 a block, 1,024x the default) take ~330 MB; 2^32-1 ran out of memory, and more
 * died with a RangeError stack trace.
 */
const MAX_KV_BLOCKS = 2 ** 24;

/** The router's largest block size: a worker's must equal its router's to register. */
const MAX_BLOCK_SIZE = ROUTER_OPTION_SPECS.find((o) => o.name === 'block-size')?.max;

export const spec: CommandModule['spec'] = {
  usage: 'kvroute worker',
  summary: 'One mock inference worker (prefill, decode or both) that registers with a router.',
  options: [
    { name: 'role', type: 'string', choices: WORKER_ROLES, help: 'what this worker serves (required)' },
    { name: 'router', type: 'string', help: 'router base URL, e.g. http://127.0.0.1:8000 (required)' },
    { name: 'host', type: 'string', default: '127.0.0.1', help: 'request-plane listen address' },
    {
      name: 'port',
      type: 'integer',
      default: 0,
      min: 0,
      max: 65535,
      help: 'request-plane port (0 = any free)',
    },
    { name: 'model', type: 'string', default: 'mock-llm', help: 'model name served' },
    {
      name: 'block-size',
      type: 'integer',
      default: ENGINE_DEFAULTS.blockSize,
      min: 1,
      max: MAX_BLOCK_SIZE,
      help: 'tokens per KV block',
    },
    {
      name: 'kv-blocks',
      type: 'integer',
      default: ENGINE_DEFAULTS.kvBlocks,
      min: 1,
      max: MAX_KV_BLOCKS,
      help: 'KV pool capacity in blocks',
    },
    {
      name: 'max-batched-tokens',
      type: 'integer',
      default: ENGINE_DEFAULTS.maxBatchedTokens,
      min: 1,
      help: 'tokens one engine step may process',
    },
    { name: 'speedup', type: 'number', default: 1, min: 0.001, help: 'divides every simulated duration' },
    {
      name: 'max-waiting',
      type: 'integer',
      default: ENGINE_DEFAULTS.maxWaiting,
      min: 1,
      help: 'requests that may wait (for KV room, or for their KV handoff) before new ones are rejected',
    },
    {
      name: 'drain-ms',
      type: 'integer',
      default: 10_000,
      min: 0,
      // A Node timer runs a longer delay after 1 ms: the drain would cut every stream at once.
      max: MAX_TIMER_MS,
      help: 'on SIGTERM/SIGINT, how long in-flight streams may run (after deregistering) before they are cut',
    },
    {
      // The router's option of the same name and variable: one exported KVROUTE_WORKER_TOKEN
      // serves a router and its workers on one host.
      name: 'worker-token',
      type: 'string',
      refuseEmptyEnv: true,
      help: "the router's --worker-token, sent on register, heartbeat and deregister; best given through its variable (a flag shows in the process list) (default: unset, none sent)",
    },
    { name: 'verbose', type: 'boolean', default: false, help: 'structured JSON logs on stderr' },
  ],
};

/** What to check when the router refused this worker's token (or its lack of one). */
function tokenHint(refused: RegistrationRefused, sentToken: boolean): string {
  if (!isTokenRefusal(refused.status)) return '';
  return sentToken
    ? " (this worker's --worker-token / KVROUTE_WORKER_TOKEN must be the router's)"
    : " (this worker sent no token: give it the router's with --worker-token or KVROUTE_WORKER_TOKEN)";
}

function routerUrl(value: unknown): string {
  if (typeof value !== 'string' || value === '')
    throw new UsageError('--router is required (the router base URL)');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`--router: not a URL: '${value}'`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`--router: expected an http(s) URL, got '${value}'`);
  }
  return value;
}

export async function run(options: ParsedOptions): Promise<number> {
  if (options.role === undefined) throw new UsageError(`--role is required (${WORKER_ROLES.join('|')})`);
  const role = options.role as WorkerRole;
  const router = routerUrl(options.router);
  const model = modelName(options.model);
  const workerToken = options.workerToken as string | undefined;
  checkWorkerToken(workerToken);
  const telemetry = initTelemetry({ serviceName: `kvroute-${role}-worker` });
  const log = createLog(options.verbose === true, { component: 'worker', role });
  let refused: RegistrationRefused | undefined;
  // Resolved by the first SIGTERM or SIGINT, or by the router refusing the registration.
  let stopNow!: () => void;
  const stopRequested = new Promise<void>((resolve) => {
    stopNow = resolve;
  });
  const worker = await startWorker(
    {
      role,
      routerUrl: router,
      ...(workerToken !== undefined ? { workerToken } : {}),
      host: options.host as string,
      port: options.port as number,
      model,
      engine: {
        blockSize: options.blockSize as number,
        kvBlocks: options.kvBlocks as number,
        maxBatchedTokens: options.maxBatchedTokens as number,
        speedup: options.speedup as number,
        maxWaiting: options.maxWaiting as number,
      },
      drainDeadlineMs: options.drainMs as number,
      kvEventsBacklog: 100_000,
      log,
      tracer: telemetry.tracer,
      // Without --verbose, the one thing said while running: the router cannot be reached (a wrong
      // --router would otherwise retry forever in silence), and when it answers again.
      ...(options.verbose === true
        ? {}
        : { notice: (line: string) => process.stderr.write(`kvroute worker: ${line}\n`) }),
      // Asking again gets the same answer: stop, and say why on the one line a bad option gets.
      onRegistrationRefused: (err) => {
        refused = err;
        stopNow();
      },
    },
    computeBlockHashes,
  );
  const onSignal = (signal: NodeJS.Signals) => {
    log('signal', { signal });
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    // A second signal while draining ends the process at once.
    const force = () => process.exit(1);
    process.once('SIGTERM', force);
    process.once('SIGINT', force);
    stopNow();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // Printed once signals are handled: whoever waits for this line may stop the worker at once.
  process.stdout.write(
    `kvroute worker (${role}) listening on ${worker.address}, registering with ${router}\n`,
  );
  await stopRequested;
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  await worker.stop();
  await telemetry.shutdown();
  if (refused !== undefined)
    throw new UsageError(refused.message + tokenHint(refused, workerToken !== undefined));
  return 0;
}
