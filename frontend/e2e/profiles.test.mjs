// End-to-end test of the flame graph pages against a real daemon that can profile (root,
// bcc or perf): run by tests/test_dashboard_e2e.py::test_dashboard_profiles_end_to_end,
// which skips with a reason when this machine cannot (and fails instead under CI=true).
//   HOSTSCOPE_URL=http://127.0.0.1:7470 node --test e2e/profiles.test.mjs
// A REAL 5 s CPU capture of the whole host is started through the page, while a busy
// process named `<b>"x'&` runs, and the flame graph, search, zoom, FlameScope range,
// downloads and the capture's own link are checked.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, it } from 'node:test'
import { AUTH, BASE, launch, shot } from './support.mjs'

const CI = process.env.CI === 'true'
const skip = !BASE
  ? 'HOSTSCOPE_URL is not set (run through tests/test_dashboard_e2e.py)'
  : process.env.HOSTSCOPE_PROFILES_SKIP || false

const HOSTILE = `<b>"x'&`
const MAGENTA = [225, 0, 225]

/** A CPU-bound process whose command name (comm) is hostile markup. */
function hostileBusy(seconds) {
  const script = `
import ctypes, time
ctypes.CDLL(None).prctl(15, ${JSON.stringify(HOSTILE)}.encode(), 0, 0, 0)
end = time.time() + ${seconds}
n = 0
while time.time() < end:
    n += 1
`
  return spawn('python3', ['-c', script], { stdio: 'ignore' })
}

/** Centre of some canvas pixel of colour `rgb` (a search match), in CSS pixels of the canvas. */
async function pixelOf(page, selector, rgb) {
  const at = await page.evaluate(
    ([sel, [r, g, b]]) => {
      const c = document.querySelector(sel)
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
      const box = c.getBoundingClientRect()
      const sx = box.width / c.width
      const sy = box.height / c.height
      // The widest run of matching pixels on one row: the middle of a frame, not an edge.
      let best = null
      for (let y = 0; y < c.height; y += 2) {
        let run = 0
        for (let x = 0; x < c.width; x++) {
          const i = (y * c.width + x) * 4
          const hit = d[i] === r && d[i + 1] === g && d[i + 2] === b
          run = hit ? run + 1 : 0
          if (hit && (!best || run > best.run)) best = { run, x: x - run / 2, y }
        }
      }
      // The widest runs are a frame's top rows (its label breaks up the middle ones).
      return best && { x: best.x * sx, y: (best.y + 2) * sy, run: best.run }
    },
    [selector, rgb],
  )
  return at
}

