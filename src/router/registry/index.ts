// The registry's public surface: import from here.

export {
  ActiveLoad,
  type LoadBooking,
  type WorkerLoad,
} from './active-load.js';
export {
  isUnspecifiedHost,
  parseAddress,
  validateRegistration,
  type WorkerRegistration,
} from './validate-registration.js';
export {
  DEFAULT_BASE_EJECTION_MS,
  DEFAULT_FAILURES_TO_EJECT,
  DEFAULT_MAX_EJECTION_MS,
  type FailureVerdict,
  type HealthView,
  WorkerHealth,
  type WorkerHealthOptions,
} from './worker-health.js';
export {
  DEFAULT_LEASE_TTL_MS,
  DEFAULT_MAX_WORKERS,
  type RegisterResult,
  type Worker,
  type WorkerPhase,
  WorkerRegistry,
  type WorkerRegistryOptions,
} from './worker-registry.js';
