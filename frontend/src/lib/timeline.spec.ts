import { describe, expect, it } from 'vitest'
import { Timeline, seriesKey } from './timeline'

const A = seriesKey('kernel.all.cpu.util.user', '')
const B = seriesKey('disk.dev.read_bytes', 'vda')

describe('Timeline', () => {
  it('appends live frames column by column, in base units', () => {
    const tl = new Timeline(300)
    tl.add([100], [A, B], [[0.5], [2]], [1, 1024])
    tl.add([101], [A, B], [[0.25], [null]], [1, 1024])
    expect(tl.times).toEqual([100, 101])
    expect(tl.cols.get(A)).toEqual([0.5, 0.25])
    expect(tl.cols.get(B)).toEqual([2048, null])
    expect([...tl.instances.get('disk.dev.read_bytes')!]).toEqual(['vda'])
  })

  it('pads a series that appears later with nulls and one missing from a frame too', () => {
    const tl = new Timeline(300)
    tl.add([1, 2], [A], [[0.1, 0.2]], [1])
    tl.add([3], [B], [[5]], [1])
    expect(tl.cols.get(B)).toEqual([null, null, 5])
    expect(tl.cols.get(A)).toEqual([0.1, 0.2, null])
  })

  it('merges an overlapping backfill by timestamp (reconnect after a gap)', () => {
    const tl = new Timeline(300)
    tl.add([10, 11], [A], [[1, 2]], [1])
    tl.add([20, 21], [A], [[9, 10]], [1])
    // history of the gap plus one already-known sample
    tl.add([11, 12, 13], [A, B], [[2, 3, 4], [7, 8, 9]], [1, 1])
    expect(tl.times).toEqual([10, 11, 12, 13, 20, 21])
    expect(tl.cols.get(A)).toEqual([1, 2, 3, 4, 9, 10])
    expect(tl.cols.get(B)).toEqual([null, 7, 8, 9, null, null])
  })

  it('keeps text values aside', () => {
    const tl = new Timeline(300)
    const name = seriesKey('cgroup.container.name', '/docker/ab')
    tl.add([1], [name], [['web-1']], [1])
    expect(tl.text.get(name)).toBe('web-1')
    expect(tl.cols.has(name)).toBe(false)
  })

  it('stays bounded to the retention window and forgets vanished series', () => {
    const tl = new Timeline(60)
    for (let t = 0; t < 1000; t++) tl.add([t], t < 500 ? [A, B] : [A], t < 500 ? [[t], [t]] : [[t]], [1, 1])
    expect(tl.length).toBeLessThanOrEqual(61 + 32)
    expect(tl.times[tl.length - 1]).toBe(999)
    expect(tl.cols.get(A)!.length).toBe(tl.length)
    expect(tl.cols.has(B)).toBe(false)
    expect(tl.instances.has('disk.dev.read_bytes')).toBe(false)
  })

  it('returns the latest value', () => {
    const tl = new Timeline(60)
    tl.add([1, 2, 3], [A], [[1, 2, null]], [1])
    expect(tl.latest(A)).toBe(2)
    expect(tl.latest(B)).toBeNull()
  })
})
