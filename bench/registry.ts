// Every `kvroute bench <name>`: one module each, loaded on demand. Each exports the CommandModule shape.

import type { CommandModule } from '../src/cli/command.js';

export const BENCHES: Record<string, () => Promise<CommandModule>> = {
  'kv-index': () => import('./kv-index.js'),
  replay: () => import('./replay.js'),
  routing: () => import('./routing.js'),
  scheduler: () => import('./scheduler.js'),
  transport: () => import('./transport.js'),
  tokenizer: () => import('./tokenizer.js'),
  tracing: () => import('./tracing.js'),
};
