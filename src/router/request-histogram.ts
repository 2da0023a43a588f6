// Histograms observed on the request path (routing phases, TTFT, inter-token latency), registered
// in the router's prom-client registry. prom-client's observe builds a label object, validates it
// and hashes it into a string key on every call (~0.25 µs warm, several µs cold; a request makes
// six or more); here a label set is resolved once, at startup, to a series whose observe is a
// bucket search and three additions. The exposition is prom-client's own: `get()` answers the
// shape its registry formats (same names, `le` first, cumulative buckets, `+Inf`, `_sum`,
// `_count`), and a labelled series appears once it has an observation, as in prom-client.

import type { Registry } from 'prom-client';

/** One label set of a RequestHistogram. */
export class HistogramSeries {
  /** Observations per bucket (not cumulative); the last slot is above every bound (+Inf). */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    private readonly bounds: readonly number[],
    readonly labels: Readonly<Record<string, string>>,
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    const { bounds } = this;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

interface SampleValue {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

export interface RequestHistogramOptions {
  name: string;
  help: string;
  buckets: readonly number[];
  /** Label names of a labelled histogram (its series come from `labels`); none = one unlabelled series. */
  labelNames?: readonly string[];
  registers: Registry[];
}

export class RequestHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly bounds: readonly number[];
  private readonly labelled: boolean;
  private readonly series: HistogramSeries[] = [];
  /** The unlabelled series (exported even before its first observation, as prom-client does). */
  private unlabelled: HistogramSeries | undefined;
  /** Whether an unlabelled histogram exports its series at zero (until a reset, as prom-client). */
  private exportsEmpty: boolean;

  constructor(opts: RequestHistogramOptions) {
    this.name = opts.name;
    this.help = opts.help;
    this.bounds = [...opts.buckets].sort((a, b) => a - b);
    this.labelled = (opts.labelNames?.length ?? 0) > 0;
    this.exportsEmpty = !this.labelled;
    for (const registry of opts.registers) registry.registerMetric(this as never);
  }

  /** The series of one label set; resolve it once and keep it. */
  labels(labels: Record<string, string>): HistogramSeries {
    const series = new HistogramSeries(this.bounds, { ...labels });
    this.series.push(series);
    return series;
  }

  /** Observes into the unlabelled series. */
  observe(value: number): void {
    this.unlabelled ??= this.labels({});
    this.unlabelled.observe(value);
  }

  /** Forgets every observation (prom-client's `registry.resetMetrics()` calls this). */
  reset(): void {
    this.exportsEmpty = false;
    for (const s of this.series) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  /** What prom-client's registry reads at scrape time. */
  async get(): Promise<{
    name: string;
    help: string;
    type: string;
    aggregator: string;
    values: SampleValue[];
  }> {
    if (!this.labelled) this.unlabelled ??= this.labels({});
    const values: SampleValue[] = [];
    for (const s of this.series) {
      if (s.count === 0 && !(s === this.unlabelled && this.exportsEmpty)) continue;
      let cumulative = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({
          labels: { le: this.bounds[i]!, ...s.labels },
          value: cumulative,
          metricName: `${this.name}_bucket`,
        });
      }
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
