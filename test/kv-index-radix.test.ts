// RadixIndex specifics: a property test against a deliberately naive model, dump and restore,
// event ids (duplicates, gaps), malformed events, the fairly shared memory budget (also against the
// model), and the hash tables against chosen hashes.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  computeBlockHashes,
  keysFromU64Strings,
  localBlockKeys,
  RadixIndex,
  u64String,
  type WorkerReset,
} from '../src/kv-index/index.js';
import type { KvEvent } from '../src/protocols/kv-events.js';
import { prng, storedEvent, tokensOf } from './kv-index-helpers.js';

const BS = 4;

/** A prompt universe with heavy prefix sharing: prompts are chains of shared segments. */
function universe(seed: number, count: number) {
  const random = prng(seed);
  const segments = Array.from({ length: 6 }, (_, i) => tokensOf(seed * 100 + i, 2, BS));
  return Array.from({ length: count }, () => {
    const tokens: number[] = [];
    const parts = 1 + Math.floor(random() * 4);
    for (let p = 0; p < parts; p++) tokens.push(...segments[Math.floor(random() * segments.length)]!);
    const { local, sequence } = computeBlockHashes(tokens, BS);
    return {
      tokens,
      keys: localBlockKeys(tokens, BS),
      local: [...local].map(String),
      seq: [...sequence].map(String),
    };
  });
}

/**
 * The naive model: a node is the comma-joined path of local hashes; holders per path; a sequence
 * hash maps to its path. Everything is recomputed by brute force. Recency: a path's `used` is the
 * clock of the last store or match that reached it (the index's order, not its tick values).
 */
class NaiveModel {
  holders = new Map<string, Set<string>>();
  pathOfSeq = new Map<string, string>();
  used = new Map<string, number>();
  private clock = 0;

  /** Marks `path` and every prefix of it used now. */
  private touch(path: string): void {
    const tick = ++this.clock;
    const parts = path.split(',');
    for (let n = 1; n <= parts.length; n++) this.used.set(parts.slice(0, n).join(','), tick);
  }

  stored(worker: string, parentSeq: string | null, blocks: { local: string; seq: string }[]): boolean {
    let path = '';
    if (parentSeq !== null) {
      const parentPath = this.pathOfSeq.get(parentSeq);
      if (parentPath === undefined || !this.holders.get(parentPath)?.has(worker)) return false;
      path = parentPath;
    }
    for (const b of blocks) {
      path = path === '' ? b.local : `${path},${b.local}`;
      this.pathOfSeq.set(b.seq, path);
      const set = this.holders.get(path) ?? new Set<string>();
      this.holders.set(path, set);
      set.add(worker);
    }
    if (path !== '') this.touch(path);
    return true;
  }

  private dropEmpty(): void {
    for (const [path, set] of [...this.holders]) {
      if (set.size > 0 || !this.holders.has(path)) continue;
      for (const other of [...this.holders.keys()]) {
        if (other === path || other.startsWith(`${path},`)) this.holders.delete(other);
      }
    }
  }

  removed(worker: string, seqs: string[]): void {
    for (const seq of seqs) {
      const path = this.pathOfSeq.get(seq);
      const set = path === undefined ? undefined : this.holders.get(path);
      if (!set?.has(worker)) continue;
      set.delete(worker);
      this.dropEmpty();
    }
  }

  clear(worker: string): void {
    for (const set of this.holders.values()) set.delete(worker);
    this.dropEmpty();
  }

  /** Paths `worker` holds now. */
  heldBy(worker: string): string[] {
    return [...this.holders].filter(([, set]) => set.has(worker)).map(([path]) => path);
  }

  /** The worker leaves one path (a reset's unmentioned holding). */
  leave(worker: string, path: string): void {
    if (this.holders.get(path)?.delete(worker)) this.dropEmpty();
  }

  matches(local: string[]): Map<string, number> {
    const out = new Map<string, number>();
    const workers = new Set([...this.holders.values()].flatMap((s) => [...s]));
    for (const w of workers) {
      let n = 0;
      while (n < local.length && this.holders.get(local.slice(0, n + 1).join(','))?.has(w)) n++;
      if (n > 0) out.set(w, n);
    }
    const longest = Math.max(0, ...out.values());
    if (longest > 0) this.touch(local.slice(0, longest).join(','));
    return out;
  }

  blocksPerWorker(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const set of this.holders.values()) for (const w of set) out[w] = (out[w] ?? 0) + 1;
    return out;
  }
}

function sorted(map: Map<string, number>): [string, number][] {
  return [...map].sort(([a], [b]) => a.localeCompare(b));
}

function nonZero(record: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(record).filter(([, n]) => n > 0));
}

/** A random run of one prompt's blocks from `start`, and its parent's sequence hash (null at the prompt's start). */
function randomRunOf(prompt: ReturnType<typeof universe>[number], random: () => number) {
  const start = Math.floor(random() * prompt.local.length);
  const len = 1 + Math.floor(random() * (prompt.local.length - start));
  const blocks = prompt.local
    .slice(start, start + len)
    .map((local, i) => ({ local, seq: prompt.seq[start + i]! }));
  return { blocks, parent: start === 0 ? null : prompt.seq[start - 1]!, start };
}

