// The router's tokenizer: text prompts to token ids, output ids back to text. Short texts are
// encoded inline (cheaper than a thread hop); longer ones go to a piscina pool so a long prompt
// never blocks the event loop. The pool is bounded: past it, encode() fails fast with
// `overloaded` rather than queueing without limit.

import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { KvrouteError } from '../../errors.js';
import { withRootContext } from '../../telemetry/index.js';
import { MAX_TIMER_MS } from '../config.js';
import { decodeTokens, TokenStreamDecoder } from './stream-decoder.js';
import { ENCODING_NAME, encodeText, TEXT_TOKEN_COUNT, VOCAB_SIZE } from './vocabulary.js';
import type { EncodeTask } from './worker.js';

/**
 * Texts up to this many UTF-16 code units are encoded on the calling thread. A pool hop costs the
 * event loop itself ~55-70 µs (post, receive, resolve) and the request ~50 µs p50 and 1.5-2.5 ms
 * p99 more, so only work well above that is worth sending: 2,048 characters cost ~150-260 µs in
 * English and ~0.7 ms in CJK (the costliest common script per character), so no inline encode
 * holds the event loop much past a millisecond, and ordinary prompts do not queue for the pool's
 * bounded slots (256 sent most chat prompts there, and a burst of them got 503). See README.md.
 */
export const DEFAULT_INLINE_MAX_CHARS = 2048;

export interface TokenizerOptions {
  /** Longest text encoded inline; longer goes to the pool. 0 sends everything to the pool. */
  inlineMaxChars?: number;
  /** Worker threads (default: available cores - 1, at least 1, at most 4). */
  maxThreads?: number;
  /** Pooled encodes allowed to wait beyond the ones running (default 64). */
  maxQueue?: number;
  /** The pool's worker script (default: resolveWorkerFile()); tests give a broken one. */
  workerFile?: string;
}

export interface TokenizerStats {
  inline: number;
  pooled: number;
  rejected: number;
  /** Long texts dropped before a thread took them, because their caller's signal aborted. */
  cancelled: number;
}

/** A pooled encode waiting for a free thread. */
interface Waiter {
  start: () => void;
  fail: (reason: unknown) => void;
}

/**
 * The compiled worker. From dist/ it sits next to this module; when this module runs from src/
 * under tsx (tests), the build's copy under dist/ is used, so `npm run build` must have run.
 */
export function resolveWorkerFile(moduleUrl: string = import.meta.url): string {
  const beside = new URL('./worker.js', moduleUrl);
  if (existsSync(fileURLToPath(beside))) return beside.href;
  const built = new URL('../../../dist/src/router/tokenizer/worker.js', moduleUrl);
  if (existsSync(fileURLToPath(built))) return built.href;
  throw new Error(
    `tokenizer worker not found at ${fileURLToPath(beside)} or ${fileURLToPath(built)}: run \`npm run build\` (piscina needs compiled JS; tsx does not reach worker threads)`,
  );
}

function defaultThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

export class Tokenizer {
  readonly encoding = ENCODING_NAME;
  /** Ids in the vocabulary, special tokens included. */
  readonly vocabSize = VOCAB_SIZE;
  /** Ids below this are ordinary text tokens (what a mock engine should emit). */
  readonly textTokenCount = TEXT_TOKEN_COUNT;
  readonly inlineMaxChars: number;
  readonly #pool: Piscina<EncodeTask, Uint32Array>;
  readonly #maxPending: number;
  readonly #maxThreads: number;
  #pending = 0;
  /** Encodes handed to piscina (at most one per thread); the rest wait in #waiting, FIFO. */
  #running = 0;
  readonly #waiting = new Set<Waiter>();
  #closed = false;
  /**
   * Aborted (and replaced) when a thread fails outside a task and leaves no thread behind; every
   * pooled run listens to it.
   */
  #threadFailure = new AbortController();
  readonly #stats: TokenizerStats = { inline: 0, pooled: 0, rejected: 0, cancelled: 0 };

