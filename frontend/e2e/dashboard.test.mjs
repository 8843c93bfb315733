// End-to-end tests of the dashboard against a real daemon (HOSTSCOPE_URL), in headless
// Chromium. Run by tests/test_dashboard_e2e.py, or by hand:
//   HOSTSCOPE_URL=http://127.0.0.1:7470 npm run e2e
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { AUTH, BASE, SERVE, TOKEN, freePort, launch, legendValue, shot, signIn, startDaemon } from './support.mjs'

const skip = BASE ? false : 'HOSTSCOPE_URL is not set (run through tests/test_dashboard_e2e.py)'

describe('dashboard', { skip }, () => {
  let browser
  before(async () => {
    browser = await launch()
  })
  after(async () => {
    await browser?.close()
  })

  it('draws the default host overview with data backfilled from history', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/`)
    await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor({ timeout: 10000 })
    // Every default panel is either a chart, the process table or an honest state.
    const sections = page.locator('main section')
    assert.ok((await sections.count()) >= 18)
    await page.waitForFunction(() => document.querySelectorAll('main section canvas').length >= 4)
    const user = await legendValue(page, 'CPU utilisation', 'user')
    assert.match(user, /^\d+(\.\d+)? %$/)
    const used = await legendValue(page, 'Memory', 'used')
    assert.match(used, /^\d+(\.\d+)? (KiB|MiB|GiB)$/)
    const host = await page.locator('.hostchip').first().innerText()
    assert.match(host, /live/)
    assert.deepEqual(browser.errors, [])
    await page.waitForTimeout(2500) // a process table poll and a few live frames
    // The process table's sparklines come with its rows (history=S), drawn at once.
    await page.waitForFunction(() =>
      [...document.querySelectorAll('section[aria-label="Top processes"] svg.spark path')].some((p) => (p.getAttribute('d') ?? '').includes('L')),
    )
    await shot(page, 'overview-light.png', true)
  })

  it('fills charts from the history, not from the moment the page opened', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util&window=300`)
    await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor()
    // Move the cursor to the left edge of the data: its time must predate the page.
    const openedAt = await page.evaluate(() => Date.now() / 1000)
    const box = await page.locator('section[aria-label="CPU utilisation"] .u-over').boundingBox()
    await page.mouse.move(box.x + box.width - 2, box.y + box.height / 2)
    const latest = await page.locator('section[aria-label="CPU utilisation"] .u-series').first().innerText()
    assert.match(latest, /\d\d:\d\d:\d\d/)
    const tip = page.getByRole('tooltip')
    await tip.waitFor()
    assert.match(await tip.innerText(), /\d\d:\d\d:\d\d[\s\S]*user \d+(\.\d+)? %/)
    // Points are drawn on a canvas: ask the page for the oldest sample it holds.
    const hasOld = await page.evaluate((opened) => window.__hostscope.oldest() < opened - 2, openedAt)
    assert.ok(hasOld, 'no sample older than the page: backfill did not arrive')
  })

  it('adds and removes a widget and keeps the URL in step', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util,mem.util`)
    await page.getByRole('button', { name: '+ Add widget' }).click()
    await page.getByRole('button', { name: 'Add Process creation' }).click()
    await page.locator('section[aria-label="Process creation"]').waitFor()
    await page.waitForFunction(() => location.search.includes('cpu.forks'))
    await page.locator('section[aria-label="Process creation"]').hover()
    await page.getByRole('button', { name: 'Remove Process creation' }).click()
    await page.locator('section[aria-label="Process creation"]').waitFor({ state: 'detached' })
    await page.waitForFunction(() => !location.search.includes('cpu.forks'))
    // reorder and resize from the keyboard-reachable buttons
    await page.getByRole('button', { name: 'Move CPU utilisation later' }).focus()
    await page.keyboard.press('Enter')
    await page.waitForFunction(() => location.search.includes('panels=mem.util,cpu.util'))
    await page.getByRole('button', { name: 'Change height of Memory' }).click()
    await page.waitForFunction(() => location.search.includes('mem.util~2x2'))
  })

  it('adds a custom widget for any metric, with a unit-aware axis', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util`)
    await page.getByRole('button', { name: '+ Add widget' }).click()
    await page.getByLabel('Any metric of this daemon').fill('mem.util.cached')
    await page.getByRole('button', { name: 'Add custom widget' }).click()
    const panel = page.locator('section[aria-label="mem.util.cached"]')
    await panel.locator('canvas').waitFor()
    assert.match(await panel.locator('.u-value').nth(1).innerText(), /(KiB|MiB|GiB)$/)
    await page.waitForFunction(() => location.search.includes('custom:mem.util.cached'))
    await shot(page, 'custom-widget.png')
  })

  it('reproduces a view from a pasted URL', async () => {
    const page = await browser.page()
    const q = 'panels=cpu.load~2x1,custom:kernel.all.nprocs,mem.util&window=900&theme=dark'
    await page.goto(`${BASE}/?${q}`)
    await page.locator('section[aria-label="Load average and runnable"] canvas').waitFor()
    const titles = await page.locator('main section h3').allInnerTexts()
    assert.deepEqual(titles, ['Load average and runnable', 'kernel.all.nprocs', 'Memory'])
    assert.equal(await page.locator('#win').inputValue(), '900')
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark')
    await page.waitForTimeout(300)
    const round = new URL(page.url()).searchParams
    assert.equal(round.get('panels'), 'cpu.load~2x1,custom:kernel.all.nprocs,mem.util')
    assert.equal(round.get('window'), '900')
    assert.equal(round.get('theme'), 'dark')
  })

  it('widens the window from history and keeps legends current', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util,cgroup.cpu&window=60`)
    await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor()
    await page.selectOption('#win', '900')
    await page.waitForFunction(() => location.search.includes('window=900'))
    await page.waitForTimeout(2500) // history fetched and merged, live frames after it
    assert.match(await legendValue(page, 'CPU utilisation', 'user'), /^\d+(\.\d+)? %$/)
    // cgroups are collected every 2 s: their columns are bridged copies, rebuilt each frame
    const cg = page.locator('section[aria-label="Container CPU"] .u-series .u-value')
    if ((await cg.count()) > 1) assert.match(await cg.nth(1).innerText(), /^\d+(\.\d+)? %$/)
    assert.equal(await page.locator('.banner').count(), 0)
  })

  it('zooms by dragging, pauses, and goes back to live', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=cpu.util,mem.util&window=60`)
    const over = page.locator('section[aria-label="CPU utilisation"] .u-over')
    await over.waitFor()
    await page.waitForTimeout(500)
    const box = await over.boundingBox()
    await page.mouse.move(box.x + box.width * 0.5, box.y + 20)
    await page.mouse.down()
    await page.mouse.move(box.x + box.width * 0.8, box.y + 20, { steps: 5 })
    await page.mouse.up()
    await page.getByText('Zoomed in: charts are paused.').waitFor()
    assert.equal(await page.getByRole('button', { name: 'Reset zoom' }).count(), 1)
    await page.getByRole('button', { name: 'back to live' }).click()
    await page.getByText('Zoomed in').waitFor({ state: 'detached' })
    await page.getByRole('button', { name: '❚❚ Pause' }).click()
    await page.getByText('Paused: charts are frozen').waitFor()
    await page.getByRole('button', { name: '▶ Resume' }).click()
    await page.getByRole('button', { name: '❚❚ Pause' }).waitFor()
  })

  it('scopes the process table to one container', async () => {
    const procs = (await (await fetch(`${BASE}/api/v1/processes?limit=1000`, { headers: AUTH })).json()).processes
    const container = procs.map((p) => p.container).find((c) => c)
    if (!container) return // no process in any container on this host
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=proc.top~2x2&container=${encodeURIComponent(container)}`)
    const rows = page.locator('section[aria-label="Top processes"] tbody tr')
    await rows.first().waitFor({ timeout: 10000 })
    const shown = await page.locator('section[aria-label="Top processes"] tbody td.cmd .ctr').allInnerTexts()
    assert.ok(shown.length > 0)
    assert.ok(shown.every((c) => c === container), `rows outside ${container}: ${shown}`)
    assert.equal(await page.locator('#ctr').inputValue(), container)
  })

  it('offers the cgroup names as container filters, and the process table follows one', async () => {
    // The cgroup charts name a container by its cgroup ("/process_api") while its
    // processes may sit deeper ("/process_api/<id>"): the daemon matches below the name.
    const fetched = await (await fetch(`${BASE}/api/v1/fetch?names=cgroup.container.name`, { headers: AUTH })).json()
    const names = (fetched.values[0]?.instances ?? []).map((i) => i.value).filter((v) => v)
    const procs = (await (await fetch(`${BASE}/api/v1/processes?limit=1000`, { headers: AUTH })).json()).processes
    const within = (c, n) => c === n || c.startsWith(n.replace(/\/$/, '') + '/')
    const name = names.find((n) => procs.some((p) => within(p.container, n)))
    if (!name) return // no container with processes on this host
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=proc.top~2x2`)
    await page.locator('#ctr').focus()
    await page.waitForFunction((n) => [...document.querySelectorAll('#ctr-names option')].some((o) => o.value === n), name)
    await page.locator('#ctr').fill(name)
    await page.locator('#ctr').press('Enter')
    await page.waitForFunction((n) => new URLSearchParams(location.search).get('container') === n, name)
    // The table refreshes with the filter: every row then belongs to the container.
    const cells = 'section[aria-label="Top processes"] tbody td.cmd'
    await page.waitForFunction(
      ([sel, n]) => {
        const chips = [...document.querySelectorAll(sel)].map((td) => td.querySelector('.ctr')?.textContent ?? '')
        return chips.length > 0 && chips.every((c) => c === n || c.startsWith(n.replace(/\/$/, '') + '/'))
      },
      [cells, name],
      { timeout: 10000 },
    )
    const shown = await page.locator(`${cells} .ctr`).allInnerTexts()
    assert.ok(shown.length > 0)
    assert.ok(shown.every((c) => within(c, name)), `rows outside ${name}: ${shown}`)
  })

  it('says clearly when a metric is not on this host', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?panels=custom:no.such.metric`)
    const state = page.locator('section[aria-label="no.such.metric"] .state')
    await state.waitFor()
    await page.waitForFunction(() => /Not available/.test(document.querySelector('main section .state')?.textContent ?? ''))
    assert.match(await state.innerText(), /does not collect no\.such\.metric/)
  })

  it('renders panels without chrome in embed mode', async () => {
    const page = await browser.page()
    await page.setViewportSize({ width: 800, height: 500 })
    await page.goto(`${BASE}/embed?panels=cpu.util,mem.util&window=60`)
    await page.waitForFunction(() => document.querySelectorAll('section canvas').length >= 2)
    assert.equal(await page.locator('header.top').count(), 0)
    assert.equal(await page.locator('section').count(), 2)
    const box = await page.locator('section').first().boundingBox()
    assert.ok(box.height > 400, `panel should fill the frame, got ${box.height}px`)
    await shot(page, 'embed.png')
    await page.setViewportSize({ width: 1400, height: 900 })
  })

  it('serves a static SVG of a panel', async () => {
    const r = await fetch(`${BASE}/api/v1/render/cpu.util.svg?seconds=60`, { headers: AUTH })
    assert.equal(r.status, 200)
    assert.match(r.headers.get('content-type'), /image\/svg\+xml/)
    assert.match(await r.text(), /<svg[^>]*>[\s\S]*CPU utilisation/)
    const bad = await fetch(`${BASE}/api/v1/render/nope.svg`, { headers: AUTH })
    assert.equal(bad.status, 404)
    assert.equal((await bad.json()).error.code, 'not_found')
  })

  it('dark theme overview', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/?theme=dark`)
    await page.waitForFunction(() => document.querySelectorAll('main section canvas').length >= 4)
    await page.waitForTimeout(500)
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark')
    await page.waitForTimeout(2500)
    await shot(page, 'overview-dark.png', true)
  })
})

