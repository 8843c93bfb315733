// The screenshots of docs/dashboard.md, taken from real daemons with real activity.
//
//   node frontend/scripts/screenshots.mjs --base http://127.0.0.1:7470 \
//        [--second http://127.0.0.1:7471] [--out docs/screenshots] [--warm 300] \
//        [--token TOKEN] [--only flamegraph]
//
// Start the daemons a minute or more before (so charts open on history); for the two-host
// shot each daemon's allowed_origins must list the other's origin (docs/dashboard.md,
// "Several hosts"). While warming up, this script keeps the disk, the loopback network,
// the scheduler and exec busy, and keeps a page open that switches the BPF modules on
// (root and bcc needed for the BPF shot), so every panel has something to show.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
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
    // An operator token of the daemon(s) (docs/security.md); the pages sign in with it.
    token: { type: 'string', default: process.env.HOSTSCOPE_TOKEN ?? '' },
    // Only the flame graph shot (no warm-up needed: it captures its own 10 s).
    only: { type: 'string', default: '' },
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

/**
 * The flame graph shot: a real 10 s CPU capture of the whole host while a C program with
 * named functions calling each other (frame pointers kept), a kernel-heavy dd and a busy
 * process named `<b>"x'&` run; then a FlameScope range and a tooltip.
 */
async function flameShot(context) {
  const dir = mkdtempSync(join(tmpdir(), 'hostscope-flame-'))
  const names = ['parse_request', 'route', 'handle_query', 'plan_query', 'scan_table', 'hash_join', 'sort_rows', 'compress_block', 'checksum', 'encode_json']
  const src = [
    '#include <stdlib.h>',
    '#include <time.h>',
    ...names.map((n) => `long ${n}(int d, unsigned *s);`),
    'typedef long (*fn_t)(int, unsigned *);',
    `static fn_t table[] = { ${names.join(', ')} };`,
    ...names.map(
      (n, i) =>
        `__attribute__((noinline)) long ${n}(int d, unsigned *s) { if (d <= 0) { volatile long x = 0; for (int k = 0; k < ${2000 + i * 700}; k++) x += k; return x; } return table[${i + 1} + rand_r(s) % ${names.length - i - 1 || 1}](d - 1, s); }`.replace(
          `table[${names.length} + rand_r(s) % 1]`,
          'table[0]',
        ),
    ),
    'int main(int c, char **v) { unsigned s = 7; time_t end = time(0) + atoi(v[1]); while (time(0) < end) table[rand_r(&s) % 3](2 + rand_r(&s) % 5, &s); return 0; }',
  ].join('\n')
  writeFileSync(join(dir, 'server.c'), src)
  execFileSync('gcc', ['-O1', '-fno-omit-frame-pointer', '-o', join(dir, 'appserver'), join(dir, 'server.c')])
  const workers = [
    spawn(join(dir, 'appserver'), ['25'], { stdio: 'ignore' }),
    spawn('dd', ['if=/dev/zero', 'of=/dev/null', 'bs=64k', 'count=2000000'], { stdio: 'ignore' }),
    spawn('python3', ['-c', `import ctypes, time\nctypes.CDLL(None).prctl(15, b'<b>"x\\'&', 0, 0, 0)\nend = time.time() + 25\nwhile time.time() < end: pass`], { stdio: 'ignore' }),
  ]
  try {
    const page = await context.newPage()
    await page.setViewportSize({ width: 1400, height: 1200 })
    await page.goto(`${BASE}/#/profiles?new=cpu`)
    await page.getByLabel('Duration (s)').fill('10')
    await page.getByLabel('Frequency (Hz)').fill('99')
    await page.getByRole('button', { name: 'Start capture' }).click()
    await page.locator('canvas.flamecanvas').waitFor({ timeout: 60000 })
    const scope = page.locator('canvas.scopecanvas')
    const box = await scope.boundingBox()
    const cellW = box.width / Number(/of (\d+) seconds/.exec(await scope.getAttribute('aria-label'))[1])
    await page.mouse.move(box.x + cellW * 2.5, box.y + 100)
    await page.mouse.down()
    await page.mouse.move(box.x + cellW * 6.5, box.y + 60, { steps: 4 })
    await page.mouse.up()
    await page.locator('.rangebar').waitFor()
    await page.waitForFunction(() => !document.querySelector('.stale'))
    await page.getByLabel('Search frames').fill('hash_join')
    await sleep(500)
    // The tooltip of the first process frame (names sort `<` first: the hostile one).
    // The whole page in the viewport first (a tall graph), room below for the tooltip.
    const height = await page.evaluate(() => document.documentElement.scrollHeight)
    await page.setViewportSize({ width: 1400, height: height + 70 })
    await sleep(300)
    const canvas = page.locator('canvas.flamecanvas')
    const cb = await canvas.boundingBox()
    await canvas.hover({ position: { x: 6, y: cb.height - 26 } })
    await sleep(300)
    // Not fullPage: that resizes the viewport, which re-lays out the graph and drops the tooltip.
    await page.screenshot({ path: join(opt.out, 'flamegraph.png') })
    log('wrote flamegraph.png')
    await page.close()
  } finally {
    for (const w of workers) w.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
}

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
  if (opt.token) await (await context.newPage()).goto(`${BASE}/?token=${encodeURIComponent(opt.token)}`)
  if (opt.only === 'flamegraph') {
    await flameShot(context)
    await context.close()
    rmSync(dir, { recursive: true, force: true })
    return
  }
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

    await flameShot(context)

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
