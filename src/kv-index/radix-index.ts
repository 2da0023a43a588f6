// The KV-cache prefix index fed by workers' KV events (src/protocols/kv-events.ts). Pure and
// synchronous: the router's I/O shell hands it each worker's events and asks it for matches.
//
// Semantics (Dynamo's KV router): a `stored` run hangs under `parent_hash`, which must be a block
// this worker holds (or null: the root); a `removed` block leaves the worker's set and, when no
// worker holds it any more, takes its whole subtree with it; `cleared` empties one worker.
// Sequence hashes name a node: they are a function of the prefix (CONTRACT §4), so one table maps
// a sequence hash to its node and "worker w's lookup" is that table plus w's bit on the node.
//
// Every event is validated completely before anything changes, so a malformed or inconsistent
// event is rejected (with a reason and a counter) and never leaves the tree half-updated.

import type { KvEvent } from '../protocols/kv-events.js';
import { describeRejected } from '../util/describe-rejected.js';
import type { IndexStats, PrefixIndex } from './prefix-index.js';
import { MatchScores, RadixTree, ROOT } from './radix-tree.js';
import type { BlockKeys } from './u64.js';
import { parseU64Into, u64String } from './u64.js';
import { WorkerSlots } from './worker-slots.js';

export type RejectReason =
  /** Not an object, or a field has the wrong type. */
  | 'malformed_event'
  /** event_id is not a non-negative safe integer. */
  | 'bad_event_id'
  | 'unknown_type'
  /** A hash is not a canonical unsigned 64-bit decimal string. */
  | 'bad_hash'
  /** More blocks in one event than `maxEventBlocks`. */
  | 'too_many_blocks'
  /** `stored` under a parent hash this worker does not hold. */
  | 'unknown_parent'
  /** A block already indexed under this prefix carries a different sequence hash. */
  | 'sequence_hash_mismatch'
  /** The sequence hash already names a different prefix. */
  | 'sequence_hash_conflict';

export type ApplyResult =
  | { status: 'applied' }
  /**
   * event_id > last applied + 1: events are missing. NOT applied and the last id stays, so the
   * index never holds a state with holes; resubscribe after `lastEventId` (the worker replays the
   * missing events or sends a dump for resetWorker). Later events keep answering `gap` until then.
   */
  | { status: 'gap'; expectedEventId: number; lastEventId: number }
  /** event_id <= the last applied id: ignored. */
  | { status: 'duplicate'; lastEventId: number }
  /** Not applied; the tree is unchanged. The id still counts as seen. */
  | { status: 'rejected'; reason: RejectReason; detail: string };

export interface RadixIndexStats extends IndexStats {
  rejected: Partial<Record<RejectReason, number>>;
  duplicates: number;
  gaps: number;
  /** `removed` hashes the worker did not hold (ignored). */
  unknownRemovals: number;
  /** Holdings that went with a subtree whose root no worker held any more. */
  droppedBlocks: number;
}

export interface RadixIndexOptions {
  /**
   * Memory budget in tree nodes (~60 bytes each) for all workers. Over it, workers holding more
   * than their fair share (evictToFraction × maxNodes / workers holding blocks) lose their least
   * recently used blocks, never below that share: one worker flooding stores evicts its own.
   */
  maxNodes?: number;
  /** Eviction brings the node count down to this fraction of maxNodes. */
  evictToFraction?: number;
  /** Largest `stored`/`removed` event accepted. */
  maxEventBlocks?: number;
  /**
   * Seed of the hash tables' slot mixing. Default: random per index, so workers cannot aim
   * hashes at one slot; fix it only to make probe lengths reproducible in tests.
   */
  hashSeed?: number;
}

export const DEFAULT_MAX_NODES = 1 << 22;
export const DEFAULT_MAX_EVENT_BLOCKS = 1 << 16;

const APPLIED: ApplyResult = { status: 'applied' };