/** A `stored` event of a run of blocks (as randomRunOf gives them) under `parent`. */
function storedRunEvent(
  eventId: number,
  parent: string | null,
  blocks: { local: string; seq: string }[],
): KvEvent {
  return {
    event_id: eventId,
    type: 'stored',
    parent_hash: parent,
    blocks: blocks.map((b) => ({ local_hash: b.local, sequence_hash: b.seq })),
  };
}

/** The index answers every prompt and counts holdings as the model does; returns its stats. */
function agreesWithModel(
  index: RadixIndex,
  model: NaiveModel,
  prompts: ReturnType<typeof universe>,
  label: string,
): ReturnType<RadixIndex['stats']> {
  for (const p of prompts) {
    assert.deepEqual(sorted(index.findMatches(p.keys).toMap()), sorted(model.matches(p.local)), label);
  }
  const stats = index.stats();
  assert.deepEqual(nonZero(stats.blocksPerWorker), model.blocksPerWorker(), label);
  assert.equal(stats.nodes, model.holders.size, label);
  return stats;
}

/**
 * Per-worker event ids 1, 2, 3, ... as a worker numbers its KV events; `restart` starts a worker
 * (removed from the index) at 1 again.
 */
function eventIdCounter(): { next(worker: string): number; restart(worker: string): void } {
  const ids = new Map<string, number>();
  return {
    next(worker) {
      const id = (ids.get(worker) ?? 0) + 1;
      ids.set(worker, id);
      return id;
    },
    restart: (worker) => ids.delete(worker),
  };
}

describe('RadixIndex against a naive model', () => {
  for (const seed of [1, 2, 3, 4]) {
    test(`random stored/removed/cleared/removeWorker sequence, seed ${seed}`, () => {
      const random = prng(seed);
      const prompts = universe(seed, 12);
      const workers = ['w-0', 'w-1', 'w-2', 'w-3', 'w-4'];
      const index = new RadixIndex();
      const model = new NaiveModel();
      const eventIds = eventIdCounter();
      const nextId = eventIds.next;
      for (let step = 0; step < 400; step++) {
        const worker = workers[Math.floor(random() * workers.length)]!;
        const prompt = prompts[Math.floor(random() * prompts.length)]!;
        const roll = random();
        let what: string;
        if (roll < 0.55) {
          const { blocks, parent, start } = randomRunOf(prompt, random);
          const expected = model.stored(worker, parent, blocks);
          const result = index.applyEvent(worker, storedRunEvent(nextId(worker), parent, blocks));
          what = `stored ${worker} [${start}, ${start + blocks.length}) -> ${result.status}`;
          assert.equal(result.status, expected ? 'applied' : 'rejected', what);
          if (!expected) assert.equal(result.status === 'rejected' && result.reason, 'unknown_parent');
        } else if (roll < 0.9) {
          const seqs = prompt.seq.filter(() => random() < 0.4);
          model.removed(worker, seqs);
          const result = index.applyEvent(worker, {
            event_id: nextId(worker),
            type: 'removed',
            sequence_hashes: seqs,
          });
          what = `removed ${worker} ${seqs.length}`;
          assert.equal(result.status, 'applied', what);
        } else if (roll < 0.96) {
          model.clear(worker);
          index.applyEvent(worker, { event_id: nextId(worker), type: 'cleared' });
          what = `cleared ${worker}`;
        } else {
          model.clear(worker);
          index.removeWorker(worker);
          eventIds.restart(worker);
          what = `removeWorker ${worker}`;
        }
        const stats = agreesWithModel(index, model, prompts, `step ${step}: ${what}`);
        assert.equal(
          stats.blocks,
          Object.values(model.blocksPerWorker()).reduce((a, b) => a + b, 0),
        );

        if (step % 40 === 39) {
          // Dump and restore give equal state: each worker reset from its own dump in place ...
          const before = prompts.map((p) => sorted(index.findMatches(p.keys).toMap()));
          const statsBefore = index.stats();
          for (const w of index.workers()) {
            const dump = index.dump(w);
            assert.ok(dump.every((e) => e.event_id === index.lastEventId(w)));
            assert.deepEqual(index.resetWorker(w, dump, index.lastEventId(w)), { rejected: 0 });
          }
          assert.deepEqual(
            prompts.map((p) => sorted(index.findMatches(p.keys).toMap())),
            before,
            `reset from dump at step ${step}`,
          );
          assert.deepEqual(
            index.stats().blocksPerWorker,
            statsBefore.blocksPerWorker,
            `reset at step ${step}`,
          );
          assert.equal(index.stats().nodes, statsBefore.nodes);
          // ... and every dump replayed into a fresh index (all stored runs first, then removals).
          const fresh = new RadixIndex();
          const dumps = index.workers().map((w) => [w, index.dump(w)] as const);
          for (const [w, events] of dumps)
            fresh.resetWorker(
              w,
              events.filter((e) => e.type === 'stored'),
              1,
            );
          for (const [w, events] of dumps) {
            for (const e of events.filter((x) => x.type === 'removed'))
              fresh.applyEvent(w, { ...e, event_id: 2 });
          }
          assert.deepEqual(
            prompts.map((p) => sorted(fresh.findMatches(p.keys).toMap())),
            before,
          );
          assert.equal(fresh.stats().nodes, index.stats().nodes);
          assert.deepEqual(nonZero(fresh.stats().blocksPerWorker), nonZero(statsBefore.blocksPerWorker));
        }
      }
    });
  }
});

