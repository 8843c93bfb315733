import { describe, expect, it } from 'vitest'
import cases from './format.cases.json'
import { baseUnits, formatValue, num, scaleKey, toFixedEven, unitsOfScale, type UnitsLike } from './format'

describe('formatValue matches metrics/format.py', () => {
  // Every case was printed by the Python implementation (tests/test_render.py keeps the
  // file current), so a divergence between the two twins fails here.
  it.each(cases.cases)('$units.label: $value -> $text', (c) => {
    expect(formatValue(c.value as number | string | null, c.units as UnitsLike)).toBe(c.text)
  })
})

describe('number rendering', () => {
  it('rounds exact ties to even like Python', () => {
    expect(toFixedEven(1.125, 2)).toBe('1.12')
    expect(toFixedEven(1.375, 2)).toBe('1.38')
    expect(toFixedEven(2.5, 0)).toBe('2')
    expect(toFixedEven(3.5, 0)).toBe('4')
    expect(toFixedEven(-2.5, 0)).toBe('-2')
    expect(toFixedEven(1.13, 1)).toBe('1.1')
  })
  it('keeps three significant digits and strips zeros', () => {
    expect(num(12.3456)).toBe('12.3')
    expect(num(100)).toBe('100')
    expect(num(0.000123456)).toBe('0.000123')
    expect(num(123456)).toBe('123456')
  })
})

describe('scales', () => {
  it('puts each kind of quantity on its own scale', () => {
    expect(scaleKey({ kind: 'bytes', per_sec: true, base_factor: 1024 })).toBe('bytes/s')
    expect(scaleKey({ kind: 'utilization', per_sec: true, base_factor: 1e-3 })).toBe('util')
    expect(scaleKey({ kind: 'none', per_sec: false, base_factor: 1 })).toBe('count')
    expect(unitsOfScale('bytes/s')).toEqual(baseUnits('bytes', true))
    expect(formatValue(1536, unitsOfScale('bytes/s'))).toBe('1.5 KiB/s')
    expect(formatValue(0.251, unitsOfScale('util'))).toBe('25.1 %')
    expect(formatValue(0.0042, unitsOfScale('time'))).toBe('4.2 ms')
  })
})
