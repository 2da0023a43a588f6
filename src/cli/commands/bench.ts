// `kvroute bench <name>`: looks the benchmark up in bench/registry.ts and runs it with its own options.

import { BENCHES } from '../../../bench/registry.js';
import { UsageError } from '../../errors.js';
import type { CommandModule } from '../command.js';
import { formatHelp, parseOptions } from '../options.js';

export const spec: CommandModule['spec'] = {
  usage: 'kvroute bench',
  summary: `Operator benchmarks. Names: ${Object.keys(BENCHES).join(', ')}. Each takes --json to print one JSON object as the last line.`,
  options: [],
  // Options go after the name: they are the benchmark's (an option before the name is refused).
  positionals: "<name> [options]  (kvroute bench <name> --help lists a benchmark's options)",
};

export async function run(_options: unknown, argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--help' || name === '-h') {
    process.stdout.write(formatHelp(spec));
    return 0;
  }
  // Bad input is one line on stderr (main.ts prints it and exits 2), as for every other command.
  if (name === undefined) throw new UsageError('missing benchmark name (see kvroute bench --help)');
  if (name.startsWith('-')) {
    throw new UsageError(
      `missing benchmark name before '${name}' (usage: kvroute bench <name> [options]; see kvroute bench --help)`,
    );
  }
  const load = BENCHES[name];
  if (!load) {
    process.stderr.write(
      `kvroute bench: unknown benchmark '${name}' (known: ${Object.keys(BENCHES).join(', ')})\n`,
    );
    return 2;
  }
  const bench = await load();
  const { options, positionals, help } = parseOptions(bench.spec, rest);
  if (help) {
    process.stdout.write(formatHelp(bench.spec));
    return 0;
  }
  return (await bench.run(options, positionals)) ?? 0;
}
