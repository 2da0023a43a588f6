// Structured logs for the worker: one JSON object per line on stderr, only when enabled (workers
// are quiet by default: the start line on stdout, and the router-lease notices on stderr, are all they print).

export type Log = (event: string, fields?: Record<string, unknown>) => void;

export function createLog(enabled: boolean, base: Record<string, unknown> = {}): Log {
  if (!enabled) return () => {};
  return (event, fields = {}) => {
    process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), event, ...base, ...fields })}\n`);
  };
}
