import { describe, expect, it } from 'vitest'
import recorded from '../stores/fixtures/bpf.json'
import { SLOTS } from './histogram'
import { LEVELS, buildColumns, columnContaining, columnPercentiles, histogramGroups, level, levelCount, lineData, maxIn, niceMax, palette } from './heatmap'
import { Timeline, seriesKey } from './timeline'
import type { MetaMsg, SamplesMsg } from './protocol'

/** The recorded live frames of bpf.runq (one page switching run queue latency on). */
function recordedTimeline(): { tl: Timeline; frames: SamplesMsg[]; meta: MetaMsg } {
  const metas = recorded.stream.filter((m) => m.type === 'meta') as unknown as MetaMsg[]
  const meta = metas.at(-1)!
  const frames = recorded.stream.filter((m) => m.type === 'samples') as unknown as SamplesMsg[]
  const tl = new Timeline(600)
  const keys = meta.series.map(([m, i]) => seriesKey(m, i))
  const scale = meta.series.map(([m]) => meta.metrics[m].value_units.base_factor)
  for (const f of frames) tl.add(f.t, keys, f.v, scale)
  return { tl, frames, meta }
}

describe('heat map columns from the columnar stream', () => {
  it('turns per-second bucket rates into events per column, one column per sample', () => {
    const { tl, frames, meta } = recordedTimeline()
    const h = buildColumns(tl, 'bpf.runq.latency', null, 1)
    // The first frame after switching on has no rates yet (a counter's first sample).
    const withData = frames.filter((f) => f.v.some((col) => col[0] !== null))
    expect(h.end).toEqual(withData.map((f) => f.t[0]))
    const c = 1
    const dt = h.end[c] - h.start[c]
    expect(dt).toBeCloseTo(1, 6)
    const col = meta.series.findIndex(([m, i]) => m === 'bpf.runq.latency' && i === '16-31')
    expect(h.counts[c * SLOTS + 4]).toBeCloseTo((withData[c].v[col][0] as number) * dt, 6)
    expect(h.minSlot).toBeGreaterThanOrEqual(0)
    expect(h.maxSlot).toBeGreaterThanOrEqual(h.minSlot)
    expect(h.max).toBe(Math.max(...h.counts))
    // Percentiles from the columns agree with the daemon's derived p99 for the same frame.
    const p99 = columnPercentiles(h, [0.99])[0]
    const p99col = meta.series.findIndex(([m]) => m === 'bpf.runq.p99')
    h.end.forEach((_, i) => {
      const daemon = withData[i].v[p99col][0] as number
      expect(p99[i]).toBeCloseTo(daemon, 0)
    })
  })

  it('sums instance groups or picks one, and sorts buckets by slot whatever their order', () => {
    const tl = new Timeline(600)
    const keys = ['vda:read:4-7', 'vda:write:4-7', 'vda:read:0-1', 'sdb:read:1024-2047'].map((i) => seriesKey('bpf.biolatency.latency', i))
    tl.add([100, 101, 102], keys, [[1, 2, 3], [10, 20, 30], [5, null, 5], [0, 0, 1]], [1, 1, 1, 1])
    expect(histogramGroups(tl, 'bpf.biolatency.latency')).toEqual(['sdb:read', 'vda:read', 'vda:write'])
    const all = buildColumns(tl, 'bpf.biolatency.latency', null, 1)
    expect(all.end).toEqual([100, 101, 102])
    expect(Array.from(all.counts.subarray(SLOTS, 2 * SLOTS)).slice(0, 3)).toEqual([0, 0, 22])
    expect([all.minSlot, all.maxSlot]).toEqual([0, 10])
    const read = buildColumns(tl, 'bpf.biolatency.latency', 'vda:read', 1)
    expect(read.counts[2 * SLOTS + 2]).toBe(3)
    expect(read.counts[2 * SLOTS + 10]).toBe(0)
    expect(read.counts[0]).toBe(5)
  })

  it('gives the first column after a gap one interval, not the whole gap', () => {
    const tl = new Timeline(600)
    const key = seriesKey('bpf.runq.latency', '8-15')
    tl.add([10, 11, 12, 40, 41], [key], [[2, 2, null, 2, 2]], [1])
    const h = buildColumns(tl, 'bpf.runq.latency', null, 1)
    expect(h.end).toEqual([10, 11, 40, 41])
    expect(h.start).toEqual([9, 10, 39, 40])
    expect(Array.from({ length: 4 }, (_, c) => h.counts[c * SLOTS + 3])).toEqual([2, 2, 2, 2])
    // Half-second streams count half a second of events per column.
    const fast = new Timeline(600)
    fast.add([1, 1.5, 2], [key], [[4, 4, 4]], [1])
    const hf = buildColumns(fast, 'bpf.runq.latency', null, 0.5)
    expect(hf.counts[1 * SLOTS + 3]).toBe(2)
  })

  it('breaks percentile lines where the module was off instead of bridging the gap', () => {
    const tl = new Timeline(600)
    tl.add([10, 11, 40, 41], [seriesKey('m', '8-15')], [[1, 1, 1, 1]], [1])
    const h = buildColumns(tl, 'm', null, 1)
    const d = lineData(h, [[10, null, 1000, 8]])
    expect(d.xs).toEqual([10, 11, 39, 40, 41])
    expect(d.cols).toEqual([0, 1, -1, 2, 3])
    expect(d.ys[0]).toEqual([Math.log2(10), null, null, Math.log2(1000), 3])
  })

  it('finds the column under a time and the largest cell in a range', () => {
    const tl = new Timeline(600)
    const k = (i: string) => seriesKey('m', i)
    tl.add([10, 11, 12], [k('0-1'), k('2-3')], [[1, 5, 2], [0, 0, 9]], [1, 1])
    const h = buildColumns(tl, 'm', null, 1)
    expect(columnContaining(h, 10.5)).toBe(1)
    expect(columnContaining(h, 11)).toBe(1)
    expect(columnContaining(h, 9.5)).toBe(0)
    expect(columnContaining(h, 12.5)).toBe(-1)
    expect(columnContaining(h, 8)).toBe(-1)
    expect(maxIn(h, 10, 11)).toBe(5)
    expect(maxIn(h, 0, 100)).toBe(9)
    expect(maxIn(h, 13, 20)).toBe(0)
  })
})

describe('colour scale', () => {
  it('rounds the top to 1, 2 or 5 times a power of ten', () => {
    expect([0, 0.3, 1, 1.2, 3, 7, 42, 200, 201, 9999].map(niceMax)).toEqual([1, 0.5, 1, 2, 5, 10, 50, 200, 500, 10000])
  })

  it('is logarithmic, keeps single events visible and tops out at the scale', () => {
    expect(level(0, 100)).toBe(0)
    expect(level(0.01, 1000)).toBe(1)
    expect(level(100, 100)).toBe(LEVELS - 1)
    expect(level(1000, 100)).toBe(LEVELS - 1)
    expect(level(10, 1000)).toBeGreaterThan(level(1, 1000))
    expect(levelCount(LEVELS - 1, 500)).toBeCloseTo(500, 6)
    const colours = palette()
    expect(colours).toHaveLength(LEVELS)
    expect(colours[0]).toBe('rgba(0,0,0,0)')
    expect(new Set(colours).size).toBe(LEVELS)
  })
})
