// Child process of `kvroute bench transport`: serves the same work (echo a small payload; stream
// N small chunks) over one of three transports, so client and server do not share an event loop.
// argv: <tcp|http|raw> <chunks> <chunkBytes>. Prints its port on stdout, then serves until killed.
//
// raw wire (the practical limit, no multiplexing): request u32 len | u8 op | body (op 1 echo,
// op 2 stream); responses u32 len | body, answered strictly in order.

import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { ByteQueue } from '../src/tcp/byte-queue.js';
import { RequestPlaneServer } from '../src/tcp/index.js';

const [kind, chunksArg, chunkBytesArg] = process.argv.slice(2);
const chunks = Number(chunksArg);
const chunk = Buffer.alloc(Number(chunkBytesArg), 0x61);

function lengthPrefixed(body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

async function serve(): Promise<number> {
  if (kind === 'tcp') {
    const server = new RequestPlaneServer();
    server.handle('echo', async (req) => req.payload);
    server.handle('stream', async function* () {
      for (let i = 0; i < chunks; i++) yield chunk;
    });
    return (await server.listen()).port;
  }
  if (kind === 'http') {
    const server = createHttpServer({ keepAliveTimeout: 60_000 }, (req, res) => {
      const body: Buffer[] = [];
      req.on('data', (c: Buffer) => body.push(c));
      req.on('end', () => {
        if (req.url === '/stream') {
          res.writeHead(200, { 'content-type': 'application/octet-stream' });
          for (let i = 0; i < chunks; i++) res.write(chunk);
          res.end();
        } else {
          const payload = Buffer.concat(body);
          res.writeHead(200, { 'content-length': payload.length });
          res.end(payload);
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as { port: number }).port;
  }
  const streamReply = Buffer.concat(Array.from({ length: chunks }, () => lengthPrefixed(chunk)));
  const server = createNetServer({ noDelay: true }, (socket) => {
    const q = new ByteQueue();
    socket.on('data', (c: Buffer) => {
      q.push(c);
      const out: Buffer[] = [];
      while (q.length >= 5 && q.length >= 5 + q.readUInt32BE(0)) {
        const len = q.readUInt32BE(0);
        const op = q.readUInt8(4);
        q.skip(5);
        const body = q.take(len);
        out.push(op === 2 ? streamReply : lengthPrefixed(body));
      }
      if (out.length > 0) socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

// A clean exit on SIGTERM lets `node --cpu-prof` write the server's profile.
process.on('SIGTERM', () => process.exit(0));

serve().then(
  (port) => process.stdout.write(`${port}\n`),
  (err: unknown) => {
    process.stderr.write(`transport-server: ${String(err)}\n`);
    process.exit(1);
  },
);
