// The operator's assets kept honest against what a real router exports: every metric and label
// that a PromQL expression of the alerting rules (deploy/prometheus/kvroute-alerts.yml) or the
// Grafana dashboard (deploy/grafana/kvroute-dashboard.json) uses must be in a real /metrics scrape,
// and every metric the router exports must be described in docs/operations.md. A router
// in-process, three real worker processes (two aggregated, one prefill), a few completions
// (streamed and not, one long enough to prefill remotely) so histograms and counters have samples.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { createRouter, type RouterService } from '../src/router/service.js';
import { TestFleet, waitForWorkers } from './helpers/fleet.js';

const root = new URL('../', import.meta.url);
const RULES_PATH = new URL('deploy/prometheus/kvroute-alerts.yml', root);
const DASHBOARD_PATH = new URL('deploy/grafana/kvroute-dashboard.json', root);
const DOCS_PATH = new URL('docs/operations.md', root);

/** Labels Prometheus adds to every scraped series; `up` is its own series per target. */
const TARGET_LABELS = new Set(['job', 'instance']);
const PROMETHEUS_METRICS = new Set(['up']);

// ---------------------------------------------------------------------------------------------
// The scrape: sample names (a histogram's are its _bucket, _sum, _count) and their label names.

interface Scrape {
  /** Metric families from `# TYPE` lines: name → type. */
  families: Map<string, string>;
  /** Sample name → label names seen on its series. */
  samples: Map<string, Set<string>>;
}

function parseExposition(text: string): Scrape {
  const families = new Map<string, string>();
  const samples = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) families.set(type[1]!, type[2]!);
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$/.exec(line);
    assert.ok(m, `unparsed exposition line: ${line}`);
    const labels = samples.get(m[1]!) ?? new Set<string>();
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"/g)) labels.add(l[1]!);
    samples.set(m[1]!, labels);
  }
  return { families, samples };
}

// ---------------------------------------------------------------------------------------------
// PromQL: which metrics an expression selects, with the labels it matches on, and the labels its
// by/without/on/ignoring clauses name with the metrics they apply to. Enough of the grammar for
// the expressions in this repository; anything it does not know fails loudly.

interface PromqlUses {
  /** Metric → label names used in its matchers. */
  selectors: { metric: string; labels: string[] }[];
  /** Grouping or matching labels and the metrics they apply to. */
  groupings: { labels: string[]; metrics: string[] }[];
}

