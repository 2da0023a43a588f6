// `kvroute bench <name>`: looks the benchmark up in bench/registry.ts and runs it with its own options.

import { BENCHES } from '../../../bench/registry.js';
import type { CommandModule } from '../command.js';
import { formatHelp, parseOptions } from '../options.js';

export const spec: CommandModule['spec'] = {
  usage: 'kvroute bench',
  summary: `Operator benchmarks. Names: ${Object.keys(BENCHES).join(', ')}. Each takes --json to print one JSON object as the last line.`,
  options: [],
  positionals: "<name> [bench options]  (kvroute bench <name> --help lists a benchmark's options)",
};

export async function run(_options: unknown, argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name.startsWith('-')) {
    process.stdout.write(formatHelp(spec));
    return name === '--help' || name === '-h' ? 0 : 2;
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
