// Shared by the kv-index tests: a seeded PRNG, prompts that share prefixes, and a way to give a
// worker a prompt's blocks in either index (events for RadixIndex, credits for ApproxIndex).

import {
  ApproxIndex,
  computeBlockHashes,
  localBlockKeys,
  type PrefixIndex,
  RadixIndex,
} from '../src/kv-index/index.js';
import type { KvEvent } from '../src/protocols/kv-events.js';
import { seededRng as prng } from '../src/util/seeded-rng.js';

export { prng };

/** `blocks` blocks of `blockSize` distinct-looking tokens derived from `seed`. */
export function tokensOf(seed: number, blocks: number, blockSize = 16): number[] {
  const random = prng(seed);
  return Array.from({ length: blocks * blockSize }, () => Math.floor(random() * 200_000));
}

/** The `stored` event that gives a worker all full blocks of `tokens` from the root. */
export function storedEvent(eventId: number, tokens: number[], blockSize = 16): KvEvent {
  const { local, sequence } = computeBlockHashes(tokens, blockSize);
  return {
    event_id: eventId,
    type: 'stored',
    parent_hash: null,
    blocks: [...local].map((l, i) => ({ local_hash: String(l), sequence_hash: String(sequence[i]) })),
  };
}

export interface IndexHarness<I extends PrefixIndex = PrefixIndex> {
  name: string;
  create(): I;
  /** Makes `workerId` hold every full block of `tokens` (block size 16). */
  give(index: I, workerId: string, tokens: number[]): void;
}

export const radixHarness = (): IndexHarness<RadixIndex> => ({
  name: 'RadixIndex',
  create: () => new RadixIndex(),
  give(index, workerId, tokens) {
    const result = index.applyEvent(workerId, storedEvent(index.lastEventId(workerId) + 1, tokens));
    if (result.status !== 'applied') throw new Error(`stored not applied: ${JSON.stringify(result)}`);
  },
});

export const approxHarness = (): IndexHarness<ApproxIndex> => ({
  name: 'ApproxIndex',
  create: () => new ApproxIndex({ now: () => 0 }),
  give(index, workerId, tokens) {
    index.credit(workerId, localBlockKeys(tokens, 16));
  },
});
