// The radix tree both indexes share: one node per distinct block prefix, children keyed by the
// block's local hash, and per node the set of worker slots holding that block. Everything lives in
// typed arrays (struct of arrays, node ids are indexes), so a million blocks cost a few dozen bytes
// each and the garbage collector never walks them.
//
// Holder sets: a node held by one worker stores the slot inline; two or more get a bitset row of
// `words` u32 over the worker slots. findMatches walks the prompt's path once and intersects the
// still-matching set with each node's holders word by word, so scoring W workers on an m-block
// prompt costs O(m × W/32) word operations, not O(m × W).
//
// Recency: `lastUsed` is a tick stamped on every matched or stored node and kept monotone (an
// ancestor's tick is never older than a descendant's), so a worker's least recently used holdings
// are the tails of its runs, and a node evicted for age takes only older nodes with it.

import type { IndexStats } from './prefix-index.js';
import type { BlockKeys } from './u64.js';

const EMPTY = -1;
/** `parent` of a node on the free list. */
const FREE = -2;
export const ROOT = 0;

// Fields of a node record: rec[node * STRIDE + FIELD]. Hash halves are stored as int32 (| 0).
const STRIDE = 8;
const PARENT = 0;
const LOCAL_LO = 1;
const LOCAL_HI = 2;
const FIRST_CHILD = 3;
const NEXT_SIBLING = 4;
const HOLDER_COUNT = 5;
/** The holding slot when the count is 1, the bitset row when it is 2 or more. */
const HOLDER = 6;
/** Recency tick (see nextTick). */
const LAST_USED = 7;

// `flags` bits.
/** Registered in the sequence-hash table. */
const HAS_SEQ = 1;
/**
 * Registered in the child table. An only child is not: findChild checks the first child directly,
 * and a parent's children all enter the table when it gets a second one. Chains, most of the
 * tree, thus cost no table entry.
 */
const IN_CHILD_TABLE = 2;

