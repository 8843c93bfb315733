/**
 * Unit formatting for people: the TypeScript twin of metrics/format.py.
 *
 * Same rules, so the dashboard, the CLI and the server-side SVG renders print a value the
 * same way: the value is converted to base units (bytes, seconds, counts) with
 * `units.base_factor`, then bytes get binary prefixes, counts SI prefixes, times human
 * units, and utilisations (busy time per second) a percentage. The shared cases in
 * format.cases.json are produced by the Python implementation; format.spec.ts checks this
 * file against them.
 */

/** The subset of a descriptor's `value_units` that formatting needs. */
export interface UnitsLike {
  kind: string
  per_sec: boolean
  base_factor: number
}

/** Units of values already converted to base units (what charts hold). */
export function baseUnits(kind: string, perSec: boolean): UnitsLike {
  return { kind, per_sec: perSec, base_factor: 1 }
}

const BYTE_PREFIXES = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
const SI_PREFIXES = ['', 'k', 'M', 'G', 'T', 'P']

/**
 * `x.toFixed(decimals)` with Python's rounding of exact ties (half to even), because
 * Python's `f"{x:.{d}f}"` rounds 1.125 to "1.12" where toFixed gives "1.13".
 */
export function toFixedEven(x: number, decimals: number): string {
  const rounded = x.toFixed(decimals)
  const exact = Math.abs(x).toFixed(Math.min(100, decimals + 40))
  const cut = decimals === 0 ? exact.indexOf('.') : exact.indexOf('.') + 1 + decimals
  const rest = exact.slice(cut).replace('.', '')
  if (!/^50*$/.test(rest)) return rounded
  const kept = exact.slice(0, cut)
  const lastDigit = Number(kept.replace('.', '').slice(-1))
  if (lastDigit % 2 === 1) return rounded
  const down = kept.endsWith('.') ? kept.slice(0, -1) : kept
  return x < 0 && Number(down) !== 0 ? `-${down}` : down
}

/** At most `digits` significant digits, no exponent for everyday magnitudes. */
export function num(value: number, digits = 3): string {
  if (value === 0) return '0'
  const magnitude = Math.floor(Math.log10(Math.abs(value)))
  const decimals = Math.max(0, digits - 1 - magnitude)
  let text = toFixedEven(value, decimals)
  if (text.includes('.')) text = text.replace(/0+$/, '').replace(/\.$/, '')
  return text
}

function formatSeconds(seconds: number): string {
  const sign = seconds < 0 ? '-' : ''
  const s = Math.abs(seconds)
  if (s === 0) return '0 s'
  if (s < 1e-6) return `${sign}${num(s * 1e9)} ns`
  if (s < 1e-3) return `${sign}${num(s * 1e6)} µs`
  if (s < 1) return `${sign}${num(s * 1e3)} ms`
  if (s < 120) return `${sign}${num(s)} s`
  if (s < 7200) return `${sign}${num(s / 60)} min`
  if (s < 172800) return `${sign}${num(s / 3600)} h`
  return `${sign}${num(s / 86400)} d`
}

/** `value` (in `units`) as a short human string, e.g. `12.3 MiB/s`, `45.1 %`. */
export function formatValue(value: number | string | null | undefined, units: UnitsLike): string {
  if (value === null || value === undefined) return '-'
  if (typeof value === 'string') return value
  if (Number.isNaN(value)) return '-'
  const base = value * units.base_factor
  const suffix = units.per_sec ? '/s' : ''
  const kind = units.kind
  if (kind === 'utilization') return `${num(base * 100)} %`
  if (kind === 'bytes') {
    let scaled = Math.abs(base)
    let idx = 0
    while (scaled >= 1024 && idx < BYTE_PREFIXES.length - 1) {
      scaled /= 1024
      idx += 1
    }
    const sign = base < 0 ? '-' : ''
    return `${sign}${num(scaled)} ${BYTE_PREFIXES[idx]}${suffix}`
  }
  if (kind === 'time') return formatSeconds(base) + suffix
  let scaled = Math.abs(base)
  let idx = 0
  while (scaled >= 1000 && idx < SI_PREFIXES.length - 1) {
    scaled /= 1000
    idx += 1
  }
  const sign = base < 0 ? '-' : ''
  return `${sign}${num(scaled)}${SI_PREFIXES[idx]}${suffix}`
}

/**
 * The key of the chart scale a series with these units goes on: one scale (and axis)
 * per kind of quantity, so bytes/s and % never share an axis.
 */
export function scaleKey(units: UnitsLike): string {
  if (units.kind === 'utilization') return 'util'
  const kind = units.kind === 'none' ? 'count' : units.kind
  return units.per_sec ? `${kind}/s` : kind
}

/** Base units for a scale key made by {@link scaleKey}. */
export function unitsOfScale(key: string): UnitsLike {
  if (key === 'util') return baseUnits('utilization', true)
  const perSec = key.endsWith('/s')
  return baseUnits(perSec ? key.slice(0, -2) : key, perSec)
}

/** Short timestamp for tooltips: local HH:MM:SS. */
export function formatTime(epochSeconds: number): string {
  const d = new Date(epochSeconds * 1000)
  const two = (n: number) => String(n).padStart(2, '0')
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
}
