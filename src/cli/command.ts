// The shape every `kvroute` command module exports, so main.ts can dispatch, print --help and
// report bad options the same way for all of them.

import type { CommandSpec, ParsedOptions } from './options.js';

export interface CommandModule {
  spec: CommandSpec;
  /** Runs the command. Resolves with the exit code (default 0). */
  run(options: ParsedOptions, positionals: string[]): Promise<number | undefined>;
}
