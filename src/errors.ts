// One errors module: every failure kvroute reports carries a stable code, and each code maps
// straight to one HTTP status and one OpenAI error type. Callers throw `KvrouteError(code, msg)`;
// the HTTP layer renders `{error: {message, type, code}}` from it without further branching.

export const ERROR_CODES = {
  // The caller's mistakes (4xx).
  invalid_request: { status: 400, type: 'invalid_request_error' },
  invalid_json: { status: 400, type: 'invalid_request_error' },
  // 404 as OpenAI (and vLLM) answer it: the openai client raises NotFoundError for a wrong model.
  model_not_found: { status: 404, type: 'invalid_request_error' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error' },
  // A control-plane call without the router's worker token (--worker-token), or with another one.
  unauthorized: { status: 401, type: 'authentication_error' },
  not_found: { status: 404, type: 'not_found_error' },
  worker_not_found: { status: 404, type: 'not_found_error' },
  method_not_allowed: { status: 405, type: 'invalid_request_error' },
  request_timeout: { status: 408, type: 'invalid_request_error' },
  payload_too_large: { status: 413, type: 'invalid_request_error' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  headers_too_large: { status: 431, type: 'invalid_request_error' },
  client_closed: { status: 499, type: 'invalid_request_error' },
  // The service's failures (5xx).
  internal_error: { status: 500, type: 'server_error' },
  worker_error: { status: 502, type: 'server_error' },
  worker_disconnected: { status: 502, type: 'server_error' },
  no_workers: { status: 503, type: 'server_error' },
  overloaded: { status: 503, type: 'server_error' },
  shutting_down: { status: 503, type: 'server_error' },
  timeout: { status: 504, type: 'server_error' },
} as const satisfies Record<string, { status: number; type: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Whether `code` (a worker's, say: any string) is one of ours. Own keys only: not `constructor`. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: ErrorCode; param?: string | null };
}

export class KvrouteError extends Error {
  readonly code: ErrorCode;
  /** Seconds a client should wait before retrying (rendered as `Retry-After`). */
  readonly retryAfterSeconds: number | undefined;
  readonly param: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; retryAfterSeconds?: number; param?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KvrouteError';
    this.code = code;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.param = options.param;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  toJSON(): OpenAIErrorBody {
    return {
      error: {
        message: this.message,
        type: ERROR_CODES[this.code].type,
        code: this.code,
        ...(this.param === undefined ? {} : { param: this.param }),
      },
    };
  }
}

export function isKvrouteError(err: unknown): err is KvrouteError {
  return err instanceof KvrouteError;
}

/** Raised for bad command-line options or environment variables: the CLI prints one line and exits 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
