/**
 * The flame graph pages' route, kept apart from lib/profiles.ts so the dashboard's entry
 * chunk (which links to these pages) does not carry the profiles code: that is loaded
 * with the pages.
 */

export type ProfileKind = 'cpu' | 'offcpu'

export interface Range {
  start: number
  end: number
}

/**
 * The profiles pages live in the URL fragment, so the dashboard's own query string (its
 * view) is untouched and a capture's link `#/profiles/ID` keeps working:
 * `#/profiles` (list + form), `#/profiles?new=cpu&pid=123` (form prefilled),
 * `#/profiles/ID[?start=&end=&base=ID2]`. `host=` names another daemon.
 */
export interface ProfilesRoute {
  id: string | null
  host: string
  newKind: ProfileKind | null
  pid: number | null
  container: string | null
  range: Range | null
  baseId: string | null
}

export function parseRoute(hash: string): ProfilesRoute | null {
  const m = /^#\/profiles(?:\/([^?/]+))?\/?(?:\?(.*))?$/.exec(hash)
  if (!m) return null
  const q = new URLSearchParams(m[2] ?? '')
  const kind = q.get('new')
  const pid = Number(q.get('pid'))
  const start = Number(q.get('start'))
  const end = Number(q.get('end'))
  const hasRange = q.has('start') && q.has('end') && Number.isFinite(start) && Number.isFinite(end) && end > start && start >= 0
  let id: string | null = null
  if (m[1]) {
    try {
      id = decodeURIComponent(m[1])
    } catch {
      id = null
    }
  }
  return {
    id,
    host: q.get('host') ?? '',
    newKind: kind === 'cpu' || kind === 'offcpu' ? kind : null,
    pid: Number.isInteger(pid) && pid > 0 ? pid : null,
    container: q.get('container') || null,
    range: hasRange ? { start, end } : null,
    baseId: q.get('base') || null,
  }
}

export function routeHash(r: Partial<ProfilesRoute>): string {
  const q = new URLSearchParams()
  if (r.newKind) q.set('new', r.newKind)
  if (r.pid) q.set('pid', String(r.pid))
  if (r.container) q.set('container', r.container)
  if (r.range) {
    q.set('start', String(r.range.start))
    q.set('end', String(r.range.end))
  }
  if (r.baseId) q.set('base', r.baseId)
  if (r.host) q.set('host', r.host)
  const qs = q.toString()
  return `#/profiles${r.id ? '/' + encodeURIComponent(r.id) : ''}${qs ? '?' + qs : ''}`
}

