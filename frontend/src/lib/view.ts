/**
 * The whole view (hosts, widgets, window, container filter, theme) as plain data, and
 * its encoding in the URL, so a pasted link reproduces what the sender saw. Runbooks
 * write these links by hand, so the encoding is readable:
 *
 *   ?panels=cpu.util,mem.util~2x1,custom:disk.dev.aveq&window=900&hosts=self,db1:7470&container=web-1
 *
 * A widget is `ID[~WxH]` (width in grid columns 1-4, height in rows 1-3). BPF modules the
 * page switches on are `bpf=runqlat,biolatency@db1:7470` (module, or module@host); the
 * settings it asks them for, one per parameter, `bpfset=runqlat:cgroup=/system.slice/x`
 * (`KEY:SETTING=VALUE`, KEY as in `bpf=`; the value is the rest, commas and all).
 */
import type { InjectionKey } from 'vue'
import { parseToggleKey, toggleKey, type BpfSettings } from './bpf'
import { BPF_PREFIX, DEFAULT_PANELS, panelById } from './catalogue'

/**
 * Provided (true) by the embed view: widgets there leave out links to pages it does not
 * have (the flame graph page), which an embed token could not open anyway.
 */
export const EMBEDDED: InjectionKey<boolean> = Symbol('embedded')

export const WINDOWS = [60, 300, 900, 1800, 3600] as const
export const MAX_W = 4
export const MAX_H = 3

export interface Widget {
  id: string
  w: number
  h: number
}

export type Layout = 'side' | 'tabs'
export type Theme = 'light' | 'dark' | ''

export interface ViewState {
  hosts: string[]
  layout: Layout
  active: number
  widgets: Widget[]
  window: number
  container: string
  theme: Theme
  /** BPF modules this page switches on, `module` or `module@host` (see bpf.ts). */
  bpf: string[]
  /**
   * Settings this page asks of a module (a container filter: `{cgroup: path}`), by the
   * same keys as `bpf`. None: the module's defaults, or the settings other viewers run it
   * with. Kept while the module is off, so switching it on again filters the same way.
   */
  bpfSettings: Record<string, BpfSettings>
}

const DEFAULT_SIZES: Record<string, [number, number]> = {
  'proc.top': [2, 2],
  'cpu.util': [2, 1],
  'mem.util': [2, 1],
  // Heat maps want width (time); tables want width and rows.
  'bpf.runqlat': [2, 1],
  'bpf.biolatency': [2, 1],
  'bpf.offcpu': [2, 1],
  'bpf.syscalls': [2, 2],
  'bpf.tcplife': [2, 2],
  'bpf.tcpretrans': [2, 1],
  'bpf.execsnoop': [2, 2],
}

export function defaultSize(id: string): [number, number] {
  return DEFAULT_SIZES[id] ?? [1, 1]
}

export function defaultWidgets(): Widget[] {
  return DEFAULT_PANELS.map((id) => {
    const [w, h] = defaultSize(id)
    return { id, w, h }
  })
}

export function defaultView(): ViewState {
  return { hosts: [''], layout: 'side', active: 0, widgets: defaultWidgets(), window: 300, container: '', theme: '', bpf: [], bpfSettings: {} }
}

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, Math.round(x)))

export function nearestWindow(seconds: number): number {
  if (!Number.isFinite(seconds)) return 300
  return WINDOWS.reduce((best, w) => (Math.abs(w - seconds) < Math.abs(best - seconds) ? w : best), 300)
}

function parseWidget(token: string): Widget | null {
  const [id, size] = token.split('~')
  if (!id || !panelById(id)) return null
  const [dw, dh] = defaultSize(id)
  let w = dw
  let h = dh
  if (size) {
    const m = /^(\d)x(\d)$/.exec(size)
    if (m) {
      w = clamp(Number(m[1]), 1, MAX_W)
      h = clamp(Number(m[2]), 1, MAX_H)
    }
  }
  return { id, w, h }
}

