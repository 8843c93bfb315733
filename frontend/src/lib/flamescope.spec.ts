import { describe, expect, it } from 'vitest'
import fx from './fixtures/profiles.synthetic.json'
import { cellAt, cellColour, cellRange, cellStart, inRange, rangeTotal, selectStep, secondsLabel, type Timeline } from './flamescope'

const tl = fx.json.timeline as Timeline

describe('FlameScope cells and time', () => {
  it('maps a cell to the seconds after the start it begins at', () => {
    expect(cellStart({ sec: 0, row: 0 }, 50)).toBe(0)
    expect(cellStart({ sec: 2, row: 25 }, 50)).toBeCloseTo(2.5, 12)
    expect(cellStart({ sec: 3, row: 49 }, 50)).toBeCloseTo(3.98, 12)
  })

  it('turns two cells into a range from the earlier start to the later end, either order', () => {
    const a = { sec: 1, row: 10 }
    const b = { sec: 3, row: 4 }
    expect(cellRange(a, b, 50)).toEqual({ start: 1.2, end: 3.1 })
    expect(cellRange(b, a, 50)).toEqual({ start: 1.2, end: 3.1 })
    // One cell is one slot (20 ms at 50 rows).
    expect(cellRange(a, a, 50)).toEqual({ start: 1.2, end: 1.22 })
  })

  it('knows which cells a range covers', () => {
    const r = cellRange({ sec: 1, row: 49 }, { sec: 2, row: 0 }, 50)
    expect(inRange({ sec: 1, row: 48 }, 50, r)).toBe(false)
    expect(inRange({ sec: 1, row: 49 }, 50, r)).toBe(true)
    expect(inRange({ sec: 2, row: 0 }, 50, r)).toBe(true)
    expect(inRange({ sec: 2, row: 1 }, 50, r)).toBe(false)
    expect(inRange({ sec: 2, row: 1 }, 50, null)).toBe(false)
  })

  it('finds the cell under the mouse, clamped to the grid', () => {
    expect(cellAt(0, 0, 20, 4, tl)).toEqual({ sec: 0, row: 0 })
    expect(cellAt(45, 9, 20, 4, tl)).toEqual({ sec: 2, row: 2 })
    expect(cellAt(10_000, 10_000, 20, 4, tl)).toEqual({ sec: tl.seconds - 1, row: tl.rows - 1 })
    expect(cellAt(-5, -5, 20, 4, tl)).toEqual({ sec: 0, row: 0 })
  })

  it('selects by dragging, or by clicking a start and then an end', () => {
    const a = { sec: 0, row: 5 }
    const b = { sec: 1, row: 0 }
    expect(selectStep(null, a, b, 50)).toEqual({ pending: null, range: { start: 0.1, end: 1.02 } })
    const first = selectStep(null, a, a, 50)
    expect(first).toEqual({ pending: a, range: null })
    expect(selectStep(first.pending, b, b, 50)).toEqual({ pending: null, range: { start: 0.1, end: 1.02 } })
    // A drag after a lone click starts afresh.
    expect(selectStep(a, b, { sec: 2, row: 0 }, 50).range).toEqual({ start: 1, end: 2.02 })
  })

  it('totals the samples of a range (the whole capture is every sample)', () => {
    expect(rangeTotal(tl, { start: 0, end: tl.seconds })).toBe(fx.json.profile.total)
    const second2 = tl.counts[2].reduce((x, y) => x + y, 0)
    expect(rangeTotal(tl, { start: 2, end: 3 })).toBe(second2)
  })

  it('colours empty cells blank and busier ones darker', () => {
    expect(cellColour(0, 10, false)).toBe('#ffffff')
    expect(cellColour(0, 0, true)).toBe('#22272e')
    const light = /(\d+)%\)$/.exec(cellColour(1, 100, false))![1]
    const darker = /(\d+)%\)$/.exec(cellColour(100, 100, false))![1]
    expect(Number(darker)).toBeLessThan(Number(light))
    expect(secondsLabel(1.5)).toBe('1.500 s')
  })
})
