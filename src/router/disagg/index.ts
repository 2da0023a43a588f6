// Disaggregated prefill/decode: pure decision rules. Import from here.

export { reusedPromptTokens } from './cached-tokens.js';
export { enforcedDisaggError, type FallbackReason, fallbackReason } from './fallback.js';
export {
  decidePlacement,
  type PlacementDecision,
  type PlacementInput,
  type PlacementReason,
  PREFILL_LEG_OUTPUT_TOKENS,
  type PrefillPlacement,
} from './placement.js';
export { checkPrefillAnswer } from './prefill-answer.js';
