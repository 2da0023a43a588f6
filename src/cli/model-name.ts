// The model name a worker registers with. The router refuses a registration whose model is empty
// or longer than MAX_MODEL_NAME_LENGTH (src/router/registry/validate-registration.ts), and a
// refused worker stops, so `kvroute worker` and `kvroute demo` check it before starting anything.

import { UsageError } from '../errors.js';
import { MAX_MODEL_NAME_LENGTH } from '../protocols/registration.js';

/** The --model value if the router would take it; otherwise a UsageError. */
export function modelName(value: unknown): string {
  const name = String(value ?? '');
  if (name.length === 0) throw new UsageError('--model: give a model name');
  if (name.length > MAX_MODEL_NAME_LENGTH) {
    throw new UsageError(`--model: at most ${MAX_MODEL_NAME_LENGTH} characters, got ${name.length}`);
  }
  return name;
}