describe('reconnect', { skip: skip || (SERVE ? false : 'HOSTSCOPE_SERVE_CMD is not set') }, () => {
  it('shows the disconnection, reconnects after the daemon restarts and backfills the gap', async () => {
    const port = await freePort()
    let daemon = await startDaemon(port)
    const browser = await launch()
    try {
      const page = await browser.page()
      await signIn(page, daemon.base)
      await page.goto(`${daemon.base}/?panels=cpu.util`)
      await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor({ timeout: 10000 })
      await page.waitForFunction(() => document.querySelector('.hostchip')?.textContent?.includes('live'))
      await daemon.stop()
      await page.locator('section[aria-label="CPU utilisation"] .badge', { hasText: 'disconnected' }).waitFor({ timeout: 10000 })
      assert.match(await page.locator('.banner.error').first().innerText(), /shutting down|Cannot connect|Lost the connection/)
      daemon = await startDaemon(port)
      await page.waitForFunction(() => document.querySelector('.hostchip')?.textContent?.includes('live'), null, { timeout: 20000 })
      assert.equal(await page.locator('.banner.error').count(), 0)
      assert.equal(await page.locator('.badge', { hasText: 'disconnected' }).count(), 0)
      // New samples arrive after the restart.
      const before = await page.evaluate(() => window.__hostscope.newest())
      await page.waitForFunction((t) => window.__hostscope.newest() > t, before, { timeout: 10000 })
    } finally {
      await browser.close()
      await daemon.stop()
    }
  })
})

