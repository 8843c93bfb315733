/**
 * BPF widgets: which metrics of a module the widget draws, how its tables are shown, and
 * how the page's module toggles travel in the URL. Module names, metric names and table
 * layouts are those of docs/bpf.md; anything a newer daemon adds is shown generically.
 */
import type { InjectionKey } from 'vue'
import { baseUnits, formatTime, formatValue, type UnitsLike } from './format'
import type { BpfModuleStatus, Descriptor } from './protocol'

/** The histogram metric of a module (drawn as a heat map), if it has one. */
export function histogramMetric(
  mod: Pick<BpfModuleStatus, 'metrics'>,
  describe: (metric: string) => Descriptor | undefined,
): string | null {
  // A log2 histogram is a counter whose buckets are its instances, published with
  // p50/p90/p99 siblings (bpf.runq.latency + bpf.runq.p50 ...).
  for (const m of mod.metrics) {
    const parent = m.slice(0, m.lastIndexOf('.'))
    if (!mod.metrics.includes(`${parent}.p50`)) continue
    const d = describe(m)
    if (d && d.semantics === 'counter' && /log2 bucket/i.test(`${d.help} ${d.long_help ?? ''}`)) return m
  }
  return null
}

/** `bpf.runq.latency` -> `bpf.runq`, the prefix of its percentile metrics. */
export function percentilePrefix(metric: string): string {
  return metric.slice(0, metric.lastIndexOf('.'))
}

export const PERCENTILES = [
  { q: 0.5, label: 'p50' },
  { q: 0.9, label: 'p90' },
  { q: 0.99, label: 'p99' },
] as const

/**
 * Module counters shown as a one-line summary under the widget (sessions/s, lost/s...):
 * singular counters other than the histogram and its percentiles.
 */
export function summaryMetrics(
  mod: Pick<BpfModuleStatus, 'metrics'>,
  describe: (metric: string) => Descriptor | undefined,
  histogram: string | null,
): string[] {
  const pre = histogram ? percentilePrefix(histogram) + '.p' : '\0'
  return mod.metrics.filter((m) => {
    const d = describe(m)
    return m !== histogram && !m.startsWith(pre) && d?.semantics === 'counter' && d.indom === null
  })
}

/** Every metric a module's widget streams: its histogram and percentiles, its counters. */
export function widgetMetrics(
  mod: Pick<BpfModuleStatus, 'metrics'>,
  describe: (metric: string) => Descriptor | undefined,
): string[] {
  const h = histogramMetric(mod, describe)
  const names = h ? [h, ...PERCENTILES.map((p) => `${percentilePrefix(h)}.${p.label}`)] : []
  return [...names, ...summaryMetrics(mod, describe, h)].filter((n) => mod.metrics.includes(n))
}

// -- tables ------------------------------------------------------------------------------

export type CellKind = 'text' | 'count' | 'rate' | 'ms' | 'us' | 'bytes' | 'clock' | 'addr' | 'args'

export interface TableColumn {
  key: string
  label: string
  kind: CellKind
  /** Columns computed from others (addresses, per-second rates). */
  get?: (row: Record<string, unknown>) => unknown
  title?: string
}

export interface TableSpec {
  columns: TableColumn[]
  /** Initial sort (the daemon's order, newest first, when absent). */
  sort?: { key: string; desc: boolean }
  empty: string
}

function hostPort(addr: unknown, port: unknown): string {
  const a = typeof addr === 'string' ? addr : ''
  const shown = a.includes(':') ? `[${a}]` : a
  return port == null ? shown : `${shown}:${String(port)}`
}

function perSecond(n: unknown, seconds: unknown): number | null {
  return typeof n === 'number' && typeof seconds === 'number' && seconds > 0 ? n / seconds : null
}

const TABLES: Record<string, TableSpec> = {
  'syscalls/top': {
    columns: [
      { key: 'syscall', label: 'Syscall', kind: 'text' },
      { key: 'rate', label: 'Calls/s', kind: 'rate', get: (r) => perSecond(r.interval_calls, r.interval_s), title: 'calls per second over the last interval' },
      { key: 'calls', label: 'Calls', kind: 'count', title: 'since the module was enabled' },
      { key: 'time_ms', label: 'Time', kind: 'ms', title: 'time in the call since the module was enabled (includes blocking)' },
      { key: 'avg_us', label: 'Avg', kind: 'us', title: 'mean time per call' },
      { key: 'errors', label: 'Errors', kind: 'count' },
    ],
    sort: { key: 'time_ms', desc: true },
    empty: 'No system calls seen yet.',
  },
  'tcplife/sessions': {
    columns: [
      { key: 'time', label: 'Closed', kind: 'clock' },
      { key: 'pid', label: 'PID', kind: 'count' },
      { key: 'comm', label: 'Command', kind: 'text' },
      { key: 'local', label: 'Local', kind: 'addr', get: (r) => hostPort(r.saddr, r.sport) },
      { key: 'remote', label: 'Remote', kind: 'addr', get: (r) => hostPort(r.daddr, r.dport) },
      { key: 'tx_bytes', label: 'TX', kind: 'bytes' },
      { key: 'rx_bytes', label: 'RX', kind: 'bytes' },
      { key: 'duration_ms', label: 'Duration', kind: 'ms' },
    ],
    empty: 'No TCP session has closed since the module was enabled.',
  },
  'tcpretrans/flows': {
    columns: [
      { key: 'local', label: 'Local', kind: 'addr', get: (r) => hostPort(r.saddr, r.sport) },
      { key: 'remote', label: 'Remote', kind: 'addr', get: (r) => hostPort(r.daddr, r.dport) },
      { key: 'state', label: 'State', kind: 'text' },
      { key: 'retransmits', label: 'Retransmits', kind: 'count' },
      { key: 'last', label: 'Last', kind: 'clock' },
    ],
    empty: 'No retransmitted segment since the module was enabled.',
  },
  'execsnoop/execs': {
    columns: [
      { key: 'time', label: 'Time', kind: 'clock' },
      { key: 'pid', label: 'PID', kind: 'count' },
      { key: 'ppid', label: 'PPID', kind: 'count' },
      { key: 'uid', label: 'UID', kind: 'count' },
      { key: 'comm', label: 'Command', kind: 'text' },
      { key: 'args', label: 'Arguments', kind: 'args' },
    ],
    empty: 'No program started since the module was enabled.',
  },
}

