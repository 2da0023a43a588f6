// The one option parser every command uses. Each option is declared once with its type, default
// and help; the parser reads `--flag value`, `--flag=value`, then the environment variable
// (`--block-size` -> `KVROUTE_BLOCK_SIZE`), then the default, and validates the result. Bad input
// raises UsageError with a one-line reason, which the CLI prints before exiting 2.

import { UsageError } from '../errors.js';

type OptionType = 'string' | 'integer' | 'number' | 'boolean';

export interface OptionSpec {
  /** Long flag name without dashes, kebab-case: `block-size`. */
  name: string;
  type: OptionType;
  help: string;
  default?: string | number | boolean;
  /** Allowed values for string options. */
  choices?: readonly string[];
  /** Inclusive lower bound for numeric options. */
  min?: number;
  /** Inclusive upper bound for numeric options. */
  max?: number;
  /**
   * An empty environment variable is an error instead of "not set". Every other option takes an
   * empty variable as unset; for one whose absence fails open (the worker token: unset leaves the
   * control plane open), `export KVROUTE_WORKER_TOKEN="$SECRET"` with an unset $SECRET must not.
   */
  refuseEmptyEnv?: boolean;
}

export interface CommandSpec {
  /** `kvroute router`, `kvroute bench replay` ... */
  usage: string;
  summary: string;
  options: readonly OptionSpec[];
  /**
   * For a command that takes positional arguments: the usage line after the command words, options
   * included where they go (help only; without it the line is `<usage> [options]`).
   */
  positionals?: string;
}

export type ParsedOptions = Record<string, string | number | boolean | undefined>;

export function envName(optionName: string): string {
  return `KVROUTE_${optionName.toUpperCase().replaceAll('-', '_')}`;
}

export function camelCase(optionName: string): string {
  return optionName.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

const INTEGER = /^[+-]?\d+$/;
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)$/;

function coerce(spec: OptionSpec, raw: string, source: string): string | number | boolean {
  switch (spec.type) {
    case 'boolean': {
      const v = raw.toLowerCase();
      if (['1', 'true', 'yes', 'on', ''].includes(v)) return true;
      if (['0', 'false', 'no', 'off'].includes(v)) return false;
      throw new UsageError(`${source}: expected true or false, got '${raw}'`);
    }
    case 'integer':
    case 'number': {
      // Decimal only: Number() would also take '0x1F40', '1e3' or ' ' for a port or a count.
      const text = raw.trim();
      if (!DECIMAL.test(text)) throw new UsageError(`${source}: expected a number, got '${raw}'`);
      const n = Number(text);
      if (spec.type === 'integer' && !INTEGER.test(text)) {
        throw new UsageError(`${source}: expected a whole number, got '${raw}'`);
      }
      if (spec.min !== undefined && n < spec.min)
        throw new UsageError(`${source}: must be >= ${spec.min}, got ${n}`);
      if (spec.max !== undefined && n > spec.max)
        throw new UsageError(`${source}: must be <= ${spec.max}, got ${n}`);
      return n;
    }
    case 'string': {
      // Most often `--host "$HOST"` with HOST unset: an empty host listened on every interface.
      // (An empty environment variable never gets here: it counts as unset.)
      if (raw === '') throw new UsageError(`${source}: expected a value, got ''`);
      if (spec.choices && !spec.choices.includes(raw)) {
        throw new UsageError(`${source}: must be one of ${spec.choices.join('|')}, got '${raw}'`);
      }
      return raw;
    }
  }
}

/**
 * Parses argv (the arguments after the command words). Returns the options keyed by camelCase
 * name, plus `help: true` when --help/-h was given, and the positional arguments. With --help no
 * bad flag or environment variable raises: a bad value falls back to the default.
 */
