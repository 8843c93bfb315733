import { describe, expect, it } from 'vitest'
import cases from './histogram.cases.json'
import { SLOTS, bucketName, groupOf, parseBucket, percentiles, slotPercentiles, slotValue, slotY } from './histogram'

describe('percentiles matches bpfmods/histogram.py', () => {
  // Printed by the Python implementation (tests/test_dashboard_e2e.py keeps the file current).
  it.each(cases.cases.map((c, i) => ({ ...c, i })))('case $i', (c) => {
    const got = percentiles(c.buckets as [string, number | null][], c.qs)
    got.forEach((v, j) => {
      const want = c.values[j]
      if (want === null) expect(v).toBeNull()
      else expect(v).toBeCloseTo(want, 9)
    })
  })

  it('gives the same answer from per-slot counts', () => {
    for (const c of cases.cases) {
      const slots = new Float64Array(SLOTS)
      for (const [name, count] of c.buckets as [string, number | null][]) {
        if (count && count > 0) slots[parseBucket(name)!.slot] += count
      }
      const a = percentiles(c.buckets as [string, number | null][], c.qs)
      const b = slotPercentiles(slots, c.qs)
      b.forEach((v, j) => (a[j] === null ? expect(v).toBeNull() : expect(v).toBeCloseTo(a[j]!, 9)))
    }
  })

  it('refuses quantiles outside 0..1 and names that are not buckets', () => {
    expect(() => percentiles([['0-1', 1]], [1.5])).toThrow(RangeError)
    expect(() => percentiles([['vda', 1]])).toThrow(/not a histogram bucket/)
  })
})

describe('bucket names', () => {
  it('parses the daemon’s names, with and without prefixes', () => {
    expect(parseBucket('0-1')).toEqual({ lo: 0, hi: 1, slot: 0 })
    expect(parseBucket('4-7')).toEqual({ lo: 4, hi: 7, slot: 2 })
    expect(parseBucket('vda:read:1024-2047')).toEqual({ lo: 1024, hi: 2047, slot: 10 })
    expect(parseBucket('67108864-inf')).toEqual({ lo: 67108864, hi: Infinity, slot: 26 })
    expect(groupOf('nvme0n1:write:4-7')).toBe('nvme0n1:write')
    expect(groupOf('4-7')).toBe('')
  })

  it('rejects what is not a log2 bucket', () => {
    for (const bad of ['', 'vda', '5-9', '4-', '-4', '8-4', 'a-b', '134217728-inf', '4-7x']) expect(parseBucket(bad)).toBeNull()
  })

  it('names every slot as the daemon does', () => {
    const names = Array.from({ length: SLOTS }, (_, s) => bucketName(s))
    expect(names.slice(0, 4)).toEqual(['0-1', '2-3', '4-7', '8-15'])
    expect(names.at(-1)).toBe('67108864-inf')
    names.forEach((n, s) => expect(parseBucket(n)!.slot).toBe(s))
  })

  it('places latencies inside their bucket’s row on the vertical axis', () => {
    for (let s = 0; s < SLOTS - 1; s++) {
      const { lo, hi } = parseBucket(bucketName(s))!
      expect(Math.floor(slotY(lo))).toBe(s)
      expect(Math.floor(slotY(hi + 0.999))).toBe(s)
    }
    for (const us of [0, 0.5, 1, 3, 1000, 123456]) expect(slotValue(slotY(us))).toBeCloseTo(us, 6)
  })
})