/** The paths `worker` holds in the index, read from its dump (hashes resolved by the model). */
function heldInIndex(index: RadixIndex, model: NaiveModel, worker: string): Set<string> {
  const held = new Set<string>();
  for (const event of index.dump(worker)) {
    if (event.type === 'stored') {
      let path = event.parent_hash === null ? '' : model.pathOfSeq.get(event.parent_hash)!;
      for (const b of event.blocks) {
        path = path === '' ? b.local_hash : `${path},${b.local_hash}`;
        held.add(path);
      }
    } else if (event.type === 'removed') {
      for (const seq of event.sequence_hashes) held.delete(model.pathOfSeq.get(seq)!);
    }
  }
  return held;
}

/**
 * The budget rule, checked on an index that has just evicted, against the model that applied the
 * same events with no budget: the index holds a subset of the model's holdings, at most `target`
 * nodes; a worker within its share (target / workers holding blocks) lost nothing but holdings
 * beneath a node that went (collateral: no longer matchable); one over it kept at least the share
 * (less its collateral) and lost its least recently used holdings first. Then the model forgets
 * what the index evicted.
 */
function checkFairEviction(index: RadixIndex, model: NaiveModel, target: number, label: string): void {
  const held = new Map(index.workers().map((w) => [w, heldInIndex(index, model, w)] as const));
  const nodes = new Set([...held.values()].flatMap((paths) => [...paths]));
  assert.ok(nodes.size <= target, `${label}: ${nodes.size} nodes > ${target}`);
  const counts = model.blocksPerWorker();
  const share = Math.floor(target / Object.keys(counts).length);
  const prefixGone = (path: string) => {
    const parts = path.split(',');
    for (let n = 1; n < parts.length; n++) if (!nodes.has(parts.slice(0, n).join(','))) return true;
    return false;
  };
  for (const [worker, count] of Object.entries(counts)) {
    const kept = held.get(worker) ?? new Set<string>();
    const before = model.heldBy(worker);
    for (const path of kept)
      assert.ok(before.includes(path), `${label}: ${worker} holds ${path} unknown to the model`);
    const evicted = before.filter((path) => !kept.has(path));
    const own = evicted.filter((path) => !prefixGone(path));
    const collateral = evicted.length - own.length;
    const what = `${label}: ${worker} held ${count}, share ${share}, kept ${kept.size}, collateral ${collateral}`;
    if (count <= share) {
      assert.equal(own.length, 0, what);
    } else {
      assert.ok(kept.size >= share - collateral, what);
      // Least recently used first (a collateral loss may cut a worker short unevenly).
      if (collateral === 0 && own.length > 0 && kept.size > 0) {
        const newestEvicted = Math.max(...own.map((path) => model.used.get(path)!));
        const oldestKept = Math.min(...[...kept].map((path) => model.used.get(path)!));
        assert.ok(
          newestEvicted <= oldestKept,
          `${what}: evicted a holding used at ${newestEvicted}, kept one at ${oldestKept}`,
        );
      }
    }
  }
  for (const [path, set] of [...model.holders]) {
    if (!nodes.has(path)) model.holders.delete(path);
    else for (const worker of [...set]) if (!held.get(worker)?.has(path)) set.delete(worker);
  }
}

describe('RadixIndex memory budget against the naive model', () => {
  for (const [seed, maxNodes, fraction] of [
    [21, 24, 0.75],
    [22, 40, 0.9],
    [23, 16, 0.5],
    [24, 30, 0.8],
  ] as const) {
    test(`random events, one busy worker, budget ${maxNodes} × ${fraction}; seed ${seed}`, () => {
      const random = prng(seed);
      const prompts = universe(seed, 40);
      const workers = ['w-0', 'w-1', 'w-2', 'w-3', 'w-4'];
      const index = new RadixIndex({ maxNodes, evictToFraction: fraction });
      const target = Math.floor(maxNodes * fraction);
      const model = new NaiveModel();
      const eventIds = eventIdCounter();
      const nextId = eventIds.next;
      let evictions = 0;
      for (let step = 0; step < 400; step++) {
        // w-0 sends half of all events: it is usually the one over its share.
        const worker = random() < 0.5 ? 'w-0' : workers[1 + Math.floor(random() * 4)]!;
        const prompt = prompts[Math.floor(random() * prompts.length)]!;
        const roll = random();
        let what: string;
        if (roll < 0.7) {
          // Half the runs are whole prompts: runs under a parent the worker lacks add nothing.
          const whole = random() < 0.5;
          const run = whole ? undefined : randomRunOf(prompt, random);
          const start = run?.start ?? 0;
          const parent = run?.parent ?? null;
          const blocks = run?.blocks ?? prompt.local.map((local, i) => ({ local, seq: prompt.seq[i]! }));
          const expected = model.stored(worker, parent, blocks);
          const result = index.applyEvent(worker, storedRunEvent(nextId(worker), parent, blocks));
          what = `step ${step}: stored ${worker} [${start}, ${start + blocks.length})`;
          assert.equal(result.status, expected ? 'applied' : 'rejected', what);
          if (model.holders.size > maxNodes) {
            checkFairEviction(index, model, target, what);
            evictions++;
          }
        } else if (roll < 0.9) {
          const seqs = prompt.seq.filter(() => random() < 0.3);
          model.removed(worker, seqs);
          index.applyEvent(worker, { event_id: nextId(worker), type: 'removed', sequence_hashes: seqs });
          what = `step ${step}: removed ${worker} ${seqs.length}`;
        } else if (roll < 0.98) {
          model.clear(worker);
          index.applyEvent(worker, { event_id: nextId(worker), type: 'cleared' });
          what = `step ${step}: cleared ${worker}`;
        } else {
          model.clear(worker);
          index.removeWorker(worker);
          eventIds.restart(worker);
          what = `step ${step}: removeWorker ${worker}`;
        }
        agreesWithModel(index, model, prompts, what);
      }
      assert.ok(evictions >= 10, `only ${evictions} evictions: the budget is not exercised`);
    });
  }
});

