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
import { bpfOn, bpfSettingsOf, defaultView, setBpf, setBpfSettings } from '../lib/view'
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
      if (on && !holds.has(m)) holds.set(m, conn.holdBpf(m, bpfSettingsOf(view, m, b)))
      if (!on) {
        holds.get(m)?.()
        holds.delete(m)
      }
    },
    settings: (m, b) => bpfSettingsOf(view, m, b),
    setSettings(m, b, settings) {
      setBpfSettings(view, m, b, settings)
      if (holds.has(m)) conn.setBpfSettings(m, settings)
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

/** The URLs the page fetches from now on (the stubbed daemon still answers them). */
function recordFetches(): string[] {
  const urls: string[] = []
  const fetch = globalThis.fetch
  vi.stubGlobal('fetch', async (url: string) => {
    urls.push(String(url))
    return fetch(url)
  })
  return urls
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

/** The daemon's containers: `cgroup.container.name` per cgroup path (hostile names too). */
const CONTAINERS = [
  { instance: '/', value: '' },
  { instance: '/system.slice/nginx.service', value: 'nginx.service' },
  { instance: '/docker/ab12cd34', value: 'docker:ab12cd34' },
  { instance: '/odd,path/<b>x</b>', value: '/odd,path/<b>x</b>' },
]
function withContainers() {
  const u = { label: '', kind: 'none', per_sec: false, base_factor: 1 }
  restAnswers['/api/v1/metrics'] = {
    metrics: [...descriptors, { name: 'cgroup.container.name', type: 'string', semantics: 'discrete', units: u, value_units: u, indom: 'cgroup', help: '' }],
  }
  restAnswers['/api/v1/fetch'] = { timestamp: 1, values: [{ name: 'cgroup.container.name', instances: CONTAINERS }] }
}
const CONFLICT = "runqlat: running with settings {'cgroup': '', 'pid': 0} for 1 other user(s); use those settings or wait until they disable it"

describe('module settings: a container filter', () => {
  it('holds with the page’s settings, changes them while held, and takes them again on a new socket', async () => {
    const { conn, ws, timers } = await connected()
    conn.holdBpf('runqlat', { cgroup: '/docker/ab12cd34' })
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/docker/ab12cd34' } })
    const on = { ...moduleList().modules[0], state: 'on', users: ['ws:1'], settings: { cgroup: '/docker/ab12cd34', pid: 0 } }
    ws.deliver({ type: 'bpf', status: on })
    // Sole holder: asking for another container restarts the module with it.
    conn.setBpfSettings('runqlat', { cgroup: '/system.slice/nginx.service' })
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/system.slice/nginx.service' } })
    expect(conn.bpfView('runqlat').phase).toBe('starting')
    ws.deliver({ type: 'bpf', status: { ...on, settings: { cgroup: '/system.slice/nginx.service', pid: 0 } } })
    conn.setBpfSettings('runqlat', { cgroup: '/system.slice/nginx.service' }) // unchanged: nothing sent
    // No filter any more means the defaults, asked for explicitly (not "join whatever runs").
    const sent = ws.sent.length
    conn.setBpfSettings('runqlat', undefined)
    expect(ws.sent.length).toBe(sent + 1)
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: {} })
    ws.deliver({ type: 'bpf', status: { ...on, settings: { cgroup: '', pid: 0 } } })
    conn.setBpfSettings('runqlat', { cgroup: '/docker/ab12cd34' })
    ws.deliver({ type: 'bpf', status: on })
    ws.drop(1006)
    timers.at(-1)!()
    const ws2 = FakeSocket.all[1]
    ws2.accept()
    ws2.deliver(recorded.stream[0])
    await flushPromises()
    expect(ws2.sent.filter((m) => m.type === 'bpf')).toEqual([{ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/docker/ab12cd34' } }])
  })

  it('says clearly when the daemon refuses other settings because other viewers run the module', async () => {
    const list = moduleList()
    Object.assign(list.modules[0], { state: 'on', users: ['rest:ops'], settings: { cgroup: '', pid: 0 } })
    restAnswers['/api/v1/bpf'] = list
    withContainers()
    const { conn, ws } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.runqlat', conn, t)
    await flushPromises()
    await w.get('select[aria-label="Container filter of Run queue latency (heat map)"]').setValue('/docker/ab12cd34')
    await w.get('button[role="switch"]').trigger('click')
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/docker/ab12cd34' } })
    ws.deliver({ type: 'error', code: 'settings_conflict', message: CONFLICT, ref: 'bpf', module: 'runqlat' })
    await flushPromises()
    const st = w.get('[role="status"]')
    expect(st.text()).toBe(`refused (settings_conflict): ${CONFLICT}`)
    expect(st.classes()).toContain('error')
    expect(conn.notices.value).toEqual([])
    // The page still asks for its container; nothing runs filtered.
    expect(w.get<HTMLSelectElement>('select[aria-label^="Container filter"]').element.value).toBe('/docker/ab12cd34')
    expect(w.find('.chip.filter').exists()).toBe(false)
  })
})

describe('BPF widgets', () => {
  it('filters a module to one of the host’s containers, by its cgroup path, and shows the filter', async () => {
    withContainers()
    const { conn, ws } = await connected()
    const t = toggles(conn)
    const w = mountCard('bpf.runqlat', conn, t)
    await flushPromises()
    const select = w.get<HTMLSelectElement>('select[aria-label="Container filter of Run queue latency (heat map)"]')
    const options = select.findAll('option')
    // Every container but the root, by name, valued with its cgroup path; names as text.
    expect(options.map((o) => [o.text(), o.attributes('value')])).toEqual([
      ['all containers', ''],
      ['/odd,path/<b>x</b>', '/odd,path/<b>x</b>'],
      ['docker:ab12cd34', '/docker/ab12cd34'],
      ['nginx.service', '/system.slice/nginx.service'],
    ])
    expect(select.find('b').exists()).toBe(false)
    // Chosen while off: remembered in the view (and the link), sent when switched on.
    await select.setValue('/docker/ab12cd34')
    expect(t.view.bpfSettings).toEqual({ runqlat: { cgroup: '/docker/ab12cd34' } })
    expect(ws.sent.filter((m) => m.type === 'bpf')).toEqual([])
    await w.get('button[role="switch"]').trigger('click')
    expect(ws.sent.filter((m) => m.type === 'bpf')).toEqual([{ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/docker/ab12cd34' } }])
    const on = { ...moduleList().modules[0], state: 'on', users: ['ws:1'], settings: { cgroup: '/docker/ab12cd34', pid: 0 } }
    ws.deliver({ type: 'bpf', status: on })
    await flushPromises()
    expect(w.get('[role="status"]').text()).toBe('on')
    const chip = w.get('.chip.filter')
    expect(chip.text()).toBe('filter: docker:ab12cd34')
    expect(chip.attributes('title')).toBe('Runs filtered: only tasks in cgroup /docker/ab12cd34')
    // Another container while on: the module restarts with it.
    await select.setValue('/odd,path/<b>x</b>')
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: { cgroup: '/odd,path/<b>x</b>' } })
    ws.deliver({ type: 'bpf', status: { ...on, settings: { cgroup: '/odd,path/<b>x</b>', pid: 0 } } })
    await flushPromises()
    expect(w.get('.chip.filter').text()).toBe('filter: /odd,path/<b>x</b>')
    expect(w.find('.chip.filter b').exists()).toBe(false)
    // Back to all containers.
    await select.setValue('')
    expect(t.view.bpfSettings).toEqual({})
    expect(ws.sent.at(-1)).toEqual({ type: 'bpf', name: 'runqlat', enabled: true, settings: {} })
  })

  it('offers only cgroup v2 containers: on a hybrid host, v1-only cgroups cannot be a filter', async () => {
    withContainers()
    const u = { label: '', kind: 'none', per_sec: false, base_factor: 1 }
    const list = restAnswers['/api/v1/metrics'] as { metrics: Descriptor[] }
    list.metrics.push({ name: 'cgroup.version', type: 'string', semantics: 'discrete', units: u, value_units: u, indom: 'cgroup', help: '' } as Descriptor)
    // The daemon's cgroup.version: docker with the cgroupfs driver lives in v1 hierarchies only.
    const versions = [
      { instance: '/', value: 'v2' },
      { instance: '/system.slice/nginx.service', value: 'v2' },
      { instance: '/docker/ab12cd34', value: 'v1' },
      { instance: '/odd,path/<b>x</b>', value: 'v2' },
      { instance: '/process_api', value: 'v1' },
    ]
    restAnswers['/api/v1/fetch'] = {
      timestamp: 1,
      values: [
        { name: 'cgroup.container.name', instances: [...CONTAINERS, { instance: '/process_api', value: '/process_api' }] },
        { name: 'cgroup.version', instances: versions },
      ],
    }
    const urls = recordFetches()
    const { conn } = await connected()
    const w = mountCard('bpf.runqlat', conn, toggles(conn))
    await flushPromises()
    expect(urls).toContain('/api/v1/fetch?names=cgroup.container.name,cgroup.version')
    const options = w.get('select[aria-label^="Container filter"]').findAll('option')
    expect(options.map((o) => o.attributes('value'))).toEqual(['', '/odd,path/<b>x</b>', '/system.slice/nginx.service'])
    // The store reports the versions; the dashboard's container filter still lists every name.
    expect((await conn.containerCgroups()).find((c) => c.path === '/docker/ab12cd34')).toEqual({ path: '/docker/ab12cd34', name: 'docker:ab12cd34', version: 'v1' })
    expect(await conn.containerNames()).toContain('docker:ab12cd34')
  })

  it('offers every container when the daemon does not report cgroup versions (and does not ask for them)', async () => {
    withContainers()
    const urls = recordFetches()
    const { conn } = await connected()
    const w = mountCard('bpf.runqlat', conn, toggles(conn))
    await flushPromises()
    expect(urls).toContain('/api/v1/fetch?names=cgroup.container.name')
    expect(w.get('select[aria-label^="Container filter"]').findAll('option')).toHaveLength(4)
  })

  it('offers no container filter for modules without a cgroup setting', async () => {
    withContainers()
    const { conn } = await connected()
    const w = mountCard('bpf.execsnoop', conn, toggles(conn))
    await flushPromises()
    expect(w.find('select[aria-label^="Container filter"]').exists()).toBe(false)
  })

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
    expect(w.get('[role="status"]').text()).toBe('on · also held by 1 other')
    expect(w.get('.chip.filter').text()).toBe('filter: pid 4242')
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
