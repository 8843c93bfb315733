// End-to-end tests of the BPF widgets against a real daemon that can load BPF programs
// (root, bcc): run by tests/test_dashboard_e2e.py::test_dashboard_bpf_end_to_end, which
// skips with a reason when this machine cannot (and fails instead under CI=true).
//   HOSTSCOPE_URL=http://127.0.0.1:7470 node --test e2e/bpf.test.mjs
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, rmdirSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AUTH, BASE, launch } from './support.mjs'

const CI = process.env.CI === 'true'
const skip = !BASE
  ? 'HOSTSCOPE_URL is not set (run through tests/test_dashboard_e2e.py)'
  : process.env.HOSTSCOPE_BPF_SKIP || false

const RUNQ = 'Run queue latency (heat map)'

async function modules() {
  const r = await fetch(`${BASE}/api/v1/bpf`, { headers: AUTH })
  assert.equal(r.status, 200, `GET /api/v1/bpf answered ${r.status}`)
  return (await r.json()).modules
}

async function moduleState(name) {
  return (await modules()).find((m) => m.name === name)
}

/** Wait until the daemon reports module `name` matching `pred` (polling its REST API). */
async function untilModule(name, pred, timeoutMs = 15000) {
  const until = Date.now() + timeoutMs
  let m
  while (Date.now() < until) {
    m = await moduleState(name)
    if (pred(m)) return m
    await new Promise((r) => setTimeout(r, 200))
  }
  assert.fail(`module ${name} never reached the expected state: ${JSON.stringify({ state: m?.state, users: m?.users })}`)
}

/** Where the cgroup v2 hierarchy is mounted (the module's cgroup setting is a path in
 * it), or null. */
function cgroup2Root() {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ')
    if (post?.startsWith('cgroup2 ')) return pre.split(' ')[4]
  }
  return null
}

/** Run-queue events the daemon counted over the last `seconds` (summed bucket rates). */
async function runqEvents(seconds, after = 0) {
  const r = await fetch(`${BASE}/api/v1/history?names=bpf.runq.latency&seconds=${seconds}`, { headers: AUTH })
  assert.equal(r.status, 200)
  const h = await r.json()
  // Only samples taken after `after` (wall seconds): a rate spans the interval before its
  // sample, which may reach back before a restart of the module.
  const keep = h.t.map((t) => t > after)
  return h.series.reduce((sum, s) => sum + s.values.reduce((a, v, i) => a + (keep[i] ? (v ?? 0) : 0), 0), 0)
}

/** Wait until the history holds `n` samples of bpf.runq.latency taken after `after`. */
async function runqSamplesAfter(after, n) {
  const until = Date.now() + 20000
  for (;;) {
    const r = await fetch(`${BASE}/api/v1/history?names=bpf.runq.latency&seconds=30`, { headers: AUTH })
    const h = await r.json()
    if (h.t.filter((t) => t > after).length >= n) return
    assert.ok(Date.now() < until, `fewer than ${n} runqlat samples after ${after}`)
    await new Promise((r) => setTimeout(r, 250))
  }
}

/** A REST client's toggle (another viewer, as far as the daemon is concerned). */
async function restToggle(name, enabled, client) {
  const r = await fetch(`${BASE}/api/v1/bpf/${name}`, {
    method: 'POST',
    headers: { ...AUTH, 'Content-Type': 'application/json', 'X-Hostscope-Client': client },
    body: JSON.stringify({ enabled }),
  })
  assert.equal(r.status, 200, `POST /api/v1/bpf/${name} answered ${r.status}: ${await r.text()}`)
}

/** Two processes bouncing a byte over pipes: thousands of wakeups and context switches;
 * inside cgroup directory `cgroupDir` when given (both of them: it moves itself first). */
function pingPong(seconds, cgroupDir = null) {
  const script = `
import os, time
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    os.close(w1); os.close(r2)
    while True:
        b = os.read(r1, 1)
        if not b: os._exit(0)
        os.write(w2, b)
os.close(r1); os.close(w2)
end = time.time() + ${seconds}
while time.time() < end:
    os.write(w1, b'x'); os.read(r2, 1)
os.close(w1); os.wait()
`
  const child = cgroupDir
    ? spawn('sh', ['-c', 'echo $$ > "$HS_CGROUP/cgroup.procs" && exec python3 -c "$HS_SCRIPT"'], {
        stdio: 'ignore',
        env: { ...process.env, HS_CGROUP: cgroupDir, HS_SCRIPT: script },
      })
    : spawn('python3', ['-c', script], { stdio: 'ignore' })
  return new Promise((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`ping-pong exited ${code}`))))
  })
}

