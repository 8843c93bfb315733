/**
 * Turns a panel spec and a host's buffers into what a chart draws: the series (label,
 * scale, colour) and uPlot's columnar data. Columns are handed over without copying
 * unless a transformation is needed (stacking, percent metrics, a frozen snapshot).
 */
import type { AlignedData } from 'uplot'
import { baseUnits, scaleKey, type UnitsLike } from './format'
import type { PanelSpec } from './catalogue'
import { PALETTE, seriesLabel } from './catalogue'
import { seriesKey, type Column, type Timeline } from './timeline'
import type { Descriptor } from './protocol'

export interface ChartSeries {
  key: string
  label: string
  scale: string
  units: UnitsLike
  color: string
}

export interface ChartModel {
  /** Changes when the chart must be rebuilt (series set, scales). */
  signature: string
  series: ChartSeries[]
  data: AlignedData
  /** Unstacked values, for the legend and tooltips of stacked charts. */
  raw: (number | null | undefined)[][]
  stack: boolean
  /** Instances left out because the panel shows at most `limit` per metric. */
  hidden: number
  first: number | undefined
  last: number | undefined
}

/** Natural order, so cpu2 sorts before cpu10. */
export const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' }).compare

export interface SourceLike {
  timelineFor(metric: string): Timeline
  descriptor(metric: string): Descriptor | undefined
}

export interface BuildOptions {
  /** At most this many instances per metric (the busiest ones). */
  limit?: number
  /** Copy columns so later arrivals do not change a paused chart. */
  snapshot?: boolean
  /** Display names of instances (e.g. cgroup path -> container name). */
  rename?: (metric: string, instance: string) => string | undefined
}

function unitsFor(desc: Descriptor | undefined, percent: boolean): UnitsLike {
  if (percent) return baseUnits('utilization', true)
  if (!desc) return baseUnits('none', false)
  return baseUnits(desc.value_units.kind, desc.value_units.per_sec)
}

/**
 * Collectors run at their own cadence (processes and cgroups every 2 s under a 1 s
 * stream), so a column holds a value every other frame with nulls between. uPlot draws
 * `null` as a gap and spans `undefined`: nulls shorter than 1.5x the column's own
 * cadence become undefined (drawn through), longer runs stay gaps (a missed collection,
 * a daemon restart). Returns the column itself when nothing needs bridging.
 */
export function bridgeCadence(col: Column, times: number[]): (number | null | undefined)[] {
  let cadence = Infinity
  let prev = -1
  let sparse = false
  for (let i = 0; i < col.length; i++) {
    if (col[i] === null) continue
    if (prev >= 0) {
      cadence = Math.min(cadence, times[i] - times[prev])
      if (i - prev > 1) sparse = true
    }
    prev = i
  }
  if (!sparse || !Number.isFinite(cadence)) return col
  const out: (number | null | undefined)[] = col.slice()
  prev = -1
  for (let i = 0; i < col.length; i++) {
    if (col[i] === null) continue
    if (prev >= 0 && i - prev > 1 && times[i] - times[prev] <= 1.5 * cadence) {
      for (let j = prev + 1; j < i; j++) out[j] = undefined
    }
    prev = i
  }
  return out
}

function peak(col: Column, from: number): number {
  let m = -Infinity
  for (let i = Math.max(0, from); i < col.length; i++) {
    const x = col[i]
    if (x !== null && x > m) m = x
  }
  return m
}

export function buildChart(panel: PanelSpec, src: SourceLike, opts: BuildOptions = {}): ChartModel {
  const limit = opts.limit ?? 16
  const tl = src.timelineFor(panel.series[0]?.metric ?? '')
  const series: ChartSeries[] = []
  const cols: (number | null | undefined)[][] = []
  let hidden = 0
  for (const spec of panel.series) {
    let instances = [...(tl.instances.get(spec.metric) ?? [])].sort(naturalCompare)
    if (instances.length > limit) {
      // Busiest first over the last minute or so; the rest are counted, not drawn.
      const from = tl.length - 60
      const ranked = instances
        .map((i) => [i, peak(tl.cols.get(seriesKey(spec.metric, i))!, from)] as const)
        .sort((a, b) => b[1] - a[1])
      hidden += instances.length - limit
      instances = ranked.slice(0, limit).map(([i]) => i).sort(naturalCompare)
    }
    const units = unitsFor(src.descriptor(spec.metric), !!spec.percent)
    for (const inst of instances) {
      const key = seriesKey(spec.metric, inst)
      const col = tl.cols.get(key)
      if (!col) continue
      const shown = opts.rename?.(spec.metric, inst) || inst
      series.push({
        key,
        label: seriesLabel(spec, shown),
        scale: scaleKey(units),
        units,
        color: PALETTE[series.length % PALETTE.length],
      })
      const own = spec.percent ? col.map((x) => (x === null ? null : x / 100)) : opts.snapshot ? col.slice() : col
      cols.push(bridgeCadence(own, tl.times))
    }
  }
  const stack = !!panel.stack && series.length > 1
  const raw = cols.slice()
  let drawn = cols
  if (stack) {
    // Cumulative sums, bottom series first; a gap in every series stays a gap.
    drawn = []
    const n = tl.length
    let acc: (number | null | undefined)[] = new Array<number | null>(n).fill(null)
    for (const col of cols) {
      const next: (number | null | undefined)[] = new Array<number | null>(n)
      for (let i = 0; i < n; i++) {
        const a = acc[i]
        const b = col[i]
        next[i] = a == null ? b : b == null ? a : a + b
      }
      drawn.push(next)
      acc = next
    }
  }
  const times = opts.snapshot ? tl.times.slice() : tl.times
  if (stack) {
    // Top of the stack first: each area is filled down to zero and the ones below paint
    // over it, which needs no band clipping and reads top-down like the legend.
    series.reverse()
    drawn.reverse()
    raw.reverse()
  }
  return {
    signature: `${stack}|` + series.map((s) => `${s.key}@${s.scale}`).join('|'),
    series,
    data: [times, ...drawn] as AlignedData,
    raw,
    stack,
    hidden,
    first: times[0],
    last: times[times.length - 1],
  }
}
