// The request plane's shared secret (the router's and workers' --worker-token): a client with a
// token sends `authorization: Bearer <token>` in every request frame's headers; a server with one
// serves only frames that carry exactly that (docs/protocol.md §1).
//
// The server compares the header with `Bearer <token>` through the one SecretCheck of both planes
// (src/util/secret-check.ts, constant time). A digest per frame would cost the router's hot path
// (~1 µs each), so a connection remembers the value it was last allowed with: later frames on it
// that carry that same string are compared with `===`. That comparison only ever runs on a
// connection that has already proved it holds the token, so its timing reveals nothing new.

/** The frame header carrying the token (the control plane's HTTP header of the same name and form). */
export const AUTHORIZATION_HEADER = 'authorization';

/** The header value a client with `token` sends. */
export function bearer(token: string): string {
  return `Bearer ${token}`;
}