/** Non-empty pixel columns and cells of the heat map's own canvas. */
function painted(page, title) {
  return page.evaluate((t) => {
    const c = document.querySelector(`section[aria-label="${t}"] canvas.heatcells`)
    if (!c || !c.width) return { cols: 0, cells: 0 }
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
    let cols = 0
    let cells = 0
    for (let x = 0; x < c.width; x++) {
      let any = false
      for (let y = 0; y < c.height; y++) if (d[(y * c.width + x) * 4 + 3]) (any = true), cells++
      if (any) cols++
    }
    return { cols, cells, url: c.toDataURL() }
  }, title)
}

describe('BPF widgets', { skip }, () => {
  let browser
  before(async () => {
    const runq = await moduleState('runqlat')
    if (!runq?.available) {
      const why = `the daemon cannot run runqlat: ${runq?.reason ?? 'no such module'}`
      if (CI) assert.fail(`CI=true: ${why}`)
      throw new Error(why) // visible as a failure: the wrapper should have skipped
    }
    browser = await launch()
  })
  after(async () => {
    await browser?.close()
  })

  it('lists every module of the daemon in the catalogue, the unavailable ones with their reason', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util`)
    await page.getByRole('button', { name: '+ Add widget' }).click()
    const list = await modules()
    const section = page.locator('.dialog section', { has: page.getByRole('heading', { name: 'BPF', exact: true }) })
    await section.locator('button.entry').first().waitFor()
    assert.equal(await section.locator('button.entry').count(), list.length)
    assert.equal(await section.locator('button.entry:disabled').count(), list.filter((m) => !m.available).length)
    for (const m of list.filter((x) => !x.available)) {
      assert.equal(await section.getByText(`Not available: ${m.reason}.`).count(), 1, `no reason shown for ${m.name}`)
    }
    assert.equal(await section.getByRole('button', { name: `Add ${RUNQ}` }).isEnabled(), true)
  })

  it('adds the run queue heat map, draws events with percentiles, and holds the module only while on', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.pswitch&window=60`)
    await page.getByRole('button', { name: '+ Add widget' }).click()
    await page.getByRole('button', { name: `Add ${RUNQ}` }).click()
    const panel = page.locator(`section[aria-label="${RUNQ}"]`)
    await panel.waitFor()
    // Adding the widget switches the module on, over this page's websocket.
    const sw = panel.getByRole('switch')
    assert.equal(await sw.getAttribute('aria-checked'), 'true')
    await page.waitForFunction(() => new URLSearchParams(location.search).get('bpf') === 'runqlat')
    await panel.getByRole('status').filter({ hasText: /^on\b/ }).waitFor({ timeout: 15000 })
    const held = await untilModule('runqlat', (m) => m.state === 'on' && m.users.some((u) => u.startsWith('ws:')))
    assert.equal(held.users.length, 1)
    // The attach point in use, as the daemon reports it; the plans behind a disclosure.
    assert.ok((await panel.locator('details.attach summary').innerText()).startsWith(`via ${held.attach_point}`))
    await panel.locator('details.attach summary').click()
    assert.equal(await panel.locator('details.attach li.chosen').innerText(), `${held.attach_point} in use`)
    await panel.locator('details.attach summary').click()

    await pingPong(4)
    await page.waitForFunction(
      (t) => {
        const c = document.querySelector(`section[aria-label="${t}"] canvas.heatcells`)
        if (!c?.width) return false
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
        const xs = new Set()
        for (let i = 3; i < d.length; i += 4) if (d[i]) xs.add(((i - 3) / 4) % c.width)
        return xs.size >= 6
      },
      RUNQ,
      { timeout: 15000 },
    )
    const p = await painted(page, RUNQ)
    assert.ok(p.cols >= 6 && p.cells > p.cols, JSON.stringify({ cols: p.cols, cells: p.cells }))
    const p99 = await panel.locator('.u-series', { hasText: 'p99' }).locator('.u-value').innerText()
    assert.match(p99, /^\d+(\.\d+)? (ns|µs|ms|s)$/)
    assert.match(await panel.locator('.legend').innerText(), /events \/ 500 ms|events \/ 1 s/)

    // The tooltip names the bucket, the count and the time of the cell under the mouse.
    const box = await panel.locator('.u-over').boundingBox()
    let tip = null
    for (let x = 0.98; x > 0.6 && !tip; x -= 0.04) {
      for (let y = 0.05; y < 1 && !tip; y += 0.05) {
        await page.mouse.move(box.x + box.width * x, box.y + box.height * y)
        const t = page.getByRole('tooltip')
        if ((await t.count()) && /\d+ events?$/m.test(await t.innerText())) tip = await t.innerText()
      }
    }
    assert.ok(tip, 'no tooltip over the heat map')
    assert.match(tip, /\d\d:\d\d:\d\d[\s\S]*(µs|ms|s) – [\d.]+ (µs|ms|s)[\s\S]*bucket \d+-\d+ µs[\s\S]*\d+ events?/)
    await page.mouse.move(0, 0)

    // Scrolled and freshly painted pictures agree (only new columns are ever painted).
    await page.getByRole('button', { name: '❚❚ Pause' }).click()
    await page.waitForTimeout(300)
    const scrolled = await painted(page, RUNQ)
    await page.setViewportSize({ width: 1300, height: 900 })
    await page.waitForTimeout(300)
    await page.setViewportSize({ width: 1400, height: 900 })
    await page.waitForTimeout(500)
    const fresh = await painted(page, RUNQ)
    assert.equal(scrolled.url, fresh.url, 'the incrementally painted heat map differs from a full repaint')
    await page.getByRole('button', { name: '▶ Resume' }).click()

    // Off from the keyboard: the daemon detaches the module (no other holder).
    await sw.focus()
    await page.keyboard.press('Space')
    assert.equal(await sw.getAttribute('aria-checked'), 'false')
    await page.waitForFunction(() => !location.search.includes('bpf='))
    const off = await untilModule('runqlat', (m) => m.state === 'off')
    assert.deepEqual(off.users, [])
    await panel.getByRole('status').filter({ hasText: /^off$/ }).waitFor()

    // On again, then close the page: the daemon releases the page's hold by itself.
    await page.keyboard.press('Enter')
    await untilModule('runqlat', (m) => m.state === 'on' && m.users.length === 1)
    await page.close()
    const released = await untilModule('runqlat', (m) => m.state === 'off')
    assert.deepEqual(released.users, [])
    assert.deepEqual(browser.errors, [])
  })

  it('filters the run queue heat map to one container by its cgroup, and says when another viewer runs it otherwise', async (t) => {
    const root = cgroup2Root()
    if (!root) {
      if (CI) assert.fail('CI=true: no cgroup v2 hierarchy is mounted')
      return t.skip('no cgroup v2 hierarchy is mounted (the cgroup setting needs one)')
    }
    const name = `hostscope-e2e-${process.pid}`
    const dir = join(root, name)
    const path = `/${name}`
    mkdirSync(dir)
    try {
      // The daemon's cgroup collector re-walks the tree every 10 s: wait until it names
      // the new cgroup (`cgroup.container.name`), which is what the filter lists.
      const until = Date.now() + 30000
      for (;;) {
        const r = await fetch(`${BASE}/api/v1/fetch?names=cgroup.container.name`, { headers: AUTH })
        const ans = await r.json()
        if (ans.values?.[0]?.instances?.some((i) => i.instance === path)) break
        assert.ok(Date.now() < until, `the daemon never listed the cgroup ${path}`)
        await new Promise((r) => setTimeout(r, 500))
      }
      // Another viewer (a REST client) runs the module with its defaults.
      await restToggle('runqlat', true, 'e2e-other')
      const page = await browser.page()
      await page.goto(`${BASE}/?panels=bpf.runqlat&window=60`)
      const panel = page.locator(`section[aria-label="${RUNQ}"]`)
      await panel.getByRole('status').filter({ hasText: /^off here; on for 1 other viewer$/ }).waitFor({ timeout: 15000 })
      const select = panel.getByRole('combobox', { name: `Container filter of ${RUNQ}` })
      await select.selectOption(path)
      await page.waitForFunction((p) => new URLSearchParams(location.search).getAll('bpfset').includes(`runqlat:cgroup=${p}`), path)
      // Asking for the filter while the other viewer runs it unfiltered: the daemon's
      // refusal, in its own words, on the widget.
      const sw = panel.getByRole('switch')
      await sw.click()
      await panel.getByRole('status').filter({ hasText: /^refused \(settings_conflict\): runqlat: running with settings .* other user/ }).waitFor({ timeout: 15000 })
      assert.deepEqual((await moduleState('runqlat')).users, ['rest:e2e-other'])
      // The other viewer leaves; switched off and on again, the page's filter applies.
      await restToggle('runqlat', false, 'e2e-other')
      await untilModule('runqlat', (m) => m.state === 'off')
      await sw.click()
      assert.equal(await sw.getAttribute('aria-checked'), 'false')
      await sw.click()
      const held = await untilModule('runqlat', (m) => m.state === 'on' && m.settings?.cgroup === path)
      assert.equal(held.users.length, 1)
      assert.match(held.users[0], /^ws:/)
      await panel.locator('.chip.filter', { hasText: `filter: ${path}` }).waitFor({ timeout: 15000 })
      assert.equal(await panel.getByRole('status').innerText(), 'on')

      // Filtered to an empty cgroup, the busy host's run-queue waits are not counted
      // (in samples whose whole interval the filtered module ran: one interval after
      // it was on; CI once counted the interval of the switch, the unfiltered run's end)...
      const filteredFrom = Date.now() / 1000 + 1.0
      await runqSamplesAfter(filteredFrom, 2)
      assert.equal(await runqEvents(30, filteredFrom), 0, 'runqlat counted tasks outside its cgroup')
      // ...and waits inside it are, painting the heat map.
      await pingPong(4, dir)
      assert.ok((await runqEvents(4)) > 100, 'runqlat counted nothing of the workload in its cgroup')
      await page.waitForFunction(
        (title) => {
          const c = document.querySelector(`section[aria-label="${title}"] canvas.heatcells`)
          if (!c?.width) return false
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
          const xs = new Set()
          for (let i = 3; i < d.length; i += 4) if (d[i]) xs.add(((i - 3) / 4) % c.width)
          return xs.size >= 3
        },
        RUNQ,
        { timeout: 15000 },
      )
      const p99 = await panel.locator('.u-series', { hasText: 'p99' }).locator('.u-value').innerText()
      assert.match(p99, /^\d+(\.\d+)? (ns|µs|ms|s)$/)
      await page.close()
      await untilModule('runqlat', (m) => m.state === 'off')
      assert.deepEqual(browser.errors, [])
    } finally {
      await restToggle('runqlat', false, 'e2e-other').catch(() => {})
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(dir)
          break
        } catch {
          await new Promise((r) => setTimeout(r, 100)) // its processes are still exiting
        }
      }
    }
  })

  it('opens a shared link with the module on and fills the heat map from history', async () => {
    // History from the previous test's run is in the daemon; a new page shows it at once.
    const page = await browser.page()
    await page.goto(`${BASE}/embed?panels=bpf.runqlat&window=300&bpf=runqlat`)
    const panel = page.locator(`section[aria-label="${RUNQ}"]`)
    await panel.locator('canvas.heatcells').waitFor({ timeout: 10000 })
    await page.waitForFunction((t) => {
      const c = document.querySelector(`section[aria-label="${t}"] canvas.heatcells`)
      const d = c?.width ? c.getContext('2d').getImageData(0, 0, c.width, c.height).data : []
      for (let i = 3; i < d.length; i += 4) if (d[i]) return true
      return false
    }, RUNQ)
    assert.equal(await page.locator('header.top').count(), 0)
    assert.equal(await panel.getByRole('switch').getAttribute('aria-checked'), 'true')
    await untilModule('runqlat', (m) => m.state === 'on' && m.users.length === 1)
    await page.close()
    await untilModule('runqlat', (m) => m.state === 'off')
  })

  it('shows exec events as escaped text in a sortable table', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=bpf.execsnoop&bpf=execsnoop&window=60`)
    const title = 'New processes (execsnoop)'
    const panel = page.locator(`section[aria-label="${title}"]`)
    await untilModule('execsnoop', (m) => m.state === 'on')
    const hostile = '<img src=x onerror=window.__pwned=1>'
    // A program whose arguments are markup: they must come out as text.
    await new Promise((resolve, reject) => {
      const child = spawn('/bin/echo', [hostile, 'x'.repeat(200)], { stdio: 'ignore' })
      child.once('error', reject)
      child.once('exit', resolve)
    })
    const cell = panel.locator('td.args', { hasText: hostile }).first()
    await cell.waitFor({ timeout: 10000 })
    assert.equal(await panel.locator('table img').count(), 0)
    assert.equal(await page.evaluate(() => window.__pwned), undefined)
    assert.match(await cell.getAttribute('title'), /\/bin\/echo/)
    const width = await cell.evaluate((td) => [td.scrollWidth, td.clientWidth])
    assert.ok(width[0] > width[1], 'the long argument list should be cut to the cell')
    await panel.getByRole('button', { name: 'Sort by PID' }).click()
    assert.equal(await panel.locator('th[aria-sort="descending"]').innerText(), 'PID ▾')
    await page.close()
    await untilModule('execsnoop', (m) => m.state === 'off')
  })
})
