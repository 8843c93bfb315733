/**
 * Columnar, time-bounded buffers for one host connection: one shared array of
 * timestamps and, per series (metric, instance), a parallel array of values in BASE
 * units (bytes, seconds, counts; utilisations as 0..1). `[times, ...columns]` is exactly
 * uPlot's data layout, so charts hand these arrays to uPlot without copying.
 *
 * Bounded: everything older than `retentionS` before the newest timestamp is dropped
 * (in batches, so trimming costs O(1) amortised per sample), and a series with no value
 * left in the window is forgotten, so memory stays proportional to the window shown.
 */
import type { Value } from './protocol'

export type Column = (number | null)[]

const SEP = '\u0001'

export function seriesKey(metric: string, instance: string): string {
  return metric + SEP + instance
}

export function splitKey(key: string): [string, string] {
  const i = key.indexOf(SEP)
  return [key.slice(0, i), key.slice(i + 1)]
}

/** Trim when this many samples have fallen out of the window (amortises the splice). */
const TRIM_BATCH = 32

export class Timeline {
  times: number[] = []
  readonly cols = new Map<string, Column>()
  /** metric -> instances present in `cols`. */
  readonly instances = new Map<string, Set<string>>()
  /** Latest value of text metrics (command names, container names), not charted. */
  readonly text = new Map<string, string>()
  /**
   * Bumped whenever data already held changes (a merge into the past, a forgotten
   * series), so a drawing that only appends new columns knows to start over.
   */
  generation = 0

  constructor(public retentionS: number) {}

  get length(): number {
    return this.times.length
  }

  get last(): number | undefined {
    return this.times[this.times.length - 1]
  }

  /** Column of a series, created full of nulls when new. */
  private column(key: string): Column {
    let col = this.cols.get(key)
    if (!col) {
      col = new Array<number | null>(this.times.length).fill(null)
      this.cols.set(key, col)
      const [metric, instance] = splitKey(key)
      let set = this.instances.get(metric)
      if (!set) this.instances.set(metric, (set = new Set()))
      set.add(instance)
    }
    return col
  }

  /**
   * Add columnar samples (a `samples` frame's layout): `keys[c]` names column c,
   * `v[c][i]` is its value at `t[i]`, `scale[c]` converts it to base units.
   */
  add(t: number[], keys: string[], v: Value[][], scale: number[]): void {
    if (t.length === 0) return
    const last = this.last
    const ordered = t.every((x, i) => i === 0 || x > t[i - 1])
    if (ordered && (last === undefined || t[0] > last)) this.append(t, keys, v, scale)
    else this.merge(t, keys, v, scale)
    this.trim()
  }

  private append(t: number[], keys: string[], v: Value[][], scale: number[]): void {
    const start = this.times.length
    for (const x of t) this.times.push(x)
    const n = this.times.length
    for (const col of this.cols.values()) for (let i = start; i < n; i++) col.push(null)
    for (let c = 0; c < keys.length; c++) {
      const vals = v[c]
      if (!vals) continue
      let col: Column | undefined
      for (let i = 0; i < t.length; i++) {
        const x = vals[i]
        if (typeof x === 'string') {
          this.text.set(keys[c], x)
          continue
        }
        if (x === null || x === undefined) continue
        col ??= this.column(keys[c])
        col[start + i] = x * scale[c]
      }
    }
  }

  /** Out-of-order or overlapping data (backfill after a reconnect, history for a gap). */
  private merge(t: number[], keys: string[], v: Value[][], scale: number[]): void {
    this.generation++
    const union = Array.from(new Set([...this.times, ...t])).sort((a, b) => a - b)
    if (union.length !== this.times.length) {
      const pos = new Map(union.map((x, i) => [x, i]))
      const old = this.times
      for (const [key, col] of this.cols) {
        const next: Column = new Array<number | null>(union.length).fill(null)
        for (let i = 0; i < old.length; i++) next[pos.get(old[i])!] = col[i]
        this.cols.set(key, next)
      }
      this.times = union
    }
    const index = new Map(this.times.map((x, i) => [x, i]))
    for (let c = 0; c < keys.length; c++) {
      const vals = v[c]
      if (!vals) continue
      for (let i = 0; i < t.length; i++) {
        const x = vals[i]
        if (typeof x === 'string') this.text.set(keys[c], x)
        else if (x !== null && x !== undefined) this.column(keys[c])[index.get(t[i])!] = x * scale[c]
      }
    }
  }

  private trim(): void {
    const last = this.last
    if (last === undefined) return
    const cutoff = last - this.retentionS
    let drop = 0
    while (drop < this.times.length && this.times[drop] < cutoff) drop++
    if (drop < TRIM_BATCH) return
    this.times.splice(0, drop)
    for (const [key, col] of this.cols) {
      col.splice(0, drop)
      if (!col.some((x) => x !== null)) this.forget(key)
    }
  }

  /** Drop one series (an instance gone for the whole window, or a released metric). */
  forget(key: string): void {
    this.generation++
    this.cols.delete(key)
    this.text.delete(key)
    const [metric, instance] = splitKey(key)
    const set = this.instances.get(metric)
    set?.delete(instance)
    if (set && set.size === 0) this.instances.delete(metric)
  }

  /** Drop every series of the given metrics (unsubscribed, or re-filtered). */
  forgetMetrics(match: (metric: string) => boolean): void {
    for (const key of [...this.cols.keys(), ...this.text.keys()]) if (match(splitKey(key)[0])) this.forget(key)
  }

  clear(): void {
    this.generation++
    this.times = []
    this.cols.clear()
    this.instances.clear()
    this.text.clear()
  }

  /** Latest non-null value of a series within the last `maxAge` samples. */
  latest(key: string, maxAge = 5): number | null {
    const col = this.cols.get(key)
    if (!col) return null
    for (let i = col.length - 1; i >= Math.max(0, col.length - maxAge); i--) if (col[i] !== null) return col[i]
    return null
  }
}
