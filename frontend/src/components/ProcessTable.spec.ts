import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { ProcessRow } from '../lib/protocol'
import { EMBEDDED } from '../lib/view'
import { HostConnection } from '../stores/host'
import ProcessTable from './ProcessTable.vue'

const FULL: ProcessRow[] = [
  { instance: '42:100', pid: 42, cmd: 'postgres', args: 'postgres -D /var/lib/pg --password=hunter2', container: 'db.service', cpu: 0.5, rss: 1 << 20, io: null, threads: 7, state: 'S', cpu_history: [0.25, 0.5, null, 0.5] },
]
// What the daemon sends an embed token scoped to proc.top: the same row without `args`.
const EMBED = FULL.map(({ args: _args, ...row }) => row) as ProcessRow[]

let answer: ProcessRow[] = []
const urls: string[] = []

beforeEach(() => {
  urls.length = 0
  vi.stubGlobal('fetch', async (url: string) => {
    urls.push(url)
    // The daemon's time axis of the rows' cpu_history (2 s apart, ending at 100).
    const n = Math.max(0, ...answer.map((r) => r.cpu_history?.length ?? 0))
    const t = Array.from({ length: n }, (_, i) => 100 - 2 * (n - 1 - i))
    return new Response(JSON.stringify({ timestamp: 100, processes: answer, history: { seconds: 60, step: 2, t } }), { status: 200 })
  })
})
afterEach(() => vi.unstubAllGlobals())

async function mountTable(embedded: boolean) {
  const conn = new HostConnection('', 300, { frame: (cb) => cb() })
  const w = mount(ProcessTable, {
    props: { conn, paused: false, container: '' },
    global: { provide: embedded ? { [EMBEDDED as symbol]: true } : {} },
  })
  await flushPromises()
  return w
}

describe('ProcessTable', () => {
  it('shows the command line in the tooltip and links rows to the flame graph page', async () => {
    answer = FULL
    const w = await mountTable(false)
    expect(urls[0]).toBe('/api/v1/processes?sort=cpu&limit=25&history=60')
    const cell = w.find('td.cmd')
    expect(cell.attributes('title')).toBe(FULL[0].args)
    expect(cell.text()).toContain('postgres')
    expect(w.find('a.prof').attributes('href')).toContain('pid=42')
    expect(w.find('a.ctr').text()).toBe('db.service')
    w.unmount()
  })

  it('draws each row’s sparkline from the CPU history that came with it', async () => {
    answer = FULL
    const w = await mountTable(false)
    // 90 px wide, 4 points: x 0, 30, (gap), 90; y scaled to the row's peak of 0.5.
    expect(w.find('svg.spark path').attributes('d')).toBe('M0.0 9.0L30.0 1.0M90.0 1.0')
    answer = [{ ...FULL[0], cpu_history: undefined }]
    const bare = await mountTable(false)
    expect(bare.find('svg.spark path').attributes('d')).toBe('')
    w.unmount()
    bare.unmount()
  })

  it('renders rows without command lines (an embed token) with the task name, and no links in the embed view', async () => {
    answer = EMBED
    const w = await mountTable(true)
    const rows = w.findAll('tbody tr')
    expect(rows).toHaveLength(1)
    const cell = w.find('td.cmd')
    expect(cell.attributes('title')).toBe('postgres')
    expect(cell.text()).toContain('postgres')
    expect(w.text()).not.toMatch(/undefined|null|hunter2/)
    expect(w.text()).toContain('1 MiB')
    // The embed view has no flame graph page: the container is a plain chip.
    expect(w.findAll('a')).toHaveLength(0)
    expect(w.find('span.ctr').text()).toBe('db.service')
    w.unmount()
  })
})
