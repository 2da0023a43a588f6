// The fast trace-context checks must answer exactly as the references they replace: core's
// parseTraceParent and W3CTraceContextPropagator, and the API's id checks. One suite runs both
// propagators through the same carriers; seeded fuzz holds the parser and the id checks to the
// references on near-valid input (the shapes where a hand-written check would go wrong).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  isSpanContextValid as apiIsSpanContextValid,
  isValidSpanId as apiIsValidSpanId,
  isValidTraceId as apiIsValidTraceId,
  type Context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  ROOT_CONTEXT,
  type SpanContext,
  type TextMapPropagator,
  trace,
} from '@opentelemetry/api';
import {
  parseTraceParent,
  suppressTracing,
  TraceState,
  W3CTraceContextPropagator,
} from '@opentelemetry/core';
import {
  isSpanContextValid,
  isValidSpanId,
  isValidTraceId,
  parseTraceparent,
  TraceContextPropagator,
} from '../src/telemetry/trace-context-propagator.js';
import { seededRng } from '../src/util/seeded-rng.js';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN_ID = '00f067aa0ba902b7';
const CANONICAL = `00-${TRACE_ID}-${SPAN_ID}-01`;

/** Characters a mutation draws from: hex of both cases, separators, whitespace of several kinds. */
const ALPHABET = '0123456789abcdefABCDEFxg- \t\u00a0\u2028\ufeff.';

function mutate(rng: () => number, s: string): string {
  const pick = () => ALPHABET[Math.floor(rng() * ALPHABET.length)]!;
  const at = Math.floor(rng() * (s.length + 1));
  switch (Math.floor(rng() * 6)) {
    case 0:
      return s.slice(0, at) + pick() + s.slice(at + 1); // replace one
    case 1:
      return s.slice(0, at) + pick() + s.slice(at); // insert one
    case 2:
      return s.slice(0, at) + s.slice(at + 1); // delete one
    case 3:
      return `${pick()}${s}`; // leading
    case 4:
      return `${s}${rng() < 0.5 ? pick() : `-${pick()}${pick()}`}`; // trailing, or an extra field
    default: {
      // A zeroed or maxed-out run (all-zero ids, version ff).
      const len = 1 + Math.floor(rng() * 32);
      const fill = (rng() < 0.5 ? '0' : 'f').repeat(len);
      return s.slice(0, at) + fill + s.slice(at + len);
    }
  }
}

function nearValid(rng: () => number): string {
  const version = rng() < 0.7 ? '00' : rng() < 0.5 ? 'ff' : 'cc';
  let s = `${version}-${TRACE_ID}-${SPAN_ID}-${rng() < 0.5 ? '01' : '00'}`;
  const mutations = Math.floor(rng() * 3);
  for (let i = 0; i < mutations; i++) s = mutate(rng, s);
  return s;
}

test('parseTraceparent answers as core parseTraceParent, canonical and odd input alike', () => {
  const fixed = [
    CANONICAL,
    `00-${TRACE_ID}-${SPAN_ID}-00`,
    `00-${TRACE_ID}-${SPAN_ID}-ff`,
    `01-${TRACE_ID}-${SPAN_ID}-01`,
    `ff-${TRACE_ID}-${SPAN_ID}-01`,
    `00-${'0'.repeat(32)}-${SPAN_ID}-01`,
    `00-${TRACE_ID}-${'0'.repeat(16)}-01`,
    `00-${TRACE_ID.toUpperCase()}-${SPAN_ID}-01`,
    ` ${CANONICAL}`,
    `${CANONICAL} `,
    `\t${CANONICAL}\t`,
    `  ${CANONICAL}`,
    `${CANONICAL}-extra`,
    `cc-${TRACE_ID}-${SPAN_ID}-01-extra`,
    `cc-${TRACE_ID}-${SPAN_ID}-01-`,
    '',
    '00',
    `00_${TRACE_ID}_${SPAN_ID}_01`,
  ];
  for (const value of fixed) assert.deepStrictEqual(parseTraceparent(value), parseTraceParent(value), value);
  const rng = seededRng(20261124);
  let accepted = 0;
  for (let i = 0; i < 20_000; i++) {
    const value = nearValid(rng);
    const expected = parseTraceParent(value);
    assert.deepStrictEqual(parseTraceparent(value), expected, JSON.stringify(value));
    if (expected) accepted++;
  }
  // The fuzz must exercise both answers, or it proves nothing.
  assert.ok(accepted > 2_000 && accepted < 18_000, `accepted ${accepted}`);
});

