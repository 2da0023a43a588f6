// What `usage.prompt_tokens_details.cached_tokens` reports for a disaggregated request.
//
// "Reused" means prompt tokens whose KV some worker already held when the request arrived, so no
// one computed them for this request. The decode worker's own figure counts the blocks it was sent
// as cached too (they were not computed *there*), but they were computed for this request on the
// prefill worker, so they are not reuse. Hence:
// - remote prefill ran: the prefill worker's cache hits (what it did not compute), plus nothing
//   from decode (decode only installs what prefill produced or already held);
// - local prefill: the decode worker's local hits, as it reports them.

/** Reused prompt tokens for the usage block. */
export function reusedPromptTokens(
  remotePrefill: { cached_tokens: number } | null,
  decodeReportedCached: number,
): number {
  return remotePrefill === null ? decodeReportedCached : remotePrefill.cached_tokens;
}
