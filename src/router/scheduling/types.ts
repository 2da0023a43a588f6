// The scheduler's vocabulary: what a policy is given (candidates, overlaps, the request's size)
// and what it answers (a decision with every candidate's score). Structural types only, so the
// scheduler depends on neither the registry nor the KV index: a registry Worker is a Candidate,
// and the index's `Map<workerId, blocks>` is an OverlapSource.

export const POLICY_NAMES = ['kv', 'round-robin', 'random', 'least-loaded'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Uniform random number in [0, 1). Inject a seeded one for reproducible choices. */
export type Rng = () => number;

/** What the scheduler needs to know about a worker. */
export interface Candidate {
  readonly id: string;
  /**
   * KV capacity in blocks: a request whose sequence needs more is never sent here (the engine
   * would refuse it), and the busy check compares booked blocks against it.
   */
  readonly kvBlocks: number;
  readonly load: {
    readonly activePrefillTokens: number;
    /** Booked new blocks: what the busy check compares against kvBlocks (memory). */
    readonly activeDecodeBlocks: number;
    /** Booked whole sequences: the decode work in the kv cost (registry/active-load.ts). */
    readonly activeContextBlocks: number;
  };
}

/** Leading prompt blocks each worker holds; a worker it does not know has overlap 0. A Map fits. */
export interface OverlapSource {
  get(workerId: string): number | undefined;
}

export interface RouteRequest<C extends Candidate = Candidate> {
  /** The workers to choose among (e.g. `registry.candidates(model, 'decode')`). */
  candidates: readonly C[];
  /** Prompt length in tokens. */
  promptTokens: number;
  /**
   * Output tokens to expect (e.g. max_tokens; 1 for a prefill leg); counts toward the blocks the
   * request will hold, which a candidate's pool must hold. Default 0.
   */
  outputTokens?: number;
  /** Cached leading blocks per worker (the KV index's `findMatches`). Absent = no overlap anywhere. */
  overlaps?: OverlapSource;
  /** Per-call override of the configured overlap weight (0 = pick by load alone). */
  overlapWeight?: number;
}

/** One candidate's figures. Every policy reports all of them; each policy minimises one. */
export interface CandidateScore {
  workerId: string;
  /** Leading prompt blocks cached on the worker (clamped to the prompt's full blocks). */
  overlapBlocks: number;
  /** Prompt tokens the worker would not recompute: overlapBlocks × blockSize. */
  cachedTokens: number;
  /** Prompt tokens the worker would compute: promptTokens − cachedTokens. */
  uncachedTokens: number;
  /** Blocks the request would add: ceil((prompt + output tokens) / blockSize) − overlapBlocks. */
  newBlocks: number;
  /** (worker's active prefill tokens + uncachedTokens) / blockSize. */
  prefillBlocks: number;
  /** Worker's active context blocks (its running sequences whole) + newBlocks. */
  decodeBlocks: number;
  /** KV cost: overlapWeight × prefillBlocks + decodeBlocks (what `kv` minimises). */
  cost: number;
  /** Current load in blocks, without this request: active prefill tokens / blockSize + active decode blocks (what `least-loaded` minimises). */
  load: number;
  /** Over a busy threshold: never chosen. */
  busy: boolean;
  /** The worker's pool holds the whole sequence, sequenceBlockCount (the engine's count) <= kvBlocks: otherwise never chosen. */
  fits: boolean;
}

interface DecisionBase {
  policy: PolicyName;
  /** Overlap weight the costs were computed with. */
  overlapWeight: number;
  /** Number of candidates scored (for tracing, without building `candidates`). */
  candidateCount: number;
  /** One score per candidate, in the candidates' order. Built lazily on first read (explain, JSON). */
  readonly candidates: CandidateScore[];
}

export interface SelectedDecision<C extends Candidate = Candidate> extends DecisionBase {
  outcome: 'selected';
  worker: C;
  chosen: CandidateScore;
  /** What to book on the chosen worker: `registry.load.book(worker.id, requestId, booking)`. */
  booking: { prefillTokens: number; decodeBlocks: number; contextBlocks: number };
}

/** Every candidate that could hold the request is busy: answer 503 with Retry-After. */
export interface OverloadedDecision extends DecisionBase {
  outcome: 'overloaded';
  retryAfterSeconds: number;
}

/**
 * No candidate's KV pool can hold the request (busy or not): the request is too large for the
 * model's workers, the client's problem (decisionError: 400 context_length_exceeded).
 */
export interface TooLargeDecision extends DecisionBase {
  outcome: 'too_large';
  /** Blocks the sequence needs: sequenceBlockCount, ceil((prompt + output tokens) / blockSize). */
  requiredBlocks: number;
  /** The largest candidate pool, in blocks. */
  largestKvBlocks: number;
  blockSize: number;
}

/** No candidate at all: answer 503. */
export interface NoWorkersDecision extends DecisionBase {
  outcome: 'no_workers';
}

export type RouteDecision<C extends Candidate = Candidate> =
  | SelectedDecision<C>
  | OverloadedDecision
  | TooLargeDecision
  | NoWorkersDecision;

/** The one interface every policy implements. `select` books nothing; round-robin advances its cursor. */
export interface RoutingPolicy {
  readonly name: PolicyName;
  readonly config: Readonly<ResolvedSchedulerConfig>;
  select<C extends Candidate>(request: RouteRequest<C>): RouteDecision<C>;
}

/** Typed configuration the factory builds a policy from. */
export interface SchedulerConfig {
  policy: PolicyName;
  /** Tokens per KV block. */
  blockSize: number;
  /** Weight of prefill work against decode blocks in the KV cost (default 1). */
  overlapWeight?: number;
  /** 0 = always the lowest cost (ties at random); > 0 = softmax over normalised costs (kv only; default 0). */
  temperature?: number;
  /** A worker with more active prefill tokens than this is busy (default 65536; Infinity disables). */
  busyPrefillTokens?: number;
  /** A worker with more active decode blocks than this fraction of its kv_blocks is busy (default 0.95; Infinity disables). */
  busyDecodeFraction?: number;
  /** Retry-After for the overloaded outcome (default 1 s). */
  retryAfterSeconds?: number;
  /** Random source for ties, softmax and `random` (default Math.random). */
  rng?: Rng;
}

export type ResolvedSchedulerConfig = Required<SchedulerConfig>;
