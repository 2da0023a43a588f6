// Hand-written SVG charts for bench reports (no dependencies): line charts (CDFs, time series)
// and bar charts, each with a title, labelled axes with ticks, and a legend. Pure: data in, SVG
// text out.

import { extent } from './stats.js';

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
const FONT = 'font-family="system-ui, sans-serif"';

export function seriesColor(i: number): string {
  return PALETTE[i % PALETTE.length]!;
}

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About `count` round tick values (1, 2, 5 × 10^k steps) covering [min, max]. */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step)
    ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

interface Frame {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

const frame = (width: number, height: number): Frame => ({
  width,
  height,
  left: 70,
  right: width - 150,
  top: 40,
  bottom: height - 50,
});

function header(f: Frame, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}" ${FONT} font-size="12">`,
    `<rect width="${f.width}" height="${f.height}" fill="white"/>`,
    `<text x="${f.width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
}

function axisLabels(f: Frame, xLabel: string, yLabel: string): string[] {
  const midY = (f.top + f.bottom) / 2;
  return [
    `<text x="${(f.left + f.right) / 2}" y="${f.height - 12}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text x="16" y="${midY}" text-anchor="middle" transform="rotate(-90 16 ${midY})">${esc(yLabel)}</text>`,
  ];
}

function legend(f: Frame, names: readonly string[]): string[] {
  return names.flatMap((name, i) => {
    const y = f.top + 8 + i * 20;
    return [
      `<rect x="${f.right + 16}" y="${y - 9}" width="14" height="10" fill="${seriesColor(i)}"/>`,
      `<text x="${f.right + 36}" y="${y}">${esc(name)}</text>`,
    ];
  });
}

function yGrid(f: Frame, ticks: number[], y: (v: number) => number): string[] {
  return ticks.flatMap((t) => [
    `<line x1="${f.left}" x2="${f.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" stroke="#e5e5e5"/>`,
    `<text x="${f.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`,
  ]);
}

export interface LineSeries {
  name: string;
  /** [x, y] points, drawn in order. */
  points: ReadonlyArray<readonly [number, number]>;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly LineSeries[];
  width?: number;
  height?: number;
  /** Fixed y range top (e.g. 1 for a CDF); default the data's max. */
  yMax?: number;
  /** Draw x on a log10 scale (positive x only). */
  logX?: boolean;
}

export function lineChart(o: LineChartOptions): string {
  const f = frame(o.width ?? 720, o.height ?? 380);
  const all = o.series.flatMap((s) => s.points);
  const tx = (x: number) => (o.logX ? Math.log10(Math.max(x, 1e-9)) : x);
  const xs = all.map(([x]) => tx(x));
  const xRange = extent(xs);
  const xMin = xRange?.min ?? 0;
  const xMax = xRange?.max ?? 1;
  const yMax = o.yMax ?? Math.max(1e-9, extent(all.map(([, y]) => y))?.max ?? 0);
  const span = xMax > xMin ? xMax - xMin : 1;
  const x = (v: number) => f.left + ((tx(v) - xMin) / span) * (f.right - f.left);
  const y = (v: number) => f.bottom - (v / yMax) * (f.bottom - f.top);
  const xTicks = o.logX
    ? Array.from({ length: Math.floor(xMax) - Math.ceil(xMin) + 1 }, (_, i) => 10 ** (Math.ceil(xMin) + i))
    : niceTicks(xMin, xMax, 6);
  const out = [...header(f, o.title), ...yGrid(f, niceTicks(0, yMax, 5), y)];
  for (const t of xTicks) {
    out.push(
      `<line x1="${x(t).toFixed(1)}" x2="${x(t).toFixed(1)}" y1="${f.bottom}" y2="${f.bottom + 5}" stroke="#333"/>`,
      `<text x="${x(t).toFixed(1)}" y="${f.bottom + 18}" text-anchor="middle">${fmt(t)}</text>`,
    );
  }
  out.push(
    `<line x1="${f.left}" x2="${f.right}" y1="${f.bottom}" y2="${f.bottom}" stroke="#333"/>`,
    `<line x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.bottom}" stroke="#333"/>`,
  );
  o.series.forEach((s, i) => {
    if (s.points.length === 0) return;
    const d = s.points
      .map(([px, py], j) => `${j ? 'L' : 'M'}${x(px).toFixed(1)},${y(py).toFixed(1)}`)
      .join('');
    out.push(`<path d="${d}" fill="none" stroke="${seriesColor(i)}" stroke-width="2"/>`);
  });
  out.push(
    ...axisLabels(f, o.xLabel, o.yLabel),
    ...legend(
      f,
      o.series.map((s) => s.name),
    ),
    '</svg>',
  );
  return `${out.join('\n')}\n`;
}

export interface Bar {
  label: string;
  value: number;
  /** Text shown above the bar (default the value). */
  caption?: string;
}

export interface BarChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  bars: readonly Bar[];
  width?: number;
  height?: number;
  yMax?: number;
}

export function barChart(o: BarChartOptions): string {
  const f = frame(o.width ?? 560, o.height ?? 340);
  const yMax = o.yMax ?? Math.max(1e-9, ...o.bars.map((b) => b.value)) * 1.1;
  const y = (v: number) => f.bottom - (v / yMax) * (f.bottom - f.top);
  const slot = (f.right - f.left) / Math.max(1, o.bars.length);
  const out = [...header(f, o.title), ...yGrid(f, niceTicks(0, yMax, 5), y)];
  o.bars.forEach((b, i) => {
    const x0 = f.left + i * slot + slot * 0.2;
    const w = slot * 0.6;
    out.push(
      `<rect x="${x0.toFixed(1)}" y="${y(b.value).toFixed(1)}" width="${w.toFixed(1)}" height="${(f.bottom - y(b.value)).toFixed(1)}" fill="${seriesColor(i)}"/>`,
      `<text x="${(x0 + w / 2).toFixed(1)}" y="${(y(b.value) - 5).toFixed(1)}" text-anchor="middle">${esc(b.caption ?? fmt(b.value))}</text>`,
      `<text x="${(x0 + w / 2).toFixed(1)}" y="${f.bottom + 18}" text-anchor="middle">${esc(b.label)}</text>`,
    );
  });
  out.push(
    `<line x1="${f.left}" x2="${f.right}" y1="${f.bottom}" y2="${f.bottom}" stroke="#333"/>`,
    `<line x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.bottom}" stroke="#333"/>`,
    ...axisLabels(f, o.xLabel, o.yLabel),
    ...legend(
      f,
      o.bars.map((b) => b.label),
    ),
    '</svg>',
  );
  return `${out.join('\n')}\n`;
}

/**
 * Empirical CDF points of `samples`: (value, fraction of `total` ≤ value), at most `maxPoints` of
 * them. `total` defaults to the samples; a larger one counts items that have no value (a failed
 * request's TTFT), so the curve tops out below 1 instead of hiding them.
 */
export function cdfPoints(
  samples: ArrayLike<number>,
  maxPoints = 200,
  total = samples.length,
): Array<[number, number]> {
  const sorted = Float64Array.from(samples).sort();
  const n = sorted.length;
  if (n === 0) return [];
  const step = Math.max(1, Math.floor(n / maxPoints));
  const pts: Array<[number, number]> = [];
  for (let i = 0; i < n; i += step) pts.push([sorted[i]!, (i + 1) / total]);
  pts.push([sorted[n - 1]!, n / total]);
  return pts;
}
