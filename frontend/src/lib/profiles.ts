/**
 * The daemon's profiles API (`/api/v1/profiles`, issue 6): typed answers, the calls, the
 * capture form's validation against the daemon's own limits, download links, and the
 * `#/profiles/ID` route. Contract: the team's profiles.md; docs/dashboard.md.
 */
import { apiUrl, getJson, sendJson } from './api'
import { formatValue } from './format'
import type { FlameNode } from './flame'
import type { Timeline } from './flamescope'
import type { Range } from './profileroute'

export type { ProfileKind } from './profileroute'
import type { ProfileKind } from './profileroute'
export type ProfileState = 'queued' | 'running' | 'symbolizing' | 'done' | 'failed' | 'cancelled'

export interface ProfileSummary {
  id: string
  kind: ProfileKind
  state: ProfileState
  progress: number
  position: number | null
  request: { kind: ProfileKind; duration: number; frequency: number | null; pid: number | null; container: string | null }
  method: string | null
  event: string | null
  unit: string | null
  created_at: number | null
  started_at: number | null
  finished_at: number | null
  total: number | null
  lost: number | null
  error: { code: string; message: string } | null
  notes: string[]
}

export interface KindReadiness {
  available: boolean
  method: string | null
  reason: string | null
}

export interface Limits {
  duration: { min: number; max: number; default: { cpu: number; offcpu: number } }
  frequency: { min: number; max: number; default: number }
  keep: number
  queue: number
}

export interface ProfilesList {
  profiles: ProfileSummary[]
  limits: Limits
  kinds: Record<ProfileKind, KindReadiness>
}

export interface ProfileJson {
  profile: ProfileSummary
  tree: FlameNode
  timeline: Timeline
  range: { start: number; end: number } | null
  base: { id: string; total: number } | null
}

/** What the capture form asks for (`pid` and `container` exclusive; null = whole host). */
export interface CaptureRequest {
  kind: ProfileKind
  duration: number
  frequency?: number
  pid?: number | null
  container?: string | null
}

/** The limits the form falls back to until GET /profiles answers (the numbers). */
export const DEFAULT_LIMITS: Limits = {
  duration: { min: 5, max: 120, default: { cpu: 30, offcpu: 10 } },
  frequency: { min: 1, max: 999, default: 49 },
  keep: 0,
  queue: 0,
}

export const RUNNING: ProfileState[] = ['queued', 'running', 'symbolizing']
export const isRunning = (s: ProfileSummary): boolean => RUNNING.includes(s.state)

/** Check a request against the daemon's limits: the reason it is refused, or null. */
export function validateCapture(r: CaptureRequest, limits: Limits): string | null {
  const d = limits.duration
  if (!Number.isFinite(r.duration) || r.duration < d.min || r.duration > d.max) {
    return `Duration must be between ${d.min} and ${d.max} seconds.`
  }
  if (r.kind === 'cpu' && r.frequency !== undefined) {
    const f = limits.frequency
    if (!Number.isInteger(r.frequency) || r.frequency < f.min || r.frequency > f.max) {
      return `Frequency must be a whole number of Hz between ${f.min} and ${f.max}.`
    }
  }
  if (r.pid != null && (!Number.isInteger(r.pid) || r.pid < 1)) return 'A process ID is a positive whole number.'
  if (r.pid != null && r.container) return 'Profile a process or a container, not both.'
  return null
}

/** The POST body of the contract (`pid` or `container`, absent for the whole host). */
export function captureBody(r: CaptureRequest): Record<string, unknown> {
  const body: Record<string, unknown> = { kind: r.kind, duration: r.duration }
  if (r.kind === 'cpu' && r.frequency !== undefined) body.frequency = r.frequency
  if (r.pid != null) body.pid = r.pid
  else if (r.container) body.container = r.container
  return body
}

export const listProfiles = (base: string, signal?: AbortSignal): Promise<ProfilesList> =>
  getJson<ProfilesList>(base, '/api/v1/profiles', signal)

export const startCapture = (base: string, r: CaptureRequest): Promise<ProfileSummary> =>
  sendJson<ProfileSummary>(base, 'POST', '/api/v1/profiles', captureBody(r))

export const getProfile = (base: string, id: string, signal?: AbortSignal): Promise<ProfileSummary> =>
  getJson<ProfileSummary>(base, `/api/v1/profiles/${encodeURIComponent(id)}`, signal)

export const cancelCapture = (base: string, id: string): Promise<ProfileSummary> =>
  sendJson<ProfileSummary>(base, 'DELETE', `/api/v1/profiles/${encodeURIComponent(id)}`)

/** Query string of a capture's output: format, optional time range and diff base. */
export function outputQuery(format: string, range?: Range | null, baseId?: string | null): string {
  const q = new URLSearchParams({ format })
  if (range) {
    q.set('start', String(range.start))
    q.set('end', String(range.end))
  }
  if (baseId) q.set('base', baseId)
  return q.toString()
}