function hostToken(base: string): string {
  return base === '' ? 'self' : base.replace(/^http:\/\//, '')
}

function tokenToHost(token: string): string {
  const t = token.trim()
  if (t === '' || t === 'self') return ''
  return /^https?:\/\//i.test(t) ? t.replace(/\/+$/, '') : `http://${t.replace(/\/+$/, '')}`
}

/** Is BPF module `module` switched on by this view for host `base`? */
export function bpfOn(v: ViewState, module: string, base: string): boolean {
  return v.bpf.includes(toggleKey(module, hostToken(base)))
}

/** Switch BPF module `module` on or off for host `base` in this view. */
export function setBpf(v: ViewState, module: string, base: string, on: boolean): void {
  const key = toggleKey(module, hostToken(base))
  const i = v.bpf.indexOf(key)
  if (on && i < 0) v.bpf.push(key)
  else if (!on && i >= 0) v.bpf.splice(i, 1)
}

/** Settings this view asks of module `module` on host `base` (undefined: none). */
export function bpfSettingsOf(v: ViewState, module: string, base: string): BpfSettings | undefined {
  return v.bpfSettings[toggleKey(module, hostToken(base))]
}

/** Ask module `module` on host `base` for `settings` (undefined or empty: nothing). */
export function setBpfSettings(v: ViewState, module: string, base: string, settings: BpfSettings | undefined): void {
  const key = toggleKey(module, hostToken(base))
  if (settings && Object.keys(settings).length) v.bpfSettings[key] = { ...settings }
  else delete v.bpfSettings[key]
}

/**
 * The holds a view asks for: (module, host base, settings) for every toggle whose widget
 * is on the page and whose host is shown. A toggle without its widget holds nothing.
 */
export function bpfHolds(v: ViewState): { module: string; base: string; settings?: BpfSettings }[] {
  const shown = new Set(v.widgets.map((w) => w.id))
  const out: { module: string; base: string; settings?: BpfSettings }[] = []
  for (const key of v.bpf) {
    const t = parseToggleKey(key)
    if (!t || !shown.has(BPF_PREFIX + t.module)) continue
    const base = tokenToHost(t.host)
    if (!v.hosts.includes(base)) continue
    const settings = v.bpfSettings[key]
    out.push(settings ? { module: t.module, base, settings } : { module: t.module, base })
  }
  return out
}

function cleanBpf(keys: unknown[]): string[] {
  const ok = keys.filter((k): k is string => typeof k === 'string' && parseToggleKey(k) !== null)
  return [...new Set(ok.map((k) => {
    const t = parseToggleKey(k)!
    return toggleKey(t.module, hostToken(tokenToHost(t.host)))
  }))].slice(0, 64)
}

const SETTING_NAME = /^[a-z][a-z0-9_]{0,31}$/
const MAX_SETTING_TEXT = 4096

/** A setting value from a URL: integers and true/false typed, anything else text. */
function settingValue(text: string): string | number | boolean {
  if (/^(0|[1-9]\d{0,14})$/.test(text)) return Number(text)
  if (text === 'true' || text === 'false') return text === 'true'
  return text
}

function isSettingValue(x: unknown): x is string | number | boolean {
  return typeof x === 'boolean' || (typeof x === 'number' && Number.isFinite(x)) || (typeof x === 'string' && x.length <= MAX_SETTING_TEXT)
}

/** Module settings from untrusted input, keyed by normalised toggle keys; bounded. The
 * daemon validates the values themselves (types, ranges, that a cgroup exists). */
function cleanBpfSettings(entries: [string, string, unknown][]): Record<string, BpfSettings> {
  const out: Record<string, BpfSettings> = {}
  for (const [rawKey, name, value] of entries) {
    const t = parseToggleKey(rawKey)
    if (!t || !SETTING_NAME.test(name) || !isSettingValue(value)) continue
    const key = toggleKey(t.module, hostToken(tokenToHost(t.host)))
    if (!(key in out) && Object.keys(out).length >= 64) continue
    const s = (out[key] ??= {})
    if (Object.keys(s).length < 8 || name in s) s[name] = value
  }
  return out
}

/** `KEY:SETTING=VALUE` of a `bpfset` parameter (KEY may hold ':' in its host part). */
function parseSettingParam(text: string): [string, string, unknown] | null {
  const eq = text.indexOf('=')
  const colon = eq < 0 ? -1 : text.lastIndexOf(':', eq)
  if (colon <= 0) return null
  return [text.slice(0, colon), text.slice(colon + 1, eq), settingValue(text.slice(eq + 1))]
}

function dedupe(widgets: Widget[]): Widget[] {
  const seen = new Set<string>()
  return widgets.filter((w) => !seen.has(w.id) && seen.add(w.id))
}

/** Query string for a view; defaults are left out to keep links short. */
export function encodeView(v: ViewState): string {
  const q = new URLSearchParams()
  q.set(
    'panels',
    v.widgets
      .map((w) => {
        const [dw, dh] = defaultSize(w.id)
        return w.w === dw && w.h === dh ? w.id : `${w.id}~${w.w}x${w.h}`
      })
      .join(','),
  )
  q.set('window', String(v.window))
  if (!(v.hosts.length === 1 && v.hosts[0] === '')) q.set('hosts', v.hosts.map(hostToken).join(','))
  if (v.layout !== 'side') q.set('layout', v.layout)
  if (v.layout === 'tabs' && v.active) q.set('active', String(v.active))
  if (v.container) q.set('container', v.container)
  if (v.bpf.length) q.set('bpf', v.bpf.join(','))
  for (const [key, settings] of Object.entries(v.bpfSettings)) {
    for (const [name, value] of Object.entries(settings)) q.append('bpfset', `${key}:${name}=${String(value)}`)
  }
  if (v.theme) q.set('theme', v.theme)
  // URLSearchParams escapes ',' and ':'; they are safe in a query and far more readable.
  return q
    .toString()
    .replaceAll('%2C', ',')
    .replaceAll('%3A', ':')
    .replaceAll('%2F', '/')
    .replaceAll('%7E', '~')
    .replaceAll('%40', '@')
    .replaceAll('%3D', '=')
}

/** Parse a query string into a view; anything missing or invalid takes its default. */
export function decodeView(search: string): ViewState {
  const q = new URLSearchParams(search)
  const v = defaultView()
  const panels = q.get('panels')
  if (panels !== null) v.widgets = dedupe(panels.split(',').map(parseWidget).filter((w): w is Widget => w !== null))
  const win = q.get('window')
  if (win !== null) v.window = nearestWindow(Number(win))
  const hosts = q.get('hosts') ?? q.get('host')
  if (hosts) {
    const list = [...new Set(hosts.split(',').map(tokenToHost))]
    if (list.length) v.hosts = list
  }
  if (q.get('layout') === 'tabs') v.layout = 'tabs'
  v.active = clamp(Number(q.get('active') ?? 0) || 0, 0, v.hosts.length - 1)
  v.container = (q.get('container') ?? '').slice(0, 256)
  const bpf = q.get('bpf')
  if (bpf) v.bpf = cleanBpf(bpf.split(','))
  v.bpfSettings = cleanBpfSettings(q.getAll('bpfset').map(parseSettingParam).filter((e): e is [string, string, unknown] => e !== null))
  const theme = q.get('theme')
  if (theme === 'light' || theme === 'dark') v.theme = theme
  return v
}

/** Validate a view from anywhere untrusted (an imported file, localStorage). */
export function sanitizeView(data: unknown): ViewState | null {
  if (!data || typeof data !== 'object') return null
  const d = data as Record<string, unknown>
  const v = defaultView()
  if (!Array.isArray(d.widgets)) return null
  v.widgets = d.widgets
    .map((w) => {
      const x = w as Partial<Widget>
      if (typeof x?.id !== 'string' || !panelById(x.id)) return null
      const [dw, dh] = defaultSize(x.id)
      return { id: x.id, w: clamp(Number(x.w ?? dw) || dw, 1, MAX_W), h: clamp(Number(x.h ?? dh) || dh, 1, MAX_H) }
    })
    .filter((w): w is Widget => w !== null)
  v.widgets = dedupe(v.widgets)
  if (Array.isArray(d.hosts)) {
    const hosts = d.hosts.filter((h): h is string => typeof h === 'string').map(tokenToHost)
    if (hosts.length) v.hosts = [...new Set(hosts)]
  }
  if (typeof d.window === 'number') v.window = nearestWindow(d.window)
  if (d.layout === 'tabs') v.layout = 'tabs'
  if (typeof d.active === 'number') v.active = clamp(d.active, 0, v.hosts.length - 1)
  if (typeof d.container === 'string') v.container = d.container.slice(0, 256)
  if (Array.isArray(d.bpf)) v.bpf = cleanBpf(d.bpf)
  if (d.bpfSettings && typeof d.bpfSettings === 'object' && !Array.isArray(d.bpfSettings)) {
    const entries: [string, string, unknown][] = []
    for (const [key, s] of Object.entries(d.bpfSettings as Record<string, unknown>)) {
      if (s && typeof s === 'object' && !Array.isArray(s)) for (const [name, value] of Object.entries(s)) entries.push([key, name, value])
    }
    v.bpfSettings = cleanBpfSettings(entries)
  }
  if (d.theme === 'light' || d.theme === 'dark') v.theme = d.theme
  return v
}
