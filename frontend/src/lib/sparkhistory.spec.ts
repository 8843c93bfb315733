import { describe, expect, it } from 'vitest'
import type { ProcessesAnswer, ProcessRow } from './protocol'
import { SparkHistory } from './sparkhistory'

function row(instance: string, cpu_history: (number | null)[]): ProcessRow {
  return { instance, pid: Number(instance.split(':')[0]), cmd: 'x', container: '', cpu: null, rss: null, io: null, threads: null, state: 'S', cpu_history }
}

function answer(t: number[], rows: ProcessRow[]): ProcessesAnswer {
  return { timestamp: t[t.length - 1] ?? 0, processes: rows, history: { seconds: 60, step: 2, t } }
}

describe('SparkHistory', () => {
  it('asks for the whole minute first, then for three poll periods, and merges them', () => {
    const h = new SparkHistory(60)
    expect(h.wanted(2, 0)).toBe(60)
    h.merge(answer([96, 98, 100], [row('1:1', [0.1, 0.2, 0.3]), row('2:2', [null, 0.5, 0.5])]), 0)
    expect(h.wanted(2, 2000)).toBe(6)
    // The next poll overlaps the last one: points are merged by time, not appended.
    h.merge(answer([98, 100, 102], [row('1:1', [0.2, 0.3, 0.4]), row('2:2', [0.5, 0.5, 0.6])]), 2000)
    expect(h.values('1:1')).toEqual([0.1, 0.2, 0.3, 0.4])
    expect(h.values('2:2')).toEqual([null, 0.5, 0.5, 0.6])
    expect(h.wanted(2, 4000)).toBe(6)
  })

  it('fetches the whole minute again for rows it has not shown, and forgets rows gone', () => {
    const h = new SparkHistory(60)
    h.merge(answer([98, 100], [row('1:1', [0.1, 0.2])]), 0)
    h.merge(answer([100, 102], [row('1:1', [0.2, 0.3]), row('3:3', [0.9, 0.8])]), 2000)
    // The new row has its recent points now, null before them, until the full answer.
    expect(h.values('3:3')).toEqual([null, 0.9, 0.8])
    expect(h.wanted(2, 4000)).toBe(60)
    h.merge(answer([90, 92, 94, 96, 98, 100, 102, 104], [row('3:3', [0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7])]), 4000)
    expect(h.values('3:3')).toEqual([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7])
    expect(h.values('1:1')).toEqual([]) // not in the table any more
    expect(h.wanted(2, 6000)).toBe(6)
  })

  it('keeps one minute, and after a pause asks for all of it again instead of joining across the hole', () => {
    const h = new SparkHistory(10)
    h.merge(answer([90, 92, 94, 96, 98, 100], [row('1:1', [1, 2, 3, 4, 5, 6])]), 0)
    h.merge(answer([98, 100, 102, 104], [row('1:1', [5, 6, 7, 8])]), 2000)
    expect(h.values('1:1')).toEqual([4, 5, 6, 7, 8]) // (94, 104]
    expect(h.wanted(2, 5999)).toBe(6)
    expect(h.wanted(2, 30000)).toBe(10) // the table was paused: a hole of ~25 s
    h.merge(answer([124, 126], [row('1:1', [1, 1])]), 30000)
    expect(h.values('1:1')).toEqual([1, 1])
  })

  it('asks for the whole minute when told the rows will change, and copes without a time axis', () => {
    const h = new SparkHistory(60)
    h.merge(answer([100], [row('1:1', [0.1])]), 0)
    h.reset()
    expect(h.wanted(2, 1000)).toBe(60)
    h.merge({ timestamp: 1, processes: [row('1:1', [])] }, 1000) // no history (an old daemon)
    expect(h.values('1:1')).toEqual([])
    expect(h.wanted(2, 2000)).toBe(6)
  })
})
