#!/usr/bin/env node
// Dashboard performance in headless Chromium against a real daemon:
//   * first paint with backfilled history (navigation -> 20 charts drawn with samples
//     older than the page),
//   * CPU of the page with 20 live charts at 1 Hz (renderer main thread, from Chromium's
//     own task accounting; and the whole Chromium process tree from /proc),
//   * JS heap over the run after forced GCs (growth = leak),
//   * the gzipped size of the built JavaScript and CSS.
//
// Usage (from the repository root, after `cd frontend && npm ci && npm run build`):
//   node benchmarks/bench_frontend.mjs                 # 3 minutes
//   node benchmarks/bench_frontend.mjs --long          # 30 minutes
//   node benchmarks/bench_frontend.mjs --duration 60 [--url http://127.0.0.1:7470 --token T] [--json]
//   node benchmarks/bench_frontend.mjs --heatmaps 4    # 4 of the 20 are BPF heat maps (root)
// Without --url it starts `.venv/bin/hostscope serve --interval 1` on a free port.
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(ROOT, 'frontend', 'package.json'))
const { chromium } = require('playwright-core')

const argv = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : dflt
}
const DURATION_S = argv.includes('--long') ? 1800 : Number(opt('--duration', 180))
const CHARTS = Number(opt('--charts', 20))
// BPF latency heat maps among the charts (their modules are switched on by the page).
const HEATMAPS = Math.min(4, Number(opt('--heatmaps', 0)))
const HEAT_MODULES = ['runqlat', 'syscalls', 'offcpu', 'biolatency'].slice(0, HEATMAPS)
// A short window fills the page's buffers within the run, so heap growth after that is a leak.
const WINDOW_S = Number(opt('--window', 60))
const JSON_OUT = argv.includes('--json')
const PAINTS = Number(opt('--paints', 5))
const HZ = Number(process.env.CLK_TCK ?? 100)

function bundleSizes() {
  const dir = join(ROOT, 'daemon', 'static', 'assets')
  let js = 0
  let css = 0
  for (const f of readdirSync(dir)) {
    const gz = gzipSync(readFileSync(join(dir, f)), { level: 9 }).length
    if (f.endsWith('.js')) js += gz
    else if (f.endsWith('.css')) css += gz
  }
  return { js_gzip_bytes: js, css_gzip_bytes: css, total_gzip_bytes: js + css }
}

function freePort() {
  return new Promise((resolve) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Operator token of the daemon (docs/security.md): ours, or --token for --url. */
const TOKEN = opt('--token', null) ?? randomBytes(32).toString('base64url')
const AUTH = { Authorization: `Bearer ${TOKEN}` }

async function startDaemon() {
  const port = await freePort()
  const child = spawn(join(ROOT, '.venv', 'bin', 'hostscope'), ['serve', '--port', String(port), '--interval', '1'], {
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

function childrenOf(pid) {
  const out = []
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d))
    } catch {
      /* exited */
    }
  }
  return out
}

/** utime+stime (clock ticks) of a process and all its descendants. */
function treeTicks(rootPid) {
  const kids = new Map()
  const ticks = new Map()
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const ppid = Number(f[1])
      ticks.set(Number(d), Number(f[11]) + Number(f[12]))
      if (!kids.has(ppid)) kids.set(ppid, [])
      kids.get(ppid).push(Number(d))
    } catch {
      /* exited */
    }
  }
  let total = 0
  const stack = [rootPid]
  while (stack.length) {
    const p = stack.pop()
    total += ticks.get(p) ?? 0
    stack.push(...(kids.get(p) ?? []))
  }
  return total
}

/** 20 chart panels this host can fill: catalogue panels first, then custom widgets. */
async function chooseCharts(base) {
  const panels = JSON.parse(readFileSync(join(ROOT, 'daemon', 'panels.json'), 'utf8')).panels
  const known = new Set((await (await fetch(`${base}/api/v1/metrics`, { headers: AUTH })).json()).metrics.map((m) => m.name))
  const ids = panels
    .filter((p) => (p.kind ?? 'timeseries') === 'timeseries' && p.series.length && p.series.every((s) => known.has(s.metric)))
    .map((p) => p.id)
  const numeric = [...known].filter((n) => !n.startsWith('proc.') && !n.includes('uname') && !n.endsWith('.name'))
  for (const n of numeric) {
    if (ids.length >= CHARTS) break
    ids.push(`custom:${n}`)
  }
  return [...ids.slice(0, CHARTS - HEATMAPS), ...HEAT_MODULES.map((m) => `bpf.${m}`)]
}

