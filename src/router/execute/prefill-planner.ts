// The pipeline's prefill planner for a disaggregated fleet: after the decode worker is chosen, pick
// the best prefill candidate KV-aware (span `kv_find_best_match` inside span `prefill_routing`) and
// apply the conditional-disaggregation rules of src/router/disagg. Books nothing; records each
// decision in `kvroute_disagg_decisions_total{decision,reason}` (a /v1/route explanation counts too:
// the pipeline plans both through the same call).

import type { Tracer } from '@opentelemetry/api';
import { recordFailure } from '../../telemetry/index.js';
import { decidePlacement, PREFILL_LEG_OUTPUT_TOKENS } from '../disagg/index.js';
import type { RouterMetrics } from '../metrics.js';
import type { Worker, WorkerRegistry } from '../registry/index.js';
import { decisionError, type RoutingPolicy } from '../scheduling/index.js';
import type { PrefillPlanner, RoutingInput, WorkerDecision } from './types.js';

export interface PrefillPlannerDeps {
  registry: WorkerRegistry;
  policy: RoutingPolicy;
  tracer: Tracer;
  metrics: RouterMetrics;
  maxLocalPrefill: number;
  /** Prefill on a prefill worker whenever one is registered (no short-prompt rules; all busy = 503). */
  enforceDisagg: boolean;
}

export interface PlannedPrefill {
  prefill: WorkerDecision | null;
  reason: string;
}

export class KvPrefillPlanner implements PrefillPlanner {
  constructor(private readonly deps: PrefillPlannerDeps) {}

  /** Plans and counts the decision. Throws 503 under --enforce-disagg when every prefill worker is busy. */
  choosePrefill(routing: RoutingInput, decode: WorkerDecision): PlannedPrefill {
    // An aggregated fleet (no prefill workers for the model) decides without the
    // prefill_routing/kv_find_best_match span pair: two spans per request it would never use.
    const planned =
      this.deps.registry.candidates(routing.model, 'prefill').length === 0
        ? { prefill: null, reason: 'no_prefill_workers' }
        : this.plan(routing, decode);
    this.deps.metrics.disaggDecisions.labels(planned.prefill ? 'remote' : 'local', planned.reason).inc();
    return planned;
  }

  private plan(routing: RoutingInput, decode: WorkerDecision): PlannedPrefill {
    const { tracer, registry, policy, maxLocalPrefill, enforceDisagg } = this.deps;
    return tracer.startActiveSpan('prefill_routing', (span) => {
      try {
        const candidates = registry.candidates(routing.model, 'prefill');
        const prefill = tracer.startActiveSpan('kv_find_best_match', (match) => {
          try {
            // Only a worker whose pool holds the prompt and the first token is chosen; when none
            // does, the decode worker prefills (decidePlacement: prefill_pool_too_small).
            const d = policy.select<Worker>({
              candidates,
              promptTokens: routing.promptTokens,
              outputTokens: PREFILL_LEG_OUTPUT_TOKENS,
              overlaps: routing.overlaps,
            });
            if (match.isRecording()) {
              const selected = d.outcome === 'selected' ? d : undefined;
              match.setAttributes({
                'kvroute.phase': 'prefill',
                'kvroute.candidates': d.candidateCount,
                'kvroute.outcome': d.outcome,
                'kvroute.worker_id': selected?.worker.id,
                'kvroute.overlap_blocks': selected?.chosen.overlapBlocks,
                'kvroute.cost': selected?.chosen.cost,
              });
            }
            return d;
          } catch (err) {
            recordFailure(match, err);
            throw err;
          } finally {
            match.end();
          }
        });
        const placement = decidePlacement({ prefill, decode, maxLocalPrefill });
        let chosen: WorkerDecision | null = placement.prefill;
        let reason: string = placement.reason;
        if (enforceDisagg && placement.placement === 'local') {
          if (prefill.outcome === 'overloaded') throw decisionError(prefill);
          if (prefill.outcome === 'selected' && placement.reason !== 'same_worker') {
            // The short-prompt rules are what --enforce-disagg switches off.
            chosen = prefill;
            reason = 'enforced';
          }
        }
        if (span.isRecording()) {
          span.setAttributes({
            'kvroute.prefill.placement': chosen ? 'remote' : 'local',
            'kvroute.prefill.reason': reason,
            'kvroute.prefill.worker_id': chosen?.worker.id,
          });
        }
        return { prefill: chosen, reason };
      } catch (err) {
        // The 503 of --enforce-disagg with every prefill worker busy, or a policy failure.
        recordFailure(span, err);
        throw err;
      } finally {
        span.end();
      }
    });
  }
}
