// The mock inference engine: a deterministic discrete-event model of a continuous-batching LLM
// server. No timers or sockets: the shell submits requests with the current time, calls
// `tick(now)` whenever `nextWakeAt()` is reached (and after each submit/cancel), and forwards the
// outputs `tick` returns. Simulated steps chain back to back from the end of the previous step, so
// a late timer costs no throughput and a test can drive it with a fake clock.

import { KvrouteError } from '../errors.js';
import type { KvEvent } from '../protocols/kv-events.js';
import { type LoadReport, sequenceBlockCount } from '../protocols/worker-plane.js';
import { type CachedBlock, KvBlockPool } from './block-pool.js';
import { KvEventLog } from './event-log.js';
import { decodeStepMs, prefillMs } from './timing.js';
import { promptSeed, TokenSampler } from './token-sampler.js';

/** Cuts token ids into full blocks and hashes them (CONTRACT.md §4); src/kv-index provides the real one. */
export type BlockHasher = (
  tokens: readonly number[],
  blockSize: number,
) => { local: BigUint64Array; sequence: BigUint64Array };

export interface EngineConfig {
  blockSize: number;
  /** Capacity of the KV pool in blocks. */
  kvBlocks: number;
  /** Tokens one step may process: one per decoding sequence plus prefill chunks. */
  maxBatchedTokens: number;
  /** Divides every simulated duration. */
  speedup: number;
  /** Requests that may wait (queued for room, or on a reserveWaiting place) before new ones are rejected as overloaded. */
  maxWaiting: number;
  /** KV events kept for replay. */
  eventRingCapacity: number;
  /**
   * Blocks' worth of KV events kept for replay (what they store or remove): bounds the ring's
   * memory. Default: twice kvBlocks (ringBlocksFor).
   */
  eventRingBlocks?: number;
  /** Mixed into every request's sampler seed. */
  seed: number;
}

export const ENGINE_DEFAULTS = {
  blockSize: 16,
  kvBlocks: 16384,
  maxBatchedTokens: 8192,
  speedup: 1,
  maxWaiting: 1024,
  eventRingCapacity: 65536,
  seed: 0,
} as const satisfies EngineConfig;

/**
 * The replay ring's default budget: twice the pool. A subscriber further behind gets a dump, which
 * sends every cached block once, never more than the pool: a replay of more than a pool-full or
 * two would cost the worker and the router more than the dump it saves. At ~90 bytes of heap a
 * block, the default pool's ring holds ~3 MB at most.
 */
function ringBlocksFor(kvBlocks: number): number {
  return 2 * kvBlocks;
}

export interface EngineRequest {
  id: string;
  tokenIds: readonly number[];
  maxTokens: number;
  stopTokenIds?: readonly number[];
  /** KV computed by a prefill worker: install these leading blocks instead of computing them. */
  transfer?: { blockSize: number; blockHashes: readonly string[] };
  /** First output token already produced by remote prefill: emitted first, counts toward maxTokens. */
  firstToken?: number;
}

/**
 * A place in the waiting queue taken before its request can be submitted (an overlapped generate
 * waiting for its KV handoff, see reserveWaiting). release() gives it back; idempotent.
 */
export interface WaitingPlace {
  release(): void;
}

/** Where each prompt token's KV came from. cachedTokens + transferredTokens + computedTokens = promptTokens. */
export interface RequestAccounting {
  promptTokens: number;
  /** Found in this pool's prefix cache. */
  cachedTokens: number;
  /** Installed from a kv_transfer (blocks not already cached here). */
  transferredTokens: number;
  installedBlocks: number;
  /** Prefilled by this engine. */
  computedTokens: number;
}

export interface EngineOutput {
  requestId: string;
  tokenIds: number[];
  finishReason: null | 'length' | 'stop';
  /** On a request's first output only: its prompt accounting and the sequence hashes of its full blocks. */
  prompt?: { accounting: RequestAccounting; sequenceHashes: readonly bigint[] };
}

