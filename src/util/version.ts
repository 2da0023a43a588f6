// kvroute's version, from its package.json: `kvroute --version`, and what an operator quotes in a
// bug report. The file is found by walking up from this module, because the module runs from two
// depths: src/util (tsx, the tests) and dist/src/util (the built CLI).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The `version` of the nearest package.json named kvroute above this module. */
export function kvrouteVersion(): string {
  if (cached !== undefined) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'kvroute' && typeof pkg.version === 'string') {
        cached = pkg.version;
        return cached;
      }
    } catch {
      // No package.json here (or not ours): keep walking up.
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('kvroute: its package.json was not found above its modules');
    dir = parent;
  }
}