describe('RadixIndex dumps in parts against the naive model', () => {
  for (const seed of [11, 12, 13, 14]) {
    test(`resets begun, fed in parts, finished, abandoned or outlived, amid other events; seed ${seed}`, () => {
      // A reset's parts interleave with other workers' events (their subscriptions run
      // concurrently); a reset may be abandoned (the stream broke) or its worker removed.
      const random = prng(seed);
      const prompts = universe(seed, 12);
      const workers = ['w-0', 'w-1', 'w-2', 'w-3'];
      const index = new RadixIndex();
      const model = new NaiveModel();
      const ids = new Map<string, number>();
      type Pending = { reset: WorkerReset; before: string[]; mentioned: Set<string>; asOf: number };
      const resets = new Map<string, Pending>();
      const randomRun = () => {
        const prompt = prompts[Math.floor(random() * prompts.length)]!;
        const { blocks, parent } = randomRunOf(prompt, random);
        const event = (eventId: number) => storedRunEvent(eventId, parent, blocks);
        return { parent, blocks, event };
      };
      for (let step = 0; step < 300; step++) {
        const worker = workers[Math.floor(random() * workers.length)]!;
        const pending = resets.get(worker);
        const roll = random();
        let what: string;
        if (pending !== undefined && roll < 0.5) {
          const r = random();
          if (r < 0.3) {
            for (const path of pending.before) if (!pending.mentioned.has(path)) model.leave(worker, path);
            pending.reset.finish(pending.asOf);
            ids.set(worker, pending.asOf);
            resets.delete(worker);
            what = `finish ${worker}`;
          } else if (r < 0.4) {
            resets.delete(worker);
            what = `abandon ${worker}`;
          } else {
            const run = randomRun();
            const paths = new Set<string>();
            const stored = model.stored(worker, run.parent, run.blocks);
            if (stored) {
              let path = run.parent === null ? '' : model.pathOfSeq.get(run.parent)!;
              for (const b of run.blocks) {
                path = path === '' ? b.local : `${path},${b.local}`;
                paths.add(path);
              }
            }
            for (const path of paths) pending.mentioned.add(path);
            assert.equal(pending.reset.apply([run.event(pending.asOf)]), stored ? 0 : 1);
            what = `part ${worker}`;
          }
        } else if (roll < 0.45) {
          const run = randomRun();
          const id = (ids.get(worker) ?? 0) + 1;
          const result = index.applyEvent(worker, run.event(id));
          if (pending === undefined) {
            ids.set(worker, id);
            assert.equal(result.status === 'applied', model.stored(worker, run.parent, run.blocks));
          } else assert.equal(result.status, 'gap', 'a worker mid-reset has no live events yet');
          what = `stored ${worker}`;
        } else if (roll < 0.7 && pending === undefined) {
          const prompt = prompts[Math.floor(random() * prompts.length)]!;
          const seqs = prompt.seq.filter(() => random() < 0.4);
          const id = (ids.get(worker) ?? 0) + 1;
          ids.set(worker, id);
          model.removed(worker, seqs);
          index.applyEvent(worker, { event_id: id, type: 'removed', sequence_hashes: seqs });
          what = `removed ${worker}`;
        } else if (roll < 0.78) {
          // Duplicated or early ids change nothing.
          const last = index.lastEventId(worker);
          const id = random() < 0.5 ? Math.max(0, last - Math.floor(random() * 3)) : last + 2;
          assert.notEqual(index.applyEvent(worker, { event_id: id, type: 'cleared' }).status, 'applied');
          what = `odd id ${worker}`;
        } else if (roll < 0.84) {
          model.clear(worker);
          index.removeWorker(worker);
          ids.delete(worker);
          resets.delete(worker);
          what = `removeWorker ${worker}`;
        } else if (pending === undefined) {
          const asOf = (ids.get(worker) ?? 0) + Math.floor(random() * 5);
          resets.set(worker, {
            reset: index.beginReset(worker),
            before: model.heldBy(worker),
            mentioned: new Set(),
            asOf,
          });
          what = `beginReset ${worker}`;
        } else continue;
        agreesWithModel(index, model, prompts, `step ${step}: ${what}`);
        for (const w of workers) {
          if (!resets.has(w)) assert.equal(index.lastEventId(w), ids.get(w) ?? 0, `step ${step}: ${what}`);
        }
      }
    });
  }
});

