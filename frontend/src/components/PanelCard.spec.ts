import { mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { PANELS, panelById } from '../lib/catalogue'
import { LIVE, createLive } from '../lib/live'
import type { Descriptor } from '../lib/protocol'
import { HostConnection } from '../stores/host'
import PanelCard from './PanelCard.vue'
import Sparkline from './Sparkline.vue'
import WidgetCatalogue from './WidgetCatalogue.vue'

function conn(metrics: string[], caps: Record<string, { available: boolean; reason?: string }> = {}) {
  const c = new HostConnection('', 300, { frame: (cb) => cb() })
  const u = { label: '', kind: 'none', per_sec: false, base_factor: 1 }
  c.catalogue.value = new Map(
    metrics.map((name) => [name, { name, type: 'double', semantics: 'instant', units: u, value_units: u, indom: null, help: `help of ${name}` } as Descriptor]),
  )
  c.info.value = { hostname: 'vm', kernel: '6.18', ncpu: 2, memory_bytes: 1, uptime_s: 1, interval_s: 1, version: '0', protocol: 1, capabilities: caps }
  return c
}

function mountCard(id: string, c: HostConnection, editable = false) {
  return mount(PanelCard, {
    props: { panel: panelById(id)!, conn: c, editable },
    global: { provide: { [LIVE as symbol]: createLive(300, false) } },
  })
}

describe('PanelCard states', () => {
  // Mounting every panel mounts the BPF and process panels, which ask the daemon for
  // their state: answer as a daemon without those APIs (no stray requests to the test
  // page's origin, which nothing serves).
  beforeEach(() => vi.stubGlobal('fetch', async () => new Response(JSON.stringify({ error: { code: 'not_found', message: 'no such resource' } }), { status: 404 })))
  afterEach(() => vi.unstubAllGlobals())

  it('says a metric is absent on this host, with the daemon’s reason for PSI', () => {
    const w = mountCard('cpu.pressure', conn(['kernel.all.load'], { psi: { available: false, reason: 'kernel built without CONFIG_PSI' } }))
    expect(w.text()).toContain('Not available: kernel built without CONFIG_PSI.')
  })

  it('links flame graph panels to their page; every flame graph entry has one (no stubs)', () => {
    const cpu = mountCard('flame.cpu', conn([], { perf: { available: true } }))
    expect(cpu.text()).toContain('Flame graphs have their own page')
    expect(cpu.find('a').attributes('href')).toBe('#/profiles?new=cpu')
    expect(mountCard('flame.offcpu', conn([])).find('a').attributes('href')).toBe('#/profiles?new=offcpu')
    // The daemon profiles cpu and offcpu only (daemon/profiles_api.py); nothing else is listed.
    expect(PANELS.filter((p) => p.kind === 'flamegraph').map((p) => p.id)).toEqual(['flame.cpu', 'flame.offcpu'])
    expect(panelById('flame.pagefault')).toBeUndefined()
    for (const p of PANELS) expect(mountCard(p.id, conn([])).text().toLowerCase()).not.toContain('coming soon')
  })

  it('streams the metrics of charts only: the process table’s sparklines come with its rows', () => {
    const c = conn(['proc.cpu.util', 'kernel.all.load', 'kernel.all.runnable', 'kernel.all.blocked'])
    const need = vi.spyOn(c, 'need')
    mountCard('proc.top', c)
    expect(need).not.toHaveBeenCalled()
    mountCard('cpu.load', c)
    expect(need).toHaveBeenCalledWith(['kernel.all.load', 'kernel.all.runnable', 'kernel.all.blocked'])
  })

  it('is connecting before the first data, and offers labelled controls', async () => {
    const w = mountCard('cpu.load', conn(['kernel.all.load', 'kernel.all.runnable', 'kernel.all.blocked']), true)
    expect(w.text()).toContain('Connecting…')
    const labels = w.findAll('button').map((b) => b.attributes('aria-label'))
    expect(labels).toContain('Remove Load average and runnable')
    await w.find('button[aria-label="Remove Load average and runnable"]').trigger('click')
    expect(w.emitted('remove')).toHaveLength(1)
  })
})

describe('WidgetCatalogue', () => {
  // A daemon without the BPF API: its entries are listed as not available.
  beforeEach(() => vi.stubGlobal('fetch', async () => new Response(JSON.stringify({ error: { code: 'not_found', message: 'no such resource' } }), { status: 404 })))
  afterEach(() => vi.unstubAllGlobals())

  it('adds catalogue and custom widgets and rejects unknown metrics', async () => {
    const w = mount(WidgetCatalogue, { props: { conn: conn(['disk.dev.aveq']), present: [] } })
    expect(w.findAll('h3').map((h) => h.text())).toEqual(['CPU', 'Memory', 'Disk', 'Network', 'Processes', 'Containers', 'BPF', 'Flame graphs', 'Custom'])
    await w.find('button[aria-label="Add CPU utilisation"]').trigger('click')
    expect(w.emitted('add')![0]).toEqual(['cpu.util'])
    await w.find('#custom-metric').setValue('nope.metric')
    await w.find('form').trigger('submit')
    expect(w.text()).toContain('nope.metric is not a metric of this daemon.')
    await w.find('#custom-metric').setValue('disk.dev.aveq')
    await w.find('form').trigger('submit')
    expect(w.emitted('add')![1]).toEqual(['custom:disk.dev.aveq'])
    await new Promise((r) => setTimeout(r, 0))
    expect(w.get('button[aria-label="Add Run queue latency (heat map)"]').text()).toContain('not available: this daemon has no BPF support')
    expect(w.text().toLowerCase()).not.toContain('coming soon')
    expect(w.text()).not.toContain('Page fault flame graph')
  })
})

describe('Sparkline', () => {
  it('draws a line with a gap at every null', () => {
    const w = mount(Sparkline, { props: { values: [0, 0.5, null, null, 1], width: 40, height: 10 } })
    const d = w.find('path').attributes('d')!
    expect(d.match(/M/g)).toHaveLength(2)
    expect(d).toContain('L10.0 5.0')
    const single = mount(Sparkline, { props: { values: [0, null, 1], width: 20, height: 10 } })
    expect(single.find('path').attributes('d')).toBe('M0.0 9.0M20.0 1.0')
  })
})
