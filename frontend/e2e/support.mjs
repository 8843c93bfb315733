// Shared helpers of the end-to-end tests: headless Chromium through playwright-core
// (the system's /usr/bin/chromium; never a downloaded browser) and, for tests that
// restart a daemon, a real `hostscope serve` owned by the test.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

export const BASE = (process.env.HOSTSCOPE_URL ?? '').replace(/\/+$/, '')
export const CHROMIUM = process.env.HOSTSCOPE_CHROMIUM ?? '/usr/bin/chromium'
/** JSON array: the command that starts a daemon; `{port}` is replaced by a free port. */
export const SERVE = process.env.HOSTSCOPE_SERVE_CMD ? JSON.parse(process.env.HOSTSCOPE_SERVE_CMD) : null
export const SHOTS = process.env.HOSTSCOPE_SCREENSHOTS ?? ''
/** The operator token every daemon of the run accepts (HOSTSCOPE_TOKEN, docs/security.md). */
export const TOKEN = process.env.HOSTSCOPE_TOKEN ?? ''
export const AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {}

/** Open `base`'s token URL in `page`: the daemon sets its cookie (one per port) and
 * redirects to the bare address, as for a person opening the URL `hostscope serve` printed. */
export async function signIn(page, base = BASE) {
  await page.goto(`${base}/?token=${encodeURIComponent(TOKEN)}`)
}

export const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

/** A fresh browser profile in a temporary directory; `close()` removes it. Its first
 * page is signed in to BASE unless `signIn: false` (a visitor without a token). */
export async function launch(viewport = { width: 1400, height: 900 }, extraArgs = [], { signIn: withToken = true } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'hostscope-e2e-'))
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...ARGS, ...extraArgs],
    viewport,
  })
  const errors = []
  context.on('page', (p) => p.on('pageerror', (e) => errors.push(e.message)))
  return {
    context,
    errors,
    async page() {
      const p = context.pages()[0] ?? (await context.newPage())
      p.on('pageerror', (e) => errors.push(e.message))
      if (BASE && TOKEN && withToken) await signIn(p)
      return p
    },
    async close() {
      await context.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

export async function waitHealthy(base, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs
  let last = null
  while (Date.now() < until) {
    try {
      const r = await fetch(`${base}/healthz`)
      if (r.ok) return
      last = new Error(`HTTP ${r.status}`)
    } catch (e) {
      last = e
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`daemon at ${base} not healthy: ${last}`)
}

/** Start a daemon with SERVE on `port`; resolves once /healthz answers. */
export async function startDaemon(port, { allowedOrigins = [] } = {}) {
  const [cmd, ...args] = SERVE.map((a) => a.replaceAll('{port}', String(port)))
  let configDir = null
  if (allowedOrigins.length) {
    configDir = mkdtempSync(join(tmpdir(), 'hostscope-e2e-conf-'))
    const file = join(configDir, 'hostscope.toml')
    writeFileSync(file, `allowed_origins = ${JSON.stringify(allowedOrigins)}\n`)
    args.push('--config', file)
  }
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const base = `http://127.0.0.1:${port}`
  try {
    await waitHealthy(base)
  } catch (e) {
    child.kill('SIGKILL')
    throw new Error(`${e.message}\n${stderr}`)
  }
  return {
    base,
    child,
    stop() {
      return new Promise((resolve) => {
        if (configDir) rmSync(configDir, { recursive: true, force: true })
        if (child.exitCode !== null) return resolve()
        child.once('exit', () => resolve())
        child.kill('SIGTERM')
        setTimeout(() => child.kill('SIGKILL'), 5000).unref()
      })
    },
  }
}

/** Text of a chart legend's value for `label` inside the panel titled `title`. */
export async function legendValue(page, title, label) {
  return page
    .locator(`section[aria-label="${title}"] .u-series`, { hasText: label })
    .first()
    .locator('.u-value')
    .innerText()
}

export async function shot(page, name, fullPage = false) {
  if (SHOTS) await page.screenshot({ path: join(SHOTS, name), fullPage })
}
