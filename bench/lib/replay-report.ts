// The replay bench's `--out` report: report.html (settings, one table row per policy, the charts)
// and its SVG charts — TTFT CDF per policy, KV hit rate per policy, mean TTFT per policy, and
// in-flight requests per worker over time for each policy. Pure: results in, files (name → text) out.

import type { PolicySummary } from './replay-metrics.js';
import { barChart, cdfPoints, lineChart } from './svg-chart.js';

export interface PolicyRun {
  policy: string;
  summary: PolicySummary;
  /** Raw TTFT samples (ms) of completed requests, for the CDF. */
  ttftSamples: number[];
}

export interface ReportInput {
  title: string;
  /** Settings shown above the table (trace, workers, speedup, ...). */
  settings: Record<string, string | number>;
  runs: readonly PolicyRun[];
}

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function renderReport(input: ReportInput): Map<string, string> {
  const files = new Map<string, string>();
  const { runs } = input;
  files.set(
    'ttft-cdf.svg',
    lineChart({
      title: 'Time to first token, CDF per policy',
      xLabel: 'TTFT (ms, log scale)',
      yLabel: 'fraction of requests ≤ x',
      yMax: 1,
      logX: true,
      // Over every request sent: a policy's failed requests keep its curve below 1.
      series: runs.map((r) => ({
        name: r.policy,
        points: cdfPoints(
          r.ttftSamples.map((v) => Math.max(v, 0.01)),
          200,
          r.summary.requests,
        ),
      })),
    }),
  );
  files.set(
    'hit-rate.svg',
    barChart({
      title: 'KV cache hit rate per policy (cached / prompt tokens)',
      xLabel: 'policy',
      yLabel: 'hit rate',
      yMax: 1,
      bars: runs.map((r) => ({
        label: r.policy,
        value: r.summary.kvHitRate,
        caption: `${(r.summary.kvHitRate * 100).toFixed(1)}%`,
      })),
    }),
  );
  files.set(
    'ttft-mean.svg',
    barChart({
      title: 'Mean time to first token per policy',
      xLabel: 'policy',
      yLabel: 'mean TTFT (ms)',
      bars: runs.map((r) => ({ label: r.policy, value: r.summary.ttftMs.mean })),
    }),
  );
  for (const r of runs) {
    const { times, inFlight } = r.summary.timeline;
    files.set(
      `load-${r.policy}.svg`,
      lineChart({
        title: `Requests in flight per worker over time (${r.policy})`,
        xLabel: 'time since replay start (s)',
        yLabel: 'requests in flight',
        series: Object.entries(inFlight).map(([worker, counts]) => ({
          name: worker,
          points: counts.map((c, i) => [times[i]! / 1000, c] as const),
        })),
      }),
    );
  }

  const head = [
    'policy',
    'completed',
    'errors',
    'TTFT mean ms',
    'p50',
    'p90',
    'p99',
    'ITL mean ms',
    'output tok/s',
    'KV hit rate',
    'CV requests',
    'CV prompt tokens',
    'requests per worker',
  ];
  const rows = runs.map((r) => {
    const s = r.summary;
    return [
      r.policy,
      s.completed,
      s.errors,
      s.ttftMs.mean,
      s.ttftMs.p50,
      s.ttftMs.p90,
      s.ttftMs.p99,
      s.itlMs.mean,
      s.outputTokensPerS,
      `${(s.kvHitRate * 100).toFixed(1)}%`,
      s.cvRequests,
      s.cvPromptTokens,
      s.perWorker.map((w) => `${w.worker}: ${w.requests}`).join(', '),
    ];
  });
  const table = [
    '<table>',
    `<tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr>`,
    ...rows.map((row) => `<tr>${row.map((c) => `<td>${esc(String(c))}</td>`).join('')}</tr>`),
    '</table>',
  ].join('\n');
  const settings = Object.entries(input.settings)
    .map(([k, v]) => `<li><b>${esc(k)}</b>: ${esc(String(v))}</li>`)
    .join('\n');
  const img = (name: string, alt: string) => `<img src="${name}" alt="${esc(alt)}">`;
  files.set(
    'report.html',
    `<!doctype html>
<html><head><meta charset="utf-8"><title>${esc(input.title)}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child{text-align:left;font-weight:bold}img{margin:8px;vertical-align:top}</style>
</head><body>
<h1>${esc(input.title)}</h1>
<ul>
${settings}
</ul>
${table}
<h2>Latency and cache</h2>
${img('ttft-cdf.svg', 'TTFT CDF per policy')}
${img('ttft-mean.svg', 'mean TTFT per policy')}
${img('hit-rate.svg', 'KV hit rate per policy')}
<h2>Load per worker over time</h2>
${runs.map((r) => img(`load-${r.policy}.svg`, `load per worker, ${r.policy}`)).join('\n')}
</body></html>
`,
  );
  return files;
}