async function main() {
  const sizes = bundleSizes()
  const own = opt('--url', null) ? null : await startDaemon()
  const base = opt('--url', own?.base)
  // Some history to backfill, as when someone opens the page mid-incident.
  await new Promise((r) => setTimeout(r, 15000))
  const ids = await chooseCharts(base)
  const profile = mkdtempSync(join(tmpdir(), 'hostscope-bench-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    // Tall enough that all 20 charts are on screen (off-screen canvases cost less).
    viewport: { width: 1600, height: 1400 },
  })
  // The browser process is our child: persistent contexts do not expose it otherwise.
  const browserPid = childrenOf(process.pid).find((p) => /chrom/.test(readFileSync(`/proc/${p}/comm`, 'utf8')))
  const page = context.pages()[0] ?? (await context.newPage())
  const cdp = await context.newCDPSession(page)
  await cdp.send('Performance.enable')
  await cdp.send('HeapProfiler.enable')

  const bpf = HEAT_MODULES.length ? `&bpf=${HEAT_MODULES.join(',')}` : ''
  const url = `${base}/?window=${WINDOW_S}&panels=${ids.map((id) => (id.startsWith('bpf.') ? `${id}~1x1` : id)).join(',')}${bpf}`
  // First paint: navigation start -> every chart drawn with samples older than the page.
  // Measured on several loads (median), as the machine may be busy with other work.
  const paints = []
  // The token URL sets the cookie the page then authenticates with.
  await page.goto(`${base}/?token=${encodeURIComponent(TOKEN)}`)
  for (let i = 0; i < PAINTS; i++) {
    await page.goto(url)
    paints.push(
      await page.evaluate(async (n) => {
        const opened = performance.timeOrigin / 1000
        const until = performance.now() + 60000
        for (;;) {
          // One uPlot per chart. A heat map counts once it draws (from history) or says
          // it has no events yet: a module whose histogram has had none (biolatency on an
          // idle disk) has no columns to draw yet.
          const sections = [...document.querySelectorAll('main section')]
          const drawn = sections.filter((s) => s.querySelector('.uplot') || (s.querySelector('.bpf') && /No events yet/.test(s.textContent ?? ''))).length
          const h = window.__hostscope
          if (drawn >= n && h && h.oldest() < opened - 5) return performance.now()
          if (performance.now() > until) throw new Error(`only ${drawn} of ${n} charts drawn after 60 s`)
          await new Promise((r) => requestAnimationFrame(r))
        }
      }, ids.length),
    )
  }
  paints.sort((a, b) => a - b)
  const firstPaintMs = paints[Math.floor(paints.length / 2)]

  const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]))
  const heap = async () => {
    await cdp.send('HeapProfiler.collectGarbage')
    return (await metrics()).JSHeapUsedSize
  }
  await page.waitForTimeout(5000) // settle after the first paint
  const heaps = [{ t: 0, bytes: await heap() }]
  const m0 = await metrics()
  const tree0 = browserPid ? treeTicks(browserPid) : 0
  const wall0 = Date.now()
  const sampleEvery = Math.max(10, Math.min(60, DURATION_S / 6))
  while ((Date.now() - wall0) / 1000 < DURATION_S) {
    await page.waitForTimeout(sampleEvery * 1000)
    heaps.push({ t: Math.round((Date.now() - wall0) / 1000), bytes: await heap() })
  }
  const m1 = await metrics()
  const wall = (Date.now() - wall0) / 1000
  const tree1 = browserPid ? treeTicks(browserPid) : 0
  const charts = await page.evaluate(() => document.querySelectorAll('main section .uplot').length)
  const heatmaps = await page.evaluate(() => document.querySelectorAll('main section canvas.heatcells').length)

  // TaskDuration: time the renderer's main thread spent running tasks (script, style,
  // layout, paint). Forced GCs add a little; they are not part of normal operation.
  const result = {
    charts,
    heatmaps,
    duration_s: Math.round(wall),
    first_paint_ms: Math.round(firstPaintMs),
    first_paint_all_ms: paints.map(Math.round),
    page_main_thread_cpu_pct: +((100 * (m1.TaskDuration - m0.TaskDuration)) / wall).toFixed(2),
    page_script_cpu_pct: +((100 * (m1.ScriptDuration - m0.ScriptDuration)) / wall).toFixed(2),
    page_layout_cpu_pct: +((100 * (m1.LayoutDuration - m0.LayoutDuration)) / wall).toFixed(2),
    page_style_cpu_pct: +((100 * (m1.RecalcStyleDuration - m0.RecalcStyleDuration)) / wall).toFixed(2),
    chromium_tree_cpu_pct: browserPid ? +((100 * (tree1 - tree0)) / HZ / wall).toFixed(2) : null,
    heap_start_bytes: heaps[0].bytes,
    heap_end_bytes: heaps.at(-1).bytes,
    heap_max_bytes: Math.max(...heaps.map((h) => h.bytes)),
    heap_samples: heaps,
    nodes: m1.Nodes,
    ...sizes,
  }
  await context.close()
  rmSync(profile, { recursive: true, force: true })
  own?.child.kill('SIGTERM')
  if (JSON_OUT) {
    console.log(JSON.stringify(result, null, 2))
    return
  }
  const kb = (b) => `${(b / 1024).toFixed(1)} KiB`
  const mb = (b) => `${(b / 1048576).toFixed(2)} MiB`
  console.log(`charts                      ${result.charts} live (${result.heatmaps} BPF heat maps), 1 Hz, ${WINDOW_S} s window`)
  console.log(`first paint with history    ${result.first_paint_ms} ms median (${result.first_paint_all_ms.join(', ')})`)
  console.log(`page main thread CPU        ${result.page_main_thread_cpu_pct} % of one core (script ${result.page_script_cpu_pct} %, layout ${result.page_layout_cpu_pct} %, style ${result.page_style_cpu_pct} %)`)
  console.log(`whole Chromium process tree ${result.chromium_tree_cpu_pct} % of one core`)
  console.log(`JS heap after GC            ${mb(result.heap_start_bytes)} -> ${mb(result.heap_end_bytes)} over ${result.duration_s} s (max ${mb(result.heap_max_bytes)})`)
  console.log(`bundle (gzip -9)            JS ${kb(result.js_gzip_bytes)} + CSS ${kb(result.css_gzip_bytes)} = ${kb(result.total_gzip_bytes)}`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