describe('RadixIndex event ids', () => {
  test('duplicates are ignored; a gap is reported and not applied until the missing ids arrive', () => {
    const index = new RadixIndex();
    const a = tokensOf(1, 2);
    const b = tokensOf(2, 2);
    const c = tokensOf(3, 2);
    assert.deepEqual(index.applyEvent('w', storedEvent(1, a)), { status: 'applied' });
    assert.deepEqual(index.applyEvent('w', storedEvent(1, b)), { status: 'duplicate', lastEventId: 1 });
    assert.equal(index.findMatches(localBlockKeys(b, 16)).get('w'), undefined);
    assert.deepEqual(index.applyEvent('w', storedEvent(3, c)), {
      status: 'gap',
      expectedEventId: 2,
      lastEventId: 1,
    });
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w'), undefined);
    assert.equal(index.lastEventId('w'), 1);
    // Resubscribing after id 1 replays 2 and 3 in order.
    assert.equal(index.applyEvent('w', storedEvent(2, b)).status, 'applied');
    assert.equal(index.applyEvent('w', storedEvent(3, c)).status, 'applied');
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w'), 2);
    assert.equal(index.lastEventId('w'), 3);
    assert.equal(index.applyEvent('w', { event_id: 2, type: 'cleared' }).status, 'duplicate');
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w'), 2);
    // Ids are per worker.
    assert.equal(index.applyEvent('v', storedEvent(1, a)).status, 'applied');
    const stats = index.stats();
    assert.equal(stats.duplicates, 2);
    assert.equal(stats.gaps, 1);
  });

  test('resetWorker replaces the worker from a dump and sets its last id', () => {
    const index = new RadixIndex();
    const a = tokensOf(1, 3);
    const b = tokensOf(2, 3);
    index.applyEvent('w', storedEvent(1, a));
    const snapshot = new RadixIndex();
    snapshot.applyEvent('w', storedEvent(1, b));
    index.resetWorker('w', snapshot.dump('w'), 40);
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w'), undefined);
    assert.equal(index.findMatches(localBlockKeys(b, 16)).get('w'), 3);
    assert.equal(index.lastEventId('w'), 40);
    assert.equal(index.applyEvent('w', storedEvent(40, a)).status, 'duplicate');
    assert.equal(index.applyEvent('w', storedEvent(41, a)).status, 'applied');
  });

  test('beginReset: a dump in parts keeps every part, removes the unmentioned only at finish', () => {
    const index = new RadixIndex();
    const [a, b, c] = [tokensOf(1, 3), tokensOf(2, 3), tokensOf(3, 2)];
    index.applyEvent('w', storedEvent(1, c));
    const reset = index.beginReset('w');
    assert.equal(reset.apply([storedEvent(9, a)]), 0);
    assert.equal(reset.apply([storedEvent(9, b), 'junk']), 1);
    // Between parts the worker holds the old and the new (nothing removed yet).
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w'), 2);
    reset.finish(9);
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w'), 3);
    assert.equal(index.findMatches(localBlockKeys(b, 16)).get('w'), 3);
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w'), undefined);
    assert.equal(index.lastEventId('w'), 9);

    // The worker left mid-dump and its slot went to another: the stale reset touches nothing.
    const stale = index.beginReset('w');
    index.removeWorker('w');
    index.applyEvent('x', storedEvent(1, c));
    assert.equal(stale.apply([storedEvent(9, a)]), 0);
    stale.finish(9);
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('x'), 2);
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('x'), undefined);
    assert.equal(index.lastEventId('x'), 1);

    // The worker left and came back under the same id, so in the same slot: a new incarnation,
    // which the stale reset must not touch either (its old nodes' ids were reused by `b`).
    const fresh = new RadixIndex();
    fresh.applyEvent('w', storedEvent(1, a));
    const old = fresh.beginReset('w');
    fresh.removeWorker('w');
    assert.equal(fresh.applyEvent('w', storedEvent(1, b)).status, 'applied');
    assert.equal(old.apply([storedEvent(9, c)]), 0);
    old.finish(9);
    assert.equal(fresh.findMatches(localBlockKeys(b, 16)).get('w'), 3);
    assert.equal(fresh.findMatches(localBlockKeys(c, 16)).get('w'), undefined);
    assert.equal(fresh.lastEventId('w'), 1);
    assert.equal(fresh.applyEvent('w', storedEvent(2, c)).status, 'applied');
  });
});

