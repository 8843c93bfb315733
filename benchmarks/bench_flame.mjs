#!/usr/bin/env node
// The flame graph page with a big real capture, in headless Chromium:
//   * a CPU capture of the whole host (default 30 s at 99 Hz) while two busy processes with
//     deep, varied stacks keep both CPUs running (the size the issue names: ~6,000 samples),
//   * capture end -> flame graph drawn on a freshly opened `#/profiles/ID`,
//   * the canvas draw time (its `data-draw-ms`) of the whole graph, of zooms into frames and
//     back, and of a search; and the click -> canvas drawn latency of each zoom.
//
// Usage (root: the daemon must be able to profile; after `cd frontend && npm run build`):
//   node benchmarks/bench_flame.mjs [--duration 30] [--frequency 99] [--url URL --token T] [--json]
// Without --url it starts `.venv/bin/hostscope serve` on a free port.
import { randomBytes } from 'node:crypto'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(ROOT, 'frontend', 'package.json'))
const { chromium } = require('playwright-core')

const argv = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : dflt
}
const DURATION = Number(opt('--duration', 30))
const FREQUENCY = Number(opt('--frequency', 99))
const TOKEN = opt('--token', null) ?? randomBytes(32).toString('base64url')
const AUTH = { Authorization: `Bearer ${TOKEN}` }

function freePort() {
  return new Promise((resolve) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function startDaemon() {
  const port = await freePort()
  const child = spawn(join(ROOT, '.venv', 'bin', 'hostscope'), ['serve', '--port', String(port)], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, HOSTSCOPE_TOKEN: TOKEN },
  })
  const base = `http://127.0.0.1:${port}`
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return { base, child }
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  child.kill()
  throw new Error('daemon did not start')
}

/**
 * A C program (gcc -O1 -fno-omit-frame-pointer, so stacks walk) whose 60 functions call
 * each other at random, 3-24 deep: broad and deep stacks like a real service's. Python
 * 3.11 would not do: its Python-to-Python calls do not nest C frames.
 */
function buildBusy() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-flame-'))
  const fns = Array.from({ length: 60 }, (_, i) => i)
  const src = [
    '#include <stdlib.h>',
    '#include <time.h>',
    'typedef long (*fn_t)(int, unsigned *);',
    'extern fn_t table[60];',
    ...fns.map(
      (i) =>
        `__attribute__((noinline)) long fn${i}(int d, unsigned *s) { if (d <= 0) { volatile long x = 0; for (int k = 0; k < 2000; k++) x += k * ${i}; return x; } return table[rand_r(s) % 60](d - 1, s) + ${i}; }`,
    ),
    `fn_t table[60] = { ${fns.map((i) => `fn${i}`).join(', ')} };`,
    'int main(int argc, char **argv) { unsigned s = (unsigned)atoi(argv[2]); time_t end = time(0) + atoi(argv[1]);',
    '  while (time(0) < end) table[rand_r(&s) % 60](3 + rand_r(&s) % 22, &s); return 0; }',
  ].join('\n')
  writeFileSync(join(dir, 'busy.c'), src)
  execFileSync('gcc', ['-O1', '-fno-omit-frame-pointer', '-o', join(dir, 'busy'), join(dir, 'busy.c')])
  return dir
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return { median: s[Math.floor(s.length / 2)], max: s.at(-1), n: s.length }
}

async function main() {
  const own = opt('--url', null) ? null : await startDaemon()
  const base = opt('--url', own?.base)
  const dir = buildBusy()
  const workers = [1, 2].map((seed) => spawn(join(dir, 'busy'), [String(DURATION + 10), String(seed)], { stdio: 'ignore' }))
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] })
  try {
    const post = await fetch(`${base}/api/v1/profiles`, {
      method: 'POST',
      headers: { ...AUTH, 'Content-Type': 'application/json', Origin: base },
      body: JSON.stringify({ kind: 'cpu', duration: DURATION, frequency: FREQUENCY }),
    })
    if (post.status !== 202) throw new Error(`POST /profiles: ${post.status} ${await post.text()}`)
    const { id } = await post.json()
    let s
    do {
      await new Promise((r) => setTimeout(r, 250))
      s = await (await fetch(`${base}/api/v1/profiles/${id}`, { headers: AUTH })).json()
    } while (['queued', 'running', 'symbolizing'].includes(s.state))
    if (s.state !== 'done') throw new Error(`capture ${s.state}: ${JSON.stringify(s.error)}`)
    const json = await (await fetch(`${base}/api/v1/profiles/${id}?format=json`, { headers: AUTH })).json()
    let nodes = 0
    const stack = [json.tree]
    while (stack.length) {
      const n = stack.pop()
      nodes++
      stack.push(...n.children)
    }

    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } })
    await page.goto(`${base}/?token=${encodeURIComponent(TOKEN)}`)
    const t0 = Date.now()
    await page.goto(`${base}/#/profiles/${encodeURIComponent(id)}`)
    await page.waitForFunction(() => Number(document.querySelector('canvas.flamecanvas')?.dataset.rects) > 1, null, { timeout: 30000 })
    const open = Date.now() - t0
    const canvas = page.locator('canvas.flamecanvas')
    const full = Number(await canvas.getAttribute('data-draw-ms'))
    const rects = Number(await canvas.getAttribute('data-rects'))

    // Zoom into frames along the widest path, measuring click -> painted, then back out.
    const clicks = []
    const draws = []
    const box = await canvas.boundingBox()
    for (let level = 2; level < 12; level++) {
      const y = box.height - (level + 0.5) * 17
      if (y < 0) break
      const ms = await page.evaluate(
        ([x, yy]) =>
          new Promise((resolve) => {
            const c = document.querySelector('canvas.flamecanvas')
            const r = c.getBoundingClientRect()
            const t = performance.now()
            c.dispatchEvent(new MouseEvent('click', { clientX: r.left + x, clientY: r.top + yy, bubbles: true }))
            // Done when the canvas says it drew after the click (next animation frame).
            // (No frame under the point, or the zoom did not change: no draw, no figure.)
            const check = () => {
              if (Number(c.dataset.drawnAt) > t) resolve(Number(c.dataset.drawnAt) - t)
              else if (performance.now() - t > 2000) resolve(null)
              else requestAnimationFrame(check)
            }
            requestAnimationFrame(check)
          }),
        [box.width / 2, y],
      )
      if (ms === null) continue
      clicks.push(ms)
      draws.push(Number(await canvas.getAttribute('data-draw-ms')))
      await page.getByRole('button', { name: 'Reset zoom' }).click()
      await page.waitForTimeout(50)
      draws.push(Number(await canvas.getAttribute('data-draw-ms')))
    }
    await page.getByLabel('Search frames').fill('fn1')
    await page.waitForTimeout(100)
    const searchDraw = Number(await canvas.getAttribute('data-draw-ms'))
    const out = {
      capture: { duration_s: DURATION, frequency_hz: FREQUENCY, samples: json.profile.total, nodes, frames_drawn: rects },
      open_ms: open,
      full_draw_ms: full,
      zoom_click_to_drawn_ms: stats(clicks),
      draw_ms: stats(draws),
      search_draw_ms: searchDraw,
    }
    console.log(argv.includes('--json') ? JSON.stringify(out) : out)
  } finally {
    for (const w of workers) w.kill('SIGKILL')
    await browser.close()
    own?.child.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
