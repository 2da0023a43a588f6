// Everything the request pipeline stages read: built once per router by service.ts.

import type { Tracer } from '@opentelemetry/api';
import type { FastifyBaseLogger } from 'fastify';
import type { RequestPlaneClient } from '../../tcp/index.js';
import type { RouterConfig } from '../config.js';
import type { Executor, PrefillPlanner } from '../execute/types.js';
import type { Fleet } from '../fleet/fleet.js';
import type { RouterMetrics } from '../metrics.js';
import type { RequestLimits } from '../openai/request.js';
import type { RoutingPolicy } from '../scheduling/index.js';
import type { Tokenizer } from '../tokenizer/index.js';

export interface PipelineDeps {
  readonly config: RouterConfig;
  readonly limits: RequestLimits;
  readonly fleet: Fleet;
  /** Chooses decode workers. */
  readonly policy: RoutingPolicy;
  /** Chooses prefill workers: a separate instance (own round-robin cursor) of the same config. */
  readonly prefillPolicy: RoutingPolicy;
  readonly tokenizer: Tokenizer;
  readonly metrics: RouterMetrics;
  readonly tracer: Tracer;
  /** The router's logger: retries and fallbacks at info (`--verbose`). */
  readonly log: FastifyBaseLogger;
  readonly client: RequestPlaneClient;
  /** `aggregated` runs plans without a prefill leg; `disaggregated` those with one. */
  readonly executors: { aggregated: Executor; disaggregated?: Executor };
  /** Remote-vs-local prefill decision; absent = always local (aggregated). */
  readonly prefillPlanner?: PrefillPlanner;
}
