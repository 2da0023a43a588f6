// `kvroute router`: the router service alone. Every option (src/router/config.ts) has a KVROUTE_*
// environment variable; logs are fastify's pino JSON lines on stdout (warnings only unless
// --verbose). SIGINT/SIGTERM drain the router (new requests get 503 and /ready says not ready,
// those in flight finish, up to --drain-ms), then close it (what is left ends with 503, workers
// are released) and exit 0. A second signal exits at once (1).

import { ROUTER_OPTION_SPECS, routerConfigFromOptions } from '../../router/config.js';
import { createRouter } from '../../router/service.js';
import type { CommandModule } from '../command.js';
import type { ParsedOptions } from '../options.js';

export const spec: CommandModule['spec'] = {
  usage: 'kvroute router',
  summary: 'The KV-aware router service: OpenAI-compatible HTTP API in front of registered workers.',
  options: ROUTER_OPTION_SPECS,
};

export async function run(options: ParsedOptions): Promise<number> {
  const router = await createRouter(routerConfigFromOptions(options));
  const url = await router.listen();
  // Signals are handled before the line is printed: whoever waits for it (the demo, a script, a
  // test) may send SIGTERM the moment it reads it, and must get the drain, not the default exit.
  const stopRequested = new Promise<void>((resolve) => {
    const onSignal = () => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      // A second signal while closing ends the process at once.
      process.once('SIGTERM', () => process.exit(1));
      process.once('SIGINT', () => process.exit(1));
      resolve();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  process.stdout.write(`kvroute router listening on ${url}\n`);
  await stopRequested;
  process.stdout.write(
    `kvroute router draining: ${router.inflight.active} request(s) in flight, up to ${router.config.drainMs} ms\n`,
  );
  await router.drain();
  await router.close();
  return 0;
}