export const getProfileJson = (
  base: string,
  id: string,
  opts: { range?: Range | null; baseId?: string | null; signal?: AbortSignal } = {},
): Promise<ProfileJson> =>
  getJson<ProfileJson>(base, `/api/v1/profiles/${encodeURIComponent(id)}?${outputQuery('json', opts.range, opts.baseId)}`, opts.signal)

export const DOWNLOADS = [
  { format: 'folded', label: 'folded stacks', ext: 'folded' },
  { format: 'svg', label: 'SVG', ext: 'svg' },
  { format: 'speedscope', label: 'speedscope JSON', ext: 'speedscope.json' },
] as const

/** Link to download a capture (or a range of it) in one of the daemon's formats; with
 * `baseId`, the differential against that capture (the daemon does it for svg and json). */
export function downloadUrl(base: string, id: string, format: string, range?: Range | null, baseId?: string | null): string {
  return apiUrl(base, `/api/v1/profiles/${encodeURIComponent(id)}?${outputQuery(format, range, baseId)}`)
}

/** One download offered next to a flame graph: which capture, format, range and base. */
export interface DownloadLink {
  key: string
  id: string
  format: string
  range: Range | null
  baseId: string | null
  label: string
  /** File name to save as. */
  name: string
  /** What the file holds (the link's tooltip). */
  title: string
}

/**
 * The downloads for what is shown: the capture (or its range) in every format; while a
 * differential graph is shown, the SVG is the differential one (`base=`), and as the
 * daemon diffs no other download format, the folded stacks come as two files, this
 * capture's and the base's (what difffolded.pl and inferno-diff-folded take), and the
 * speedscope file says it is this capture alone.
 */
export function downloadLinks(id: string, range?: Range | null, baseId?: string | null): DownloadLink[] {
  const r = range ?? null
  const where = r ? ` (${r.start}-${r.end} s)` : ''
  if (!baseId) {
    return DOWNLOADS.map((d) => ({
      key: d.format,
      id,
      format: d.format,
      range: r,
      baseId: null,
      label: d.label,
      name: `${id}.${d.ext}`,
      title: `This capture${where} as ${d.label}`,
    }))
  }
  return [
    {
      key: 'svg-diff',
      id,
      format: 'svg',
      range: r,
      baseId,
      label: 'differential SVG',
      name: `${id}-vs-${baseId}.svg`,
      title: `This capture${where} against the base capture: frames coloured by the change of their share (red grew, blue shrank)`,
    },
    {
      key: 'folded',
      id,
      format: 'folded',
      range: r,
      baseId: null,
      label: 'folded stacks (this capture)',
      name: `${id}.folded`,
      title: `This capture${where} alone: the daemon has no differential folded format; with the base's file, difffolded.pl or inferno-diff-folded make one`,
    },
    {
      key: 'folded-base',
      id: baseId,
      format: 'folded',
      range: null,
      baseId: null,
      label: 'folded stacks (base)',
      name: `${baseId}.folded`,
      title: 'The whole base capture alone, to diff against this capture’s file',
    },
    {
      key: 'speedscope',
      id,
      format: 'speedscope',
      range: r,
      baseId: null,
      label: 'speedscope JSON (this capture only)',
      name: `${id}.speedscope.json`,
      title: `This capture${where} alone: speedscope has no differential view`,
    },
  ]
}

export { parseRoute, routeHash, type ProfilesRoute, type Range } from './profileroute'

/** Off-CPU values are blocked microseconds: shown as time by the shared formatter. */
const MICROSECONDS = { kind: 'time', per_sec: false, base_factor: 1e-6 }

/** A value of a capture in its unit: `1,234 samples`, or blocked time (`4.41 min blocked`). */
export function formatAmount(v: number, unit: string | null | undefined): string {
  if (unit === 'microseconds') return `${formatValue(v, MICROSECONDS)} blocked`
  return `${v.toLocaleString('en-US')} ${v === 1 ? 'sample' : 'samples'}`
}

/** "CPU, 30 s, pid 123" */
export function describeRequest(s: ProfileSummary): string {
  const r = s.request
  const what = s.kind === 'cpu' ? 'CPU' : 'Off-CPU'
  const target = r.pid ? `pid ${r.pid}` : r.container ? `container ${r.container}` : 'whole host'
  return `${what}, ${r.duration} s, ${target}`
}

/** A state in words, with the progress or queue position. */
export function describeState(s: ProfileSummary): string {
  switch (s.state) {
    case 'queued':
      return s.position != null ? `queued (position ${s.position})` : 'queued'
    case 'running':
      // The privileged side reports 0 until its programs are compiled and attached (seconds).
      return s.progress > 0 ? `capturing ${Math.round(s.progress * 100)} %` : 'starting (compiling and attaching)…'
    case 'symbolizing':
      return 'resolving symbols…'
    case 'done':
      return 'done'
    case 'failed':
      return `failed: ${s.error?.message ?? 'no reason given'}`
    case 'cancelled':
      return 'cancelled'
  }
  return String(s.state)
}