describe('flame graph pages', { skip }, () => {
  let browser
  let busy
  before(async () => {
    const r = await fetch(`${BASE}/api/v1/profiles`, { headers: AUTH })
    const cpu = (await r.json()).kinds?.cpu
    if (!cpu?.available) {
      const why = `the daemon cannot profile the CPU: ${cpu?.reason ?? 'no readiness reported'}`
      if (CI) assert.fail(`CI=true: ${why}`)
      throw new Error(why) // visible as a failure: the wrapper should have skipped
    }
    browser = await launch({ width: 1500, height: 1000 })
  })
  after(async () => {
    busy?.kill('SIGKILL')
    await browser?.close()
  })

  it('captures 5 s through the page and shows, searches and zooms the flame graph with hostile names as text', async () => {
    busy = hostileBusy(40)
    const page = await browser.page()
    const requests = []
    page.on('request', (r) => requests.push(r.url()))
    // The process table offers each process's own flame graph ...
    await page.goto(`${BASE}/?panels=proc.top`)
    const rowLink = page.locator('section[aria-label="Top processes"] a.prof').first()
    await rowLink.waitFor({ timeout: 15000 })
    assert.match(await rowLink.getAttribute('href'), /^#\/profiles\?new=cpu&pid=\d+$/)
    assert.match(await rowLink.getAttribute('aria-label'), /^Profile process \d+ \(/)
    // ... and the header's entry point opens the form for the whole host.
    await page.getByRole('link', { name: 'CPU flame graph' }).click()
    await page.waitForFunction(() => location.hash.startsWith('#/profiles'))
    const duration = page.getByLabel('Duration (s)')
    await page.waitForFunction(() => document.querySelector('nav[aria-label="Recent captures"]'))
    assert.equal(await duration.inputValue(), '30')
    await duration.fill('5')
    await page.getByRole('button', { name: 'Start capture' }).click()

    // The capture's own page: progress while it runs, then the flame graph.
    await page.waitForFunction(() => /^#\/profiles\/[^?]+/.test(location.hash))
    const id = await page.evaluate(() => decodeURIComponent(location.hash.split('/')[2]))
    await page.locator('progress').waitFor({ timeout: 5000 })
    const t0 = Date.now()
    const canvas = page.locator('canvas.flamecanvas')
    await canvas.waitFor({ timeout: 60000 })
    console.log(`# flame graph shown ${Date.now() - t0} ms after the progress bar`)
    await page.waitForFunction(() => Number(document.querySelector('canvas.flamecanvas')?.dataset.rects) > 1)
    const drawMs = Number(await canvas.getAttribute('data-draw-ms'))
    const rects = Number(await canvas.getAttribute('data-rects'))
    console.log(`# drew ${rects} frames in ${drawMs} ms`)
    assert.ok(rects > 10, `only ${rects} frames drawn`)
    assert.equal(await page.locator('progress').count(), 0)
    assert.match(await page.locator('.meta').innerText(), /\d[\d,]* samples/)

    // Search: the hostile process is found, highlighted, with its share of all samples.
    await page.getByLabel('Search frames').fill(HOSTILE)
    const match = page.locator('.match')
    await match.waitFor()
    const pct = Number(/matched ([\d.]+) %/.exec(await match.innerText())[1])
    assert.ok(pct > 1, `the busy process matched only ${pct} %`)
    await page.waitForTimeout(100)
    const found = await pixelOf(page, 'canvas.flamecanvas', MAGENTA)
    assert.ok(found, 'no highlighted (magenta) frame on the canvas')
    const hit = { x: found.x, y: found.y }

    // Tooltip: the name is text, never markup.
    // (Locator hover and click scroll the canvas into view: a whole host's graph is tall.)
    await canvas.hover({ position: hit })
    const tip = page.getByRole('tooltip')
    await tip.waitFor()
    assert.equal(await tip.locator('.name').innerText(), HOSTILE)
    assert.match(await tip.innerText(), /samples · [\d.]+ % of all/)
    assert.equal(await page.locator('.tip b').count(), 0, 'a frame name became HTML')
    assert.ok((await tip.innerHTML()).includes('&lt;b&gt;"x\'&amp;'))
    await shot(page, 'flamegraph-search.png')

    // Zoom on it, then back out.
    await canvas.click({ position: hit })
    await page.locator('.zoomed').waitFor()
    assert.equal(await page.locator('.zoomed').innerText(), `zoomed: ${HOSTILE}`)
    const zoomedRects = Number(await canvas.getAttribute('data-rects'))
    assert.ok(zoomedRects < rects, `zooming kept ${zoomedRects} of ${rects} frames`)
    await page.getByRole('button', { name: 'Icicle' }).click()
    await page.getByRole('button', { name: 'Flame graph' }).click()
    await page.getByRole('button', { name: 'Reset zoom' }).click()
    await page.waitForFunction((n) => Number(document.querySelector('canvas.flamecanvas').dataset.rects) === n, rects)

    // FlameScope: drag from the start of second 1 to the end of second 2.
    const scope = page.locator('canvas.scopecanvas')
    const box = await scope.boundingBox()
    const seconds = await page.evaluate(() => {
      const label = document.querySelector('canvas.scopecanvas').getAttribute('aria-label')
      return Number(/of (\d+) seconds/.exec(label)[1])
    })
    assert.ok(seconds >= 5, `heat map of ${seconds} seconds`)
    const cellW = box.width / seconds
    await page.mouse.move(box.x + cellW * 1.5, box.y + 1)
    await page.mouse.down()
    await page.mouse.move(box.x + cellW * 2.5, box.y + 198, { steps: 4 })
    await page.mouse.up()
    await page.waitForFunction(() => location.hash.includes('start=1') && location.hash.includes('end=3'))
    await page.locator('.rangebar').waitFor()
    assert.match(await page.locator('.rangebar').innerText(), /Showing 1\.000 s – 3\.000 s \([\d,]+ samples\)/)
    await page.waitForFunction(() => !document.querySelector('canvas.flamecanvas')?.closest('.stale'))
    assert.ok(requests.some((u) => u.includes(`format=json&start=1&end=3`)), 'no ranged JSON request')
    await shot(page, 'flamegraph.png')

    // Downloads of the range: folded stacks with the hostile name raw; SVG with it escaped.
    const folded = await page.locator('.downloads a', { hasText: 'folded stacks' }).getAttribute('href')
    assert.match(folded, /format=folded&start=1&end=3/)
    const text = await (await fetch(new URL(folded, BASE), { headers: AUTH })).text()
    assert.ok(text.includes(HOSTILE), 'the hostile process is missing from the folded stacks')
    const svgHref = await page.locator('.downloads a', { hasText: 'SVG' }).getAttribute('href')
    const svg = await (await fetch(new URL(svgHref, BASE), { headers: AUTH })).text()
    assert.ok(svg.includes('&lt;b&gt;'), 'the SVG does not escape the hostile name')

    // The capture's link keeps working in a fresh page.
    const again = await browser.context.newPage()
    await again.goto(`${BASE}/#/profiles/${encodeURIComponent(id)}`)
    await again.locator('canvas.flamecanvas').waitFor({ timeout: 10000 })
    assert.equal(await again.locator('nav[aria-label="Recent captures"] li.current').count(), 1)
    await again.close()
    assert.deepEqual(browser.errors, [])
  })

  it('refuses a duration outside the daemon limits before asking it', async () => {
    const page = await browser.page()
    await page.goto(`${BASE}/#/profiles?new=offcpu`)
    await page.waitForFunction(() => document.querySelector('nav[aria-label="Recent captures"]'))
    const limits = (await (await fetch(`${BASE}/api/v1/profiles`, { headers: AUTH })).json()).limits
    assert.equal(await page.getByLabel('Duration (s)').inputValue(), String(limits.duration.default.offcpu))
    await page.getByLabel('Duration (s)').fill(String(limits.duration.max + 1))
    // Skip the browser's own validation to see ours.
    await page.evaluate(() => document.querySelector('form[aria-label="New capture"]').setAttribute('novalidate', ''))
    const button = page.getByRole('button', { name: 'Start capture' })
    if (await button.isEnabled()) {
      await button.click()
      await page.getByText(`Duration must be between ${limits.duration.min} and ${limits.duration.max} seconds.`).waitFor()
    } else {
      // Off-CPU unavailable here: the reason is shown instead.
      await page.getByText(/^Not available on this host: /).waitFor()
    }
  })
})