/** How to show table `table` of module `module`; unknown tables get one column per key. */
export function tableSpec(module: string, table: string, sample?: Record<string, unknown>): TableSpec {
  const known = TABLES[`${module}/${table}`]
  if (known) return known
  const keys = Object.keys(sample ?? {})
  return {
    columns: keys.map((key) => ({ key, label: key, kind: typeof sample?.[key] === 'number' ? 'count' : 'text' })),
    empty: 'No rows yet.',
  }
}

export function cellValue(col: TableColumn, row: Record<string, unknown>): unknown {
  return col.get ? col.get(row) : row[col.key]
}

const COUNT = baseUnits('count', false)
const RATE = baseUnits('count', true)
const BYTES = baseUnits('bytes', false)
const TIME: UnitsLike = baseUnits('time', false)

/** A cell as text. Strings come from the kernel and other users' processes: they are only
 * ever interpolated as text (never as HTML), here and in the component. */
export function cellText(col: TableColumn, row: Record<string, unknown>): string {
  const v = cellValue(col, row)
  if (v === null || v === undefined) return '–'
  switch (col.kind) {
    case 'count':
      return typeof v === 'number' ? (Number.isInteger(v) && Math.abs(v) < 1e6 ? String(v) : formatValue(v, COUNT)) : String(v)
    case 'rate':
      return typeof v === 'number' ? formatValue(v, RATE) : String(v)
    case 'bytes':
      return typeof v === 'number' ? formatValue(v, BYTES) : String(v)
    case 'ms':
      return typeof v === 'number' ? formatValue(v * 1e-3, TIME) : String(v)
    case 'us':
      return typeof v === 'number' ? formatValue(v * 1e-6, TIME) : String(v)
    case 'clock':
      return typeof v === 'number' ? formatTime(v) : String(v)
    case 'args': {
      const args = Array.isArray(v) ? v.map(String).join(' ') : String(v)
      return row.args_truncated === true ? `${args} …` : args
    }
    default:
      return typeof v === 'object' ? JSON.stringify(v) : String(v)
  }
}

/** Full text for a cell's tooltip (long strings are cut on screen). */
export function cellTitle(col: TableColumn, row: Record<string, unknown>): string | undefined {
  if (col.kind === 'args') {
    const file = typeof row.filename === 'string' ? row.filename : ''
    return [file, cellText(col, row)].filter(Boolean).join('\n')
  }
  if (col.kind === 'text' || col.kind === 'addr') return cellText(col, row)
  return undefined
}

/** Sort rows by a column: numbers numerically, text in natural order, missing values last. */
export function sortRows(
  rows: Record<string, unknown>[],
  col: TableColumn,
  desc: boolean,
): Record<string, unknown>[] {
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' })
  const keyed = rows.map((row, i) => ({ row, i, v: col.kind === 'args' ? cellText(col, row) : cellValue(col, row) }))
  keyed.sort((a, b) => {
    const x = a.v
    const y = b.v
    if (x == null || y == null) return x == null && y == null ? a.i - b.i : x == null ? 1 : -1
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : collator.compare(String(x), String(y))
    return (desc ? -c : c) || a.i - b.i
  })
  return keyed.map((k) => k.row)
}

// -- toggles in the URL ------------------------------------------------------------------

/** A module switched on by this page for one host: `runqlat` (the page's own daemon) or
 * `runqlat@db1:7470`, as written in the `bpf=` parameter. */
export function toggleKey(module: string, hostToken: string): string {
  return hostToken === 'self' ? module : `${module}@${hostToken}`
}

export function parseToggleKey(key: string): { module: string; host: string } | null {
  const at = key.indexOf('@')
  const module = at < 0 ? key : key.slice(0, at)
  const host = at < 0 ? 'self' : key.slice(at + 1)
  if (!/^[a-z][a-z0-9_]{0,31}$/.test(module) || !host) return null
  return { module, host }
}

/** Settings that narrow what a module sees to a container or a process. */
export const FILTER_SETTINGS: readonly string[] = ['cgroup', 'pid']

/** Settings a page asks of a module (`{cgroup: '/system.slice/x.service'}`). */
export type BpfSettings = Record<string, string | number | boolean>

/** The page's module toggles, provided by the root (which owns the view and the holds). */
export interface BpfToggles {
  isOn(module: string, base: string): boolean
  set(module: string, base: string, on: boolean): void
  /** What this page asks of the module (undefined: its defaults, or what others run). */
  settings(module: string, base: string): BpfSettings | undefined
  /** Ask for other settings; applied at once while the page holds the module. */
  setSettings(module: string, base: string, settings: BpfSettings | undefined): void
}

export const BPF_TOGGLES: InjectionKey<BpfToggles> = Symbol('bpf-toggles')