class Rejection extends Error {
  constructor(
    readonly reason: RejectReason,
    detail: string,
  ) {
    super(detail);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A dump being applied in parts: `RadixIndex.beginReset`. */
export interface WorkerReset {
  /** Applies one part's events; returns how many were rejected. */
  apply(events: readonly unknown[]): number;
  /** The dump is complete: removes the holdings it did not mention, sets the last applied id. */
  finish(asOfEventId: number): void;
}

export class RadixIndex implements PrefixIndex {
  private readonly tree: RadixTree;
  private readonly slots = new WorkerSlots();
  private readonly lastEventIds: number[] = [];
  /** Bumped when a slot's worker is removed: a reset begun before belongs to a gone incarnation. */
  private readonly incarnations: number[] = [];
  private readonly maxNodes: number;
  private readonly evictTarget: number;
  private readonly maxEventBlocks: number;
  /** Parsed hashes of the event being applied: 4 u32 per block (local lo/hi, sequence lo/hi). */
  private scratch = new Uint32Array(4 * 64);
  /** Existing node per block of the `stored` event being applied (-1 = new). */
  private path = new Int32Array(64);
  private evicting = false;
  /** Nodes named by `stored` events while a reset applies a dump part. */
  private mentioned: Set<number> | undefined;
  private counters = {
    rejected: {} as Partial<Record<RejectReason, number>>,
    duplicates: 0,
    gaps: 0,
    unknownRemovals: 0,
    droppedBlocks: 0,
    evictedNodes: 0,
    evictedBlocks: 0,
  };

  constructor(options: RadixIndexOptions = {}) {
    this.maxNodes = options.maxNodes ?? DEFAULT_MAX_NODES;
    this.maxEventBlocks = options.maxEventBlocks ?? DEFAULT_MAX_EVENT_BLOCKS;
    const fraction = options.evictToFraction ?? 0.9;
    if (!(Number.isInteger(this.maxNodes) && this.maxNodes >= 1)) {
      throw new RangeError(`maxNodes must be a positive integer, got ${this.maxNodes}`);
    }
    if (!(fraction > 0 && fraction <= 1)) throw new RangeError(`evictToFraction must be in (0, 1]`);
    this.evictTarget = Math.floor(this.maxNodes * fraction);
    this.tree = new RadixTree((_node, _slot) => {
      if (this.evicting) this.counters.evictedBlocks++;
      else this.counters.droppedBlocks++;
    }, options.hashSeed);
  }

  // ---------------- events ----------------

  /** Applies one event from `workerId` (see ApplyResult for how ids are handled). */
  applyEvent(workerId: string, event: KvEvent | unknown): ApplyResult {
    if (!isObject(event)) return this.reject('malformed_event', 'event is not an object');
    const id = event.event_id;
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
      return this.reject('bad_event_id', `event_id must be a non-negative integer, got ${String(id)}`);
    }
    const slot = this.slotFor(workerId);
    const last = this.lastEventIds[slot]!;
    if (id <= last) {
      this.counters.duplicates++;
      return { status: 'duplicate', lastEventId: last };
    }
    if (id > last + 1) {
      this.counters.gaps++;
      return { status: 'gap', expectedEventId: last + 1, lastEventId: last };
    }
    this.lastEventIds[slot] = id;
    return this.applyBody(slot, event);
  }

  /**
   * Replaces everything known about `workerId` with a dump (`KvEventsChunk` of kind 'dump', or
   * `dump()` output): afterwards the worker holds exactly what the events describe, and its last
   * applied id is `asOfEventId`. Event ids inside the dump are ignored. Holdings the dump does not
   * mention are removed only after the dump is applied, so blocks the worker keeps never pass
   * through "held by nobody" (which would drop other workers' blocks beneath them).
   * Returns how many events were rejected.
   */
  resetWorker(workerId: string, events: readonly unknown[], asOfEventId: number): { rejected: number } {
    const reset = this.beginReset(workerId);
    const rejected = reset.apply(events);
    reset.finish(asOfEventId);
    return { rejected };
  }

  /**
   * `resetWorker` for a dump that arrives in parts (kv_events sends a large one in several
   * chunks): `apply` each part as it comes, then `finish` with its id. Until then the worker holds
   * what it held before plus what the parts added; an unfinished reset (the stream broke) removes
   * nothing. If the worker is removed meanwhile, the reset does nothing more (its slot may be
   * another worker's by then, or the same id's again after it came back).
   */
  beginReset(workerId: string): WorkerReset {
    const slot = this.slotFor(workerId);
    const incarnation = this.incarnations[slot]!;
    const before: number[] = [];
    this.tree.forEachHeldBy(slot, (node) => before.push(node));
    const mentioned = new Set<number>();
    let finished = false;
    // Any removal of the worker ends its incarnation, whoever holds the slot (or the id) afterwards.
    const current = () => !finished && this.incarnations[slot] === incarnation;
    return {
      apply: (events) => {
        if (!current()) return 0;
        this.mentioned = mentioned;
        let rejected = 0;
        try {
          for (const event of events) {
            const result = isObject(event)
              ? this.applyBody(slot, event)
              : this.reject('malformed_event', 'event is not an object');
            if (result.status === 'rejected') rejected++;
          }
        } finally {
          this.mentioned = undefined;
        }
        return rejected;
      },
      finish: (asOfEventId) => {
        if (!current()) return;
        finished = true;
        // A node dropped since `before` was taken (budget eviction) is dead or reused: removing
        // our holding of a reused node is a no-op unless a part stored it, and then it is mentioned.
        for (const node of before) {
          if (mentioned.has(node) || !this.tree.isLive(node)) continue;
          if (this.tree.removeHolder(node, slot) && this.tree.holderCountOf(node) === 0)
            this.tree.dropSubtree(node);
        }
        this.lastEventIds[slot] = Number.isSafeInteger(asOfEventId) && asOfEventId > 0 ? asOfEventId : 0;
      },
    };
  }

  /** The last event id applied (or seen) for the worker; 0 when none. */
  lastEventId(workerId: string): number {
    const slot = this.slots.slotOf.get(workerId);
    return slot === undefined ? 0 : this.lastEventIds[slot]!;
  }

  private applyBody(slot: number, event: Record<string, unknown>): ApplyResult {
    try {
      switch (event.type) {
        case 'stored':
          this.applyStored(slot, event);
          break;
        case 'removed':
          this.applyRemoved(slot, event);
          break;
        case 'cleared':
          this.tree.removeSlot(slot);
          break;
        default:
          throw new Rejection('unknown_type', `unknown event type ${describeRejected(event.type)}`);
      }
      return APPLIED;
    } catch (err) {
      if (err instanceof Rejection) return this.reject(err.reason, err.message);
      throw err;
    }
  }

  private reject(reason: RejectReason, detail: string): ApplyResult {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
    return { status: 'rejected', reason, detail };
  }

  private checkedArray(value: unknown, field: string): unknown[] {
    if (!Array.isArray(value)) throw new Rejection('malformed_event', `${field} must be an array`);
    if (value.length > this.maxEventBlocks) {
      throw new Rejection('too_many_blocks', `${value.length} ${field} > ${this.maxEventBlocks}`);
    }
    if (this.scratch.length < value.length * 4) this.scratch = new Uint32Array(value.length * 8);
    return value;
  }

  private applyStored(slot: number, event: Record<string, unknown>): void {
    const tree = this.tree;
    const blocks = this.checkedArray(event.blocks, 'blocks');
    const s = this.scratch;
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i];
      if (!isObject(block)) throw new Rejection('malformed_event', `blocks[${i}] is not an object`);
      if (!parseU64Into(block.local_hash, s, 4 * i) || !parseU64Into(block.sequence_hash, s, 4 * i + 2)) {
        throw new Rejection('bad_hash', `blocks[${i}] has a hash that is not a u64 decimal string`);
      }
    }
    let parent = ROOT;
    if (event.parent_hash !== null) {
      if (!parseU64Into(event.parent_hash, s, 4 * blocks.length)) {
        throw new Rejection('bad_hash', 'parent_hash is neither null nor a u64 decimal string');
      }
      parent = tree.findSeq(s[4 * blocks.length]!, s[4 * blocks.length + 1]!);
      if (parent === -1 || !tree.hasHolder(parent, slot)) {
        throw new Rejection('unknown_parent', `parent_hash ${event.parent_hash} is not held by this worker`);
      }
    }
    // Dry run: every block must either extend the tree or match the node already there exactly.
    // Remembers the existing nodes; once a block is new, all after it are new too.
    if (this.path.length < blocks.length) this.path = new Int32Array(blocks.length * 2);
    const path = this.path;
    let node = parent;
    for (let i = 0; i < blocks.length; i++) {
      const child = node === -1 ? -1 : tree.findChild(node, s[4 * i]!, s[4 * i + 1]!);
      if (child !== -1) {
        if (tree.seqLo[child] !== s[4 * i + 2] || tree.seqHi[child] !== s[4 * i + 3]) {
          throw new Rejection(
            'sequence_hash_mismatch',
            `blocks[${i}]: the indexed block has another sequence hash`,
          );
        }
      } else if (tree.findSeq(s[4 * i + 2]!, s[4 * i + 3]!) !== -1) {
        throw new Rejection('sequence_hash_conflict', `blocks[${i}]: sequence hash names another prefix`);
      }
      path[i] = child;
      node = child;
    }
    const tick = tree.nextTick();
    tree.touchUp(parent, tick);
    node = parent;
    for (let i = 0; i < blocks.length; i++) {
      let child = path[i]!;
      if (child === -1) {
        child = tree.createChild(node, s[4 * i]!, s[4 * i + 1]!);
        if (!tree.setSeq(child, s[4 * i + 2]!, s[4 * i + 3]!)) {
          // Only a sequence hash repeated inside this very event gets here. Undo the new node; the
          // blocks applied so far form a consistent prefix and stay.
          tree.dropSubtree(child);
          throw new Rejection('sequence_hash_conflict', `blocks[${i}]: sequence hash repeated in the event`);
        }
      }
      tree.addHolder(child, slot);
      tree.stamp(child, tick);
      this.mentioned?.add(child);
      node = child;
    }
    if (tree.nodeCount > this.maxNodes) this.evict();
  }

  private applyRemoved(slot: number, event: Record<string, unknown>): void {
    const tree = this.tree;
    const hashes = this.checkedArray(event.sequence_hashes, 'sequence_hashes');
    const s = this.scratch;
    for (let i = 0; i < hashes.length; i++) {
      if (!parseU64Into(hashes[i], s, 2 * i)) {
        throw new Rejection('bad_hash', `sequence_hashes[${i}] is not a u64 decimal string`);
      }
    }
    for (let i = 0; i < hashes.length; i++) {
      const node = tree.findSeq(s[2 * i]!, s[2 * i + 1]!);
      if (node === -1 || !tree.removeHolder(node, slot)) {
        this.counters.unknownRemovals++;
      } else if (tree.holderCountOf(node) === 0) {
        tree.dropSubtree(node);
      }
    }
  }

  private evict(): void {
    this.evicting = true;
    try {
      this.counters.evictedNodes += this.tree.evictTo(this.evictTarget);
    } finally {
      this.evicting = false;
    }
  }

  private slotFor(workerId: string): number {
    const slot = this.slots.acquire(workerId);
    this.tree.ensureSlot(slot);
    // Released slots were zeroed by removeWorker, so a reused slot starts from id 0.
    while (this.lastEventIds.length <= slot) this.lastEventIds.push(0);
    while (this.incarnations.length <= slot) this.incarnations.push(0);
    return slot;
  }

  // ---------------- queries ----------------

  findMatches(keys: BlockKeys): MatchScores {
    const { blocksBySlot, longest } = this.tree.match(keys);
    return new MatchScores(this.slots.slotOf, this.slots.idOfSlot, blocksBySlot, longest);
  }

  removeWorker(workerId: string): void {
    const slot = this.slots.slotOf.get(workerId);
    if (slot === undefined) return;
    this.tree.removeSlot(slot);
    this.slots.release(workerId);
    this.lastEventIds[slot] = 0;
    this.incarnations[slot]!++;
  }

  /** Worker ids known to the index. */
  workers(): string[] {
    return [...this.slots.slotOf.keys()];
  }

  /**
   * `stored` events (then at most one `removed`) that rebuild this worker's holdings, all with
   * event_id = the worker's last event id. Runs go parent-first along the tree. A block held
   * without its parent (possible after a middle block was removed while another worker keeps it)
   * is stored with its missing ancestors, which the trailing `removed` takes back; replaying that
   * needs the other holder to still be there. O(nodes).
   */
  dump(workerId: string): KvEvent[] {
    const slot = this.slots.slotOf.get(workerId);
    if (slot === undefined) return [];
    const tree = this.tree;
    const eventId = this.lastEventIds[slot]!;
    const events: KvEvent[] = [];
    const helpers = new Set<number>();
    const seqString = (node: number) => u64String(tree.seqLo[node]!, tree.seqHi[node]!);
    let run:
      | {
          event_id: number;
          type: 'stored';
          parent_hash: string | null;
          blocks: { local_hash: string; sequence_hash: string }[];
        }
      | undefined;
    let runTail = -1;
    const push = (node: number) => {
      run!.blocks.push({
        local_hash: u64String(tree.localLoOf(node), tree.localHiOf(node)),
        sequence_hash: seqString(node),
      });
      runTail = node;
    };
    const stack: number[] = [];
    for (let c = tree.firstChildOf(ROOT); c !== -1; c = tree.nextSiblingOf(c)) stack.push(c);
    while (stack.length > 0) {
      const node = stack.pop()!;
      for (let c = tree.firstChildOf(node); c !== -1; c = tree.nextSiblingOf(c)) stack.push(c);
      if (!tree.hasHolder(node, slot)) continue;
      const parent = tree.parentOf(node);
      if (run !== undefined && parent === runTail && run.blocks.length < this.maxEventBlocks) {
        push(node);
        continue;
      }
      // Start a new run under the nearest ancestor this worker holds (or the root).
      const missing: number[] = [];
      let anchor = parent;
      while (anchor !== ROOT && !tree.hasHolder(anchor, slot)) {
        missing.push(anchor);
        anchor = tree.parentOf(anchor);
      }
      run = {
        event_id: eventId,
        type: 'stored',
        parent_hash: anchor === ROOT ? null : seqString(anchor),
        blocks: [],
      };
      events.push(run);
      for (let i = missing.length - 1; i >= 0; i--) {
        push(missing[i]!);
        helpers.add(missing[i]!);
      }
      push(node);
    }
    if (helpers.size > 0) {
      events.push({ event_id: eventId, type: 'removed', sequence_hashes: [...helpers].map(seqString) });
    }
    return events;
  }

  /** Slots read by the slowest successful lookup in each hash table (diagnostics; O(table size)). */
  longestProbes(): { child: number; seq: number } {
    return this.tree.longestProbes();
  }

  stats(): RadixIndexStats {
    return {
      ...this.tree.stats(this.slots.slotOf, this.counters),
      rejected: { ...this.counters.rejected },
      duplicates: this.counters.duplicates,
      gaps: this.counters.gaps,
      unknownRemovals: this.counters.unknownRemovals,
      droppedBlocks: this.counters.droppedBlocks,
    };
  }
}