describe('RadixIndex malformed events', () => {
  const good = storedEvent(0, tokensOf(7, 3)) as Extract<KvEvent, { type: 'stored' }>;
  const block = good.blocks[0]!;
  const cases: [string, unknown, string][] = [
    ['null', null, 'malformed_event'],
    ['a string', 'stored', 'malformed_event'],
    ['an array', [], 'malformed_event'],
    ['string id', { event_id: '1', type: 'cleared' }, 'bad_event_id'],
    ['NaN id', { event_id: Number.NaN, type: 'cleared' }, 'bad_event_id'],
    ['negative id', { event_id: -1, type: 'cleared' }, 'bad_event_id'],
    ['fractional id', { event_id: 1.5, type: 'cleared' }, 'bad_event_id'],
    ['unsafe id', { event_id: 2 ** 60, type: 'cleared' }, 'bad_event_id'],
    ['unknown type', { event_id: 1, type: 'evicted' }, 'unknown_type'],
    ['stored without blocks', { event_id: 1, type: 'stored', parent_hash: null }, 'malformed_event'],
    [
      'blocks not an array',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: {} },
      'malformed_event',
    ],
    [
      'block not an object',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: [7] },
      'malformed_event',
    ],
    [
      'numeric hash',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: [{ ...block, local_hash: 12 }] },
      'bad_hash',
    ],
    [
      'hash 2^64',
      {
        event_id: 1,
        type: 'stored',
        parent_hash: null,
        blocks: [{ ...block, sequence_hash: '18446744073709551616' }],
      },
      'bad_hash',
    ],
    [
      'negative hash',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: [{ ...block, local_hash: '-5' }] },
      'bad_hash',
    ],
    [
      'hex hash',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: [{ ...block, local_hash: '0x1f' }] },
      'bad_hash',
    ],
    [
      'fractional hash',
      { event_id: 1, type: 'stored', parent_hash: null, blocks: [{ ...block, local_hash: '1.5' }] },
      'bad_hash',
    ],
    ['numeric parent', { ...good, event_id: 1, parent_hash: 5 }, 'bad_hash'],
    ['too many blocks', { ...good, event_id: 1, blocks: Array(9).fill(block) }, 'too_many_blocks'],
    ['unknown parent', { ...good, event_id: 1, parent_hash: '12345' }, 'unknown_parent'],
    ['removed not an array', { event_id: 1, type: 'removed', sequence_hashes: '1' }, 'malformed_event'],
    ['removed bad hash', { event_id: 1, type: 'removed', sequence_hashes: ['1', 'x'] }, 'bad_hash'],
    [
      'too many removed',
      { event_id: 1, type: 'removed', sequence_hashes: Array(9).fill('1') },
      'too_many_blocks',
    ],
  ];

  test('each is rejected with its reason and a counter, and the tree is untouched', () => {
    const index = new RadixIndex({ maxEventBlocks: 8 });
    const held = tokensOf(8, 4);
    index.applyEvent('w', storedEvent(1, held));
    const before = index.findMatches(localBlockKeys(held, 16)).toMap();
    const statsBefore = index.stats();
    for (const [name, event, reason] of cases) {
      const result = index.applyEvent(`x-${name}`, event);
      assert.equal(result.status, 'rejected', name);
      assert.equal(result.status === 'rejected' && result.reason, reason, name);
    }
    const after = index.stats();
    assert.equal(
      Object.values(after.rejected).reduce((a, b) => a + b, 0),
      cases.length,
    );
    assert.equal(after.rejected.bad_hash, 7);
    assert.deepEqual(index.findMatches(localBlockKeys(held, 16)).toMap(), before);
    assert.equal(after.nodes, statsBefore.nodes);
    assert.equal(after.blocks, statsBefore.blocks);
  });

  test('a type nested past the stack, or a long one, is an unknown_type with a short reason', () => {
    // A worker's JSON may hold anything: naming the refused type must not overflow the stack (the
    // index would throw instead of rejecting) nor copy a megabyte into the reason.
    let deep: unknown = 'stored';
    for (let i = 0; i < 200_000; i++) deep = [deep];
    const index = new RadixIndex();
    for (const [i, type] of [deep, 'x'.repeat(1 << 20)].entries()) {
      const result = index.applyEvent('w', { event_id: i + 1, type });
      assert.equal(result.status, 'rejected');
      assert.equal(result.status === 'rejected' && result.reason, 'unknown_type');
      assert.ok(result.status === 'rejected' && result.detail.length < 100, 'a short reason');
    }
    assert.equal(index.stats().rejected.unknown_type, 2);
  });

  test('inconsistent sequence hashes are rejected before anything changes', () => {
    const index = new RadixIndex();
    const tokens = tokensOf(9, 3);
    const event = storedEvent(1, tokens) as Extract<KvEvent, { type: 'stored' }>;
    index.applyEvent('w', event);
    // Same local hashes, another sequence hash for an indexed block.
    const mismatch = {
      ...event,
      event_id: 1,
      blocks: event.blocks.map((b, i) => (i === 2 ? { ...b, sequence_hash: '77' } : b)),
    };
    assert.deepEqual(index.applyEvent('v', mismatch).status, 'rejected');
    // A new block reusing an indexed block's sequence hash.
    const other = storedEvent(1, tokensOf(10, 2)) as Extract<KvEvent, { type: 'stored' }>;
    const conflict = {
      ...other,
      blocks: [other.blocks[0]!, { ...other.blocks[1]!, sequence_hash: event.blocks[0]!.sequence_hash }],
    };
    const result = index.applyEvent('u', conflict);
    assert.equal(result.status === 'rejected' && result.reason, 'sequence_hash_conflict');
    const stats = index.stats();
    assert.equal(stats.rejected.sequence_hash_mismatch, 1);
    assert.deepEqual(stats.blocksPerWorker, { w: 3, v: 0, u: 0 });
    assert.equal(stats.nodes, 3);
  });

  test('a sequence hash repeated inside one event keeps the consistent prefix and adds nothing else', () => {
    const index = new RadixIndex();
    const event = storedEvent(1, tokensOf(12, 3)) as Extract<KvEvent, { type: 'stored' }>;
    const repeated = {
      ...event,
      blocks: [
        event.blocks[0]!,
        event.blocks[1]!,
        { ...event.blocks[2]!, sequence_hash: event.blocks[1]!.sequence_hash },
      ],
    };
    const result = index.applyEvent('w', repeated);
    assert.equal(result.status === 'rejected' && result.reason, 'sequence_hash_conflict');
    const stats = index.stats();
    assert.equal(stats.nodes, 2);
    assert.deepEqual(stats.blocksPerWorker, { w: 2 });
    assert.equal(index.findMatches(localBlockKeys(tokensOf(12, 3), 16)).get('w'), 2);
  });

  test('rejects nonsensical options', () => {
    assert.throws(() => new RadixIndex({ maxNodes: 0 }), RangeError);
    assert.throws(() => new RadixIndex({ maxNodes: 1.5 }), RangeError);
    assert.throws(() => new RadixIndex({ evictToFraction: 0 }), RangeError);
  });

  test('removing blocks the worker does not hold is counted, not fatal', () => {
    const index = new RadixIndex();
    const tokens = tokensOf(11, 2);
    const { sequence } = computeBlockHashes(tokens, 16);
    index.applyEvent('w', storedEvent(1, tokens));
    const result = index.applyEvent('v', {
      event_id: 1,
      type: 'removed',
      sequence_hashes: [String(sequence[0]), '42'],
    });
    assert.equal(result.status, 'applied');
    assert.equal(index.stats().unknownRemovals, 2);
    assert.equal(index.findMatches(localBlockKeys(tokens, 16)).get('w'), 2);
  });
});

