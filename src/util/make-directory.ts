// Makes a directory and its missing parents, one level at a time. Node 20's own
// `mkdir(path, {recursive: true})` never returns when the kernel answers ENOENT for a path whose
// parent exists (as /proc and sysfs do): it takes the ENOENT for a missing parent and loops. Here
// a level is made only after its parent is known to exist, so that answer is reported, not retried.

import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** Creates `path` (and missing parents); succeeds if it is already a directory. Rejects with the system's error otherwise. */
export async function makeDirectory(path: string): Promise<void> {
  const target = resolve(path);
  try {
    await mkdir(target);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if ((await stat(target)).isDirectory()) return;
      throw err;
    }
    const parent = dirname(target);
    if (code !== 'ENOENT' || parent === target) throw err;
    await makeDirectory(parent);
  }
  // The parent exists now: an error here (ENOENT again, from /proc) is the final answer.
  try {
    await mkdir(target);
  } catch (err) {
    // Made by someone else between the two calls.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await stat(target)).isDirectory()) throw err;
  }
}
