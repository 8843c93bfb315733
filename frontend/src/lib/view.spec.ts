import { describe, expect, it } from 'vitest'
import { exportJson, importJson, loadSaved, storeSaved } from './dashboards'
import { bpfHolds, bpfOn, bpfSettingsOf, decodeView, defaultView, encodeView, sanitizeView, setBpf, setBpfSettings } from './view'

describe('view URL', () => {
  it('round-trips a view through the query string', () => {
    const v = defaultView()
    v.widgets = [
      { id: 'cpu.util', w: 2, h: 1 },
      { id: 'disk.latency', w: 3, h: 2 },
      { id: 'custom:mem.util.free', w: 1, h: 1 },
    ]
    v.window = 900
    v.hosts = ['', 'http://db1:7470', 'https://web.example:7470']
    v.layout = 'tabs'
    v.active = 2
    v.container = 'web-1'
    v.theme = 'dark'
    const q = encodeView(v)
    expect(q).toContain('panels=cpu.util,disk.latency~3x2,custom:mem.util.free')
    expect(q).toContain('hosts=self,db1:7470,https://web.example:7470')
    expect(decodeView(q)).toEqual(v)
  })

  it('takes defaults for what is missing and drops what is invalid', () => {
    const v = decodeView('?panels=cpu.util,nope,custom:BAD!,mem.util~9x9&window=1000&active=7')
    expect(v.widgets).toEqual([
      { id: 'cpu.util', w: 2, h: 1 },
      { id: 'mem.util', w: 4, h: 3 },
    ])
    expect(v.window).toBe(900)
    expect(v.hosts).toEqual([''])
    expect(v.active).toBe(0)
    expect(decodeView('').widgets.length).toBeGreaterThan(15)
  })

  it('drops widgets the catalogue no longer has from old links and saved dashboards', () => {
    // flame.pagefault was listed once but never served; old links and saved layouts name it.
    expect(decodeView('?panels=flame.pagefault,cpu.util,flame.cpu').widgets.map((w) => w.id)).toEqual(['cpu.util', 'flame.cpu'])
    const saved = sanitizeView({ widgets: [{ id: 'flame.pagefault', w: 2, h: 1 }, { id: 'mem.util', w: 2, h: 1 }] })
    expect(saved!.widgets.map((w) => w.id)).toEqual(['mem.util'])
  })

  it('carries BPF widgets and the modules the page switches on, per host', () => {
    const v = decodeView('?panels=bpf.runqlat,bpf.syscalls~2x2,bpf.Bad,bpf.x.y&hosts=self,db1:7470&bpf=runqlat,syscalls@db1:7470,<x>,runqlat')
    expect(v.widgets.map((w) => [w.id, w.w, w.h])).toEqual([
      ['bpf.runqlat', 2, 1],
      ['bpf.syscalls', 2, 2],
    ])
    expect(v.bpf).toEqual(['runqlat', 'syscalls@db1:7470'])
    expect(bpfOn(v, 'runqlat', '')).toBe(true)
    expect(bpfOn(v, 'runqlat', 'http://db1:7470')).toBe(false)
    expect(bpfOn(v, 'syscalls', 'http://db1:7470')).toBe(true)
    setBpf(v, 'runqlat', 'http://db1:7470', true)
    setBpf(v, 'runqlat', '', false)
    const q = encodeView(v)
    expect(q).toContain('bpf=syscalls@db1:7470,runqlat@db1:7470')
    expect(decodeView(q)).toEqual(v)
    // Holds: only toggles whose widget is on the page and whose host is shown.
    v.bpf.push('execsnoop', 'runqlat@gone:1')
    expect(bpfHolds(v)).toEqual([
      { module: 'syscalls', base: 'http://db1:7470' },
      { module: 'runqlat', base: 'http://db1:7470' },
    ])
    expect(sanitizeView({ widgets: [], bpf: ['runqlat', 5, '../x'] })!.bpf).toEqual(['runqlat'])
  })

  it('carries the settings the page asks of a module (a container filter) per module and host', () => {
    const v = decodeView('?panels=bpf.runqlat,bpf.offcpu&hosts=self,db1:7470&bpf=runqlat,runqlat@db1:7470,offcpu')
    setBpfSettings(v, 'runqlat', '', { cgroup: '/system.slice/a,b.service' })
    setBpfSettings(v, 'runqlat', 'http://db1:7470', { cgroup: '/docker/ab12', pid: 42 })
    setBpfSettings(v, 'offcpu', '', {})
    expect(v.bpfSettings).toEqual({ runqlat: { cgroup: '/system.slice/a,b.service' }, 'runqlat@db1:7470': { cgroup: '/docker/ab12', pid: 42 } })
    const q = encodeView(v)
    // Readable: one parameter per setting, the value is the rest (commas included).
    expect(q).toContain('bpfset=runqlat:cgroup=/system.slice/a,b.service&bpfset=runqlat@db1:7470:cgroup=/docker/ab12&bpfset=runqlat@db1:7470:pid=42')
    expect(decodeView(q)).toEqual(v)
    expect(bpfSettingsOf(v, 'runqlat', 'http://db1:7470')).toEqual({ cgroup: '/docker/ab12', pid: 42 })
    expect(bpfHolds(v)).toEqual([
      { module: 'runqlat', base: '', settings: { cgroup: '/system.slice/a,b.service' } },
      { module: 'runqlat', base: 'http://db1:7470', settings: { cgroup: '/docker/ab12', pid: 42 } },
      { module: 'offcpu', base: '' },
    ])
    setBpfSettings(v, 'runqlat', '', undefined)
    expect(bpfSettingsOf(v, 'runqlat', '')).toBeUndefined()
    // Values keep their type; malformed entries are dropped (the daemon validates values).
    const odd = decodeView('?bpfset=runqlat:pid=7&bpfset=offcpu:blocked_only=false&bpfset=<x>:pid=1&bpfset=runqlat:Bad=1&bpfset=nonsense&bpfset=:pid=1&bpfset=runqlat@http://h:1:cgroup=/a=b')
    expect(odd.bpfSettings).toEqual({ runqlat: { pid: 7 }, offcpu: { blocked_only: false }, 'runqlat@h:1': { cgroup: '/a=b' } })
    // From a saved dashboard (JSON): the same rules; unknown shapes dropped.
    const saved = sanitizeView({ widgets: [], bpfSettings: { runqlat: { cgroup: '/x', pid: 3, bad: { a: 1 } }, '<x>': { pid: 1 }, offcpu: 'nope' } })!
    expect(saved.bpfSettings).toEqual({ runqlat: { cgroup: '/x', pid: 3 } })
    expect(sanitizeView({ widgets: [] })!.bpfSettings).toEqual({})
  })

  it('accepts a single host= as runbook links write it', () => {
    expect(decodeView('?host=10.0.0.5:7470&panels=cpu.util').hosts).toEqual(['http://10.0.0.5:7470'])
  })
})

describe('saved dashboards', () => {
  it('saves to storage and reads back', () => {
    const v = defaultView()
    v.window = 60
    storeSaved({ incident: v }, localStorage)
    expect(loadSaved(localStorage).incident.window).toBe(60)
  })

  it('exports and imports JSON, rejecting foreign files', () => {
    const v = defaultView()
    v.container = 'db'
    const text = exportJson({ 'db view': v })
    expect(importJson(text)['db view']).toEqual(v)
    expect(() => importJson('{"x":1}')).toThrow(/not a hostscope dashboard/)
    expect(() => importJson('nope')).toThrow(/not JSON/)
  })

  it('sanitises hostile content', () => {
    const v = sanitizeView({ widgets: [{ id: '<script>', w: 1, h: 1 }, { id: 'cpu.util', w: 'x', h: 99 }], window: -5 })
    expect(v!.widgets).toEqual([{ id: 'cpu.util', w: 2, h: 3 }])
    expect(v!.window).toBe(60)
    expect(sanitizeView('x')).toBeNull()
  })
})
