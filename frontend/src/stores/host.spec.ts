import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import recorded from './fixtures/stream.json'
import { HostConnection } from './host'
import { FakeSocket, flush, makeEnv as makeTestEnv } from './testing'
import { seriesKey } from '../lib/timeline'
import type { Descriptor, MetaMsg } from '../lib/protocol'

const meta = recorded.find((m) => m.type === 'meta') as unknown as MetaMsg
const descriptors = Object.values(meta.metrics) as Descriptor[]

function makeEnv() {
  return makeTestEnv(() => recorded.filter((m) => m.type === 'samples').at(-1)!.t!.at(-1)! + 1)
}

beforeEach(() => {
  FakeSocket.all = []
  // The REST side of the daemon: its metric list (the recorded descriptors).
  vi.stubGlobal('fetch', async (url: string) => {
    const body = String(url).includes('/metrics') ? { metrics: descriptors } : { hostname: 'vm', ncpu: 2, interval_s: 1, protocol: 1, capabilities: {} }
    return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } })
  })
})
afterEach(() => vi.unstubAllGlobals())

async function connected() {
  const { env, timers } = makeEnv()
  const conn = new HostConnection('', 300, env)
  conn.start()
  const ws = FakeSocket.all[0]
  ws.accept()
  ws.deliver(recorded[0])
  await flush()
  return { conn, ws, timers }
}

describe('HostConnection with recorded daemon messages', () => {
  it('subscribes what widgets need in one message, known names first, others optional', async () => {
    const { conn, ws } = await connected()
    expect(conn.state.value).toBe('open')
    conn.need(['kernel.all.cpu.util.user', 'kernel.all.load'])
    conn.need(['mem.util.used', 'disk.dev.read_bytes'])
    await flush()
    await flush()
    expect(ws.sent).toHaveLength(1)
    expect(ws.sent[0]).toMatchObject({
      type: 'subscribe',
      names: ['kernel.all.cpu.util.user', 'kernel.all.load', 'mem.util.used'],
      optional: ['disk.dev.read_bytes'],
      backfill: 300,
    })
  })

  it('stores backfill and live frames in base units and reports absent metrics', async () => {
    const { conn, ws } = await connected()
    conn.need(['kernel.all.cpu.util.user', 'kernel.all.load', 'mem.util.used', 'disk.dev.read_bytes'])
    await flush()
    const v0 = conn.version.value
    for (const m of recorded.slice(1, 6)) ws.deliver(m)
    expect(conn.ready.value).toBe(true)
    expect(conn.version.value).toBeGreaterThan(v0)
    const samples = recorded.filter((m) => m.type === 'samples')
    const nt = samples.reduce((n, m) => n + m.t!.length, 0)
    expect(conn.main.length).toBe(nt)
    const col = meta.series.findIndex(([n]) => n === 'mem.util.used')
    const raw = samples.at(-1)!.v![col].at(-1) as number
    expect(conn.main.latest(seriesKey('mem.util.used', ''))).toBe(raw * 1024)
    expect([...conn.main.instances.get('kernel.all.load')!].sort()).toEqual(['1 minute', '15 minute', '5 minute'])
    expect(conn.absence('disk.dev.read_bytes')).toMatch(/no disk\.dev\.read_bytes/)
    expect(conn.absence('kernel.all.load')).toBeNull()
  })

  it('shows a notice the daemon sends (its privileged helper restarted) once', async () => {
    const { conn, ws } = await connected()
    const notice = {
      type: 'notice',
      code: 'helper_restarted',
      message: 'The privileged helper was restarted (restart 1). BPF modules enabled again: runqlat.',
      helper: { state: 'running', pid: 42, restarts: 1, last_restart: 1, error: null },
      reenabled: ['runqlat'],
      dropped: [],
    }
    ws.deliver(notice)
    ws.deliver(notice)
    ws.deliver({ type: 'notice', code: 42 })
    await flush()
    expect(conn.notices.value.map((n) => [n.code, n.message])).toEqual([['helper_restarted', notice.message]])
  })

  it('learns names the daemon refuses and subscribes the rest again', async () => {
    const { conn, ws } = await connected()
    conn.catalogue.value = null // as when REST is refused cross-origin
    ;(conn as unknown as { waitedForMetadata: boolean }).waitedForMetadata = true
    conn.need(['no.such.metric', 'kernel.all.load'])
    await flush()
    expect(ws.sent.at(-1)).toMatchObject({ names: ['no.such.metric', 'kernel.all.load'] })
    ws.deliver(recorded.find((m) => m.type === 'error'))
    await flush()
    expect(conn.absence('no.such.metric')).toMatch(/does not know/)
    expect(ws.sent.at(-1)).toMatchObject({ names: ['kernel.all.load'] })
  })

  it('reconnects with backoff after the daemon goes away and asks only for the gap', async () => {
    const { conn, ws, timers } = await connected()
    conn.need(['kernel.all.load'])
    await flush()
    for (const m of recorded.slice(1, 6)) ws.deliver(m)
    ws.drop(1001)
    expect(conn.state.value).toBe('reconnecting')
    expect(conn.problem.value).toMatch(/shutting down or restarting/)
    expect(conn.retryAt.value).not.toBeNull()
    timers.at(-1)!()
    const ws2 = FakeSocket.all[1]
    expect(ws2).toBeDefined()
    ws2.accept()
    ws2.deliver(recorded[0])
    await flush()
    expect(conn.state.value).toBe('open')
    expect(conn.problem.value).toBeNull()
    const sub = ws2.sent[0] as { names: string[]; backfill: number }
    expect(sub.names).toEqual(['kernel.all.load'])
    expect(sub.backfill).toBeLessThan(10) // the gap, not the whole window
  })

  it('explains a refused connection to another origin', async () => {
    const { env } = makeEnv()
    const conn = new HostConnection('http://db1:7470', 300, env)
    conn.start()
    FakeSocket.all[0].drop(1006)
    expect(conn.problem.value).toMatch(/allowed_origins/)
    conn.stop()
    expect(conn.state.value).toBe('closed')
  })

  it('refuses a daemon speaking another protocol version', async () => {
    const { env } = makeEnv()
    const conn = new HostConnection('', 300, env)
    conn.start()
    FakeSocket.all[0].accept()
    FakeSocket.all[0].deliver({ ...recorded[0], protocol: 2 })
    expect(conn.problem.value).toMatch(/protocol 2/)
    expect(conn.state.value).toBe('closed')
  })
})
