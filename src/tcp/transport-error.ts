// The one error type the request-plane client throws. `kind` says what happened; `retryable` says
// whether sending the same request to another worker is safe (the handler cannot have produced output).

export type TransportErrorKind =
  | 'connect_failed'
  | 'disconnected_before_response'
  | 'disconnected_mid_stream'
  | 'remote_error'
  | 'timeout'
  | 'cancelled'
  | 'protocol_error'
  /** Not sent: every connection to the address holds a backlog the peer has not read. */
  | 'peer_not_reading';

export class TransportError extends Error {
  readonly kind: TransportErrorKind;
  /** true only where a retry on another worker is safe: connect_failed, disconnected_before_response,
   * peer_not_reading, and a remote_error by which the server refused the request before running
   * any handler. */
  readonly retryable: boolean;
  /** For remote_error: the code the worker sent (a KvrouteError code or the plane's reason). */
  readonly remoteCode: string | undefined;

  constructor(
    kind: TransportErrorKind,
    message: string,
    options: { cause?: unknown; remoteCode?: string; refused?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TransportError';
    this.kind = kind;
    this.remoteCode = options.remoteCode;
    this.retryable =
      kind === 'connect_failed' ||
      kind === 'disconnected_before_response' ||
      kind === 'peer_not_reading' ||
      (kind === 'remote_error' && options.refused === true);
  }
}

export function isTransportError(err: unknown): err is TransportError {
  return err instanceof TransportError;
}
