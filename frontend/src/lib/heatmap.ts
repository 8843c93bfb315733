/**
 * From a host's columnar buffers to a latency heat map: one column per sample of a log2
 * histogram metric (x = time, y = bucket, value = events in that interval), plus the
 * colour scale. Pure data: HeatMap.vue draws it.
 *
 * The stream serves each bucket counter as a per-second rate; a cell is that rate times
 * the column's interval (the time since the histogram's previous sample), i.e. the number
 * of events, as in Vector's heat maps. Several histograms (e.g. every disk and operation
 * of `bpf.biolatency.latency`) can be summed into one.
 */
import { SLOTS, groupOf, parseBucket, slotPercentiles, slotY } from './histogram'
import { seriesKey, type Timeline } from './timeline'

/** Columns of one heat map, oldest first. */
export interface HeatColumns {
  /** End (sample time) and start of each column, epoch seconds. */
  end: number[]
  start: number[]
  /** Index of each column's sample in the buffers' `times` (valid for this build only). */
  rows: number[]
  /** Events per column and slot: `counts[c * SLOTS + slot]`. */
  counts: Float64Array
  /** Lowest and highest slot holding an event anywhere (-1 when there are none). */
  minSlot: number
  maxSlot: number
  /** Largest cell. */
  max: number
  /** The typical column interval (s), for labels. */
  step: number
}

/** Instance groups of a histogram metric (`"vda:read"`, ...; `[""]` for a plain one). */
export function histogramGroups(tl: Timeline, metric: string): string[] {
  const groups = new Set<string>()
  for (const inst of tl.instances.get(metric) ?? []) if (parseBucket(inst)) groups.add(groupOf(inst))
  return [...groups].sort()
}

/**
 * The columns of `metric` in the buffers, for one instance group or (`group === null`)
 * all of them summed. `cadence` is the stream's interval: a column's interval is the
 * time since the histogram's previous sample when that is at most 1.5 cadences (the
 * usual case), else one cadence (the first sample after a gap).
 */
export function buildColumns(tl: Timeline, metric: string, group: string | null, cadence: number): HeatColumns {
  // Which columns of the buffers feed which slot.
  const feeds: { col: (number | null)[]; slot: number }[] = []
  for (const inst of tl.instances.get(metric) ?? []) {
    const b = parseBucket(inst)
    if (!b || (group !== null && groupOf(inst) !== group)) continue
    const col = tl.cols.get(seriesKey(metric, inst))
    if (col) feeds.push({ col, slot: b.slot })
  }
  const times = tl.times
  const end: number[] = []
  const start: number[] = []
  const rows: number[] = []
  let prev = -Infinity
  for (let i = 0; i < times.length; i++) {
    let any = false
    for (const f of feeds) {
      if (f.col[i] !== null && f.col[i] !== undefined) {
        any = true
        break
      }
    }
    if (!any) continue
    const t = times[i]
    const dt = t - prev
    start.push(dt > 0 && dt <= 1.5 * cadence ? prev : t - cadence)
    end.push(t)
    rows.push(i)
    prev = t
  }
  const counts = new Float64Array(end.length * SLOTS)
  let max = 0
  let minSlot = SLOTS
  let maxSlot = -1
  for (let c = 0; c < rows.length; c++) {
    const i = rows[c]
    const dt = end[c] - start[c]
    for (const f of feeds) {
      const v = f.col[i]
      if (v === null || v === undefined || !(v > 0)) continue
      const k = c * SLOTS + f.slot
      counts[k] += v * dt
    }
  }
  for (let k = 0; k < counts.length; k++) {
    const v = counts[k]
    if (!(v > 0)) continue
    if (v > max) max = v
    const slot = k % SLOTS
    if (slot < minSlot) minSlot = slot
    if (slot > maxSlot) maxSlot = slot
  }
  return { end, start, rows, counts, minSlot: maxSlot < 0 ? -1 : minSlot, maxSlot, max, step: cadence }
}

/** Index of the last column ending at or before `t` (binary search; -1 if none). */
export function columnAt(h: HeatColumns, t: number): number {
  let lo = 0
  let hi = h.end.length - 1
  let found = -1
  while (lo <= hi) {
    const mid = (lo + hi) >> 1
    if (h.end[mid] <= t) {
      found = mid
      lo = mid + 1
    } else hi = mid - 1
  }
  return found
}