/**
 * The murmur3 32-bit finalizer: every input bit flips each output bit with probability about ½.
 * The tables hash worker-chosen values through it, keyed by a per-tree random seed, so a worker
 * cannot pick hashes that share a home slot (see tableHome).
 */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * Home of a 64-bit key (lo, hi) under `seed`. Each word passes through the finalizer on its own,
 * after the seed (or the first word's mix) is folded in, so no choice of words cancels out
 * independently of the seed. A plain `lo ^ imul(hi, c)` let a worker send hashes equal in their
 * low bits and pile them onto one slot: every lookup then probed the whole pile.
 */
function keyHash(seed: number, lo: number, hi: number): number {
  return fmix32(fmix32(lo ^ seed) ^ hi);
}

/** A fresh seed per tree: the homes it gives are unknown outside this process. */
function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/** Scores of one findMatches call: for each worker, how many leading blocks of the prompt it holds. */
export class MatchScores {
  /**
   * @param slotOf the index's worker-id → slot map (read at `get` time: use the scores before
   *   the next removeWorker)
   * @param blocksBySlot leading blocks held, by worker slot
   */
  constructor(
    private readonly slotOf: ReadonlyMap<string, number>,
    private readonly idOfSlot: readonly (string | undefined)[],
    readonly blocksBySlot: Int32Array,
    /** The most leading blocks any worker holds. */
    readonly longest: number,
  ) {}

  /** Leading blocks `workerId` holds; undefined when none (the scheduler's OverlapSource). */
  get(workerId: string): number | undefined {
    if (this.longest === 0) return undefined;
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return undefined;
    const blocks = this.blocksBySlot[slot];
    return blocks !== undefined && blocks > 0 ? blocks : undefined;
  }

  /** Workers holding at least one leading block, with their counts. */
  *entries(): IterableIterator<[string, number]> {
    for (let slot = 0; slot < this.blocksBySlot.length; slot++) {
      const blocks = this.blocksBySlot[slot]!;
      if (blocks > 0) yield [this.idOfSlot[slot]!, blocks];
    }
  }

  toMap(): Map<string, number> {
    return new Map(this.entries());
  }
}

function grownInt32(old: Int32Array<ArrayBuffer>, capacity: number, fill: number): Int32Array<ArrayBuffer> {
  const next = new Int32Array(capacity);
  next.set(old);
  if (fill !== 0) next.fill(fill, old.length);
  return next;
}

function grownUint32(old: Uint32Array<ArrayBuffer>, capacity: number): Uint32Array<ArrayBuffer> {
  const next = new Uint32Array(capacity);
  next.set(old);
  return next;
}

/** A holding vanished because its subtree was dropped or evicted (not by an explicit removal). */
export type DropListener = (node: number, slot: number) => void;

/** `scores[slot] = depth` for each slot whose bit is set in `bits`, word `w` of a slot bitset. */
function scoreBits(scores: Int32Array, w: number, bits: number, depth: number): void {
  while (bits !== 0) {
    const low = bits & -bits;
    scores[w * 32 + 31 - Math.clz32(low)] = depth;
    bits ^= low;
  }
}

export class RadixTree {
  // ---- nodes (index = node id; node 0 is the root) ----
  capacity = 0;
  /** Hot fields, STRIDE int32 per node. */
  rec = new Int32Array(0);
  prevSibling = new Int32Array(0);
  seqLo = new Uint32Array(0);
  seqHi = new Uint32Array(0);
  /** HAS_SEQ | IN_CHILD_TABLE bits per node. */
  flags = new Uint8Array(0);
  /** Live nodes, root excluded. */
  nodeCount = 0;
  private freeHead = EMPTY;
  private highWater = 1;

  // ---- holder bitsets: rows of `words` u32 ----
  words = 1;
  sets = new Uint32Array(0);
  private rowCapacity = 0;
  private freeRows: number[] = [];
  private rowsUsed = 0;

  // ---- child table: (parent, localLo, localHi) -> node; linear probing ----
  private childTable = new Int32Array(0);
  private childMask = 0;
  private childEntries = 0;
  // ---- sequence-hash table: (seqLo, seqHi) -> node ----
  private seqTable = new Int32Array(0);
  private seqMask = 0;
  private seqCount = 0;

  /** Blocks (holdings) per worker slot. */
  blocksBySlot = new Float64Array(0);
  totalBlocks = 0;
  tick = 1;
  private activeSet = new Uint32Array(1);
  /** A holder row copied for forEachHolder. */
  private holderScratch = new Uint32Array(1);

  /**
   * @param onDrop told of every holding dropped with a subtree
   * @param seed keys the child and sequence-hash tables' homes (random unless a test fixes it)
   */
  constructor(
    private readonly onDrop?: DropListener,
    private readonly seed = randomSeed(),
  ) {
    this.growNodes(1024);
    this.childTable = new Int32Array(2048).fill(EMPTY);
    this.childMask = 2047;
    this.seqTable = new Int32Array(2048).fill(EMPTY);
    this.seqMask = 2047;
    this.rec[ROOT * STRIDE + PARENT] = EMPTY;
    this.rec[ROOT * STRIDE + FIRST_CHILD] = EMPTY;
    this.rec[ROOT * STRIDE + HOLDER] = EMPTY;
  }

  // ================= node storage =================

  private growNodes(capacity: number): void {
    const rec = new Int32Array(capacity * STRIDE);
    rec.set(this.rec);
    for (let node = this.capacity; node < capacity; node++) rec[node * STRIDE + PARENT] = FREE;
    this.rec = rec;
    this.prevSibling = grownInt32(this.prevSibling, capacity, EMPTY);
    this.seqLo = grownUint32(this.seqLo, capacity);
    this.seqHi = grownUint32(this.seqHi, capacity);
    const flags = new Uint8Array(capacity);
    flags.set(this.flags);
    this.flags = flags;
    this.capacity = capacity;
  }

  // Field accessors for the other modules (inlined by V8).
  parentOf(node: number): number {
    return this.rec[node * STRIDE + PARENT]!;
  }
  firstChildOf(node: number): number {
    return this.rec[node * STRIDE + FIRST_CHILD]!;
  }
  nextSiblingOf(node: number): number {
    return this.rec[node * STRIDE + NEXT_SIBLING]!;
  }
  holderCountOf(node: number): number {
    return this.rec[node * STRIDE + HOLDER_COUNT]!;
  }
  localLoOf(node: number): number {
    return this.rec[node * STRIDE + LOCAL_LO]! >>> 0;
  }
  localHiOf(node: number): number {
    return this.rec[node * STRIDE + LOCAL_HI]! >>> 0;
  }
  /** Marks `node` used at `tick` (callers keep ticks monotone down the tree). */
  stamp(node: number, tick: number): void {
    this.rec[node * STRIDE + LAST_USED] = tick;
  }

  private allocNode(): number {
    let node = this.freeHead;
    if (node !== EMPTY) {
      this.freeHead = this.rec[node * STRIDE + NEXT_SIBLING]!;
    } else {
      if (this.highWater === this.capacity) this.growNodes(Math.ceil(this.capacity * 1.5));
      node = this.highWater++;
    }
    this.nodeCount++;
    return node;
  }

  isLive(node: number): boolean {
    return node > ROOT && node < this.highWater && this.rec[node * STRIDE + PARENT] !== FREE;
  }

  // ================= child table =================

  /**
   * The parent goes through the finalizer too: folded in linearly, a worker who can predict node
   * ids (they are allocated in order) could cancel it against the local hash.
   */
  private childHome(parent: number, lo: number, hi: number): number {
    return fmix32(keyHash(this.seed, lo, hi) ^ parent) & this.childMask;
  }

  private childHomeOf(node: number): number {
    const at = node * STRIDE;
    return this.childHome(this.rec[at + PARENT]!, this.rec[at + LOCAL_LO]!, this.rec[at + LOCAL_HI]!);
  }

  /** The child of `parent` whose local key is (lo, hi), or -1. */
  findChild(parent: number, lo: number, hi: number): number {
    const rec = this.rec;
    const lo32 = lo | 0;
    const hi32 = hi | 0;
    // A chain (the common case) has one child: check it before hashing.
    const first = rec[parent * STRIDE + FIRST_CHILD]!;
    if (first === EMPTY) return EMPTY;
    if (rec[first * STRIDE + LOCAL_LO] === lo32 && rec[first * STRIDE + LOCAL_HI] === hi32) return first;
    if (rec[first * STRIDE + NEXT_SIBLING] === EMPTY) return EMPTY;
    const table = this.childTable;
    const mask = this.childMask;
    let i = this.childHome(parent, lo32, hi32);
    for (;;) {
      const node = table[i]!;
      if (node === EMPTY) return EMPTY;
      const at = node * STRIDE;
      if (rec[at + LOCAL_LO] === lo32 && rec[at + LOCAL_HI] === hi32 && rec[at + PARENT] === parent)
        return node;
      i = (i + 1) & mask;
    }
  }

  private insertChildEntry(node: number): void {
    if ((this.childEntries + 1) * 2 > this.childTable.length)
      this.rebuildChildTable(this.childTable.length * 2);
    this.childEntries++;
    this.flags[node]! |= IN_CHILD_TABLE;
    const mask = this.childMask;
    let i = this.childHomeOf(node);
    while (this.childTable[i] !== EMPTY) i = (i + 1) & mask;
    this.childTable[i] = node;
  }

  private rebuildChildTable(size: number): void {
    this.childTable = new Int32Array(size).fill(EMPTY);
    this.childMask = size - 1;
    for (let node = 1; node < this.highWater; node++) {
      if (this.rec[node * STRIDE + PARENT] === FREE || (this.flags[node]! & IN_CHILD_TABLE) === 0) continue;
      let i = this.childHomeOf(node);
      while (this.childTable[i] !== EMPTY) i = (i + 1) & this.childMask;
      this.childTable[i] = node;
    }
  }

  private deleteChildEntry(node: number): void {
    const table = this.childTable;
    const mask = this.childMask;
    let i = this.childHomeOf(node);
    while (table[i] !== node) i = (i + 1) & mask;
    // Backward-shift deletion keeps probe chains intact without tombstones.
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const moved = table[j]!;
      if (moved === EMPTY) break;
      const home = this.childHomeOf(moved);
      if (((j - home) & mask) >= ((j - i) & mask)) {
        table[i] = moved;
        i = j;
      }
    }
    table[i] = EMPTY;
    this.childEntries--;
    this.flags[node]! &= ~IN_CHILD_TABLE;
  }

  // ================= sequence-hash table =================

  /** The node registered under sequence hash (lo, hi), or -1. */
  findSeq(lo: number, hi: number): number {
    const table = this.seqTable;
    const mask = this.seqMask;
    let i = keyHash(this.seed, lo, hi) & mask;
    for (;;) {
      const node = table[i]!;
      if (node === EMPTY) return EMPTY;
      if (this.seqLo[node] === lo && this.seqHi[node] === hi) return node;
      i = (i + 1) & mask;
    }
  }

  private seqHome(node: number): number {
    return keyHash(this.seed, this.seqLo[node]!, this.seqHi[node]!) & this.seqMask;
  }

  /**
   * Registers `node` under sequence hash (lo, hi). Returns false, changing nothing, when another
   * node already has that hash.
   */
  setSeq(node: number, lo: number, hi: number): boolean {
    if ((this.seqCount + 1) * 2 > this.seqTable.length) this.rebuildSeqTable(this.seqTable.length * 2);
    const mask = this.seqMask;
    let i = keyHash(this.seed, lo, hi) & mask;
    for (;;) {
      const other = this.seqTable[i]!;
      if (other === EMPTY) break;
      if (this.seqLo[other] === lo && this.seqHi[other] === hi) return false;
      i = (i + 1) & mask;
    }
    this.seqTable[i] = node;
    this.seqLo[node] = lo;
    this.seqHi[node] = hi;
    this.flags[node]! |= HAS_SEQ;
    this.seqCount++;
    return true;
  }

  private rebuildSeqTable(size: number): void {
    this.seqTable = new Int32Array(size).fill(EMPTY);
    this.seqMask = size - 1;
    for (let n = 1; n < this.highWater; n++) {
      if (this.rec[n * STRIDE + PARENT] === FREE || (this.flags[n]! & HAS_SEQ) === 0) continue;
      let i = this.seqHome(n);
      while (this.seqTable[i] !== EMPTY) i = (i + 1) & this.seqMask;
      this.seqTable[i] = n;
    }
  }

  private deleteSeqEntry(node: number): void {
    const table = this.seqTable;
    const mask = this.seqMask;
    let i = this.seqHome(node);
    while (table[i] !== node) i = (i + 1) & mask;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const moved = table[j]!;
      if (moved === EMPTY) break;
      const home = this.seqHome(moved);
      if (((j - home) & mask) >= ((j - i) & mask)) {
        table[i] = moved;
        i = j;
      }
    }
    table[i] = EMPTY;
    this.flags[node]! &= ~HAS_SEQ;
    this.seqCount--;
  }

  // ================= structure =================

  /** The child of `parent` keyed (lo, hi), created (holderless) when missing. */
  childOrCreate(parent: number, lo: number, hi: number): number {
    const found = this.findChild(parent, lo, hi);
    return found !== EMPTY ? found : this.createChild(parent, lo, hi);
  }

  /** A new holderless child of `parent`; the caller knows no child (lo, hi) exists. */
  createChild(parent: number, lo: number, hi: number): number {
    const node = this.allocNode();
    const rec = this.rec;
    const at = node * STRIDE;
    rec[at + PARENT] = parent;
    rec[at + LOCAL_LO] = lo;
    rec[at + LOCAL_HI] = hi;
    rec[at + FIRST_CHILD] = EMPTY;
    rec[at + HOLDER_COUNT] = 0;
    rec[at + HOLDER] = EMPTY;
    rec[at + LAST_USED] = rec[parent * STRIDE + LAST_USED]!;
    const head = rec[parent * STRIDE + FIRST_CHILD]!;
    rec[at + NEXT_SIBLING] = head;
    rec[parent * STRIDE + FIRST_CHILD] = node;
    this.flags[node] = 0;
    this.prevSibling[node] = EMPTY;
    if (head !== EMPTY) {
      this.prevSibling[head] = node;
      // A second child: from now on the parent's children are found through the table.
      if ((this.flags[head]! & IN_CHILD_TABLE) === 0) this.insertChildEntry(head);
      this.insertChildEntry(node);
    }
    return node;
  }

  /**
   * Removes `top` and every node below it, with all their holdings (counted per slot and reported
   * to the drop listener). Returns the number of nodes removed.
   */
  dropSubtree(top: number): number {
    // Unlink from the parent's child list first; then the subtree is walked through the child
    // lists and each node is freed after its children are queued.
    const prev = this.prevSibling[top]!;
    const next = this.rec[top * STRIDE + NEXT_SIBLING]!;
    if (prev !== EMPTY) this.rec[prev * STRIDE + NEXT_SIBLING] = next;
    else this.rec[this.rec[top * STRIDE + PARENT]! * STRIDE + FIRST_CHILD] = next;
    if (next !== EMPTY) this.prevSibling[next] = prev;
    const stack = [top];
    let dropped = 0;
    while (stack.length > 0) {
      const node = stack.pop()!;
      for (
        let child = this.rec[node * STRIDE + FIRST_CHILD]!;
        child !== EMPTY;
        child = this.rec[child * STRIDE + NEXT_SIBLING]!
      ) {
        stack.push(child);
      }
      this.forgetHolders(node);
      if ((this.flags[node]! & IN_CHILD_TABLE) !== 0) this.deleteChildEntry(node);
      if ((this.flags[node]! & HAS_SEQ) !== 0) this.deleteSeqEntry(node);
      this.rec[node * STRIDE + PARENT] = FREE;
      this.rec[node * STRIDE + NEXT_SIBLING] = this.freeHead;
      this.freeHead = node;
      this.nodeCount--;
      dropped++;
    }
    return dropped;
  }

  private forgetHolders(node: number): void {
    const count = this.rec[node * STRIDE + HOLDER_COUNT]!;
    if (count === 1) {
      this.dropHolding(node, this.rec[node * STRIDE + HOLDER]!);
    } else if (count > 1) {
      const row = this.rec[node * STRIDE + HOLDER]!;
      const base = row * this.words;
      for (let w = 0; w < this.words; w++) {
        let bits = this.sets[base + w]!;
        while (bits !== 0) {
          const low = bits & -bits;
          this.dropHolding(node, w * 32 + 31 - Math.clz32(low));
          bits ^= low;
        }
      }
      this.freeRow(row);
    }
    this.rec[node * STRIDE + HOLDER_COUNT] = 0;
    this.rec[node * STRIDE + HOLDER] = EMPTY;
  }

  private dropHolding(node: number, slot: number): void {
    this.blocksBySlot[slot]--;
    this.totalBlocks--;
    this.onDrop?.(node, slot);
  }

  // ================= holder sets =================

  /** Makes room for worker slot `slot` (bitset rows widen in powers of two). */
  ensureSlot(slot: number): void {
    if (slot >= this.blocksBySlot.length) {
      const counts = new Float64Array(Math.max(slot + 1, this.blocksBySlot.length * 2, 8));
      counts.set(this.blocksBySlot);
      this.blocksBySlot = counts;
    }
    if (slot < this.words * 32) return;
    let words = this.words;
    while (slot >= words * 32) words *= 2;
    const sets = new Uint32Array(this.rowCapacity * words);
    for (let row = 0; row < this.rowCapacity; row++) {
      sets.set(this.sets.subarray(row * this.words, (row + 1) * this.words), row * words);
    }
    this.sets = sets;
    this.words = words;
    this.activeSet = new Uint32Array(words);
  }

  private allocRow(): number {
    const row = this.freeRows.pop();
    this.rowsUsed++;
    if (row !== undefined) return row;
    if (this.rowsUsed > this.rowCapacity) {
      const capacity = Math.max(64, Math.ceil(this.rowCapacity * 1.5));
      const sets = new Uint32Array(capacity * this.words);
      sets.set(this.sets);
      this.sets = sets;
      for (let r = capacity - 1; r >= this.rowCapacity; r--) this.freeRows.push(r);
      this.rowCapacity = capacity;
    }
    return this.freeRows.pop()!;
  }

  private freeRow(row: number): void {
    this.sets.fill(0, row * this.words, (row + 1) * this.words);
    this.freeRows.push(row);
    this.rowsUsed--;
  }

  hasHolder(node: number, slot: number): boolean {
    const count = this.rec[node * STRIDE + HOLDER_COUNT]!;
    if (count === 1) return this.rec[node * STRIDE + HOLDER] === slot;
    if (count === 0) return false;
    return (
      (this.sets[this.rec[node * STRIDE + HOLDER]! * this.words + (slot >>> 5)]! & (1 << (slot & 31))) !== 0
    );
  }

  /** Adds `slot` to the node's holders; false when it already held the node. */
  addHolder(node: number, slot: number): boolean {
    const count = this.rec[node * STRIDE + HOLDER_COUNT]!;
    if (count === 0) {
      this.rec[node * STRIDE + HOLDER] = slot;
    } else if (count === 1) {
      const only = this.rec[node * STRIDE + HOLDER]!;
      if (only === slot) return false;
      const row = this.allocRow();
      const base = row * this.words;
      this.sets[base + (only >>> 5)]! |= 1 << (only & 31);
      this.sets[base + (slot >>> 5)]! |= 1 << (slot & 31);
      this.rec[node * STRIDE + HOLDER] = row;
    } else {
      const at = this.rec[node * STRIDE + HOLDER]! * this.words + (slot >>> 5);
      const bit = 1 << (slot & 31);
      if ((this.sets[at]! & bit) !== 0) return false;
      this.sets[at]! |= bit;
    }
    this.rec[node * STRIDE + HOLDER_COUNT] = count + 1;
    this.blocksBySlot[slot]++;
    this.totalBlocks++;
    return true;
  }

  /** Removes `slot` from the node's holders; false when it did not hold the node. */
  removeHolder(node: number, slot: number): boolean {
    const count = this.rec[node * STRIDE + HOLDER_COUNT]!;
    if (count === 0) return false;
    if (count === 1) {
      if (this.rec[node * STRIDE + HOLDER] !== slot) return false;
      this.rec[node * STRIDE + HOLDER] = EMPTY;
    } else {
      const row = this.rec[node * STRIDE + HOLDER]!;
      const base = row * this.words;
      const at = base + (slot >>> 5);
      const bit = 1 << (slot & 31);
      if ((this.sets[at]! & bit) === 0) return false;
      this.sets[at]! &= ~bit;
      if (count === 2) {
        // Back to an inline holder: find the remaining bit.
        let remaining = EMPTY;
        for (let w = 0; w < this.words && remaining === EMPTY; w++) {
          const bits = this.sets[base + w]!;
          if (bits !== 0) remaining = w * 32 + 31 - Math.clz32(bits & -bits);
        }
        this.freeRow(row);
        this.rec[node * STRIDE + HOLDER] = remaining;
      }
    }
    this.rec[node * STRIDE + HOLDER_COUNT] = count - 1;
    this.blocksBySlot[slot]--;
    this.totalBlocks--;
    return true;
  }

  /** Calls `visit(node)` for every live node held by `slot` (O(nodes)). */
  forEachHeldBy(slot: number, visit: (node: number) => void): void {
    for (let node = 1; node < this.highWater; node++) {
      if (this.rec[node * STRIDE + PARENT] !== FREE && this.hasHolder(node, slot)) visit(node);
    }
  }

  /** Removes every holding of `slot`; drops the subtrees of nodes left without holders. */
  removeSlot(slot: number): void {
    if (this.blocksBySlot[slot] === 0) return;
    const orphaned: number[] = [];
    for (let node = 1; node < this.highWater; node++) {
      if (this.rec[node * STRIDE + PARENT] === FREE) continue;
      if (this.removeHolder(node, slot) && this.rec[node * STRIDE + HOLDER_COUNT] === 0) orphaned.push(node);
    }
    // An orphan may already be gone with an earlier orphan's subtree.
    for (const node of orphaned) {
      if (this.rec[node * STRIDE + PARENT] !== FREE && this.rec[node * STRIDE + HOLDER_COUNT] === 0)
        this.dropSubtree(node);
    }
  }

  // ================= recency =================

  /** Starts a new operation; returns its tick. Rescales all ticks (order kept) before int32 overflow. */
  nextTick(): number {
    if (this.tick >= 0x7ffffff0) {
      for (let node = 0; node < this.highWater; node++) this.rec[node * STRIDE + LAST_USED]! >>= 1;
      this.tick >>>= 1;
    }
    return ++this.tick;
  }

  /**
   * Stamps `node` and its ancestors with `tick`, stopping at the first already that recent. A
   * store's tick is newer than every node's, so for it this walks to the root: O(depth).
   */
  touchUp(node: number, tick: number): void {
    for (
      let n = node;
      n !== EMPTY && this.rec[n * STRIDE + LAST_USED]! < tick;
      n = this.rec[n * STRIDE + PARENT]!
    )
      this.rec[n * STRIDE + LAST_USED] = tick;
  }

  // ================= matching =================

  /**
   * For each worker slot, how many leading blocks of `keys` it holds. Walks the path once; the set
   * of still-matching workers shrinks monotonically and each step costs one bitset word per
   * remaining 32 slots (or O(1) once a single worker remains). Stamps matched nodes as used.
   */
  match(keys: BlockKeys): { blocksBySlot: Int32Array; longest: number } {
    const scores = new Int32Array(this.blocksBySlot.length);
    const blocks = keys.length >>> 1;
    const tick = this.nextTick();
    let node = blocks > 0 ? this.findChild(ROOT, keys[0]!, keys[1]!) : EMPTY;
    const rec = this.rec;
    if (node === EMPTY || rec[node * STRIDE + HOLDER_COUNT] === 0)
      return { blocksBySlot: scores, longest: 0 };
    const words = this.words;
    const sets = this.sets;
    const active = this.activeSet;
    // Single mode: exactly one worker (`single`) still matches; set mode: the bitset `active`
    // over words [lo, hi] holds the matching workers.
    let single = EMPTY;
    let lo = 0;
    let hi = 0;
    if (rec[node * STRIDE + HOLDER_COUNT] === 1) {
      single = rec[node * STRIDE + HOLDER]!;
    } else {
      const base = rec[node * STRIDE + HOLDER]! * words;
      lo = words;
      for (let w = 0; w < words; w++) {
        const bits = sets[base + w]!;
        active[w] = bits;
        if (bits !== 0) {
          if (lo === words) lo = w;
          hi = w;
        }
      }
    }
    rec[node * STRIDE + LAST_USED] = tick;
    let depth = 1;
    for (; depth < blocks; depth++) {
      const next = this.findChild(node, keys[2 * depth]!, keys[2 * depth + 1]!);
      if (next === EMPTY) break;
      const at = next * STRIDE;
      const count = rec[at + HOLDER_COUNT]!;
      if (single !== EMPTY) {
        if (count === 1) {
          if (rec[at + HOLDER] !== single) break;
        } else if (
          count === 0 ||
          (sets[rec[at + HOLDER]! * words + (single >>> 5)]! & (1 << (single & 31))) === 0
        ) {
          break;
        }
      } else if (count <= 1) {
        // The set collapses to at most this one holder; everyone else stops here.
        const only = count === 1 ? rec[at + HOLDER]! : EMPTY;
        const keeps = only !== EMPTY && (active[only >>> 5]! & (1 << (only & 31))) !== 0;
        if (keeps) active[only >>> 5]! &= ~(1 << (only & 31));
        for (let w = lo; w <= hi; w++) {
          scoreBits(scores, w, active[w]!, depth);
          active[w] = 0;
        }
        if (!keeps) break;
        single = only;
      } else {
        const base = rec[at + HOLDER]! * words;
        let newLo = words;
        let newHi = 0;
        for (let w = lo; w <= hi; w++) {
          const bits = active[w]!;
          if (bits === 0) continue;
          const kept = bits & sets[base + w]!;
          if (kept !== bits) {
            scoreBits(scores, w, bits & ~kept, depth);
            active[w] = kept;
          }
          if (kept !== 0) {
            if (newLo === words) newLo = w;
            newHi = w;
          }
        }
        if (newLo === words) break;
        lo = newLo;
        hi = newHi;
      }
      node = next;
      rec[at + LAST_USED] = tick;
    }
    // Whoever is still matching holds `depth` leading blocks.
    if (single !== EMPTY) {
      scores[single] = depth;
    } else {
      for (let w = lo; w <= hi; w++) {
        scoreBits(scores, w, active[w]!, depth);
        active[w] = 0;
      }
    }
    let longest = 0;
    for (let i = 0; i < scores.length; i++) if (scores[i]! > longest) longest = scores[i]!;
    return { blocksBySlot: scores, longest };
  }

  // ================= eviction =================

  /**
   * Brings the tree down to at most `target` nodes, fairly: holdings are taken only from workers
   * above their fair share (`target` / workers holding blocks), each one's least recently used
   * first, and never below that share. A node goes when its last holder does (with its subtree:
   * holdings beneath a node nobody holds cannot be matched). So a worker within its share keeps
   * its blocks while another floods, and the floods pay for themselves.
   *
   * Rounds (each one pass over the nodes, see evictRound): the first evicts down to sampled
   * cutoffs, the second without the overall cutoff (every over-share worker to about its share),
   * the third, only if sampling left some over, by the share alone. After the third every worker
   * is at or below the share, so the holdings, and the nodes (each has a holder), are ≤ `target`.
   * Returns the number of nodes evicted.
   */
  evictTo(target: number): number {
    const before = this.nodeCount;
    for (let round = 0; round < 3 && this.nodeCount > target; round++) {
      let holding = 0;
      for (let slot = 0; slot < this.blocksBySlot.length; slot++) if (this.blocksBySlot[slot]! > 0) holding++;
      const share = Math.floor(target / holding);
      const cutoffs = new Float64Array(this.blocksBySlot.length).fill(Number.POSITIVE_INFINITY);
      const overall =
        round < 2 ? this.sampleCutoffs(target, share, cutoffs, round === 0) : Number.POSITIVE_INFINITY;
      this.evictRound(share, overall, cutoffs);
    }
    return before - this.nodeCount;
  }

  /**
   * From an evenly strided sample of ~4,096 live nodes: `cutoffs[slot]`, for each worker over
   * `share`, the tick at or below which about its excess over the share lies (its oldest
   * holdings); and, when `overall` is asked for, the returned tick at or below which about enough
   * nodes held only by over-share workers lie to bring the tree to `target` (else +∞).
   */
  private sampleCutoffs(target: number, share: number, cutoffs: Float64Array, overall: boolean): number {
    const stride = Math.max(1, Math.floor(this.highWater / 4096));
    const bySlot: number[][] = [];
    const freeable: number[] = [];
    let sampled = 0;
    for (let node = 1; node < this.highWater; node += stride) {
      if (this.rec[node * STRIDE + PARENT] === FREE) continue;
      sampled++;
      const tick = this.rec[node * STRIDE + LAST_USED]!;
      let allOver = true;
      this.forEachHolder(node, (slot) => {
        if (this.blocksBySlot[slot]! > share) {
          bySlot[slot] ??= [];
          bySlot[slot].push(tick);
        } else allOver = false;
      });
      if (allOver) freeable.push(tick);
    }
    // The tick of the `part / whole` quantile of `ticks` (integer arithmetic: exact when every
    // node is sampled); +∞ when that is all of them.
    const quantile = (ticks: number[], part: number, whole: number) => {
      const rank = Math.ceil((part * ticks.length) / whole);
      if (rank >= ticks.length) return Number.POSITIVE_INFINITY;
      ticks.sort((a, b) => a - b);
      return ticks[Math.max(0, rank - 1)]!;
    };
    bySlot.forEach((ticks, slot) => {
      const blocks = this.blocksBySlot[slot]!;
      cutoffs[slot] = quantile(ticks, blocks - share, blocks);
    });
    if (!overall) return Number.POSITIVE_INFINITY;
    // `freeable` out of `sampled` nodes stand for all the nodes: the rank that frees the excess.
    const needed = Math.ceil(((this.nodeCount - target) * sampled) / this.nodeCount);
    if (needed > freeable.length) return Number.POSITIVE_INFINITY;
    freeable.sort((a, b) => a - b);
    return freeable[Math.max(0, needed - 1)]!;
  }

  /**
   * Takes from each worker over `share` its holdings used at or before min(`overall`,
   * `cutoffs[slot]`), while it stays above the share: first those strictly older (one pass over
   * the nodes), then the ties at the cutoff (the nodes the pass set aside), so a cutoff tick
   * shared by a whole stored run does not cost newer runs first. Nodes go highest id first: a
   * run's ids ascend from its head, so a worker cut short loses a run's tail and keeps its
   * prefix, which is what matches.
   */
  private evictRound(share: number, overall: number, cutoffs: Float64Array): void {
    let newest = Number.NEGATIVE_INFINITY;
    for (let slot = 0; slot < cutoffs.length; slot++) {
      // A worker within its share is never cut; the others no later than `overall`.
      cutoffs[slot] = this.blocksBySlot[slot]! > share ? Math.min(overall, cutoffs[slot]!) : -1;
      newest = Math.max(newest, cutoffs[slot]!);
    }
    const tied: number[] = [];
    let ties = false;
    const take = (node: number, slot: number, tick: number) => {
      if (this.blocksBySlot[slot]! <= share || tick > cutoffs[slot]!) return;
      if (tick < cutoffs[slot]! || ties) {
        this.removeHolder(node, slot);
        this.onDrop?.(node, slot);
      } else if (tied[tied.length - 1] !== node) {
        tied.push(node);
      }
    };
    const visit = (node: number) => {
      const at = node * STRIDE;
      const tick = this.rec[at + LAST_USED]!;
      // Most nodes have one holder: no visitor call for them.
      if (this.rec[at + HOLDER_COUNT] === 1) take(node, this.rec[at + HOLDER]!, tick);
      else this.forEachHolder(node, (slot) => take(node, slot, tick));
      if (this.rec[at + HOLDER_COUNT] === 0) this.dropSubtree(node);
    };
    for (let node = this.highWater - 1; node > ROOT; node--) {
      const at = node * STRIDE;
      if (this.rec[at + PARENT] !== FREE && this.rec[at + LAST_USED]! <= newest) visit(node);
    }
    ties = true;
    // A tied node may have gone since with an older ancestor's subtree (nothing is allocated here).
    for (const node of tied) if (this.rec[node * STRIDE + PARENT] !== FREE) visit(node);
  }

  /** Calls `visit(slot)` for each holder of `node`; `visit` may remove holders of `node`. */
  private forEachHolder(node: number, visit: (slot: number) => void): void {
    const count = this.rec[node * STRIDE + HOLDER_COUNT]!;
    if (count === 1) {
      visit(this.rec[node * STRIDE + HOLDER]!);
      return;
    }
    if (count === 0) return;
    // A copy of the row: removing the second-to-last holder frees it.
    if (this.holderScratch.length !== this.words) this.holderScratch = new Uint32Array(this.words);
    const base = this.rec[node * STRIDE + HOLDER]! * this.words;
    this.holderScratch.set(this.sets.subarray(base, base + this.words));
    for (let w = 0; w < this.words; w++) {
      let bits = this.holderScratch[w]!;
      while (bits !== 0) {
        const low = bits & -bits;
        visit(w * 32 + 31 - Math.clz32(low));
        bits ^= low;
      }
    }
  }

  // ================= accounting =================

  /**
   * Slots the slowest successful lookup reads, per table: 1 + the longest distance of an entry
   * from its home slot. Deterministic for a given seed, so tests can bound it. O(table size).
   */
  longestProbes(): { child: number; seq: number } {
    const longest = (table: Int32Array, mask: number, home: (node: number) => number) => {
      let most = 0;
      for (let i = 0; i < table.length; i++) {
        const node = table[i]!;
        if (node !== EMPTY) most = Math.max(most, ((i - home(node)) & mask) + 1);
      }
      return most;
    };
    return {
      child: longest(this.childTable, this.childMask, (node) => this.childHomeOf(node)),
      seq: longest(this.seqTable, this.seqMask, (node) => this.seqHome(node)),
    };
  }

  /** Bytes held by the typed arrays (capacity, not just live entries). */
  approxBytes(): number {
    const perNode = STRIDE * 4 + 4 + 8 + 1; // record, prevSibling, sequence halves, flags
    return (
      this.capacity * perNode +
      this.sets.byteLength +
      this.childTable.byteLength +
      this.seqTable.byteLength +
      this.blocksBySlot.byteLength +
      this.freeRows.length * 8
    );
  }

  /** The stats both indexes report: `slotOf` names the workers, `evicted` is the owner's budget count. */
  stats(
    slotOf: ReadonlyMap<string, number>,
    evicted: { readonly evictedNodes: number; readonly evictedBlocks: number },
  ): IndexStats {
    const blocksPerWorker: Record<string, number> = {};
    for (const [id, slot] of slotOf) blocksPerWorker[id] = this.blocksBySlot[slot] ?? 0;
    return {
      workers: slotOf.size,
      blocks: this.totalBlocks,
      blocksPerWorker,
      nodes: this.nodeCount,
      approxBytes: this.approxBytes(),
      evictedNodes: evicted.evictedNodes,
      evictedBlocks: evicted.evictedBlocks,
    };
  }
}
