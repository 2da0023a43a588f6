// Progress of a long bench on stderr: a redrawn bar when stderr is a terminal, otherwise one
// plain line every `lineEveryMs` (logs and CI stay readable). stdout is left to the results.

export interface ProgressOptions {
  stream?: NodeJS.WriteStream;
  /** Non-TTY: at most one line per this many ms (default 5000). */
  lineEveryMs?: number;
  now?: () => number;
}

/** `label [#####.....] 42/100  12.3s  extra` — the bar and counts for one redraw. */
export function formatProgress(
  label: string,
  done: number,
  total: number,
  elapsedMs: number,
  extra = '',
  width = 30,
): string {
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  const filled = Math.round(frac * width);
  const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
  return `${label} [${bar}] ${done}/${total}  ${(elapsedMs / 1000).toFixed(1)}s${extra ? `  ${extra}` : ''}`;
}

export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private readonly lineEveryMs: number;
  private readonly now: () => number;
  private readonly start: number;
  private lastDraw = -Infinity;
  private lastDrawnDone = -1;
  private done = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
    opts: ProgressOptions = {},
  ) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    this.lineEveryMs = opts.lineEveryMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.start = this.now();
  }

  /** Counts `n` more finished units; redraws at most 10 times a second (TTY). */
  tick(n = 1, extra = ''): void {
    this.done += n;
    const t = this.now();
    if (t - this.lastDraw < (this.tty ? 100 : this.lineEveryMs) && this.done < this.total) return;
    this.lastDraw = t;
    this.draw(extra);
  }

  /** Final state on its own line. */
  finish(extra = ''): void {
    // A plain-line stream already shows the final count when the last tick drew it.
    if (this.tty || this.lastDrawnDone !== this.done || extra) this.draw(extra);
    if (this.tty) this.stream.write('\n');
  }

  private draw(extra: string): void {
    this.lastDrawnDone = this.done;
    const line = formatProgress(this.label, this.done, this.total, this.now() - this.start, extra);
    this.stream.write(this.tty ? `\r\x1b[2K${line}` : `${line}\n`);
  }
}
