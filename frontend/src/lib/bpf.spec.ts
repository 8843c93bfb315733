import { describe, expect, it } from 'vitest'
import recorded from '../stores/fixtures/bpf.json'
import { cellText, cellTitle, histogramMetric, parseToggleKey, percentilePrefix, sortRows, summaryMetrics, tableSpec, toggleKey } from './bpf'
import type { BpfModuleStatus, Descriptor, MetaMsg } from './protocol'

const meta = (recorded.stream.filter((m) => m.type === 'meta') as unknown as MetaMsg[]).at(-1)!
const modules = recorded.list.modules as unknown as BpfModuleStatus[]
const byName = (n: string) => modules.find((m) => m.name === n)!

/** Descriptors as GET /api/v1/metrics gives them (the recorded runq ones, others shaped alike). */
function describe_(metric: string): Descriptor | undefined {
  const known = meta.metrics[metric]
  if (known) return known
  const counter = (help: string, indom: string | null): Descriptor => ({
    name: metric, type: 'u64', semantics: 'counter', help, indom,
    units: { label: 'count', kind: 'count', per_sec: false, base_factor: 1 },
    value_units: { label: 'count / sec', kind: 'count', per_sec: true, base_factor: 1 },
  })
  if (metric.endsWith('.latency') || metric === 'bpf.offcpu.time') return counter('latency: events per log2 bucket (microsec)', metric)
  if (/\.p\d\d$/.test(metric)) return { ...counter('percentile', null), semantics: 'instant' }
  if (metric.startsWith('bpf.syscall.')) return counter('system calls, per syscall', 'bpf.syscall')
  return counter('events', null)
}

describe('what a module draws', () => {
  it('finds each histogram module’s heat-map metric and nothing in table modules', () => {
    const found = Object.fromEntries(modules.map((m) => [m.name, histogramMetric(m, describe_)]))
    expect(found).toEqual({
      runqlat: 'bpf.runq.latency',
      biolatency: 'bpf.biolatency.latency',
      syscalls: 'bpf.syscall.latency',
      offcpu: 'bpf.offcpu.time',
      tcplife: null,
      tcpretrans: null,
      execsnoop: null,
    })
    expect(percentilePrefix('bpf.runq.latency')).toBe('bpf.runq')
  })

  it('summarises table modules by their singular counters', () => {
    expect(summaryMetrics(byName('tcplife'), describe_, null)).toEqual(['bpf.tcplife.sessions', 'bpf.tcplife.lost'])
    expect(summaryMetrics(byName('runqlat'), describe_, 'bpf.runq.latency')).toEqual([])
    expect(summaryMetrics(byName('syscalls'), describe_, 'bpf.syscall.latency')).toEqual([])
  })
})

describe('tables', () => {
  it('formats the recorded syscalls table with units', () => {
    const spec = tableSpec('syscalls', 'top')
    const row = recorded.table.rows[0] as Record<string, unknown>
    const text = Object.fromEntries(spec.columns.map((c) => [c.key, cellText(c, row)]))
    expect(text.syscall).toBe(row.syscall)
    expect(text.time_ms).toMatch(/^\d+(\.\d+)? (ms|µs|s)$/)
    expect(text.avg_us).toMatch(/µs$/)
    expect(text.rate).toMatch(/\/s$/)
  })

  it('writes addresses as host:port, IPv6 in brackets, and keeps strings as text', () => {
    const spec = tableSpec('tcplife', 'sessions')
    const local = spec.columns.find((c) => c.key === 'local')!
    expect(cellText(local, { saddr: '::1', sport: 22 })).toBe('[::1]:22')
    expect(cellText(local, { saddr: '10.0.0.1', sport: 443 })).toBe('10.0.0.1:443')
    const comm = spec.columns.find((c) => c.key === 'comm')!
    expect(cellTitle(comm, { comm: '<b>x</b>' })).toBe('<b>x</b>')
    expect(cellText(spec.columns.find((c) => c.key === 'tx_bytes')!, { tx_bytes: null })).toBe('–')
  })

  it('shows unknown tables generically', () => {
    const spec = tableSpec('newmod', 'things', { name: 'a', n: 3 })
    expect(spec.columns.map((c) => [c.key, c.kind])).toEqual([['name', 'text'], ['n', 'count']])
  })

  it('sorts numbers numerically, text naturally, missing values last', () => {
    const col = { key: 'n', label: 'n', kind: 'count' as const }
    const rows = [{ n: 10 }, { n: null }, { n: 9 }, { n: 100 }]
    expect(sortRows(rows, col, true).map((r) => r.n)).toEqual([100, 10, 9, null])
    expect(sortRows(rows, col, false).map((r) => r.n)).toEqual([9, 10, 100, null])
    const text = { key: 's', label: 's', kind: 'text' as const }
    expect(sortRows([{ s: 'eth10' }, { s: 'eth2' }], text, false).map((r) => r.s)).toEqual(['eth2', 'eth10'])
  })
})

describe('toggle keys', () => {
  it('round-trips module@host and refuses anything else', () => {
    expect(toggleKey('runqlat', 'self')).toBe('runqlat')
    expect(parseToggleKey(toggleKey('runqlat', 'db1:7470'))).toEqual({ module: 'runqlat', host: 'db1:7470' })
    for (const bad of ['', 'Run', '1x', 'a b', 'x@']) expect(parseToggleKey(bad)).toBeNull()
  })
})
