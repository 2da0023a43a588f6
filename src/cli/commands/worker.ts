// `kvroute worker`: not built yet (see the open issues); exits 1 with a clear message.

import type { CommandModule } from '../command.js';

export const spec: CommandModule['spec'] = {
  usage: 'kvroute worker',
  summary: 'Not available yet in this build.',
  options: [],
};

export async function run(): Promise<number> {
  process.stderr.write('kvroute worker: not available yet in this build\n');
  return 1;
}