export function parseOptions(
  command: CommandSpec,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): { options: ParsedOptions; positionals: string[]; help: boolean } {
  const byName = new Map(command.options.map((o) => [o.name, o]));
  const given = new Map<string, string | number | boolean>();
  const positionals: string[] = [];
  let help = false;
  // --help wins over anything wrong on the line or in the environment: someone who asks for help
  // (often because something was wrong) gets it, so the first error waits until the whole line
  // has been read.
  let argvError: UsageError | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const spec = byName.get(name);
    if (!spec) {
      argvError ??= new UsageError(`unknown option --${name} (see ${command.usage} --help)`);
      continue;
    }
    let raw: string;
    if (eq !== -1) raw = arg.slice(eq + 1);
    else if (spec.type === 'boolean') {
      // `--flag true|false` consumes the next word; a bare `--flag` means true.
      const next = argv[i + 1];
      if (next !== undefined && /^(true|false)$/i.test(next)) {
        raw = next;
        i++;
      } else raw = 'true';
    } else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && next.length > 2)) {
        argvError ??= new UsageError(`--${name} needs a value`);
        continue;
      }
      raw = next;
      i++;
    }
    try {
      given.set(name, coerce(spec, raw, `--${name}`));
    } catch (err) {
      if (!(err instanceof UsageError)) throw err;
      argvError ??= err;
    }
  }
  if (!help && argvError) throw argvError;
  // A stray word is a mistake (`router 9000`, `-p 9000`), not something to ignore silently.
  if (!help && command.positionals === undefined && positionals.length > 0) {
    throw new UsageError(`unexpected argument '${positionals[0]}' (see ${command.usage} --help)`);
  }
  const options: ParsedOptions = {};
  for (const spec of command.options) {
    let value = given.get(spec.name);
    if (value === undefined) {
      const fromEnv = env[envName(spec.name)];
      if (fromEnv === '' && spec.refuseEmptyEnv === true && !help) {
        throw new UsageError(`${envName(spec.name)} is set but empty: unset it, or give it a value`);
      }
      if (fromEnv !== undefined && fromEnv !== '') {
        try {
          value = coerce(spec, fromEnv, envName(spec.name));
        } catch (err) {
          // With --help the options are not used: a bad variable must not hide the help.
          if (!help || !(err instanceof UsageError)) throw err;
        }
      }
    }
    if (value === undefined) value = spec.default;
    options[camelCase(spec.name)] = value;
  }
  return { options, positionals, help };
}

/**
 * A number as decimal text that parseOptions reads back, for handing an option on to a child
 * process: String() writes 1e21 and up, and below 1e-6, with an exponent, which the parser refuses.
 * Exact from 1e-6 up; below, 20 decimals.
 */
export function decimalText(n: number): string {
  const text = String(n);
  if (!text.includes('e')) return text;
  return n.toLocaleString('en-US', { useGrouping: false, maximumFractionDigits: 20 });
}

export function formatHelp(command: CommandSpec): string {
  const lines = [`Usage: ${command.usage} ${command.positionals ?? '[options]'}`, ''];
  lines.push(command.summary, '', 'Options:');
  const rows = command.options.map((o) => {
    const flag = `--${o.name}${o.type === 'boolean' ? '' : ` <${o.choices ? o.choices.join('|') : o.type === 'string' ? 'value' : 'n'}>`}`;
    const bits = [o.help];
    if (o.default !== undefined) bits.push(`(default: ${String(o.default)})`);
    bits.push(`[env ${envName(o.name)}]`);
    return [flag, bits.join(' ')] as const;
  });
  rows.push(['-h, --help', 'show this help']);
  const width = Math.min(36, Math.max(...rows.map(([f]) => f.length)) + 2);
  for (const [flag, text] of rows) {
    lines.push(
      flag.length >= width ? `  ${flag}\n  ${' '.repeat(width)}${text}` : `  ${flag.padEnd(width)}${text}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/**
 * A comma-separated option value (`--workers 8,64`) as its items, in the given order, duplicates
 * dropped. Each item must be one of `choices`; an empty list or an unknown item is a UsageError.
 */
export function commaList<T extends string | number>(
  value: unknown,
  name: string,
  choices: readonly T[],
): T[] {
  const items: T[] = [];
  for (const raw of String(value ?? '').split(',')) {
    const word = raw.trim();
    if (word === '') continue;
    const item = choices.find((c) => String(c) === word);
    if (item === undefined) throw new UsageError(`--${name}: '${word}' is not one of ${choices.join(',')}`);
    if (!items.includes(item)) items.push(item);
  }
  if (items.length === 0) throw new UsageError(`--${name}: name at least one of ${choices.join(',')}`);
  return items;
}

/** A comma-separated list of whole numbers >= `min` (`--workers 8,64,512`); anything else is a UsageError. */
export function commaIntegers(value: unknown, name: string, min = 1): number[] {
  const items: number[] = [];
  for (const raw of String(value ?? '').split(',')) {
    const word = raw.trim();
    if (word === '') continue;
    if (!INTEGER.test(word) || Number(word) < min) {
      throw new UsageError(`--${name}: expected whole numbers >= ${min}, got '${word}'`);
    }
    if (!items.includes(Number(word))) items.push(Number(word));
  }
  if (items.length === 0) throw new UsageError(`--${name}: give at least one number`);
  return items;
}