describe('several hosts', { skip: skip || (SERVE ? false : 'HOSTSCOPE_SERVE_CMD is not set') }, () => {
  it('shows two daemons side by side and one at a time, and explains an unreachable one', async () => {
    const [pa, pb] = [await freePort(), await freePort()]
    const a = await startDaemon(pa, { allowedOrigins: [`http://127.0.0.1:${pb}`] })
    const b = await startDaemon(pb, { allowedOrigins: [`http://127.0.0.1:${pa}`] })
    const browser = await launch()
    try {
      const page = await browser.page()
      const dead = await freePort()
      await signIn(page, a.base)
      // Another daemon's token, as the dashboard keeps it after asking (per tab).
      await page.evaluate(([origin, token]) => sessionStorage.setItem(`hostscope.token:${origin}`, token), [b.base, TOKEN])
      await page.goto(`${a.base}/?panels=cpu.util,mem.util,cpu.load&hosts=self,127.0.0.1:${pb},127.0.0.1:${dead}`)
      await page.waitForFunction(() => document.querySelectorAll('section[aria-label="CPU utilisation"] canvas').length >= 2, null, { timeout: 15000 })
      const chips = page.locator('.hostchip')
      assert.equal(await chips.count(), 3)
      assert.match(await chips.nth(0).innerText(), /live/)
      assert.match(await chips.nth(1).innerText(), new RegExp(`127\\.0\\.0\\.1:${pb}[\\s\\S]*live`))
      await page.waitForFunction(() => /reconnecting|retrying/.test(document.querySelectorAll('.hostchip')[2]?.textContent ?? ''))
      assert.match(await page.locator('.banner.error').first().innerText(), /allowed_origins/)
      await page.waitForTimeout(3000)
      await shot(page, 'two-hosts.png')
      await page.getByRole('radio', { name: 'one at a time' }).click()
      await page.locator('.hostchip .hostname').nth(1).click()
      await page.waitForFunction(() => location.search.includes('layout=tabs') && location.search.includes('active=1'))
      assert.equal(await page.locator('section[aria-label="CPU utilisation"]').count(), 1)
    } finally {
      await browser.close()
      await a.stop()
      await b.stop()
    }
  })
})