test('the id checks answer as the API checks', () => {
  const rng = seededRng(7);
  const ids: string[] = [TRACE_ID, SPAN_ID, '0'.repeat(32), '0'.repeat(16), '', 'g'.repeat(32)];
  for (let i = 0; i < 20_000; i++) {
    const length = [15, 16, 17, 31, 32, 33][Math.floor(rng() * 6)]!;
    let id = '';
    for (let j = 0; j < length; j++) {
      id += rng() < 0.3 ? '0' : ALPHABET[Math.floor(rng() * 23)]!; // hex of both cases, x, g, -
    }
    ids.push(id);
  }
  let valid = 0;
  for (const id of ids) {
    assert.equal(isValidTraceId(id), apiIsValidTraceId(id), id);
    assert.equal(isValidSpanId(id), apiIsValidSpanId(id), id);
    if (apiIsValidTraceId(id) || apiIsValidSpanId(id)) valid++;
  }
  assert.ok(valid > 100, `only ${valid} valid ids`);
  for (const [traceId, spanId] of [
    [TRACE_ID, SPAN_ID],
    [TRACE_ID, '0'.repeat(16)],
    ['0'.repeat(32), SPAN_ID],
    [TRACE_ID.toUpperCase(), SPAN_ID.toUpperCase()],
  ] as const) {
    const sc: SpanContext = { traceId, spanId, traceFlags: 1 };
    assert.equal(isSpanContextValid(sc), apiIsSpanContextValid(sc));
  }
});

type Carrier = Record<string, string | string[] | undefined>;

const propagators: [string, TextMapPropagator][] = [
  ['core W3CTraceContextPropagator', new W3CTraceContextPropagator()],
  ['TraceContextPropagator', new TraceContextPropagator()],
];

function inject(p: TextMapPropagator, ctx: Context): Carrier {
  const carrier: Carrier = {};
  p.inject(ctx, carrier, defaultTextMapSetter);
  return carrier;
}

function extract(p: TextMapPropagator, carrier: Carrier): SpanContext | undefined {
  return trace.getSpanContext(p.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter));
}

/** A span context as extract returns it, with its trace state as text (TraceState is a class). */
function plain(sc: SpanContext | undefined): unknown {
  return sc && { ...sc, traceState: sc.traceState?.serialize() };
}

test('both propagators write the same headers', () => {
  const contexts: [string, Context][] = [
    ['sampled', trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: 1 })],
    [
      'not sampled',
      trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: 0 }),
    ],
    [
      'with trace state',
      trace.setSpanContext(ROOT_CONTEXT, {
        traceId: TRACE_ID,
        spanId: SPAN_ID,
        traceFlags: 1,
        traceState: new TraceState('vendor=a,other=b'),
      }),
    ],
    [
      'invalid ids',
      trace.setSpanContext(ROOT_CONTEXT, { traceId: '0'.repeat(32), spanId: SPAN_ID, traceFlags: 1 }),
    ],
    ['no span', ROOT_CONTEXT],
    [
      'suppressed',
      suppressTracing(
        trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: 1 }),
      ),
    ],
  ];
  const [[, reference], [, fast]] = propagators;
  for (const [name, ctx] of contexts)
    assert.deepStrictEqual(inject(fast!, ctx), inject(reference!, ctx), name);
  assert.equal(inject(fast!, contexts[0]![1]).traceparent, CANONICAL);
});

test('flags of 0x10 and up stay two hex digits, so the next hop can read them', () => {
  // core writes `-0${hex}`: `-010` here, a 56-character traceparent that no parser accepts.
  const [, [, fast]] = propagators;
  for (const traceFlags of [0x10, 0x11, 0xff]) {
    const ctx = trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags });
    const { traceparent } = inject(fast!, ctx);
    assert.equal(traceparent, `00-${TRACE_ID}-${SPAN_ID}-${traceFlags.toString(16)}`);
    assert.equal(extract(fast!, { traceparent: traceparent! })?.traceFlags, traceFlags);
  }
});

test('both propagators read the same span context from the same headers', () => {
  const carriers: Carrier[] = [
    { traceparent: CANONICAL },
    { traceparent: CANONICAL, tracestate: 'vendor=a' },
    { traceparent: CANONICAL, tracestate: ['vendor=a', 'other=b'] },
    { traceparent: [CANONICAL, `00-${TRACE_ID}-${SPAN_ID}-00`] },
    { traceparent: [] },
    { traceparent: '' },
    { traceparent: ` ${CANONICAL}` },
    { traceparent: `ff-${TRACE_ID}-${SPAN_ID}-01` },
    { tracestate: 'vendor=a' },
    {},
  ];
  const rng = seededRng(11);
  for (let i = 0; i < 2_000; i++) carriers.push({ traceparent: nearValid(rng) });
  const [[, reference], [, fast]] = propagators;
  for (const carrier of carriers) {
    assert.deepStrictEqual(
      plain(extract(fast!, carrier)),
      plain(extract(reference!, carrier)),
      JSON.stringify(carrier),
    );
  }
  for (const [name, p] of propagators)
    assert.deepStrictEqual(p.fields(), ['traceparent', 'tracestate'], name);
});