  constructor(opts: TokenizerOptions = {}) {
    this.inlineMaxChars = opts.inlineMaxChars ?? DEFAULT_INLINE_MAX_CHARS;
    const maxThreads = opts.maxThreads ?? defaultThreads();
    this.#maxThreads = maxThreads;
    this.#maxPending = maxThreads + (opts.maxQueue ?? 64);
    this.#pool = new Piscina({
      filename: opts.workerFile ?? resolveWorkerFile(),
      // No thread until the first long prompt (or warmup()); once started, threads stay until
      // close(), since a cold thread costs ~240 ms to load the vocabulary. Idle piscina threads
      // do not keep the process alive.
      minThreads: 0,
      maxThreads,
      idleTimeout: MAX_TIMER_MS,
    });
    // Piscina reports a thread that fails outside any task (its script does not load: a broken
    // build) as an 'error' event, which unheard would crash the process, and then starts no more
    // threads, so the waiting encodes (warmup's at startup) would wait forever. They fail instead.
    this.#pool.on('error', (err: unknown) => this.#onThreadError(err));
  }

  #onThreadError(err: unknown): void {
    // No encode was the failed thread's own. While other threads live (running an encode, or
    // still loading), piscina hands them what waits, so nothing waits forever; failing every
    // encode here aborted the running ones too, and piscina ends the thread of an aborted task:
    // one thread failing to load (a dist/ replaced under a running router) cost the encodes on
    // the healthy threads and the threads themselves. With no thread left, nothing would take them.
    if (this.#pool.threads.length > 0) return;
    const failed = this.#threadFailure;
    this.#threadFailure = new AbortController();
    const reason = err instanceof Error ? err.message : String(err);
    failed.abort(
      new KvrouteError('internal_error', `tokenizer worker thread failed: ${reason}`, { cause: err }),
    );
  }

  /** One pooled encode; rejects with the thread's failure if a thread fails while it waits. */
  async #run(task: EncodeTask): Promise<Uint32Array> {
    const failure = this.#threadFailure.signal;
    try {
      // Submitted from the root context: the first long prompt starts the pool's thread, and a
      // thread (with its message port) made inside a request would hold that request's trace
      // context for the pool's life. The await below still resumes in the caller's context.
      return await withRootContext(() => this.#pool.run(task, { signal: failure }));
    } catch (err) {
      if (failure.aborted) throw failure.reason;
      // close() ends the threads under the encodes still waiting: piscina's plain Error would
      // reach the client as a 500, where any other request at this point gets a 503.
      if (this.#closed) throw new KvrouteError('shutting_down', 'tokenizer is closed', { cause: err });
      throw err;
    }
  }

  /** Starts a pool thread and loads its vocabulary now, so the first long prompt does not wait. */
  async warmup(): Promise<void> {
    if (this.#closed) throw new KvrouteError('shutting_down', 'tokenizer is closed');
    await this.#run({ text: '' });
  }

  /**
   * Text short enough to encode on the event loop (at most `inlineMaxChars`), encoded now, with no
   * promise: the common path of a router request. Undefined for a longer text (use `encode`).
   * `maxTokens`: as for `encode`.
   */
  encodeInline(text: string, maxTokens?: number): number[] | undefined {
    if (this.#closed) throw new KvrouteError('shutting_down', 'tokenizer is closed');
    if (text.length > this.inlineMaxChars) return undefined;
    this.#stats.inline++;
    return encodeText(text, maxTokens);
  }

  /**
   * Text to token ids (special-token text is tokenized as ordinary characters). A long text that
   * is still waiting for a thread when `signal` aborts is dropped and rejects with its reason; one
   * already running finishes (ending its thread would cost a ~240 ms restart). With `maxTokens`,
   * encoding stops once the ids number more than it: a text over the limit gives its first
   * maxTokens + 1 ids, and the rest of it is never encoded (a prompt to be refused costs little).
   */
  async encode(text: string, signal?: AbortSignal, maxTokens?: number): Promise<Uint32Array> {
    const inline = this.encodeInline(text, maxTokens);
    if (inline !== undefined) return Uint32Array.from(inline);
    // Our own bound (running + waiting) instead of piscina's maxQueue, whose limit also counts
    // threads still starting: this one is exact and testable.
    if (this.#pending >= this.#maxPending) {
      this.#stats.rejected++;
      throw new KvrouteError(
        'overloaded',
        `tokenizer queue is full (${this.#maxPending} long prompts pending)`,
        {
          retryAfterSeconds: 1,
        },
      );
    }
    if (signal?.aborted) {
      this.#stats.cancelled++;
      throw signal.reason;
    }
    this.#pending++;
    this.#stats.pooled++;
    try {
      await this.#threadSlot(signal);
      try {
        return await this.#run({ text, maxTokens });
      } finally {
        this.#releaseSlot();
      }
    } finally {
      this.#pending--;
    }
  }

  /**
   * Waits for a free thread. The waiting happens here, not in piscina's queue: piscina aborts a
   * queued task too, but ends the thread of a running one, and we want only the waiting dropped.
   */
  #threadSlot(signal: AbortSignal | undefined): Promise<void> {
    if (this.#running < this.#maxThreads) {
      this.#running++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.#waiting.delete(waiter);
        this.#stats.cancelled++;
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        fail: (reason) => {
          signal?.removeEventListener('abort', onAbort);
          reject(reason);
        },
      };
      this.#waiting.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Hands the finished encode's thread to the longest waiting one, if any. */
  #releaseSlot(): void {
    const next = this.#waiting.values().next();
    if (next.done) {
      this.#running--;
      return;
    }
    this.#waiting.delete(next.value);
    next.value.start();
  }

  /** Token ids to text. Throws KvrouteError('invalid_request') for an id outside the vocabulary. */
  decode(ids: Iterable<number>): string {
    return decodeTokens(ids);
  }

  /** A per-stream incremental decoder for output tokens arriving one at a time. */
  decodeStream(): TokenStreamDecoder {
    return new TokenStreamDecoder();
  }

  /** Counters since construction (copy). */
  get stats(): TokenizerStats {
    return { ...this.#stats };
  }

  /** Live worker threads (0 before the first long prompt and after close). */
  get threads(): number {
    return this.#pool.threads.length;
  }

  /** Ends the worker threads; pending pooled encodes reject with shutting_down. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new KvrouteError('shutting_down', 'tokenizer is closed');
    for (const waiter of this.#waiting) waiter.fail(closed);
    this.#waiting.clear();
    await this.#pool.destroy();
  }
}
