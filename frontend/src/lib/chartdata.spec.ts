import { describe, expect, it } from 'vitest'
import { panelById, type PanelSpec } from './catalogue'
import { bridgeCadence, buildChart, type SourceLike } from './chartdata'
import type { Descriptor } from './protocol'
import { Timeline, seriesKey } from './timeline'

function desc(name: string, kind: string, perSec: boolean, factor: number): Descriptor {
  const u = { label: '', kind, per_sec: perSec, base_factor: factor }
  return { name, type: 'double', semantics: 'instant', units: u, value_units: u, indom: null, help: name }
}

function source(tl: Timeline, descs: Descriptor[]): SourceLike {
  const m = new Map(descs.map((d) => [d.name, d]))
  return { timelineFor: () => tl, descriptor: (n) => m.get(n) }
}

describe('buildChart', () => {
  it('stacks CPU states with cumulative sums and keeps the raw values for the legend', () => {
    const tl = new Timeline(300)
    const u = seriesKey('kernel.all.cpu.util.user', '')
    const s = seriesKey('kernel.all.cpu.util.sys', '')
    tl.add([1, 2], [u, s], [[0.2, null], [0.1, 0.3]], [1, 1])
    const panel = panelById('cpu.util')!
    const m = buildChart(panel, source(tl, [desc('kernel.all.cpu.util.user', 'utilization', true, 1), desc('kernel.all.cpu.util.sys', 'utilization', true, 1)]))
    expect(m.stack).toBe(true)
    // top of the stack first
    expect(m.series.map((x) => x.label)).toEqual(['sys', 'user'])
    expect(m.series.every((x) => x.scale === 'util')).toBe(true)
    expect(m.data[2]).toEqual([0.2, null])
    expect(m.data[1]).toEqual([0.30000000000000004, 0.3])
    expect(m.raw[0]).toEqual([0.1, 0.3])
  })

  it('labels per-instance series, orders them naturally and caps the busiest', () => {
    const tl = new Timeline(300)
    const names = Array.from({ length: 20 }, (_, i) => `cpu${i}`)
    tl.add([1], names.map((n) => seriesKey('kernel.percpu.cpu.util.busy', n)), names.map((_, i) => [i / 20]), names.map(() => 1))
    const m = buildChart(panelById('cpu.percpu')!, source(tl, []), { limit: 4 })
    expect(m.series.map((x) => x.label)).toEqual(['cpu16', 'cpu17', 'cpu18', 'cpu19'])
    expect(m.hidden).toBe(16)
  })

  it('shows percent metrics as utilisation and renames instances', () => {
    const tl = new Timeline(300)
    tl.add([1], [seriesKey('filesys.full', '/')], [[42]], [1])
    const m = buildChart(panelById('fs.full')!, source(tl, []), { rename: () => 'root fs' })
    expect(m.data[1]).toEqual([0.42])
    expect(m.series[0]).toMatchObject({ label: 'root fs', scale: 'util' })
  })

  it('puts different kinds of quantity on different scales', () => {
    const tl = new Timeline(300)
    const p: PanelSpec = { id: 'x', group: 'custom', title: 'x', series: [{ metric: 'a.b', label: 'a' }, { metric: 'c.d', label: 'c' }] }
    tl.add([1], [seriesKey('a.b', ''), seriesKey('c.d', '')], [[1], [2]], [1, 1])
    const m = buildChart(p, source(tl, [desc('a.b', 'bytes', true, 1024), desc('c.d', 'time', false, 1e-3)]))
    expect(m.series.map((x) => x.scale)).toEqual(['bytes/s', 'time'])
  })
})

describe('bridgeCadence', () => {
  it('spans the nulls of a slower collector but keeps real gaps', () => {
    const t = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    const col = [1, null, 2, null, 3, null, null, null, null, null, 4]
    expect(bridgeCadence(col, t)).toEqual([1, undefined, 2, undefined, 3, null, null, null, null, null, 4])
  })
  it('leaves a dense column alone, single missing samples included', () => {
    const col = [1, 2, null, 4]
    expect(bridgeCadence(col, [1, 2, 3, 4])).toEqual([1, 2, null, 4])
    const dense = [1, 2, 3]
    expect(bridgeCadence(dense, [1, 2, 3])).toBe(dense)
  })
})
