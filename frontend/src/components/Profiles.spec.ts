import { enableAutoUnmount, flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import fx from '../lib/fixtures/profiles.synthetic.json'
import { flatten, layout, rowTop, type FlameNode } from '../lib/flame'
import type { Timeline } from '../lib/flamescope'
import { parseRoute, type ProfileSummary, type ProfilesList } from '../lib/profiles'
import ProfilesView from '../views/ProfilesView.vue'
import FlameGraph from './FlameGraph.vue'
import FlameScope from './FlameScope.vue'
import ProfileCapture from './ProfileCapture.vue'

const HOSTILE = '<script>alert(1)</script>'
const PROCESS = `<b>"x'&`

/** The daemon, played from the contract fixtures: answers by method and path prefix. */
type Answer = { status?: number; body: unknown } | ((url: string, init?: RequestInit) => { status?: number; body: unknown })
let answers: [string, Answer][] = []
let calls: { method: string; url: string; body: unknown }[] = []
beforeEach(() => {
  calls = []
  answers = [['GET /api/v1/profiles', { body: fx.list }]]
  vi.stubGlobal('requestAnimationFrame', (f: () => void) => setTimeout(f, 0))
  vi.stubGlobal('fetch', async (url: string, init?: RequestInit) => {
    const method = init?.method ?? 'GET'
    calls.push({ method, url: String(url), body: init?.body ? JSON.parse(String(init.body)) : null })
    // Longest matching prefix wins, so a capture's path beats the list's; then the latest.
    const hit = answers
      .filter(([k]) => `${method} ${url}`.startsWith(k))
      .reverse()
      .sort((a, b) => b[0].length - a[0].length)[0]
    if (!hit) return new Response('{"error": {"code": "not_found", "message": "no such route"}}', { status: 404 })
    const a = typeof hit[1] === 'function' ? hit[1](String(url), init) : hit[1]
    return new Response(JSON.stringify(a.body), { status: a.status ?? 200, headers: { 'content-type': 'application/json' } })
  })
})
afterEach(() => vi.unstubAllGlobals())
enableAutoUnmount(afterEach)

const route = (hash: string) => parseRoute(hash)!

describe('capture form', () => {
  it('takes its defaults and limits from GET /profiles and starts a capture', async () => {
    answers.push(['POST /api/v1/profiles', { status: 202, body: fx.queued }])
    const w = mount(ProfilesView, { props: { route: route('#/profiles') } })
    await flushPromises()
    const duration = w.find('input[type="number"][min="5"]')
    expect((duration.element as HTMLInputElement).value).toBe('30')
    expect(duration.attributes('max')).toBe('120')
    // Recent captures are links that keep working.
    const links = w.findAll('nav a').map((a) => a.attributes('href'))
    expect(links).toEqual(fx.list.profiles.map((p) => `#/profiles/${p.id}`))
    await w.find('form').trigger('submit')
    await flushPromises()
    expect(calls.at(-2)).toMatchObject({ method: 'POST', body: { kind: 'cpu', duration: 30, frequency: 49 } })
    expect(w.emitted('navigate')![0]).toEqual([`#/profiles/${fx.queued.id}`])
  })

  it('switches to off-CPU with its own default and the daemon\'s reason it cannot run', async () => {
    const w = mount(ProfilesView, { props: { route: route('#/profiles?new=offcpu') } })
    await flushPromises()
    expect((w.find('input[type="number"][min="5"]').element as HTMLInputElement).value).toBe('10')
    expect(w.find('[role="alert"]').text()).toBe('Not available on this host: tracepoint sched:sched_switch missing')
    expect(w.find('button[type="submit"]').attributes('disabled')).toBeDefined()
  })

  it('warns about the off-CPU overhead when it can run, and prefills a process from a link', async () => {
    const list = structuredClone(fx.list) as unknown as ProfilesList
    list.kinds.offcpu = { available: true, method: 'bpf', reason: null }
    answers = [['GET /api/v1/profiles', { body: list }], ['POST /api/v1/profiles', { status: 202, body: fx.queued }]]
    const w = mount(ProfilesView, { props: { route: route('#/profiles?new=offcpu&pid=4242') } })
    await flushPromises()
    expect(w.find('.warn').text()).toMatch(/context switch.*costs/)
    await w.find('form').trigger('submit')
    await flushPromises()
    expect(calls.find((c) => c.method === 'POST')!.body).toEqual({ kind: 'offcpu', duration: 10, pid: 4242 })
  })

  it('refuses invalid input itself and shows the daemon\'s errors as it words them', async () => {
    const w = mount(ProfilesView, { props: { route: route('#/profiles') } })
    await flushPromises()
    await w.find('input[type="number"][min="5"]').setValue('500')
    await w.find('form').trigger('submit')
    expect(w.find('.error').text()).toBe('Duration must be between 5 and 120 seconds.')
    expect(calls.some((c) => c.method === 'POST')).toBe(false)
    await w.find('input[type="number"][min="5"]').setValue('20')
    for (const key of ['busy', 'unavailable', 'invalid'] as const) {
      const e = fx.errors[key]
      answers.push(['POST /api/v1/profiles', { status: e.status, body: e.body }])
      await w.find('form').trigger('submit')
      await flushPromises()
      expect(w.find('.error').text()).toBe(`${e.body.error.message} (HTTP ${e.status})`)
    }
  })
})

describe('one capture', () => {
  const id = fx.done.id
  const props = { base: '', id, range: null, baseId: null, others: fx.list.profiles as unknown as ProfileSummary[], pollMs: 5 }

  it('shows progress and queue position while it runs, cancels, then loads the flame graph', async () => {
    // The daemon's state moves on when the test says so; the page keeps polling.
    let state = 0
    const seq = [fx.queued, fx.running, fx.done]
    answers.push([`GET /api/v1/profiles/${id}`, () => ({ body: { ...seq[state], id } })])
    answers.push([`GET /api/v1/profiles/${id}?format=json`, { body: fx.json }])
    const w = mount(ProfileCapture, { props })
    await flushPromises()
    expect(w.text()).toContain('position 2')
    expect(w.find('progress').exists()).toBe(true)
    state = 1
    await vi.waitFor(() => expect(w.find('progress').attributes('value')).toBe('0.4'))
    expect(w.text()).toContain('2 of 5 s')
    state = 2
    await vi.waitFor(() => expect(w.findComponent(FlameGraph).exists()).toBe(true))
    expect(w.find('progress').exists()).toBe(false)
    expect(w.emitted('changed')).toHaveLength(1)
    expect(w.text()).toContain('8 % of samples have [unknown] user frames')
    const hrefs = w.findAll('.downloads a').map((a) => a.attributes('href'))
    expect(hrefs).toEqual(['folded', 'svg', 'speedscope'].map((f) => `/api/v1/profiles/${id}?format=${f}`))
  })

  it('cancels a running capture with DELETE', async () => {
    answers.push([`GET /api/v1/profiles/${id}`, { body: { ...fx.running, id } }])
    answers.push([`DELETE /api/v1/profiles/${id}`, { body: { ...fx.running, id, state: 'cancelled' } }])
    const w = mount(ProfileCapture, { props: { ...props, pollMs: 60_000 } })
    await flushPromises()
    await w.find('.running button').trigger('click')
    await flushPromises()
    expect(calls.at(-1)!.method).toBe('DELETE')
    expect(w.text()).toContain('cancelled')
    expect(w.find('progress').exists()).toBe(false)
  })

  it('searches with a matched percentage, and asks for a range and a diff base', async () => {
    answers.push([`GET /api/v1/profiles/${id}`, { body: fx.done }])
    answers.push([`GET /api/v1/profiles/${id}?format=json`, { body: fx.json }])
    const w = mount(ProfileCapture, { props })
    await flushPromises()
    await w.find('input[type="search"]').setValue('busy')
    // busyloop's 1060 of 2300 samples.
    expect(w.find('.match').text()).toBe('2 frames · matched 46.09 %')
    // The diff picker offers the other finished CPU capture; choosing it is a route change.
    const opt = w.findAll('#fg-base option').map((o) => o.attributes('value'))
    expect(opt).toEqual(['', fx.list.profiles[1].id])
    await w.find('#fg-base').setValue(fx.list.profiles[1].id)
    expect(w.emitted('route')!.at(-1)).toEqual([{ range: null, baseId: fx.list.profiles[1].id }])
    answers.push([`GET /api/v1/profiles/${id}?format=json&base=`, { body: fx.diff }])
    answers.push([`GET /api/v1/profiles/${id}?format=json&start=`, { body: fx.json }])
    await w.setProps({ baseId: fx.list.profiles[1].id, range: { start: 1.2, end: 3.1 } })
    await flushPromises()
    expect(calls.at(-1)!.url).toBe(`/api/v1/profiles/${id}?format=json&start=1.2&end=3.1&base=${fx.list.profiles[1].id}`)
    expect(w.find('.rangebar').text()).toContain('1.200 s – 3.100 s')
    // The downloads are of what is shown: the range, and the differential SVG.
    const hrefs = w.findAll('.downloads a').map((a) => a.attributes('href'))
    expect(hrefs[0]).toBe(`/api/v1/profiles/${id}?format=svg&start=1.2&end=3.1&base=${fx.list.profiles[1].id}`)
    expect(hrefs[1]).toBe(`/api/v1/profiles/${id}?format=folded&start=1.2&end=3.1`)
  })

  it('downloads from another daemon with its token (a link could not send it)', async () => {
    const other = 'http://db1:7470'
    sessionStorage.setItem('hostscope.token:http://db1:7470', 'tok-db1')
    const seen: { url: string; auth: string | null }[] = []
    vi.stubGlobal('fetch', async (url: string, init?: RequestInit) => {
      const headers = new Headers(init?.headers)
      seen.push({ url: String(url), auth: headers.get('Authorization') })
      const body = String(url).includes('format=json') ? fx.json : String(url).includes('format=folded') ? 'all;x 1\n' : fx.done
      return new Response(typeof body === 'string' ? body : JSON.stringify(body), { status: 200 })
    })
    const saved = { create: URL.createObjectURL, revoke: URL.revokeObjectURL }
    URL.createObjectURL = () => 'blob:x'
    URL.revokeObjectURL = () => {}
    const w = mount(ProfileCapture, { props: { ...props, base: other } })
    await flushPromises()
    await w.find('.downloads a').trigger('click')
    await flushPromises()
    expect(seen.at(-1)).toEqual({ url: `${other}/api/v1/profiles/${id}?format=folded`, auth: 'Bearer tok-db1' })
    // A differential graph shown: its SVG download is the differential one.
    await w.setProps({ baseId: 'pf-base' })
    await flushPromises()
    await w.find('.downloads a').trigger('click')
    await flushPromises()
    URL.createObjectURL = saved.create
    URL.revokeObjectURL = saved.revoke
    expect(seen.at(-1)).toEqual({ url: `${other}/api/v1/profiles/${id}?format=svg&base=pf-base`, auth: 'Bearer tok-db1' })
    expect(seen.every((c) => c.auth === 'Bearer tok-db1')).toBe(true)
    sessionStorage.clear()
  })

  it('shows the diff legend for a differential graph', async () => {
    answers.push([`GET /api/v1/profiles/${id}`, { body: fx.done }])
    answers.push([`GET /api/v1/profiles/${id}?format=json`, { body: fx.diff }])
    const baseId = fx.list.profiles[1].id
    const w = mount(ProfileCapture, { props: { ...props, baseId } })
    await flushPromises()
    expect(w.find('.legend').text()).toMatch(/grew.*unchanged.*shrank/)
    // Downloads of what is shown: the differential SVG, and each link says what it gives.
    expect(w.find('.downloads').text()).toMatch(/^Download \(compared with the base\):/)
    expect(w.findAll('.downloads a').map((a) => [a.text(), a.attributes('href'), a.attributes('download')])).toEqual([
      ['differential SVG', `/api/v1/profiles/${id}?format=svg&base=${baseId}`, `${id}-vs-${baseId}.svg`],
      ['folded stacks (this capture)', `/api/v1/profiles/${id}?format=folded`, `${id}.folded`],
      ['folded stacks (base)', `/api/v1/profiles/${baseId}?format=folded`, `${baseId}.folded`],
      ['speedscope JSON (this capture only)', `/api/v1/profiles/${id}?format=speedscope`, `${id}.speedscope.json`],
    ])
    expect(w.find('.downloads a').attributes('title')).toMatch(/red grew, blue shrank/)
    expect(w.findComponent(FlameGraph).props('deltas')).not.toBeNull()
    // Back to the capture alone: plain downloads again.
    await w.setProps({ baseId: null })
    await flushPromises()
    expect(w.findAll('.downloads a').map((a) => a.text())).toEqual(['folded stacks', 'SVG', 'speedscope JSON'])
  })

  it('says why a capture failed', async () => {
    const failed = { ...fx.done, state: 'failed', error: { code: 'capture_failed', message: 'perf record exited with status 1' } }
    answers.push([`GET /api/v1/profiles/${id}`, { body: failed }])
    const w = mount(ProfileCapture, { props })
    await flushPromises()
    expect(w.find('[role="alert"]').text()).toBe('The capture failed: perf record exited with status 1 (capture_failed)')
  })
})

describe('flame graph component', () => {
  const tree = flatten(fx.json.tree as unknown as FlameNode)
  const W = 1000

  function centre(name: string, icicle = false) {
    const l = layout(tree, 0, W)
    const height = (l.maxDepth + 1) * 17 + 1
    const k = Array.from(l.idx.subarray(0, l.count)).indexOf(tree.name.indexOf(name))
    return { clientX: l.x[k] + l.w[k] / 2, clientY: rowTop(l.depth[k], 17, height, icicle) + 8 }
  }

  it('shows hostile frame names in the tooltip as text, never markup', async () => {
    const w = mount(FlameGraph, { props: { tree, zoom: 0, width: W }, attachTo: document.body })
    await w.find('canvas').trigger('mousemove', centre(HOSTILE))
    const tip = w.find('[role="tooltip"]')
    expect(tip.find('.name').text()).toBe(HOSTILE)
    expect(tip.text()).toContain('300 samples · 13.04 % of all')
    expect(document.querySelector('.tip script')).toBeNull()
    await w.find('canvas').trigger('mousemove', centre(PROCESS))
    expect(w.find('.tip .name').text()).toBe(PROCESS)
    expect(w.find('.tip').element.innerHTML).toContain('&lt;b&gt;"x\'&amp;')
    expect(document.querySelector('.tip b')).toBeNull()
    w.unmount()
  })

  it('zooms on click, in both orientations, and back out with Escape', async () => {
    for (const icicle of [false, true]) {
      const w = mount(FlameGraph, { props: { tree, zoom: 0, width: W, icicle } })
      await w.find('canvas').trigger('click', centre('busy_loop', icicle))
      expect(w.emitted('zoom')![0]).toEqual([tree.name.indexOf('busy_loop')])
      await w.find('canvas').trigger('keydown', { key: 'Escape' })
      expect(w.emitted('zoom')![1]).toEqual([0])
    }
  })

  it('formats off-CPU values as blocked time', async () => {
    const w = mount(FlameGraph, { props: { tree, zoom: 0, width: W, unit: 'microseconds' } })
    await w.find('canvas').trigger('mousemove', centre(HOSTILE))
    expect(w.find('.tip').text()).toContain('300 µs')
  })
})

describe('FlameScope component', () => {
  const tl = fx.json.timeline as Timeline

  it('selects a range by dragging and by two clicks', async () => {
    const w = mount(FlameScope, { props: { timeline: tl, range: null } })
    const c = w.find('canvas')
    // 5 seconds: cells 24 px wide, 4 px tall.
    await c.trigger('mousedown', { button: 0, clientX: 30, clientY: 40 })
    await c.trigger('mouseup', { clientX: 60, clientY: 8 })
    expect(w.emitted('select')![0]).toEqual([{ start: 1.2, end: 2.06 }])
    await c.trigger('mousedown', { button: 0, clientX: 5, clientY: 0 })
    await c.trigger('mouseup', { clientX: 5, clientY: 0 })
    expect(w.find('.hint').text()).toBe('Start marked: click the end of the range.')
    await c.trigger('mousedown', { button: 0, clientX: 5, clientY: 196 })
    await c.trigger('mouseup', { clientX: 5, clientY: 196 })
    expect(w.emitted('select')![1]).toEqual([{ start: 0, end: 1 }])
    await c.trigger('mousemove', { clientX: 50, clientY: 100 })
    expect(w.find('.hint').text()).toBe(`2.500 s – 2.520 s: ${tl.counts[2][25]} samples`)
  })
})
