// Validates the body of `POST /v1/workers` into one normalised registration. Pure: no I/O.
// Every rejection is a KvrouteError('invalid_request') whose message and `param` name the field,
// so the HTTP layer answers 400 in OpenAI's error shape without further branching.

import { ENGINE_DEFAULTS } from '../../engine/engine.js';
import { KvrouteError } from '../../errors.js';
import {
  MAX_MODEL_NAME_LENGTH,
  type RegisterWorkerRequest,
  WORKER_ROLES,
  type WorkerRole,
} from '../../protocols/registration.js';
import { formatAddress } from '../../tcp/index.js';
import { describeRejected } from '../../util/describe-rejected.js';

/**
 * A registration after validation: the address split into host and port, kv_events and
 * max_batched_tokens defaulted.
 */
export interface WorkerRegistration {
  role: WorkerRole;
  /** Canonical `host:port` (IPv6 hosts in brackets), used as the worker's identity on the request plane. */
  address: string;
  /** Host without brackets, ready for `net.connect`. */
  host: string;
  port: number;
  model: string;
  blockSize: number;
  kvBlocks: number;
  maxBatchedTokens: number;
  kvEvents: boolean;
  /** The worker process's `instance_id`, when it sent one. */
  instanceId: string | undefined;
}

/** Bound on `instance_id` (a UUID is 36 characters). */
const MAX_INSTANCE_ID_LENGTH = 128;

function invalid(message: string, param: string): KvrouteError {
  return new KvrouteError('invalid_request', message, { param });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function positiveInteger(body: Record<string, unknown>, field: keyof RegisterWorkerRequest): number {
  const v = body[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw invalid(`${field} must be a positive integer, got ${describeRejected(v)}`, field);
  }
  return v;
}

// Hostnames and IPv4 literals: letters, digits, dots, hyphens, underscores (no spaces, no scheme).
const HOST_NAME = /^[A-Za-z0-9._-]{1,253}$/;
// Bracketed IPv6 literal, optionally with a zone id (`[fe80::1%eth0]`).
const IPV6_HOST = /^\[([0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?)\]$/;

/** Splits `host:port` (IPv6 as `[::1]:port`); throws invalid_request naming `address`. */
export function parseAddress(address: unknown): { host: string; port: number; address: string } {
  if (typeof address !== 'string' || address.length === 0) {
    throw invalid(`address must be a 'host:port' string, got ${describeRejected(address)}`, 'address');
  }
  const colon = address.lastIndexOf(':');
  const hostPart = colon === -1 ? '' : address.slice(0, colon);
  const portPart = colon === -1 ? '' : address.slice(colon + 1);
  const port = /^[0-9]{1,5}$/.test(portPart) ? Number(portPart) : Number.NaN;
  if (!(port >= 1 && port <= 65_535)) {
    throw invalid(`address must end in ':port' with a port in 1..65535, got '${address}'`, 'address');
  }
  const v6 = IPV6_HOST.exec(hostPart);
  if (v6) return { host: v6[1]!, port, address: `${hostPart}:${port}` };
  if (!HOST_NAME.test(hostPart)) {
    throw invalid(`address must be 'host:port' (IPv6 as '[::1]:port'), got '${address}'`, 'address');
  }
  return { host: hostPart, port, address: `${hostPart}:${port}` };
}

/** The unspecified addresses a server listens on for every interface: not an address to dial. */
const UNSPECIFIED_HOSTS = new Set(['0.0.0.0', '::', '0:0:0:0:0:0:0:0']);

/** Whether `host` (as parseAddress gives it) listens on every interface, so the router lists its peer address instead. */
export function isUnspecifiedHost(host: string): boolean {
  return UNSPECIFIED_HOSTS.has(host);
}

/**
 * The address to dial for a worker that registered `host:port`. A worker listening on every
 * interface (`--host 0.0.0.0` or `::`) registers that unspecified host, which a router elsewhere
 * cannot dial (it would reach itself), and two such workers on different hosts with the same port
 * would register one address and keep replacing each other. So an unspecified host becomes the
 * address the registration came from (`peerHost`, the HTTP peer), which is the worker's own on the
 * same network. An IPv4-mapped peer (`::ffff:10.0.0.5`) is written as IPv4.
 */
function dialableAddress(
  parsed: { host: string; port: number; address: string },
  peerHost: string | undefined,
): { host: string; port: number; address: string } {
  if (peerHost === undefined || !isUnspecifiedHost(parsed.host)) return parsed;
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(peerHost);
  const host = mapped ? mapped[1]! : peerHost;
  return { host, port: parsed.port, address: formatAddress(host, parsed.port) };
}

/**
 * Checks a registration body against the router's block size. The block size must match exactly:
 * block hashes (CONTRACT.md §4) are only comparable between pools cut at the same size.
 * `peerHost`: where the registration came from, dialled instead of an unspecified host.
 */
export function validateRegistration(
  body: unknown,
  routerBlockSize: number,
  peerHost?: string,
): WorkerRegistration {
  if (!isPlainObject(body)) throw invalid('registration body must be a JSON object', 'body');
  const role = body.role;
  if (typeof role !== 'string' || !(WORKER_ROLES as readonly string[]).includes(role)) {
    throw invalid(`role must be one of ${WORKER_ROLES.join('|')}, got ${describeRejected(role)}`, 'role');
  }
  const { host, port, address } = dialableAddress(parseAddress(body.address), peerHost);
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0 || model.length > MAX_MODEL_NAME_LENGTH) {
    throw invalid(`model must be a non-empty string of at most ${MAX_MODEL_NAME_LENGTH} characters`, 'model');
  }
  const blockSize = positiveInteger(body, 'block_size');
  if (blockSize !== routerBlockSize) {
    throw invalid(
      `block_size ${blockSize} differs from the router's block size ${routerBlockSize}`,
      'block_size',
    );
  }
  const kvBlocks = positiveInteger(body, 'kv_blocks');
  // Not in CONTRACT.md §2's list of registration fields, so a conforming worker may leave it out;
  // it then batches what a worker started without --max-batched-tokens would.
  const maxBatchedTokens =
    body.max_batched_tokens === undefined
      ? ENGINE_DEFAULTS.maxBatchedTokens
      : positiveInteger(body, 'max_batched_tokens');
  const kvEvents = body.kv_events;
  if (kvEvents !== undefined && typeof kvEvents !== 'boolean') {
    throw invalid(`kv_events must be a boolean, got ${describeRejected(kvEvents)}`, 'kv_events');
  }
  const instanceId = body.instance_id;
  if (
    instanceId !== undefined &&
    (typeof instanceId !== 'string' || instanceId.length === 0 || instanceId.length > MAX_INSTANCE_ID_LENGTH)
  ) {
    throw invalid(`instance_id must be a string of 1 to ${MAX_INSTANCE_ID_LENGTH} characters`, 'instance_id');
  }
  return {
    role: role as WorkerRole,
    address,
    host,
    port,
    model,
    blockSize,
    kvBlocks,
    maxBatchedTokens,
    kvEvents: kvEvents === true,
    instanceId,
  };
}
