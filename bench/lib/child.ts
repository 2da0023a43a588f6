// Child processes of a bench (a server, a fleet of stand-in workers): read their first line, stop
// them, and turn their death into one line and exit 1. One copy for every bench that spawns.

import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/** A child process of the bench that died on its own: reported as one line, exit 1. */
export class ChildExited extends Error {}

/** A failure to start a child (it died, or said why on stderr) as ChildExited, its message on one line. */
export function childExited(err: unknown): ChildExited {
  const text = err instanceof Error ? err.message : String(err);
  return new ChildExited(text.trim().replace(/\s*\n\s*/g, ' | '));
}

export const exitStatus = (code: number | null, signal: NodeJS.Signals | null): string =>
  signal !== null ? `signal ${signal}` : `code ${code}`;

export const hasExited = (child: ChildProcess): boolean =>
  child.exitCode !== null || child.signalCode !== null;

/**
 * The child's first stdout line. Rejects with ChildExited if the child ends first: waiting on
 * 'data' alone never settled then, node ran out of work and exited 0 with nothing printed.
 */
export function firstLine(child: ChildProcess, name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const cleanup = () => {
      child.stdout!.off('data', onData);
      child.off('close', onClose);
      child.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      cleanup();
      resolve(out.slice(0, nl));
    };
    // 'close', not 'exit': stdout is drained by then, so a line printed just before dying counts.
    const onClose = (code: number | null, signal: NodeJS.Signals | null) => {
      cleanup();
      reject(new ChildExited(`${name} exited (${exitStatus(code, signal)}) at start-up`));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new ChildExited(`${name}: ${err.message}`));
    };
    child.stdout!.on('data', onData);
    child.on('close', onClose);
    child.on('error', onError);
  });
}

/**
 * Runs bench `name`'s measurement; a child that died (ChildExited) is the operator's to look at,
 * not a bug here: one line on stderr and exit 1. Anything else propagates.
 */
export async function childDeathAsExit(name: string, measure: () => Promise<number>): Promise<number> {
  try {
    return await measure();
  } catch (err) {
    if (!(err instanceof ChildExited)) throw err;
    process.stderr.write(`kvroute bench ${name}: ${err.message}\n`);
    return 1;
  }
}

/** SIGTERM (SIGKILL after 5 s) and wait, unless it is gone already: then 'exit' will never come again. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (hasExited(child)) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