describe('RadixIndex memory budget', () => {
  test('evicts the least recently used blocks first, a stored run from its tail, and counts them', () => {
    const index = new RadixIndex({ maxNodes: 100, evictToFraction: 0.9 });
    const a = tokensOf(1, 40);
    const b = tokensOf(2, 40);
    const c = tokensOf(3, 40);
    index.applyEvent('w-1', storedEvent(1, a));
    index.applyEvent('w-1', storedEvent(2, b));
    // `a` was stored first but matched since: `b` is now the least recently used.
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w-1'), 40);
    index.applyEvent('w-1', storedEvent(3, c));
    // 120 nodes, down to 90: 30 of b's, its tail (its prefix is what a prompt would match).
    const stats = index.stats();
    assert.equal(stats.nodes, 90);
    assert.equal(stats.evictedNodes, 30);
    assert.equal(stats.evictedBlocks, 30);
    assert.equal(index.findMatches(localBlockKeys(b, 16)).get('w-1'), 10);
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w-1'), 40);
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w-1'), 40);
    // A partly matched prompt keeps its matched prefix longer than its unmatched tail: next go
    // b's rest (oldest), then 20 blocks of c's tail.
    index.findMatches(localBlockKeys(c.slice(0, 10 * 16), 16));
    index.findMatches(localBlockKeys(a, 16));
    const d = tokensOf(4, 30);
    index.applyEvent('w-1', storedEvent(4, d));
    assert.equal(index.stats().nodes, 90);
    assert.equal(index.findMatches(localBlockKeys(b, 16)).get('w-1'), undefined);
    assert.equal(index.findMatches(localBlockKeys(c, 16)).get('w-1'), 20);
    assert.equal(index.findMatches(localBlockKeys(a, 16)).get('w-1'), 40);
    assert.equal(index.findMatches(localBlockKeys(d, 16)).get('w-1'), 30);
  });
});