export interface EngineTotals {
  requests: number;
  finished: number;
  cancelled: number;
  rejected: number;
  promptTokens: number;
  cachedTokens: number;
  transferredTokens: number;
  installedBlocks: number;
  computedTokens: number;
  generatedTokens: number;
  steps: number;
  /** Simulated busy time, ms (after speedup). */
  busyMs: number;
}

interface Sequence {
  readonly req: EngineRequest;
  readonly arrival: number;
  readonly localHashes: BigUint64Array;
  readonly sequenceHashes: BigUint64Array;
  /** Blocks reserved for the whole life of the sequence: prompt + max_tokens. */
  readonly totalBlocks: number;
  readonly stop: ReadonlySet<number>;
  readonly sampler: TokenSampler;
  readonly accounting: RequestAccounting;
  /** Prompt's full blocks, held from admission to finish. */
  blocks: CachedBlock[];
  anonymousBlocks: number;
  /** Prompt tokens whose KV exists. */
  promptDone: number;
  generated: number;
  alive: boolean;
}

interface Step {
  endsAt: number;
  prefill: { seq: Sequence; tokens: number }[];
  decode: Sequence[];
}

export class MockEngine {
  readonly config: EngineConfig;
  readonly events: KvEventLog;
  readonly pool: KvBlockPool;
  private readonly hasher: BlockHasher;
  private readonly waiting: Sequence[] = [];
  /** Places taken by reserveWaiting() and not yet submitted or released: they share maxWaiting. */
  private reservedPlaces = 0;
  /** Admitted sequences in admission order (prefilling first in that order, then decoding). */
  private readonly running = new Map<string, Sequence>();
  private step: Step | null = null;
  /** End of the last simulated step. */
  private clock = Number.NEGATIVE_INFINITY;
  private readonly counters: EngineTotals = {
    requests: 0,
    finished: 0,
    cancelled: 0,
    rejected: 0,
    promptTokens: 0,
    cachedTokens: 0,
    transferredTokens: 0,
    installedBlocks: 0,
    computedTokens: 0,
    generatedTokens: 0,
    steps: 0,
    busyMs: 0,
  };

  constructor(config: Partial<EngineConfig>, hasher: BlockHasher) {
    this.config = { ...ENGINE_DEFAULTS, ...config };
    this.hasher = hasher;
    this.events = new KvEventLog(
      this.config.eventRingCapacity,
      this.config.eventRingBlocks ?? ringBlocksFor(this.config.kvBlocks),
    );
    this.pool = new KvBlockPool(this.config.kvBlocks, this.events);
  }

