// What the scheduler needs from either index (event-fed RadixIndex or ApproxIndex), so it can use
// one without knowing which.

import type { MatchScores } from './radix-tree.js';
import type { BlockKeys } from './u64.js';

export interface IndexStats {
  /** Workers known to the index. */
  workers: number;
  /** Blocks held, summed over workers (a block two workers hold counts twice). */
  blocks: number;
  blocksPerWorker: Record<string, number>;
  /** Tree nodes (distinct block prefixes). */
  nodes: number;
  /** Bytes of the index's typed arrays (allocated capacity). */
  approxBytes: number;
  /** Nodes removed by the memory budget (RadixIndex) or the size budget (ApproxIndex). */
  evictedNodes: number;
  /** Holdings removed by the budget. */
  evictedBlocks: number;
}

export interface PrefixIndex {
  /**
   * For each worker, how many leading blocks of the prompt (keys from `localBlockKeys`) it holds.
   * Valid until the index is next changed.
   */
  findMatches(keys: BlockKeys): MatchScores;
  /** Forgets a worker and everything it holds. */
  removeWorker(workerId: string): void;
  stats(): IndexStats;
}
