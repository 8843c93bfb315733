import { mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { panelById } from '../lib/catalogue'
import { LIVE, createLive } from '../lib/live'
import { parseServerMsg, staleText, type Descriptor, type StaleInfo } from '../lib/protocol'
import { HostConnection } from '../stores/host'
import { FakeSocket, flush, makeEnv } from '../stores/testing'
import PanelCard from './PanelCard.vue'

const u = { label: '', kind: 'none', per_sec: false, base_factor: 1 }
const desc = (name: string) => ({ name, type: 'double', semantics: 'instant', units: u, value_units: u, indom: null, help: name }) as Descriptor
const LOAD = ['kernel.all.load', 'kernel.all.runnable', 'kernel.all.blocked']
const NOW = 1_700_000_100
const timedOut: StaleInfo = { collector: 'cpu', reason: 'timeout', since: NOW - 12, message: 'timed out: no answer after 2.0 s' }

beforeEach(() => {
  FakeSocket.all = []
  vi.useFakeTimers({ toFake: ['Date'] })
  vi.setSystemTime(NOW * 1000)
  vi.stubGlobal('fetch', async (url: string) => {
    const body = String(url).includes('/metrics') ? { metrics: LOAD.map(desc) } : { hostname: 'vm', ncpu: 2, interval_s: 1, protocol: 1, capabilities: {} }
    return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } })
  })
})
afterEach(() => {
  vi.useRealTimers()
  vi.unstubAllGlobals()
})

describe('stale collectors', () => {
  it('words a stale metric as the chart shows it', () => {
    expect(staleText(timedOut, NOW)).toBe('stale: collector cpu timed out 12 s ago')
    expect(staleText({ ...timedOut, reason: 'error', since: NOW - 3.4 }, NOW)).toBe('stale: collector cpu failed 3 s ago')
    expect(parseServerMsg(JSON.stringify({ type: 'stale', stale: { 'kernel.all.load': timedOut } }))).toMatchObject({ type: 'stale' })
    expect(parseServerMsg(JSON.stringify({ type: 'stale', stale: [] }))).toBeNull()
  })

  it('greys out a chart of a stale metric and recovers when the daemon says so', async () => {
    const { env } = makeEnv(() => NOW)
    const conn = new HostConnection('', 300, env)
    conn.catalogue.value = new Map(LOAD.map((n) => [n, desc(n)]))
    conn.start()
    const ws = FakeSocket.all[0]
    ws.accept()
    ws.deliver({ type: 'hello', protocol: 1, host: 'vm', interval_s: 1, version: '0' })
    await flush()
    const card = mount(PanelCard, {
      props: { panel: panelById('cpu.load')!, conn },
      global: { provide: { [LIVE as symbol]: createLive(300, false) } },
    })
    // a subscription made while the collector is stale: meta says so
    ws.deliver({ type: 'meta', seq: 1, interval_s: 1, series: [['kernel.all.load', '1 minute']], metrics: { 'kernel.all.load': desc('kernel.all.load') }, stale: { 'kernel.all.load': timedOut } })
    await flush()
    expect(card.classes()).toContain('stale')
    expect(card.text()).toContain('stale: collector cpu timed out 12 s ago')
    // the collector answers again: an empty stale message clears it
    ws.deliver({ type: 'stale', stale: {} })
    await flush()
    expect(card.classes()).not.toContain('stale')
    expect(card.text()).not.toContain('stale:')
    // and a failure reported later by a stale message shows too
    ws.deliver({ type: 'stale', stale: { 'kernel.all.runnable': { ...timedOut, reason: 'error', since: NOW - 5 } } })
    await flush()
    expect(card.text()).toContain('stale: collector cpu failed 5 s ago')
    conn.stop()
  })
})