describe('RadixIndex memory budget is shared fairly', () => {
  test('a worker flooding stored events cannot evict a worker within its share', () => {
    const index = new RadixIndex({ maxNodes: 100, evictToFraction: 0.9 });
    const modest = tokensOf(500, 20);
    index.applyEvent('modest', storedEvent(1, modest));
    // 30 events of 40 new blocks each: 12× the whole budget, every block newer than modest's.
    for (let i = 1; i <= 30; i++) {
      const flood = tokensOf(600 + i, 40);
      assert.equal(index.applyEvent('flood', storedEvent(i, flood)).status, 'applied');
      const stats = index.stats();
      assert.ok(stats.nodes <= 100, `after flood ${i}: ${stats.nodes} nodes`);
      // The fair share is 90 / 2 workers = 45: modest (20) keeps all, the flood its newest.
      assert.equal(stats.blocksPerWorker.modest, 20, `after flood ${i}`);
      assert.equal(index.findMatches(localBlockKeys(flood, 16)).get('flood'), 40, `after flood ${i}`);
    }
    assert.equal(index.findMatches(localBlockKeys(modest, 16)).get('modest'), 20);
    const stats = index.stats();
    assert.equal(stats.evictedBlocks, stats.evictedNodes, 'only the flood lost blocks');
    assert.equal(stats.evictedBlocks, 30 * 40 - stats.blocksPerWorker.flood!);
  });

  test('workers all over their share are each cut to it, least recently used first', () => {
    const index = new RadixIndex({ maxNodes: 100, evictToFraction: 0.9 });
    const prompts = [tokensOf(1, 40), tokensOf(2, 40), tokensOf(3, 40)];
    index.applyEvent('w-1', storedEvent(1, prompts[0]!));
    index.applyEvent('w-2', storedEvent(1, prompts[1]!));
    index.findMatches(localBlockKeys(prompts[0]!, 16));
    // 120 nodes over a budget of 100: the share is 90 / 3 = 30 and each holds 40.
    index.applyEvent('w-3', storedEvent(1, prompts[2]!));
    const stats = index.stats();
    assert.equal(stats.nodes, 90);
    assert.deepEqual(stats.blocksPerWorker, { 'w-1': 30, 'w-2': 30, 'w-3': 30 });
    prompts.forEach((p, i) => {
      assert.equal(index.findMatches(localBlockKeys(p, 16)).get(`w-${i + 1}`), 30);
    });
  });

  test('a block shared with a worker within its share stays; the over-share worker leaves it', () => {
    const index = new RadixIndex({ maxNodes: 100, evictToFraction: 0.9 });
    const shared = tokensOf(700, 20);
    index.applyEvent('modest', storedEvent(1, shared));
    index.applyEvent('flood', storedEvent(1, shared));
    for (let i = 2; i <= 6; i++) index.applyEvent('flood', storedEvent(i, tokensOf(700 + i, 40)));
    const stats = index.stats();
    assert.ok(stats.nodes <= 90, `${stats.nodes} nodes`);
    assert.equal(stats.blocksPerWorker.modest, 20);
    assert.equal(index.findMatches(localBlockKeys(shared, 16)).get('modest'), 20);
    // The flood held the shared prompt longest ago: it left those blocks first, freeing no node.
    assert.equal(index.findMatches(localBlockKeys(shared, 16)).get('flood'), undefined);
    assert.equal(stats.blocksPerWorker.flood, 45);
  });
});

describe('RadixIndex hash tables against chosen hashes', () => {
  // Hashes a worker could aim at one slot of a table hashed by a public formula: low 16 bits
  // all zero (one home for any table up to 65,536 slots), and pairs (lo, hi) with
  // lo = hi × 0x85ebca77 mod 2³², which cancel under `lo ^ imul(hi, 0x85ebca77)`.
  const N = 2000;
  const aimed = (i: number) =>
    i % 2 === 0 ? String(BigInt(i + 1) << 16n) : u64String(Math.imul(i + 1, 0x85ebca77) >>> 0, i + 1);
  /** A hash with no pattern, for the fields not under attack. */
  const plain = (i: number) => String((BigInt(i + 1) * 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn);

  for (const hashSeed of [1, 0x5eed]) {
    test(`lookups stay short (longest probe bounded), seed ${hashSeed}`, () => {
      // Sequence-hash table: one chain whose sequence hashes are all aimed.
      const chain = new RadixIndex({ hashSeed });
      const blocks = Array.from({ length: N }, (_, i) => ({ local_hash: plain(i), sequence_hash: aimed(i) }));
      assert.equal(
        chain.applyEvent('w', { event_id: 1, type: 'stored', parent_hash: null, blocks }).status,
        'applied',
      );
      // Child table: N children of the root whose local hashes are all aimed.
      const fan = new RadixIndex({ hashSeed });
      for (let i = 0; i < N; i++) {
        const stored = fan.applyEvent('w', {
          event_id: i + 1,
          type: 'stored',
          parent_hash: null,
          blocks: [{ local_hash: aimed(i), sequence_hash: plain(i) }],
        });
        assert.equal(stored.status, 'applied');
      }
      // At load ≤ ½ with well-spread homes the longest probe of 2,000 entries is a few dozen
      // slots at most; aimed at one home it would be about 2,000.
      const seq = chain.longestProbes().seq;
      const child = fan.longestProbes().child;
      assert.ok(seq <= 40, `sequence-hash table: longest probe ${seq} slots`);
      assert.ok(child <= 40, `child table: longest probe ${child} slots`);
      // The tables still find what they hold, and removals (backward shift) keep them consistent.
      const keys = keysFromU64Strings(blocks.map((b) => b.local_hash));
      assert.equal(chain.findMatches(keys).get('w'), N);
      assert.equal(fan.findMatches(keysFromU64Strings([aimed(N - 1)])).get('w'), 1);
      const removed = Array.from({ length: N / 2 }, (_, i) => plain(2 * i));
      assert.equal(
        fan.applyEvent('w', { event_id: N + 1, type: 'removed', sequence_hashes: removed }).status,
        'applied',
      );
      assert.equal(fan.stats().nodes, N / 2);
      for (let i = 0; i < N; i++) {
        assert.equal(fan.findMatches(keysFromU64Strings([aimed(i)])).get('w'), i % 2 === 1 ? 1 : undefined);
      }
    });
  }
});