const AGGREGATIONS = new Set([
  'sum',
  'min',
  'max',
  'avg',
  'count',
  'stddev',
  'stdvar',
  'topk',
  'bottomk',
  'quantile',
  'count_values',
  'group',
]);
const KEYWORDS = new Set(['bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan', 'atan2']);
const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
// Strings, range/subquery brackets (durations, Grafana's $__rate_interval), names, numbers (with a
// duration unit), operators.
const TOKEN =
  /\s+|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`|\[[^\]]*\]|[a-zA-Z_:][a-zA-Z0-9_:]*|\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?|=~|!~|!=|==|>=|<=|[(){},=<>+\-*/^%]/y;

function tokenize(expr: string): string[] {
  const tokens: string[] = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < expr.length) {
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(expr);
    if (!m) throw new Error(`PromQL not understood at ${at}: ${expr}`);
    if (m[0].trim() !== '') tokens.push(m[0]);
  }
  return tokens;
}

const isName = (t: string | undefined) => t !== undefined && /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(t);

/** Index of the parenthesis matching the one at `open` (either direction). */
function matching(tokens: string[], open: number): number {
  const step = tokens[open] === '(' ? 1 : -1;
  let depth = 0;
  for (let i = open; i >= 0 && i < tokens.length; i += step) {
    if (tokens[i] === '(') depth += step;
    else if (tokens[i] === ')') depth -= step;
    if (depth === 0) return i;
  }
  throw new Error(`unbalanced parentheses: ${tokens.join(' ')}`);
}

/**
 * Index of the last token of the operand starting at `start`: a parenthesized expression, a call or
 * an aggregation (its by/without clause on either side), or a selector with its matchers and range.
 */
function operandEnd(tokens: string[], start: number): number {
  if (tokens[start] === '(') return matching(tokens, start);
  assert.ok(isName(tokens[start]), `an operand at ${tokens.slice(start).join(' ')}`);
  let i = start;
  const clause = (at: number) => tokens[at] === 'by' || tokens[at] === 'without';
  if (clause(i + 1)) i = matching(tokens, i + 2);
  if (tokens[i + 1] === '(') {
    i = matching(tokens, i + 1);
    return clause(i + 1) ? matching(tokens, i + 2) : i;
  }
  if (tokens[i + 1] === '{') i = tokens.indexOf('}', i + 1);
  if (tokens[i + 1]?.startsWith('[')) i++;
  return i;
}

function promqlUses(expr: string): PromqlUses {
  const tokens = tokenize(expr);
  /** Each selector with the index of its name token, to place it inside a by/without argument. */
  const selectors: { metric: string; labels: string[]; at: number }[] = [];
  const groupings: { labels: string[]; span: [number, number] }[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (LABEL_LISTS.has(t)) {
      // A label list right after the keyword, optional for group_left/group_right.
      if (tokens[i + 1] !== '(') continue;
      const close = matching(tokens, i + 1);
      const labels = tokens.slice(i + 2, close).filter((x) => x !== ',');
      assert.ok(labels.every(isName), `label list of ${t}: ${labels.join(' ')}`);
      let span: [number, number] = [0, tokens.length - 1]; // on/ignoring: both sides, the whole expression
      // group_left (l): the labels come from the right-hand side (the one side of many-to-one).
      if (t === 'group_left') span = [close + 1, operandEnd(tokens, close + 1)];
      assert.notEqual(t, 'group_right', `group_right with labels is not understood: ${expr}`);
      if (t === 'by' || t === 'without') {
        // `agg by (l) (arg)` or `agg (arg) by (l)`.
        span =
          tokens[i - 1] === ')' ? [matching(tokens, i - 1), i - 1] : [close + 1, matching(tokens, close + 1)];
      }
      groupings.push({ labels, span });
      i = close;
      continue;
    }
    if (!isName(t) || AGGREGATIONS.has(t) || KEYWORDS.has(t) || tokens[i + 1] === '(') continue;
    const labels: string[] = [];
    if (tokens[i + 1] === '{') {
      let j = i + 2;
      while (tokens[j] !== '}') {
        const [label, op, value] = [tokens[j], tokens[j + 1], tokens[j + 2]];
        assert.ok(isName(label) && ['=', '!=', '=~', '!~'].includes(op!) && /^["'`]/.test(value!), expr);
        labels.push(label!);
        j += tokens[j + 3] === ',' ? 4 : 3;
      }
      selectors.push({ metric: t, labels, at: i });
      i = j;
    } else {
      selectors.push({ metric: t, labels, at: i });
    }
  }
  return {
    selectors: selectors.map(({ metric, labels }) => ({ metric, labels })),
    groupings: groupings.map(({ labels, span }) => ({
      labels,
      metrics: selectors.filter((s) => s.at >= span[0] && s.at <= span[1]).map((s) => s.metric),
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// The assets' expressions.

interface Rule {
  alert?: string;
  expr: string;
  for?: string;
  labels?: { severity?: string };
  annotations?: { summary?: string; description?: string };
}

function ruleExpressions(): { where: string; expr: string; rule: Rule }[] {
  const file = parseYaml(readFileSync(RULES_PATH, 'utf8')) as { groups: { name: string; rules: Rule[] }[] };
  return file.groups.flatMap((g) =>
    g.rules.map((rule) => ({ where: `rules ${g.name}/${rule.alert}`, expr: String(rule.expr), rule })),
  );
}

interface Panel {
  title?: string;
  type: string;
  datasource?: { uid?: string };
  targets?: { expr?: string }[];
  panels?: Panel[];
}

function dashboard(): {
  schemaVersion: number;
  templating: { list: { name: string; type: string }[] };
  panels: Panel[];
} {
  return JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8'));
}

function dashboardExpressions(): { where: string; expr: string }[] {
  const panels = dashboard().panels.flatMap((p) => [p, ...(p.panels ?? [])]);
  return panels.flatMap((p) =>
    (p.targets ?? []).map((t) => ({ where: `dashboard panel '${p.title}'`, expr: String(t.expr) })),
  );
}

// ---------------------------------------------------------------------------------------------

let router: RouterService;
let fleet: TestFleet;
let scrape: Scrape;

before(async () => {
  router = await createRouter({ port: 0, logger: false, leaseTtlMs: 1500 });
  const url = await router.listen();
  fleet = new TestFleet(url);
  await Promise.all([fleet.spawn(2), fleet.spawn(1, ['--role', 'prefill'])]);
  await waitForWorkers(url, 3);
  const post = async (path: string, body: object) => {
    const res = await fetch(`${url}/v1/${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'mock-llm', max_tokens: 8, ...body }),
    });
    assert.equal(res.status, 200, await res.clone().text());
    await res.text();
  };
  // 40 blocks of token ids: past --max-local-prefill (512), prefilled on the prefill worker.
  const longPrompt = Array.from({ length: 640 }, (_, i) => 1000 + ((i * 7919) % 50_000));
  await post('completions', { prompt: 'Hello, router' });
  await post('completions', { prompt: 'Hello, router', stream: true });
  await post('chat/completions', { messages: [{ role: 'user', content: 'Say hi' }], stream: true });
  await post('completions', { prompt: longPrompt, stream: true });
  await post('completions', { prompt: longPrompt }); // cached now: cached_tokens count
  assert.equal((await fetch(`${url}/ready`)).status, 200);
  const res = await fetch(`${url}/metrics`);
  assert.equal(res.status, 200);
  scrape = parseExposition(await res.text());
});
after(async () => {
  await fleet?.killAll();
  await router?.close();
});

/** Metrics whose labels were checked as declared, not as scraped (they had no series yet). */
const checkedAsDeclared = new Set<string>();

/** Label names a sample carries: as scraped, or (no series yet, e.g. a failure counter) as declared. */
function labelsOf(sample: string): Set<string> | undefined {
  const scraped = scrape.samples.get(sample);
  if (scraped !== undefined) return scraped;
  checkedAsDeclared.add(sample);
  const family = sample.replace(/_(bucket|sum|count)$/, '');
  const type = scrape.families.get(sample) ?? scrape.families.get(family);
  if (type === undefined) return undefined;
  if (type === 'histogram' && family === sample) return undefined; // a histogram is selected by its parts
  const declared = router.metrics.registry.getSingleMetric(scrape.families.has(sample) ? sample : family) as
    | { labelNames?: readonly string[] }
    | undefined;
  return new Set([...(declared?.labelNames ?? []), ...(sample.endsWith('_bucket') ? ['le'] : [])]);
}

function problemsOf(where: string, expr: string): string[] {
  const uses = promqlUses(expr);
  const problems: string[] = [];
  if (uses.selectors.length === 0) problems.push(`${where}: no metric found in ${expr}`);
  const known = (metric: string) => PROMETHEUS_METRICS.has(metric) || labelsOf(metric) !== undefined;
  const hasLabel = (metric: string, label: string) =>
    TARGET_LABELS.has(label) || (!PROMETHEUS_METRICS.has(metric) && labelsOf(metric)!.has(label));
  for (const { metric, labels } of uses.selectors) {
    if (!known(metric)) {
      problems.push(`${where}: metric ${metric} is not in the router's /metrics`);
      continue;
    }
    for (const label of labels)
      if (!hasLabel(metric, label)) problems.push(`${where}: ${metric} has no label ${label}`);
  }
  for (const { labels, metrics } of uses.groupings)
    for (const metric of metrics.filter(known))
      for (const label of labels)
        if (!hasLabel(metric, label)) problems.push(`${where}: ${metric} has no label ${label} (by/on)`);
  return problems;
}

describe('the PromQL reader', () => {
  test('finds metrics, their matchers, and what by/on clauses apply to', () => {
    assert.deepEqual(
      promqlUses('histogram_quantile(0.9, sum by (le, phase) (rate(a_bucket{x="1",y=~"a|b"}[5m]))) > 0.5'),
      {
        selectors: [{ metric: 'a_bucket', labels: ['x', 'y'] }],
        groupings: [{ labels: ['le', 'phase'], metrics: ['a_bucket'] }],
      },
    );
    assert.deepEqual(promqlUses('sum(rate(b_total[$__rate_interval])) by (z) / c unless on (instance) d'), {
      selectors: [
        { metric: 'b_total', labels: [] },
        { metric: 'c', labels: [] },
        { metric: 'd', labels: [] },
      ],
      groupings: [
        { labels: ['z'], metrics: ['b_total'] },
        { labels: ['instance'], metrics: ['b_total', 'c', 'd'] },
      ],
    });
    // group_left's labels are the right-hand side's only.
    assert.deepEqual(
      promqlUses('a{x="1"} * on (instance, id) group_left (role) b > 0 and on (instance) c').groupings,
      [
        { labels: ['instance', 'id'], metrics: ['a', 'b', 'c'] },
        { labels: ['role'], metrics: ['b'] },
        { labels: ['instance'], metrics: ['a', 'b', 'c'] },
      ],
    );
    assert.deepEqual(
      promqlUses('a / on (i) group_left (l) sum by (i, l) (rate(b[5m])) / c').groupings.map((g) => g.metrics),
      [['a', 'b', 'c'], ['b'], ['b']],
    );
  });
});

describe('operator assets against a real scrape', () => {
  test('the scrape has the request-path samples the test depends on', () => {
    for (const name of [
      'kvroute_time_to_first_token_seconds_bucket',
      'kvroute_inter_token_latency_seconds_bucket',
      'kvroute_routing_decision_seconds_bucket',
      'kvroute_worker_active_decode_blocks',
    ])
      assert.ok(scrape.samples.has(name), `${name} has no series`);
  });

  test('every alerting rule is complete and uses only exported metrics and labels', (t) => {
    const rules = ruleExpressions();
    assert.ok(rules.length >= 8, `only ${rules.length} rules`);
    const problems: string[] = [];
    for (const { where, expr, rule } of rules) {
      if (!/^Kvroute[A-Za-z0-9]+$/.test(rule.alert ?? '')) problems.push(`${where}: alert name`);
      if (!/^\d+[smh]$/.test(rule.for ?? '')) problems.push(`${where}: for`);
      if (!['critical', 'warning'].includes(rule.labels?.severity ?? '')) problems.push(`${where}: severity`);
      if (!rule.annotations?.summary || !rule.annotations.description) problems.push(`${where}: annotations`);
      problems.push(...problemsOf(where, expr));
    }
    assert.deepEqual(problems, []);
    t.diagnostic(
      `labels checked as declared (no series in this scrape): ${[...checkedAsDeclared].join(', ')}`,
    );
  });

  test('every dashboard query uses only exported metrics and labels, through the datasource variable', () => {
    const board = dashboard();
    assert.ok(board.schemaVersion >= 36);
    assert.ok(board.templating.list.some((v) => v.name === 'datasource' && v.type === 'datasource'));
    const panels = board.panels.filter((p) => p.type !== 'row');
    assert.ok(panels.length > 0);
    // Grafana's variable syntax, not a template literal.
    const datasourceVariable = ['$', '{datasource}'].join('');
    for (const p of panels) assert.equal(p.datasource?.uid, datasourceVariable, `panel '${p.title}'`);
    const exprs = dashboardExpressions();
    assert.ok(exprs.length >= panels.length);
    assert.deepEqual(
      exprs.flatMap(({ where, expr }) => problemsOf(where, expr)),
      [],
    );
  });

  test('docs/operations.md describes every exported metric, and names no metric that is not exported', () => {
    const docs = readFileSync(DOCS_PATH, 'utf8');
    const undocumented = [...scrape.families.keys()].filter((name) => !docs.includes(`\`${name}\``));
    assert.deepEqual(undocumented, [], 'exported metrics missing from docs/operations.md');
    const named = new Set(docs.match(/\bkvroute_[a-z0-9_]+/g) ?? []);
    const unknown = [...named].filter((n) => labelsOf(n) === undefined && !scrape.families.has(n));
    assert.deepEqual(unknown, [], 'metrics named in docs/operations.md that the router does not export');
  });
});
