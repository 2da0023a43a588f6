// Child process of `kvroute bench routing`: N zero-latency workers in one process, each a
// request-plane server on its own port. `generate` answers at once (the prompt accounting and
// the first token in one chunk, the remaining tokens in a second); `kv_events` is an idle
// subscription (no blocks are ever stored); `load` and `health` answer at once. So any latency
// measured through them is the router's and the transport's, not an engine's.
// argv: <count>. Prints the ports as a JSON array on stdout, then serves until SIGTERM.

import { ENDPOINTS, type GenerateChunk, type GenerateRequest } from '../src/protocols/worker-plane.js';
import { decodeJson, encodeJson, RequestPlaneServer } from '../src/tcp/index.js';

const count = Number(process.argv[2] ?? 1);
const servers: RequestPlaneServer[] = [];

const LOAD = encodeJson({
  active_prefill_tokens: 0,
  active_decode_blocks: 0,
  used_blocks: 0,
  total_blocks: 16384,
  running: 0,
  waiting: 0,
});

async function* generate(payload: Buffer): AsyncIterable<Uint8Array> {
  const req = decodeJson(payload) as GenerateRequest;
  const n = Math.max(1, req.max_tokens);
  const first: GenerateChunk = {
    token_ids: [1000],
    finish_reason: n === 1 ? 'length' : null,
    prompt_tokens: req.token_ids.length,
    cached_tokens: 0,
  };
  yield encodeJson(first);
  if (n > 1) {
    const rest: GenerateChunk = { token_ids: new Array<number>(n - 1).fill(1001), finish_reason: 'length' };
    yield encodeJson(rest);
  }
}

async function* idleKvEvents(signal: AbortSignal): AsyncIterable<Uint8Array> {
  // A subscription that never has events: it ends when the router cancels it or the server closes.
  if (!signal.aborted)
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  yield* [];
}

async function main(): Promise<void> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) {
    const server = new RequestPlaneServer();
    server.handle(ENDPOINTS.generate, (req) => generate(req.payload));
    server.handle(ENDPOINTS.kvEvents, (req) => idleKvEvents(req.signal));
    server.handle(ENDPOINTS.load, async () => LOAD);
    server.handle(ENDPOINTS.health, async () => encodeJson({ ok: true, worker_id: null, role: 'both' }));
    ports.push((await server.listen()).port);
    servers.push(server);
  }
  process.stdout.write(`${JSON.stringify(ports)}\n`);
}

process.on('SIGTERM', () => {
  void Promise.all(servers.map((s) => s.close())).finally(() => process.exit(0));
});

main().catch((err: unknown) => {
  process.stderr.write(`zero-worker: ${String(err)}\n`);
  process.exit(1);
});