  /**
   * Takes a place in the waiting queue for a request that cannot be submitted yet (an overlapped
   * generate waiting for its KV handoff): until submit() takes it over or it is released, it
   * counts against maxWaiting like a queued request. Throws `overloaded` when the queue is full.
   */
  reserveWaiting(): WaitingPlace {
    this.checkQueueRoom();
    this.reservedPlaces++;
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        this.reservedPlaces--;
      },
    };
  }

  /**
   * Queues a request (it joins the batch at the next step that has room). Throws KvrouteError:
   * `context_length_exceeded` when it could never fit the pool, `overloaded` when the waiting queue
   * (queued requests plus reserved places) is full, `invalid_request` for a duplicate id or a
   * kv_transfer that does not match the prompt. With `place` (reserveWaiting) the request takes
   * it over, whether or not it is queued: it was counted against the bound when it reserved.
   */
  submit(req: EngineRequest, now: number, place?: WaitingPlace): void {
    place?.release();
    const { blockSize, kvBlocks } = this.config;
    if (this.running.has(req.id) || this.waiting.some((s) => s.req.id === req.id)) {
      throw new KvrouteError('invalid_request', `request_id '${req.id}' is already in flight`);
    }
    const promptTokens = req.tokenIds.length;
    if (promptTokens === 0) throw new KvrouteError('invalid_request', 'token_ids must not be empty');
    // The router's scheduler counts the same (sequenceBlockCount) to send it only where it fits.
    const totalBlocks = sequenceBlockCount(promptTokens, req.maxTokens, blockSize);
    if (totalBlocks > kvBlocks) {
      this.counters.rejected++;
      throw new KvrouteError(
        'context_length_exceeded',
        `prompt of ${promptTokens} tokens plus max_tokens ${req.maxTokens} needs ${totalBlocks} KV blocks of ${blockSize} tokens; this worker's pool holds only ${kvBlocks}`,
        { param: 'token_ids' },
      );
    }
    if (place === undefined) this.checkQueueRoom();
    const { local, sequence } = this.hasher(req.tokenIds, blockSize);
    if (req.transfer) checkTransfer(req.transfer, sequence, blockSize);
    const sampler = new TokenSampler(promptSeed(req.tokenIds, this.config.seed));
    this.waiting.push({
      req,
      arrival: now,
      localHashes: local,
      sequenceHashes: sequence,
      totalBlocks,
      stop: new Set(req.stopTokenIds ?? []),
      sampler,
      accounting: {
        promptTokens,
        cachedTokens: 0,
        transferredTokens: 0,
        installedBlocks: 0,
        computedTokens: 0,
      },
      blocks: [],
      anonymousBlocks: 0,
      promptDone: 0,
      generated: 0,
      alive: true,
    });
    this.counters.requests++;
  }

  /** Throws `overloaded` (and counts the rejection) when no request may join the waiting queue. */
  private checkQueueRoom(): void {
    const { maxWaiting } = this.config;
    if (this.waiting.length + this.reservedPlaces < maxWaiting) return;
    this.counters.rejected++;
    throw new KvrouteError(
      'overloaded',
      `worker queue is full (${maxWaiting} requests waiting for KV room or a KV handoff)`,
      { retryAfterSeconds: 1 },
    );
  }

  /** Stops a request at once and frees its blocks. Returns false when it is unknown (or finished). */
  cancel(id: string): boolean {
    const seq = this.running.get(id);
    if (seq) {
      this.finish(seq);
      this.counters.cancelled++;
      return true;
    }
    const i = this.waiting.findIndex((s) => s.req.id === id);
    if (i === -1) return false;
    this.waiting[i]!.alive = false;
    this.waiting.splice(i, 1);
    this.counters.cancelled++;
    return true;
  }

  /**
   * Completes every simulated step that has ended by `now` and starts the next one; returns the
   * tokens produced. O(running sequences + admitted blocks) per step.
   */
  tick(now: number): EngineOutput[] {
    const outputs: EngineOutput[] = [];
    for (;;) {
      if (this.step) {
        if (this.step.endsAt > now) break;
        this.completeStep(this.step, outputs);
        this.clock = this.step.endsAt;
        this.step = null;
      }
      const head = this.waiting[0];
      if (this.running.size === 0 && (head === undefined || head.arrival > now)) break;
      const start = this.running.size > 0 ? this.clock : Math.max(this.clock, head!.arrival);
      this.step = this.planStep(start);
      if (this.step === null) break;
    }
    return outputs;
  }

  /** When `tick` next has work: the end of the current step, or null when idle. */
  nextWakeAt(): number | null {
    return this.step?.endsAt ?? null;
  }

  load(): LoadReport {
    let activePrefill = 0;
    let decodeBlocks = 0;
    for (const seq of this.running.values()) {
      activePrefill += seq.req.tokenIds.length - seq.promptDone;
      if (seq.promptDone === seq.req.tokenIds.length) decodeBlocks += this.heldBlocks(seq);
    }
    for (const seq of this.waiting) activePrefill += seq.req.tokenIds.length;
    return {
      active_prefill_tokens: activePrefill,
      active_decode_blocks: decodeBlocks,
      used_blocks: this.pool.usedBlocks,
      total_blocks: this.pool.capacity,
      running: this.running.size,
      waiting: this.waiting.length,
    };
  }

  totals(): EngineTotals {
    return { ...this.counters };
  }

  /** Accounting of a request still in flight (undefined once finished or unknown). */
  accountingOf(id: string): RequestAccounting | undefined {
    const seq = this.running.get(id) ?? this.waiting.find((s) => s.req.id === id);
    return seq ? { ...seq.accounting } : undefined;
  }

  /** The whole prefix cache as `stored` events numbered `as_of_event_id`, for a subscriber that fell behind. */
  dump(): { asOfEventId: number; events: KvEvent[] } {
    const asOfEventId = this.events.lastEventId;
    return {
      asOfEventId,
      events: this.pool.dump().map((body) => ({ event_id: asOfEventId, ...body }) as KvEvent),
    };
  }

  /** Fraction of the pool holding tokens of running sequences (the decode-time model's input). */
  kvUsage(): number {
    let held = 0;
    for (const seq of this.running.values()) held += this.heldBlocks(seq);
    return Math.min(1, held / this.pool.capacity);
  }

  /** Blocks that hold this sequence's tokens so far (reserved decode space not yet written is excluded). */
  private heldBlocks(seq: Sequence): number {
    const length = seq.promptDone + Math.max(0, seq.generated - 1);
    return Math.min(seq.totalBlocks, Math.ceil(length / this.config.blockSize));
  }

  private planStep(start: number): Step | null {
    const { maxBatchedTokens, speedup } = this.config;
    const decode: Sequence[] = [];
    const prefill: { seq: Sequence; tokens: number }[] = [];
    for (const seq of this.running.values()) if (seq.promptDone === seq.req.tokenIds.length) decode.push(seq);
    let budget = maxBatchedTokens - decode.length;
    // Sequences already part-way through prefill continue first (chunked prefill), then new ones join.
    for (const seq of this.running.values()) {
      if (budget <= 0) break;
      const remaining = seq.req.tokenIds.length - seq.promptDone;
      if (remaining === 0) continue;
      const tokens = Math.min(remaining, budget);
      prefill.push({ seq, tokens });
      budget -= tokens;
    }
    while (budget > 0 && this.waiting.length > 0 && this.waiting[0]!.arrival <= start) {
      const seq = this.waiting[0]!;
      if (!this.admit(seq)) break; // strict FIFO: the head waits for room, nobody overtakes it
      this.waiting.shift();
      const tokens = Math.min(seq.req.tokenIds.length - seq.promptDone, budget);
      prefill.push({ seq, tokens });
      budget -= Math.max(1, tokens);
    }
    if (decode.length === 0 && prefill.length === 0) return null;
    let duration = 0;
    for (const p of prefill) duration += prefillMs(p.tokens, speedup);
    if (decode.length > 0) duration += decodeStepMs(this.kvUsage(), speedup);
    this.counters.steps++;
    this.counters.busyMs += duration;
    return { endsAt: start + duration, prefill, decode };
  }

  /**
   * Takes the blocks a sequence needs for its whole life if they are available now: cached prefix
   * blocks are shared, transferred blocks are installed (and announced as stored), the rest are
   * allocated for computing. Returns false (changing nothing) when the pool lacks room.
   */
  private admit(seq: Sequence): boolean {
    const { blockSize } = this.config;
    const fullBlocks = seq.sequenceHashes.length;
    let cost = seq.totalBlocks - fullBlocks;
    for (const hash of seq.sequenceHashes) if (!((this.pool.get(hash)?.refs ?? 0) > 0)) cost++;
    if (cost > this.pool.availableBlocks) return false;

    // Acquire every existing block before allocating, so eviction never takes one this prompt uses.
    const existing: (CachedBlock | undefined)[] = [];
    for (const hash of seq.sequenceHashes) {
      const block = this.pool.get(hash);
      if (block) this.pool.acquire(block);
      existing.push(block);
    }
    let fresh = seq.totalBlocks - fullBlocks;
    for (const block of existing) if (block === undefined) fresh++;
    this.pool.ensureFree(fresh);
    let hits = 0;
    while (hits < fullBlocks && existing[hits]?.computed) hits++;
    const blocks: CachedBlock[] = existing.map(
      (block, i) =>
        block ??
        this.pool.allocate(
          seq.sequenceHashes[i]!,
          seq.localHashes[i]!,
          i === 0 ? null : seq.sequenceHashes[i - 1]!,
        ),
    );
    seq.blocks = blocks;
    seq.anonymousBlocks = seq.totalBlocks - fullBlocks;
    this.pool.reserveAnonymous(seq.anonymousBlocks);

    const transferred = seq.req.transfer?.blockHashes.length ?? 0;
    const installed = Math.max(0, transferred - hits);
    if (installed > 0) this.pool.markComputed(blocks.slice(hits, transferred));
    const acc = seq.accounting;
    acc.cachedTokens = hits * blockSize;
    acc.installedBlocks = installed;
    acc.transferredTokens = installed * blockSize;
    seq.promptDone = (hits + installed) * blockSize;
    this.running.set(seq.req.id, seq);
    this.counters.promptTokens += acc.promptTokens;
    this.counters.cachedTokens += acc.cachedTokens;
    this.counters.transferredTokens += acc.transferredTokens;
    this.counters.installedBlocks += installed;
    return true;
  }

  private completeStep(step: Step, outputs: EngineOutput[]): void {
    const { blockSize } = this.config;
    for (const { seq, tokens } of step.prefill) {
      if (!seq.alive) continue;
      const before = Math.floor(seq.promptDone / blockSize);
      seq.promptDone += tokens;
      seq.accounting.computedTokens += tokens;
      this.counters.computedTokens += tokens;
      const after = Math.floor(seq.promptDone / blockSize);
      if (after > before) this.pool.markComputed(seq.blocks.slice(before, after));
      if (seq.promptDone === seq.req.tokenIds.length) this.emitToken(seq, outputs);
    }
    for (const seq of step.decode) if (seq.alive) this.emitToken(seq, outputs);
  }

  private emitToken(seq: Sequence, outputs: EngineOutput[]): void {
    let token = seq.sampler.next();
    if (seq.generated === 0 && seq.req.firstToken !== undefined) token = seq.req.firstToken;
    seq.generated++;
    this.counters.generatedTokens++;
    const finishReason = seq.stop.has(token) ? 'stop' : seq.generated >= seq.req.maxTokens ? 'length' : null;
    const output: EngineOutput = { requestId: seq.req.id, tokenIds: [token], finishReason };
    if (seq.generated === 1) {
      output.prompt = { accounting: { ...seq.accounting }, sequenceHashes: Array.from(seq.sequenceHashes) };
    }
    outputs.push(output);
    if (finishReason !== null) {
      this.finish(seq);
      this.counters.finished++;
    }
  }

  private finish(seq: Sequence): void {
    seq.alive = false;
    this.running.delete(seq.req.id);
    this.pool.release(seq.blocks);
    this.pool.releaseAnonymous(seq.anonymousBlocks);
    seq.blocks = [];
    seq.anonymousBlocks = 0;
  }
}

/** A transfer must describe this prompt's leading full blocks, hashed with this engine's block size. */
function checkTransfer(
  transfer: NonNullable<EngineRequest['transfer']>,
  sequence: BigUint64Array,
  blockSize: number,
): void {
  if (transfer.blockSize !== blockSize) {
    throw new KvrouteError(
      'invalid_request',
      `kv_transfer.block_size ${transfer.blockSize} differs from this worker's block size ${blockSize}`,
      { param: 'kv_transfer.block_size' },
    );
  }
  if (transfer.blockHashes.length > sequence.length) {
    throw new KvrouteError(
      'invalid_request',
      `kv_transfer names ${transfer.blockHashes.length} blocks but the prompt has only ${sequence.length} full blocks`,
      { param: 'kv_transfer.block_hashes' },
    );
  }
  for (let i = 0; i < transfer.blockHashes.length; i++) {
    if (transfer.blockHashes[i] !== sequence[i]!.toString()) {
      throw new KvrouteError(
        'invalid_request',
        `kv_transfer.block_hashes[${i}] does not match the prompt's block hash`,
        { param: 'kv_transfer.block_hashes' },
      );
    }
  }
}
