/**
 * The process table's sparklines, kept across polls so that a poll asks the daemon for
 * the last few seconds of each row's CPU (`history=` a few poll periods) instead of the
 * whole minute: the daemon then reads and encodes ~3 points a row, not 30. A row the
 * table has not shown before (a new process, another sort or container) gets its minute
 * from the next poll, which asks for all of it, as does the first poll and one after a
 * pause long enough to leave a hole.
 */
import type { ProcessesAnswer } from './protocol'

export class SparkHistory {
  /** instance -> (sample time -> CPU), the points of the last `windowS` seconds. */
  private points = new Map<string, Map<number, number | null>>()
  /** Every sample time held, sorted: the sparklines' common x axis. */
  private axis: number[] = []
  private full = true
  /** When the last answer was merged (ms, `Date.now()`). */
  private mergedAt = -Infinity

  constructor(readonly windowS = 60) {}

  /**
   * Seconds of history the next poll should ask for, `pollS` being the time between
   * polls: three poll periods (a late poll still overlaps the last one), or the whole
   * window after a gap longer than that allows (a pause, a hidden tab, errors).
   */
  wanted(pollS: number, now = Date.now()): number {
    const recent = Math.min(this.windowS, Math.ceil(3 * pollS))
    if (now - this.mergedAt > (recent - pollS) * 1000) this.full = true
    return this.full ? this.windowS : recent
  }

  /** Ask for the whole window next time (the rows shown are about to change). */
  reset(): void {
    this.full = true
  }

  /** Take an answer's rows and their `cpu_history`; forget rows it no longer shows. */
  merge(answer: ProcessesAnswer, now = Date.now()): void {
    this.mergedAt = now
    const t = answer.history?.t ?? []
    const wasFull = this.full
    let unknown = false
    const shown = new Set<string>()
    for (const row of answer.processes) {
      shown.add(row.instance)
      let points = this.points.get(row.instance)
      if (!points) {
        points = new Map()
        this.points.set(row.instance, points)
        unknown ||= !wasFull
      }
      row.cpu_history?.forEach((v, i) => points.set(t[i], v))
    }
    for (const instance of this.points.keys()) if (!shown.has(instance)) this.points.delete(instance)
    const times = new Set<number>(wasFull ? [] : this.axis)
    for (const x of t) times.add(x)
    const newest = Math.max(...times)
    const cutoff = newest - this.windowS
    this.axis = [...times].filter((x) => x > cutoff).sort((a, b) => a - b)
    for (const points of this.points.values()) for (const x of points.keys()) if (x <= cutoff) points.delete(x)
    // Without a time axis (a daemon without history) there is nothing to keep asking for.
    this.full = unknown && t.length > 0
  }

  /** A row's sparkline: its CPU at each held time, null where it has no point. */
  values(instance: string): (number | null)[] {
    const points = this.points.get(instance)
    if (!points) return []
    return this.axis.map((x) => points.get(x) ?? null)
  }
}