/** The column containing time `t` (start < t <= end), or -1. */
export function columnContaining(h: HeatColumns, t: number): number {
  const c = columnAt(h, t)
  if (c + 1 < h.end.length && h.start[c + 1] < t) return c + 1
  return c >= 0 && h.end[c] === t ? c : -1
}

/** Largest cell among columns ending within [from, to] (what the visible window needs). */
export function maxIn(h: HeatColumns, from: number, to: number): number {
  let max = 0
  for (let c = Math.max(0, columnAt(h, from)); c < h.end.length && h.end[c] <= to; c++) {
    if (h.end[c] < from) continue
    for (let s = 0; s < SLOTS; s++) if (h.counts[c * SLOTS + s] > max) max = h.counts[c * SLOTS + s]
  }
  return max
}

/**
 * Percentile lines computed from the columns themselves, for histograms the dashboard
 * sums (the daemon publishes them per instance group only). Values in µs, null for an
 * empty column.
 */
export function columnPercentiles(h: HeatColumns, qs: readonly number[]): (number | null)[][] {
  const out = qs.map(() => new Array<number | null>(h.end.length))
  for (let c = 0; c < h.end.length; c++) {
    const p = slotPercentiles(h.counts.subarray(c * SLOTS, (c + 1) * SLOTS), qs)
    for (let q = 0; q < qs.length; q++) out[q][c] = p[q]
  }
  return out
}

/**
 * uPlot data for the percentile lines over a heat map: a point per column at its end
 * time (values in heat-map rows, see `slotY`), plus a null point wherever columns are not
 * contiguous (the module was off), so the lines break there instead of bridging the gap.
 * `cols[i]` is the column of data point i (-1 for a gap point).
 */
export function lineData(h: HeatColumns, lines: (number | null)[][]): { xs: number[]; ys: (number | null)[][]; cols: number[] } {
  const xs: number[] = []
  const ys: (number | null)[][] = lines.map(() => [])
  const cols: number[] = []
  for (let c = 0; c < h.end.length; c++) {
    if (c > 0 && h.start[c] > h.end[c - 1] + 1e-3) {
      xs.push(h.start[c])
      for (const y of ys) y.push(null)
      cols.push(-1)
    }
    xs.push(h.end[c])
    lines.forEach((l, i) => {
      const v = l[c]
      ys[i].push(v == null ? null : slotY(v))
    })
    cols.push(c)
  }
  return { xs, ys, cols }
}

/**
 * The top of the colour scale: the largest cell rounded up to 1, 2 or 5 times a power of
 * ten, so the scale (and therefore every drawn cell) changes rarely as data arrives.
 */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(max))
  for (const m of [1, 2, 5, 10]) if (max <= m * p * (1 + 1e-9)) return m * p
  return 10 * p
}

/** Colour scale entries (index 0 is "no events" and never drawn). */
export const LEVELS = 64

/**
 * Colour level of a cell: logarithmic in the count, because latency histograms span
 * orders of magnitude (thousands of fast events, a handful of slow ones); any event at
 * all gets at least level 1, so a single outlier stays visible.
 */
export function level(count: number, top: number): number {
  if (!(count > 0)) return 0
  const t = Math.log1p(count) / Math.log1p(Math.max(top, count))
  return Math.max(1, Math.min(LEVELS - 1, Math.round(t * (LEVELS - 1))))
}

/** Count at the start of a colour level (inverse of {@link level}, for the legend). */
export function levelCount(lvl: number, top: number): number {
  return Math.expm1((lvl / (LEVELS - 1)) * Math.log1p(top))
}

// A perceptually ordered, colour-blind-safe ramp (viridis-like stops), light to dark
// backgrounds alike: low counts are dark purple-blue, high counts yellow.
const STOPS: [number, number, number][] = [
  [68, 1, 84],
  [65, 68, 135],
  [42, 120, 142],
  [34, 168, 132],
  [122, 209, 81],
  [253, 231, 37],
]

/** `LEVELS` CSS colours; index 0 is transparent. */
export function palette(): string[] {
  const out = ['rgba(0,0,0,0)']
  for (let i = 1; i < LEVELS; i++) {
    const t = ((i - 1) / (LEVELS - 2)) * (STOPS.length - 1)
    const a = Math.min(STOPS.length - 2, Math.floor(t))
    const f = t - a
    const [r, g, b] = STOPS[a].map((x, j) => Math.round(x + (STOPS[a + 1][j] - x) * f))
    out.push(`rgb(${r},${g},${b})`)
  }
  return out
}
