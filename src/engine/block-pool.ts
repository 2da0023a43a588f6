// The KV block pool: a fixed number of blocks, some holding cached prompt prefixes keyed by their
// sequence hash (so a later prompt sharing the prefix skips that prefill), the rest anonymous
// (partial tails and decode space held by running sequences). Cached blocks are refcounted by the
// sequences using them; at zero refs they wait in an LRU evictor and are reclaimed, oldest first,
// only when a new block needs the room. Every change a router must know about goes to the event log:
// `stored` when a block's KV exists, `removed` when it is evicted, `cleared` when the cache is reset.

import { LRUCache } from 'lru-cache';
import type { StoredBlock } from '../protocols/kv-events.js';
import type { KvEventBody, KvEventLog } from './event-log.js';

export interface CachedBlock {
  readonly sequenceHash: bigint;
  readonly localHash: bigint;
  /** Sequence hash of the previous block of the prompt; null for a prompt's first block. */
  readonly parentHash: bigint | null;
  /** Sequences holding this block. */
  refs: number;
  /** Its KV exists (a `stored` event went out); false while the owning prefill is still computing it. */
  computed: boolean;
}

export class KvBlockPool {
  /** Every hashed block, referenced or evictable. */
  private readonly blocks = new Map<bigint, CachedBlock>();
  /** Computed, unreferenced blocks in least-recently-released order. Never auto-evicts: we pop. */
  private readonly evictable: LRUCache<bigint, CachedBlock>;
  private anonymous = 0;

  constructor(
    readonly capacity: number,
    private readonly events: KvEventLog,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('KV pool capacity must be >= 1');
    this.evictable = new LRUCache<bigint, CachedBlock>({ max: capacity });
  }

  /** Blocks held by running sequences (hashed with refs > 0, plus anonymous). */
  get usedBlocks(): number {
    return this.blocks.size - this.evictable.size + this.anonymous;
  }

  /** Blocks a new sequence could take now: never-used ones plus evictable cached ones. */
  get availableBlocks(): number {
    return this.capacity - this.usedBlocks;
  }

  /** Computed blocks in the pool (the prefix cache), referenced or not. */
  get cachedBlocks(): number {
    let n = 0;
    for (const b of this.blocks.values()) if (b.computed) n++;
    return n;
  }

  get(sequenceHash: bigint): CachedBlock | undefined {
    return this.blocks.get(sequenceHash);
  }

  /** Takes a reference on a block already in the pool (a cache hit). O(1). */
  acquire(block: CachedBlock): void {
    if (block.refs++ === 0) this.evictable.delete(block.sequenceHash);
  }

  /** Allocates a new hashed block with one reference, evicting if needed. Caller checked availableBlocks. */
  allocate(sequenceHash: bigint, localHash: bigint, parentHash: bigint | null): CachedBlock {
    this.ensureFree(1);
    const block: CachedBlock = { sequenceHash, localHash, parentHash, refs: 1, computed: false };
    this.blocks.set(sequenceHash, block);
    return block;
  }

  /** Reserves `n` anonymous blocks, evicting if needed. Caller checked availableBlocks. */
  reserveAnonymous(n: number): void {
    this.ensureFree(n);
    this.anonymous += n;
  }

  releaseAnonymous(n: number): void {
    this.anonymous -= n;
  }

  /**
   * Drops one reference on each block. Released in reverse so a prompt's tail is evicted before its
   * head (the head is the prefix other prompts are likeliest to share). A block that never got
   * computed (its prefill was cancelled) is freed outright: nobody was told it existed.
   */
  release(blocks: readonly CachedBlock[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) {
      const block = blocks[i]!;
      if (--block.refs > 0) continue;
      if (block.computed) this.evictable.set(block.sequenceHash, block);
      else this.blocks.delete(block.sequenceHash);
    }
  }

  /**
   * Marks blocks (in prompt order) as computed and emits one `stored` event per contiguous run of
   * newly computed blocks. Blocks already computed (by another sequence) are skipped.
   */
  markComputed(blocks: readonly CachedBlock[]): void {
    let run: CachedBlock[] = [];
    const flush = () => {
      if (run.length > 0) this.events.append(storedEvent(run));
      run = [];
    };
    for (const block of blocks) {
      if (block.computed) {
        flush();
        continue;
      }
      block.computed = true;
      const prev = run[run.length - 1];
      if (prev !== undefined && block.parentHash !== prev.sequenceHash) flush();
      run.push(block);
    }
    flush();
  }

  /**
   * The whole prefix cache as `stored` events, parents before children, each maximal single-child
   * chain as one event. O(cached blocks).
   */
  dump(): KvEventBody[] {
    const children = new Map<bigint, CachedBlock[]>();
    const roots: CachedBlock[] = [];
    for (const block of this.blocks.values()) {
      if (!block.computed) continue;
      const parent = block.parentHash === null ? undefined : this.blocks.get(block.parentHash);
      if (parent?.computed) {
        const list = children.get(parent.sequenceHash);
        if (list) list.push(block);
        else children.set(parent.sequenceHash, [block]);
      } else roots.push(block);
    }
    const out: KvEventBody[] = [];
    const stack = roots.reverse();
    while (stack.length > 0) {
      const run = [stack.pop()!];
      for (;;) {
        const next = children.get(run[run.length - 1]!.sequenceHash);
        if (next === undefined) break;
        if (next.length !== 1) {
          for (let i = next.length - 1; i >= 0; i--) stack.push(next[i]!);
          break;
        }
        run.push(next[0]!);
      }
      out.push(storedEvent(run));
    }
    return out;
  }

  /** Forgets every cached block (only when no sequence holds one) and emits `cleared`. */
  clear(): void {
    if (this.usedBlocks > 0) throw new Error('cannot clear the KV cache while sequences hold blocks');
    this.blocks.clear();
    this.evictable.clear();
    this.events.append({ type: 'cleared' });
  }

  /**
   * Evicts least-recently-released blocks until `n` blocks are free, announcing them in one
   * `removed` event. Callers about to allocate several blocks call it once with the total.
   */
  ensureFree(n: number): void {
    const removed: string[] = [];
    while (this.capacity - this.blocks.size - this.anonymous < n) {
      const victim = this.evictable.pop();
      if (victim === undefined) throw new Error('KV pool exhausted: admission should have prevented this');
      this.blocks.delete(victim.sequenceHash);
      removed.push(victim.sequenceHash.toString());
    }
    if (removed.length > 0) this.events.append({ type: 'removed', sequence_hashes: removed });
  }
}

function storedEvent(run: readonly CachedBlock[]): KvEventBody {
  const parent = run[0]!.parentHash;
  return {
    type: 'stored',
    parent_hash: parent === null ? null : parent.toString(),
    blocks: run.map(
      (b): StoredBlock => ({ local_hash: b.localHash.toString(), sequence_hash: b.sequenceHash.toString() }),
    ),
  };
}
