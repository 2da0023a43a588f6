// The approximate index for workers that publish no KV events: after routing, the chosen worker is
// credited with the request's blocks for a TTL (default 120 s), on the assumption that it now
// caches them. Same tree and same findMatches as RadixIndex, so the scheduler can use either.
//
// Expiry without a timer per block: every holding (node, worker) has one entry in an
// insertion-ordered Map whose value is its expiry time; a re-credit deletes and re-inserts the
// entry, so with one TTL for all, Map order IS expiry order and expiring means popping from the
// front until the first live entry: O(expired). The clock is injected (`now`) and read only on
// credit and findMatches. Over the size budget (default 2^20 holdings) the oldest credits go
// first, down to 80% of the budget.

import type { IndexStats, PrefixIndex } from './prefix-index.js';
import { MatchScores, RadixTree, ROOT } from './radix-tree.js';
import type { BlockKeys } from './u64.js';
import { WorkerSlots } from './worker-slots.js';

export interface ApproxIndexOptions {
  /** How long a credit lasts (ms). */
  ttlMs?: number;
  /** Holdings budget across all workers. */
  maxBlocks?: number;
  /** Pruning brings the holdings down to this fraction of maxBlocks. */
  pruneToFraction?: number;
  /** Clock in ms (monotonic); defaults to performance.now. */
  now?: () => number;
}

export interface ApproxIndexStats extends IndexStats {
  expiredBlocks: number;
}

export const DEFAULT_APPROX_TTL_MS = 120_000;
export const DEFAULT_APPROX_MAX_BLOCKS = 1 << 20;

/** Holding key = node * SLOT_SPACE + slot (exact in a double for node ids below 2^37). */
const SLOT_SPACE = 65536;

export class ApproxIndex implements PrefixIndex {
  private readonly tree: RadixTree;
  private readonly slots = new WorkerSlots();
  /** Holding key -> expiry time, in expiry order. */
  private readonly expiry = new Map<number, number>();
  private readonly ttlMs: number;
  private readonly maxBlocks: number;
  private readonly pruneTarget: number;
  private readonly now: () => number;
  private counters = { expiredBlocks: 0, evictedNodes: 0, evictedBlocks: 0 };
  /** Node ids of the path being credited. */
  private path = new Int32Array(64);

  constructor(options: ApproxIndexOptions = {}) {
    this.ttlMs = options.ttlMs ?? DEFAULT_APPROX_TTL_MS;
    this.maxBlocks = options.maxBlocks ?? DEFAULT_APPROX_MAX_BLOCKS;
    this.now = options.now ?? (() => performance.now());
    if (!(this.ttlMs > 0)) throw new RangeError(`ttlMs must be > 0, got ${this.ttlMs}`);
    if (!(Number.isInteger(this.maxBlocks) && this.maxBlocks >= 1)) {
      throw new RangeError(`maxBlocks must be a positive integer, got ${this.maxBlocks}`);
    }
    const fraction = options.pruneToFraction ?? 0.8;
    if (!(fraction > 0 && fraction <= 1)) throw new RangeError('pruneToFraction must be in (0, 1]');
    this.pruneTarget = Math.floor(this.maxBlocks * fraction);
    // Holdings that vanish with a dropped subtree lose their expiry entry too.
    this.tree = new RadixTree((node, slot) => this.expiry.delete(node * SLOT_SPACE + slot));
  }

  /** Credits `workerId` with the leading blocks `keys` (from localBlockKeys) for one TTL. */
  credit(workerId: string, keys: BlockKeys): void {
    const now = this.now();
    this.expire(now);
    const slot = this.slots.acquire(workerId);
    if (slot >= SLOT_SPACE) throw new RangeError('too many workers for the approximate index');
    const tree = this.tree;
    tree.ensureSlot(slot);
    const tick = tree.nextTick();
    const expiresAt = now + this.ttlMs;
    const blocks = keys.length >>> 1;
    if (this.path.length < blocks) this.path = new Int32Array(blocks * 2);
    let node = ROOT;
    for (let i = 0; i < blocks; i++) {
      node = tree.childOrCreate(node, keys[2 * i]!, keys[2 * i + 1]!);
      tree.addHolder(node, slot);
      tree.stamp(node, tick);
      this.path[i] = node;
    }
    // Deepest first, so that pruning (oldest entries first) trims a credit from its tail and
    // keeps its prefix, which is what later prompts share.
    for (let i = blocks - 1; i >= 0; i--) {
      const key = this.path[i]! * SLOT_SPACE + slot;
      this.expiry.delete(key);
      this.expiry.set(key, expiresAt);
    }
    if (this.expiry.size > this.maxBlocks) this.prune();
  }

  findMatches(keys: BlockKeys): MatchScores {
    this.expire(this.now());
    const { blocksBySlot, longest } = this.tree.match(keys);
    return new MatchScores(this.slots.slotOf, this.slots.idOfSlot, blocksBySlot, longest);
  }

  removeWorker(workerId: string): void {
    const slot = this.slots.slotOf.get(workerId);
    if (slot === undefined) return;
    for (const key of this.expiry.keys()) if (key % SLOT_SPACE === slot) this.expiry.delete(key);
    this.tree.removeSlot(slot);
    this.slots.release(workerId);
  }

  /** Drops every credit whose time is up. O(expired). */
  private expire(now: number): void {
    for (const [key, expiresAt] of this.expiry) {
      if (expiresAt > now) break;
      this.counters.expiredBlocks++;
      this.removeHolding(key);
    }
  }

  /** Oldest credits first, down to the prune target. */
  private prune(): void {
    const before = this.expiry.size;
    const nodesBefore = this.tree.nodeCount;
    for (const key of this.expiry.keys()) {
      if (this.expiry.size <= this.pruneTarget) break;
      this.removeHolding(key);
    }
    this.counters.evictedBlocks += before - this.expiry.size;
    this.counters.evictedNodes += nodesBefore - this.tree.nodeCount;
  }

  private removeHolding(key: number): void {
    this.expiry.delete(key);
    const slot = key % SLOT_SPACE;
    const node = (key - slot) / SLOT_SPACE;
    if (this.tree.removeHolder(node, slot) && this.tree.holderCountOf(node) === 0)
      this.tree.dropSubtree(node);
  }

  stats(): ApproxIndexStats {
    const base = this.tree.stats(this.slots.slotOf, this.counters);
    return {
      ...base,
      approxBytes: base.approxBytes + this.expiry.size * 40,
      expiredBlocks: this.counters.expiredBlocks,
    };
  }
}
