// Worker <-> router control plane over HTTP (CONTRACT.md §2): registration, heartbeats, leases.

export const WORKER_ROLES = ['prefill', 'decode', 'both'] as const;

/** The longest model name a registration may carry (the router refuses longer ones with a 400). */
export const MAX_MODEL_NAME_LENGTH = 256;
export type WorkerRole = (typeof WORKER_ROLES)[number];

/** Body of `POST /v1/workers`. */
export interface RegisterWorkerRequest {
  role: WorkerRole;
  /** Request-plane address, `host:port` (IPv6 as `[::1]:port`). */
  address: string;
  model: string;
  /** Tokens per KV block; must equal the router's block size. */
  block_size: number;
  /** Total KV blocks in the worker's pool (its KV capacity). */
  kv_blocks: number;
  /**
   * Tokens one engine step may batch. Optional (CONTRACT.md §2 does not list it): the router
   * assumes the engine's default, `ENGINE_DEFAULTS.maxBatchedTokens`, when it is left out.
   */
  max_batched_tokens?: number;
  /** True when the worker serves the `kv_events` endpoint; otherwise the router uses approximate mode. */
  kv_events?: boolean;
  /**
   * Optional: one random id per worker process. A registration repeated by the same process (its
   * first answer was lost, say) renews the worker it registered instead of replacing it as a
   * restart would (which purges its index and cuts its streams).
   */
  instance_id?: string;
}

/** `201` answer to `POST /v1/workers`. */
export interface RegisterWorkerResponse {
  worker_id: string;
  /** The worker must heartbeat well within this (the worker uses a third of it). */
  lease_ttl_ms: number;
}
