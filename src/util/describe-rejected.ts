// How every validator names a value it refuses, in an error message or a rejection reason.

/**
 * A rejected value for a message, short whatever it is: JSON.stringify of a deeply nested array
 * would itself overflow the stack, and a long string or array would make the message its size.
 * Every validator of a client's or a peer's JSON (the OpenAI request, a worker's registration,
 * a worker's payloads, a worker's KV events) describes what it refuses with this one.
 */
export function describeRejected(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 32 ? `${v.slice(0, 32)}...` : v);
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object' && v !== null) return 'an object';
  return String(v);
}
