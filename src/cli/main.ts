#!/usr/bin/env node
// `kvroute <command>`: dispatches to one module per command. Bad options exit 2 with one line.

import { UsageError } from '../errors.js';
import { kvrouteVersion } from '../util/version.js';
import type { CommandModule } from './command.js';
import { formatHelp, parseOptions } from './options.js';

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  demo: {
    summary: 'router plus mock prefill and decode workers on loopback',
    load: () => import('./commands/demo.js'),
  },
  router: { summary: 'the router service alone', load: () => import('./commands/router.js') },
  worker: {
    summary: 'one mock worker that registers with a router',
    load: () => import('./commands/worker.js'),
  },
  bench: {
    summary: 'operator benchmarks (kvroute bench --help lists them)',
    load: () => import('./commands/bench.js'),
  },
};

function topHelp(): string {
  const rows = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)}${c.summary}`);
  return `Usage: kvroute <command> [options]\n\nCommands:\n${rows.join('\n')}\n\nRun 'kvroute <command> --help' for a command's options, 'kvroute --version' for the version.\n`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp());
    return 0;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`kvroute ${kvrouteVersion()} (node ${process.versions.node})\n`);
    return 0;
  }
  // Like every other bad input: one line on stderr, exit 2 (help asked for goes to stdout, exit 0).
  if (name === undefined) {
    process.stderr.write('kvroute: missing command (see kvroute --help)\n');
    return 2;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    process.stderr.write(`kvroute: unknown command '${name}' (see kvroute --help)\n`);
    return 2;
  }
  const mod = await entry.load();
  try {
    // `bench` owns a second level of names and options: it parses `rest` itself.
    if (name === 'bench') return (await mod.run({}, rest)) ?? 0;
    const { options, positionals, help } = parseOptions(mod.spec, rest);
    if (help) {
      process.stdout.write(formatHelp(mod.spec));
      return 0;
    }
    return (await mod.run(options, positionals)) ?? 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`kvroute ${name}: ${err.message}\n`);
      return 2;
    }
    const socketProblem = socketErrorMessage(err);
    if (socketProblem !== undefined) {
      process.stderr.write(`kvroute ${name}: ${socketProblem}\n`);
      return 1;
    }
    throw err;
  }
}

/**
 * One line for the errors an operator causes and can fix (a port in use, an address this host does
 * not have, a privileged port, a host name that does not resolve); undefined for anything else,
 * which keeps its stack trace because it is a bug.
 */
function socketErrorMessage(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string };
  const where = e?.address !== undefined ? `${e.address}${e.port !== undefined ? `:${e.port}` : ''}` : '';
  switch (e?.code) {
    case 'EADDRINUSE':
      return `cannot listen on ${where}: the address is already in use`;
    case 'EADDRNOTAVAIL':
      return `cannot listen on ${where}: this host has no such address`;
    case 'EACCES':
      return `cannot listen on ${where}: permission denied (a port below 1024 needs privileges)`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `cannot resolve host ${e.hostname ?? ''}`.trimEnd();
    default:
      return undefined;
  }
}

/**
 * Output nobody reads any more (`kvroute router | head -1`, a log shipper that went away) must not
 * end the process: unheard, the EPIPE of the next write is an 'error' event that kills a router
 * mid-drain and cuts the streams it was finishing, or a demo and its workers. Those lines are lost;
 * the work goes on. Any other error on the process's own output is still fatal.
 */
function keepRunningWithoutReaders(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
    });
  }
}

keepRunningWithoutReaders();
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`kvroute: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
