// KV events as they travel from a worker to the router (request-plane endpoint `kv_events`).
// 64-bit hashes travel as decimal strings so that no JSON reader loses precision; the router's
// index narrows them to its internal key (see src/kv-index/README.md).

/** Unsigned 64-bit hash as a decimal string, exactly as in shared/test-vectors. */
export type U64String = string;

export interface StoredBlock {
  local_hash: U64String;
  sequence_hash: U64String;
}

export type KvEvent =
  | {
      event_id: number;
      type: 'stored';
      /** Sequence hash of the block before the first stored one; null when the run starts at the root. */
      parent_hash: U64String | null;
      blocks: StoredBlock[];
    }
  | { event_id: number; type: 'removed'; sequence_hashes: U64String[] }
  | { event_id: number; type: 'cleared' };

/** Body of a `kv_events` subscription request. */
export interface KvEventsSubscribe {
  /** Resume after this event id (the last one the subscriber applied); 0 or absent = from the start. */
  after_event_id?: number;
}

/**
 * Chunks streamed back on a `kv_events` subscription. Each carries a bounded share of events (the
 * worker's KV_EVENTS_CHUNK_BLOCKS), so a long replay, a large dump or a backlog comes in several.
 */
export type KvEventsChunk =
  | {
      /** The requested id is older than the worker's ring buffer: rebuild from this snapshot. */
      kind: 'dump';
      /** The snapshot reflects every event up to and including this id. */
      as_of_event_id: number;
      /** `stored` events (ids may repeat `as_of_event_id`) that rebuild the worker's whole pool. */
      events: KvEvent[];
      /** The dump continues in the next chunk (kind 'dump', same `as_of_event_id`); absent on its last part. */
      more?: true;
    }
  | { kind: 'events'; events: KvEvent[] };
