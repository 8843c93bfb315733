// The screenshots of docs/dashboard.md, taken from real daemons with real activity.
//
//   node frontend/scripts/screenshots.mjs --base http://127.0.0.1:7470 \
//        [--second http://127.0.0.1:7471] [--out docs/screenshots] [--warm 300]
//
// Start the daemons a minute or more before (so charts open on history); for the two-host
// shot each daemon's allowed_origins must list the other's origin (docs/dashboard.md,
// "Several hosts"). While warming up, this script keeps the disk, the loopback network,
// the scheduler and exec busy, and keeps a page open that switches the BPF modules on
// (root and bcc needed for the BPF shot), so every panel has something to show.
import { spawn } from 'node:child_process'
import { rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { chromium } from 'playwright-core'

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string', default: process.env.HOSTSCOPE_URL ?? 'http://127.0.0.1:7470' },
    second: { type: 'string' },
    out: { type: 'string', default: resolve(import.meta.dirname, '../../docs/screenshots') },
    warm: { type: 'string', default: '300' },
    chromium: { type: 'string', default: process.env.HOSTSCOPE_CHROMIUM ?? '/usr/bin/chromium' },
  },
})
const BASE = opt.base.replace(/\/+$/, '')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const log = (...a) => console.log('[screenshots]', ...a)

// -- activity --------------------------------------------------------------------------

let busy = true
const children = new Set()
function run(cmd, args) {
  return new Promise((res) => {
    const child = spawn(cmd, args, { stdio: 'ignore' })
    children.add(child)
    child.once('error', () => res())
    child.once('exit', () => {
      children.delete(child)
      res()
    })
  })
}

/** Direct I/O on the root disk (no page cache), so disk and block-latency panels move. */
async function diskLoop() {
  const file = join('/var/tmp', `hostscope-shot-${process.pid}`)
  while (busy) {
    await run('dd', ['if=/dev/zero', `of=${file}`, 'bs=256k', 'count=100', 'oflag=direct', 'status=none'])
    await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=4k', 'count=4000', 'iflag=direct', 'status=none'])
    await sleep(1500)
  }
  rmSync(file, { force: true })
}

/** Loopback HTTP transfers of a few MiB (the lo interface, TCP sessions). */
async function networkLoop() {
  const blob = Buffer.alloc(4 << 20, 7)
  const server = createServer((_req, res) => res.end(blob))
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${server.address().port}/`
  while (busy) {
    await (await fetch(url)).arrayBuffer()
    await sleep(300 + Math.random() * 700)
  }
  server.close()
}

/** Bursts of wakeups (run queue latency) and a few short programs (execsnoop). */
async function schedulerLoop() {
  const script = `
import os, time
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    os.close(w1); os.close(r2)
    while os.read(r1, 1): os.write(w2, b'x')
    os._exit(0)
os.close(r1); os.close(w2)
end = time.time() + 0.5
while time.time() < end: os.write(w1, b'x'); os.read(r2, 1)
os.close(w1); os.wait()`
  while (busy) {
    await run('python3', ['-c', script])
    await run('/bin/sh', ['-c', 'ls /usr/lib >/dev/null; uname -a >/dev/null; date >/dev/null'])
    await sleep(3000 + Math.random() * 3000)
  }
}

// -- pages -----------------------------------------------------------------------------

const BPF_PAGE =
  '/?panels=bpf.runqlat,bpf.biolatency,bpf.syscalls~2x2,bpf.execsnoop~2x2&window=300&bpf=runqlat,biolatency,syscalls,execsnoop'

async function main() {
  const dir = await import('node:fs').then((fs) => fs.mkdtempSync(join(tmpdir(), 'hostscope-shots-')))
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: opt.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    viewport: { width: 1400, height: 900 },
  })
  const errors = []
  context.on('page', (p) => p.on('pageerror', (e) => errors.push(e.message)))
  const loops = [diskLoop(), networkLoop(), schedulerLoop()]
  try {
    // The BPF page stays open while everything warms up: its modules collect meanwhile.
    const bpf = await context.newPage()
    await bpf.setViewportSize({ width: 1400, height: 820 })
    await bpf.goto(BASE + BPF_PAGE)
    log(`warming up for ${opt.warm} s with disk, network, scheduler and exec activity`)
    await sleep(Number(opt.warm) * 1000)

    const page = await context.newPage()
    const shot = async (p, name, fullPage = false) => {
      await p.mouse.move(0, 0)
      if (fullPage) {
        // Charts scrolled out of view skip their redraws: make the whole page the
        // viewport so every chart is current in a full-page image.
        const height = await p.evaluate(() => document.documentElement.scrollHeight)
        const { width } = p.viewportSize()
        await p.setViewportSize({ width, height })
        await sleep(2500)
      }
      await p.screenshot({ path: join(opt.out, name), fullPage })
      if (fullPage) await p.setViewportSize({ width: 1400, height: 900 })
      log('wrote', name)
    }
    await page.goto(`${BASE}/`)
    await page.waitForFunction(() => document.querySelectorAll('main section canvas').length >= 12)
    await sleep(3000)
    await shot(page, 'overview-light.png', true)

    await page.goto(`${BASE}/?theme=dark`)
    await page.waitForFunction(() => document.querySelectorAll('main section canvas').length >= 12)
    await sleep(3000)
    await shot(page, 'overview-dark.png', true)

    await page.setViewportSize({ width: 800, height: 500 })
    await page.goto(`${BASE}/embed?panels=cpu.util,net.bytes&window=300`)
    await page.waitForFunction(() => document.querySelectorAll('section canvas').length >= 2)
    await sleep(1500)
    await shot(page, 'embed.png')
    await page.setViewportSize({ width: 1400, height: 900 })

    await page.goto(`${BASE}/?panels=cpu.util~2x1,disk.latency~2x1&window=300`)
    await page.getByRole('button', { name: '+ Add widget' }).click()
    await page.getByLabel('Any metric of this daemon').fill('disk.dev.avg_qlen')
    await page.getByRole('button', { name: 'Add custom widget' }).click()
    await page.locator('section[aria-label="disk.dev.avg_qlen"] canvas').first().waitFor()
    await sleep(1500)
    await shot(page, 'custom-widget.png')

    if (opt.second) {
      const second = opt.second.replace(/^https?:\/\//, '').replace(/\/+$/, '')
      await page.goto(`${BASE}/?panels=cpu.util,mem.util,disk.bytes,net.bytes,cpu.load,disk.iops&hosts=self,${second}&window=300`)
      await page.waitForFunction(() => document.querySelectorAll('section[aria-label="CPU utilisation"] canvas').length >= 2, null, { timeout: 20000 })
      await sleep(3000)
      await shot(page, 'two-hosts.png')
    }

    await bpf.bringToFront()
    await bpf.waitForFunction(() => document.querySelectorAll('canvas.heatcells').length >= 2)
    await sleep(1000)
    await shot(bpf, 'bpf-heatmap.png')
    if (errors.length) log('page errors:', errors)
  } finally {
    busy = false
    for (const c of children) c.kill('SIGTERM')
    await Promise.allSettled(loops)
    await context.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
