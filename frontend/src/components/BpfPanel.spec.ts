import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { defineComponent, h, reactive } from 'vue'
import recorded from '../stores/fixtures/bpf.json'
import { BPF_TOGGLES, type BpfToggles } from '../lib/bpf'
import { panelById } from '../lib/catalogue'
import { LIVE, createLive } from '../lib/live'
import type { BpfList, BpfModuleStatus, Descriptor, MetaMsg } from '../lib/protocol'
import { HostConnection } from '../stores/host'
import { FakeSocket, flush, makeEnv } from '../stores/testing'
import { bpfOn, defaultView, setBpf } from '../lib/view'
import BpfTable from './BpfTable.vue'
import PanelCard from './PanelCard.vue'
import WidgetCatalogue from './WidgetCatalogue.vue'

/** The recorded module list, with one module as a host without that tracepoint reports it. */
const REASON = 'tracepoint: tracepoint block:block_rq_issue missing from /sys/kernel/tracing/events'
function moduleList(): BpfList {
  const list = structuredClone(recorded.list) as unknown as BpfList
  const bio = list.modules.find((m) => m.name === 'biolatency')!
  bio.available = false
  bio.reason = REASON
  return list
}
const meta = (recorded.stream.filter((m) => m.type === 'meta') as unknown as MetaMsg[]).at(-1)!
const descriptors = Object.values(meta.metrics) as Descriptor[]

let restAnswers: Record<string, unknown> = {}
beforeEach(() => {
  FakeSocket.all = []
  restAnswers = { '/api/v1/bpf/': recorded.table, '/api/v1/bpf': moduleList(), '/api/v1/metrics': { metrics: descriptors } }
  vi.stubGlobal('fetch', async (url: string) => {
    const path = String(url)
    const key = Object.keys(restAnswers).find((k) => path.startsWith(k))
    const body = key ? restAnswers[key] : { hostname: 'vm', ncpu: 2, interval_s: 1, protocol: 1, capabilities: {} }
    return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } })
  })
})
afterEach(() => vi.unstubAllGlobals())

async function connected() {
  const { env, timers } = makeEnv(() => 1795350000)
  const conn = new HostConnection('', 300, env)
  conn.start()
  const ws = FakeSocket.all[0]
  ws.accept()
  ws.deliver(recorded.stream[0]) // hello
  await flushPromises()
  return { conn, ws, timers }
}

/** The root's part: a view whose toggles become holds on the connection. */
function toggles(conn: HostConnection): BpfToggles & { view: ReturnType<typeof defaultView> } {
  const view = reactive(defaultView())
  const holds = new Map<string, () => void>()
  return {
    view,
    isOn: (m, b) => bpfOn(view, m, b),
    set(m, b, on) {
      setBpf(view, m, b, on)
      if (on && !holds.has(m)) holds.set(m, conn.holdBpf(m))
      if (!on) {
        holds.get(m)?.()
        holds.delete(m)
      }
    },
  }
}

function mountCard(id: string, conn: HostConnection, t: BpfToggles | null, stubHeat = true) {
  return mount(PanelCard, {
    props: { panel: panelById(id)!, conn },
    global: {
      provide: { [LIVE as symbol]: createLive(300, false), ...(t ? { [BPF_TOGGLES as symbol]: t } : {}) },
      stubs: stubHeat ? { HeatMap: defineComponent({ props: ['cols', 'lines'], setup: (p) => () => h('div', { class: 'heatstub' }, `${p.cols.end.length} columns; ${p.lines.map((l: { label: string }) => l.label).join(',')}`) }) } : {},
    },
  })
}

describe('the module switch over the websocket', () => {
  it('holds a module with a bpf message, shows starting, the daemon’s refusal, then on', async () => {
    const { conn, ws } = await connected()
    const answers = recorded.stream.filter((m) => m.type === 'bpf' || m.type === 'error')
    let release = conn.holdBpf('runqlat')
    expect(ws.sent.at(-1)).toEqual(recorded.sent[1])
    expect(conn.bpfView('runqlat').phase).toBe('starting')
    // A refusal is matched to the toggle it answers (answers come in order) and shown
    // on the widget, not as a page banner.
    ws.deliver(answers[1])
    expect(conn.bpfView('runqlat')).toMatchObject({ held: true, phase: 'error', message: 'pid must be between 0 and 4194304, got -1' })
    expect(conn.notices.value).toEqual([])
    release()
    ws.deliver(answers[2])
    expect(conn.bpfView('runqlat')).toMatchObject({ held: false, phase: 'off', message: null })
    release = conn.holdBpf('runqlat')
    ws.deliver(answers[0])
    expect(conn.bpfView('runqlat')).toMatchObject({ held: true, phase: 'on', message: null })
    expect(conn.bpfModule('runqlat')?.attach_point).toBe('raw_tracepoint')
    release()
    expect(ws.sent.at(-1)).toEqual(recorded.sent[3])
    expect(conn.bpfView('runqlat').phase).toBe('stopping')
    ws.deliver(answers[2])
    expect(conn.bpfView('runqlat')).toMatchObject({ held: false, phase: 'off' })
  })

  it('takes its holds again on a new connection, subscribing to their metrics first', async () => {
    const { conn, ws, timers } = await connected()
    conn.holdBpf('runqlat')
    ws.deliver(recorded.stream.find((m) => m.type === 'bpf'))
    ws.drop(1006)
    expect(conn.bpfView('runqlat').phase).toBe('starting')
    timers.at(-1)!()
    const ws2 = FakeSocket.all[1]
    ws2.accept()
    ws2.deliver(recorded.stream[0])
    await flushPromises()
    // The daemon answers a connection's messages in order and an enable compiles for a
    // while: the subscribe goes first so the heat map's history is not held up.
    const kinds = ws2.sent.map((m) => m.type)
    expect(kinds).toEqual(['subscribe', 'bpf'])
    expect(ws2.sent[0]).toMatchObject({ names: expect.arrayContaining(['bpf.runq.latency', 'bpf.runq.p50', 'bpf.runq.p90', 'bpf.runq.p99']) })
    expect(ws2.sent[1]).toEqual({ type: 'bpf', name: 'runqlat', enabled: true })
  })
})