describe('sign-in', { skip }, () => {
  it('asks for a token instead of showing a blank page, and signs in with it', async () => {
    const browser = await launch(undefined, [], { signIn: false })
    try {
      const page = await browser.page()
      await page.goto(`${BASE}/?panels=cpu.util&window=60`)
      const prompt = page.getByRole('dialog', { name: /^Sign in/ })
      await prompt.waitFor({ timeout: 10000 })
      assert.match(await prompt.innerText(), /needs a token/)
      await shot(page, 'token-prompt.png')
      await prompt.getByLabel('Token').fill(TOKEN)
      await prompt.getByRole('button', { name: 'Sign in' }).click()
      await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor({ timeout: 10000 })
      await page.waitForFunction(() => document.querySelector('.hostchip')?.textContent?.includes('live'))
      assert.equal(await page.getByRole('dialog', { name: /^Sign in/ }).count(), 0)
      // Kept for this tab only, never in localStorage.
      assert.equal(await page.evaluate(() => localStorage.length), 0)
      assert.equal(await page.evaluate(() => sessionStorage.length), 1)
    } finally {
      await browser.close()
    }
  })

  it('shows embedded panels with the embed token in their link, and no more', async () => {
    const r = await fetch(`${BASE}/api/v1/embed-tokens`, {
      method: 'POST',
      headers: { ...AUTH, 'Content-Type': 'application/json' },
      body: JSON.stringify({ scope: ['cpu.util', 'proc.top'], ttl: 600 }),
    })
    assert.equal(r.status, 200)
    const { embed_url: link, token } = await r.json()
    assert.match(link, /^\/embed\?panels=cpu\.util,proc\.top&token=/)
    const browser = await launch(undefined, [], { signIn: false })
    try {
      const page = await browser.page()
      await page.goto(`${BASE}${link}&window=60`)
      await page.locator('section[aria-label="CPU utilisation"] canvas').waitFor({ timeout: 10000 })
      assert.equal(await page.getByRole('dialog', { name: /^Sign in/ }).count(), 0)
      await page.waitForFunction(() => !location.search.includes('token='))
      // The process table loads with the embed token: task names, no command lines (the
      // daemon leaves `args` out), no links to the flame graph page the embed view lacks.
      const procs = page.locator('section[aria-label="Top processes"]')
      await procs.locator('tbody tr').first().waitFor({ timeout: 10000 })
      assert.equal(await procs.locator('.state.error').count(), 0)
      const cells = await procs.locator('td.cmd').evaluateAll((tds) => tds.map((td) => [td.textContent.trim(), td.title]))
      assert.ok(cells.length > 0)
      for (const [text, title] of cells) assert.ok(text.startsWith(title), `${text} / ${title}`)
      assert.ok(cells.some(([, title]) => title), 'task names as tooltips')
      assert.equal(await procs.locator('a').count(), 0)
      const rows = await fetch(`${BASE}/api/v1/processes?limit=1000`, { headers: { Authorization: `Bearer ${token}` } })
      assert.equal(rows.status, 200)
      const { processes } = await rows.json()
      assert.ok(processes.length > 0 && processes.every((p) => !('args' in p) && p.cmd !== undefined))
      assert.deepEqual(browser.errors, [])
      // The same token cannot read anything else.
      const other = await fetch(`${BASE}/api/v1/fetch?names=kernel.all.load`, { headers: { Authorization: `Bearer ${token}` } })
      assert.equal(other.status, 403)
    } finally {
      await browser.close()
    }
  })
})
