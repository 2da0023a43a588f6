// Fixture for tcp-failures.test.ts (not a test): a request-plane server in its own process, so the
// test can SIGKILL it mid-stream. Prints its port on stdout.

import { setTimeout as sleep } from 'node:timers/promises';
import { RequestPlaneServer } from '../src/tcp/index.js';

const server = new RequestPlaneServer();
server.handle('slow', async function* () {
  for (let i = 0; ; i++) {
    yield Buffer.from(String(i));
    await sleep(20);
  }
});
server.handle('silent', () => new Promise<Uint8Array>(() => {}));
const { port } = await server.listen();
process.stdout.write(`${port}\n`);