describe('BPF widgets', () => {
  it('joins a run other viewers started, with their settings, and says which', async () => {
    const list = moduleList()
    Object.assign(list.modules[0], { state: 'on', users: ['rest:ops'], settings: { cgroup: '', pid: 4242 } })
    restAnswers['/api/v1/bpf'] = list
    const { conn, ws } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.runqlat', conn, t)
    await flushPromises()
    expect(w.get('[role="status"]').text()).toBe('off here; on for 1 other viewer')
    await w.get('button[role="switch"]').trigger('click')
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '', pid: 4242 } })
    ws.deliver({ type: 'bpf', status: { ...list.modules[0], users: ['rest:ops', 'ws:9'] } })
    await flushPromises()
    expect(w.get('[role="status"]').text()).toBe('on · pid 4242 · also held by 1 other')
    expect(w.get('details.attach summary').text()).toBe('via raw_tracepoint')
  })

  it('shows the attach point it would use and why better plans were rejected, as text', async () => {
    const list = moduleList()
    const hostile = 'needs Linux >= 6.2 (running <b>6.1</b>)'
    Object.assign(list.modules[0], {
      attach_plans: ['tp_btf', 'raw_tracepoint', 'tracepoint'],
      rejected_attach_points: [{ attach_point: 'tp_btf', reason: hostile }],
    })
    restAnswers['/api/v1/bpf'] = list
    const { conn, ws } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.runqlat', conn, t)
    await flushPromises()
    const details = w.get('details.attach')
    expect(details.get('summary').text()).toBe('would use raw_tracepoint (1 better plan not usable)')
    expect(details.findAll('li').map((li) => li.text())).toEqual([
      `tp_btf not usable here: ${hostile}`,
      'raw_tracepoint used when switched on',
      'tracepoint fallback, not needed',
    ])
    expect(details.find('b').exists()).toBe(false)
    expect(details.get('li.chosen').text()).toContain('raw_tracepoint')
    await w.get('button[role="switch"]').trigger('click')
    ws.deliver({ type: 'bpf', status: { ...list.modules[0], state: 'on', users: ['ws:1'] } })
    await flushPromises()
    expect(w.get('[role="status"]').text()).toBe('on')
    expect(w.get('details.attach summary').text()).toBe('via raw_tracepoint (1 better plan not usable)')
    expect(w.findAll('details.attach li')[1].text()).toBe('raw_tracepoint in use')
  })

  it('shows what runs degraded (the daemon’s notes), also while off', async () => {
    const list = moduleList()
    const note = 'tcp_sock.bytes_acked unknown (no BTF: /sys/kernel/btf/vmlinux missing)'
    Object.assign(list.modules.find((m) => m.name === 'tcplife')!, { notes: [note] })
    restAnswers['/api/v1/bpf'] = list
    const { conn } = await connected()
    const w = mountCard('bpf.tcplife', conn, toggles(conn))
    await flushPromises()
    expect(w.get('p.degraded').text()).toBe(`Degraded: ${note}`)
    expect(w.get('p.degraded').attributes('title')).toBe(note)
    expect(w.get('details.attach summary').text()).toBe('would use tracepoint')
  })

  it('greys out a module the host cannot run, with the daemon’s exact reason', async () => {
    const { conn } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.biolatency', conn, t)
    await flushPromises()
    expect(w.text()).toContain(`Not available on this host: ${REASON}. Run hostscope doctor on the host for details.`)
    const sw = w.get('button[role="switch"]')
    expect(sw.attributes('disabled')).toBeDefined()
    await sw.trigger('click')
    expect(t.view.bpf).toEqual([])
  })

  it('lists one catalogue entry per module, unavailable ones disabled with the reason', async () => {
    const { conn } = await connected()
    const w = mount(WidgetCatalogue, { props: { conn, present: ['bpf.runqlat'] } })
    await flushPromises()
    const names = (recorded.list.modules as unknown as BpfModuleStatus[]).map((m) => m.name)
    const entries = w.findAll('button.entry').filter((b) => names.some((n) => b.attributes('aria-label') === `Add ${panelById('bpf.' + n)!.title}`))
    expect(entries).toHaveLength(names.length)
    const bio = w.get(`button[aria-label="Add ${panelById('bpf.biolatency')!.title}"]`)
    expect(bio.attributes('disabled')).toBeDefined()
    expect(w.get(`#${bio.attributes('aria-describedby')!.replace('.', '\\.')}`).text()).toBe(`Not available: ${REASON}. Run hostscope doctor on the host.`)
    await w.get(`button[aria-label="Add ${panelById('bpf.syscalls')!.title}"]`).trigger('click')
    expect(w.emitted('add')![0]).toEqual(['bpf.syscalls'])
  })

  it('switches on from its keyboard-reachable switch and draws the recorded histogram', async () => {
    const { conn, ws } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.runqlat', conn, t)
    await flushPromises()
    expect(w.text()).toContain('Switch on to collect run queue latency')
    const sw = w.get('button[role="switch"]')
    expect(sw.attributes('aria-checked')).toBe('false')
    expect(sw.attributes('aria-label')).toBe('Switch on Run queue latency (heat map)')
    await sw.trigger('click')
    expect(t.view.bpf).toEqual(['runqlat'])
    expect(ws.sent.filter((m) => m.type === 'bpf')).toEqual([{ type: 'bpf', name: 'runqlat', enabled: true }])
    expect(w.get('[role="status"]').text()).toContain('starting')
    // The daemon's answer, then its frames (the subscription the widget asked for).
    for (const m of recorded.stream.slice(1)) if (m.type !== 'error' && m !== recorded.stream.at(-1)) ws.deliver(m)
    await flushPromises()
    expect(ws.sent.find((m) => m.type === 'subscribe')).toMatchObject({ names: expect.arrayContaining(['bpf.runq.latency', 'bpf.runq.p99']) })
    expect(w.get('button[role="switch"]').attributes('aria-checked')).toBe('true')
    expect(w.get('[role="status"]').text()).toBe('on')
    expect(w.get('details.attach summary').text()).toBe('via raw_tracepoint')
    const frames = recorded.stream.filter((m) => m.type === 'samples').length
    expect(w.get('.heatstub').text()).toBe(`${frames - 1} columns; p50,p90,p99`)
    await w.get('button[role="switch"]').trigger('click')
    expect(t.view.bpf).toEqual([])
    expect(ws.sent.filter((m) => m.type === 'bpf').at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: false })
  })

  it('shows a table module’s rows as text, cut with the full text in a tooltip, sortable', async () => {
    const { conn } = await connected()
    const hostile = '<img src=x onerror="alert(1)">' + 'x'.repeat(300)
    restAnswers['/api/v1/bpf/'] = {
      module: 'execsnoop',
      table: 'execs',
      time: 1,
      rows: [
        { time: 1795350000.5, pid: 42, ppid: 1, uid: 0, comm: '<b>evil</b>', filename: '/tmp/<script>', args: [hostile, '--x'], args_truncated: true },
        { time: 1795350001.5, pid: 7, ppid: 1, uid: 1000, comm: 'bash', filename: '/bin/bash', args: ['bash'], args_truncated: false },
      ],
    }
    const w = mount(BpfTable, { props: { conn, module: 'execsnoop', table: 'execs', running: true, paused: false } })
    await flushPromises()
    expect(w.find('img').exists()).toBe(false)
    expect(w.find('b').exists()).toBe(false)
    const args = w.findAll('td.args')
    expect(args[0].text()).toBe(`${hostile} --x …`)
    expect(args[0].attributes('title')).toBe(`/tmp/<script>\n${hostile} --x …`)
    expect(w.findAll('td.text')[0].text()).toBe('<b>evil</b>')
    await w.get('button[aria-label="Sort by PID"]').trigger('click')
    expect(w.findAll('tbody tr').map((r) => r.findAll('td')[1].text())).toEqual(['42', '7'])
    await w.get('button[aria-label="Sort by PID"]').trigger('click')
    expect(w.findAll('tbody tr').map((r) => r.findAll('td')[1].text())).toEqual(['7', '42'])
    expect(w.get('th[aria-sort="ascending"]').text()).toContain('PID')
  })

  it('polls nothing while the module is off', async () => {
    const { conn } = await connected()
    const calls: string[] = []
    vi.stubGlobal('fetch', async (url: string) => {
      calls.push(String(url))
      return new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } })
    })
    const w = mount(BpfTable, { props: { conn, module: 'syscalls', table: 'top', running: false, paused: false } })
    await flushPromises()
    expect(calls).toEqual([])
    expect(w.text()).toContain('The table fills once the module is on.')
  })
})
