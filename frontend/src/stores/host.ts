/**
 * One store per host connection: it owns the websocket to that host's daemon, the
 * subscription (reference-counted by the widgets on screen), the columnar buffers the
 * charts draw from, and the connection's state as people should see it.
 *
 * Nothing happens until `start()`. Data arrives in frames; charts are told at most once
 * per animation frame (`version`), so 20 charts at 1 Hz cost 20 redraws a second, not
 * one per message. On a reconnect (daemon restart, network blip, tab shown again) the
 * gap is backfilled from the daemon's history and merged by timestamp.
 */
import { shallowRef, type ShallowRef } from 'vue'
import { getJson, isCrossOrigin, setToken, streamUrl, tokenFor, unreachableMessage } from '../lib/api'
import {
  DaemonError,
  PROTOCOL_VERSION,
  parseServerMsg,
  type Descriptor,
  type ErrorMsg,
  type HelloMsg,
  type BpfList,
  type BpfModuleStatus,
  type BpfMsg,
  type BpfToggleMsg,
  type HistoryAnswer,
  type HostInfo,
  type MetaMsg,
  type SamplesMsg,
  type StaleInfo,
  type SubscribeMsg,
} from '../lib/protocol'
import { widgetMetrics, type BpfSettings } from '../lib/bpf'
import { Timeline, seriesKey, splitKey } from '../lib/timeline'

export type ConnState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'suspended' | 'closed'

/** Process series come and go by the hundred: keep only a short history of them. */
export const SHORT_RETENTION_S = 120
const MAX_BACKFILL_S = 3600
const MAX_BACKOFF_S = 15

/** A cgroup the host has, its readable name and (if the daemon says) its cgroup version. */
export interface ContainerCgroup {
  path: string
  name: string
  version?: string
}

/** Metrics a container filter scopes (per-process and per-cgroup). */
export function isScoped(metric: string): boolean {
  return metric.startsWith('proc.') || metric.startsWith('cgroup.')
}

function isShort(metric: string): boolean {
  return metric.startsWith('proc.')
}

interface Layout {
  main: { keys: string[]; idx: number[]; scale: number[] }
  short: { keys: string[]; idx: number[]; scale: number[] }
}

/** A BPF module as this page sees it: what it asked for and what the daemon answered. */
export interface BpfView {
  /** This page holds the module (its toggle is on). */
  held: boolean
  /**
   * `starting`: an enable is on its way; `stopping`: a disable is; `on`/`off`: as the
   * daemon reports; `error`: the daemon refused or the module failed (see `message`).
   */
  phase: 'off' | 'starting' | 'on' | 'stopping' | 'error'
  message: string | null
  /** The daemon's error code with `message` (`settings_conflict`, `invalid_settings`...). */
  code: string | null
  status: BpfModuleStatus | undefined
}

/** A toggle in flight for a module, and the daemon's last refusal or failure. */
export interface BpfLocal {
  pending: 'enable' | 'disable' | null
  error: string | null
  code: string | null
}

/** How often module states are refreshed while a BPF widget is shown (other viewers). */
const BPF_REFRESH_MS = 10_000

export interface Notice {
  at: number
  code: string
  message: string
}

/** Scheduling hooks, replaceable in tests. */
export interface Env {
  WebSocket: typeof WebSocket
  now: () => number
  frame: (cb: () => void) => void
  setTimeout: (cb: () => void, ms: number) => unknown
  clearTimeout: (id: unknown) => void
}

const browserEnv = (): Env => ({
  WebSocket: globalThis.WebSocket,
  now: () => Date.now() / 1000,
  frame: (cb) => (typeof requestAnimationFrame === 'function' ? requestAnimationFrame(() => cb()) : setTimeout(cb, 16)),
  setTimeout: (cb, ms) => setTimeout(cb, ms),
  clearTimeout: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
})

export class HostConnection {
  readonly state: ShallowRef<ConnState> = shallowRef('idle')
  /** What is wrong with the connection right now, for people (null when fine). */
  readonly problem: ShallowRef<string | null> = shallowRef(null)
  /** Recent error messages from the daemon (bad subscription etc.). */
  readonly notices: ShallowRef<Notice[]> = shallowRef([])
  readonly hello: ShallowRef<HelloMsg | null> = shallowRef(null)
  readonly info: ShallowRef<HostInfo | null> = shallowRef(null)
  /** Every metric the daemon knows (GET /api/v1/metrics); null until loaded. */
  readonly catalogue: ShallowRef<Map<string, Descriptor> | null> = shallowRef(null)
  /** Descriptors of subscribed metrics, from `meta`. */
  readonly descriptors: ShallowRef<Map<string, Descriptor>> = shallowRef(new Map())
  /** Prefixes the daemon reported absent on this host (e.g. no PSI). */
  readonly absent: ShallowRef<string[]> = shallowRef([])
  /** Subscribed metrics whose collector failed or timed out, from meta and `stale`. */
  readonly stale: ShallowRef<Record<string, StaleInfo>> = shallowRef({})
  /** Names the daemon rejected as unknown. */
  readonly unknown: ShallowRef<Set<string>> = shallowRef(new Set())
  /** Bumped at most once per animation frame when new data arrived. */
  readonly version = shallowRef(0)
  /** True once the first backfill (or live frame) has been stored. */
  readonly ready = shallowRef(false)
  /** Epoch seconds of the next reconnect attempt while reconnecting. */
  readonly retryAt: ShallowRef<number | null> = shallowRef(null)
  readonly container: ShallowRef<string> = shallowRef('')
  /** Why the daemon wants a token (none sent, or the one sent was refused); null when it
   * has what it needs. The page shows a token prompt for it (TokenPrompt.vue). */
  readonly needsToken: ShallowRef<string | null> = shallowRef(null)

  /** `GET /api/v1/bpf`, kept current by toggle answers; null until loaded. */
  readonly bpf: ShallowRef<BpfList | null> = shallowRef(null)
  /** Why the module list could not be had (an older daemon, REST refused), or null. */
  readonly bpfProblem: ShallowRef<string | null> = shallowRef(null)
  /** Per module: a toggle in flight, and the daemon's last refusal or failure. */
  readonly bpfLocal: ShallowRef<Map<string, BpfLocal>> = shallowRef(new Map())

  readonly main: Timeline
  readonly short = new Timeline(SHORT_RETENTION_S)

  private env: Env
  private ws: WebSocket | null = null
  private wants = new Map<string, number>()
  private subscribed = new Set<string>()
  private layouts = new Map<number, Layout>()
  private started = false
  private attempt = 0
  private retryTimer: unknown = null
  private flushQueued = false
  private frameQueued = false
  private releaseTimer: unknown = null
  private windowS: number
  private metricsLoad: Promise<void> | null = null
  private waitedForMetadata = false
  private bpfHolds = new Map<string, number>()
  /** Settings the page asks of each held module (undefined: defaults, or join others). */
  private bpfWanted = new Map<string, BpfSettings | undefined>()
  /** Toggles sent on this socket and not yet answered, in order (answers come in order). */
  private bpfPending: { name: string; enabled: boolean }[] = []
  private bpfLoad: Promise<void> | null = null
  private bpfWatchers = 0
  private bpfTimer: unknown = null

  constructor(
    readonly base: string,
    windowS = 300,
    env?: Partial<Env>,
  ) {
    this.env = { ...browserEnv(), ...env }
    this.windowS = windowS
    this.main = new Timeline(windowS + 10)
  }

  /** Host name as the daemon reports it, with the address when it is not this page's. */
  get label(): string {
    const name = this.hello.value?.host ?? this.info.value?.hostname
    const addr = this.base.replace(/^https?:\/\//, '')
    if (!name) return addr || location.host
    return addr ? `${name} (${addr})` : name
  }

  get intervalS(): number {
    return this.hello.value?.interval_s ?? this.info.value?.interval_s ?? 1
  }

  /** Open the connection (idempotent). */
  start(): void {
    if (this.started) return
    this.started = true
    this.loadMetadata()
    this.connect()
  }

  /** Close for good (host removed from the view). */
  stop(): void {
    this.started = false
    this.env.clearTimeout(this.retryTimer)
    this.env.clearTimeout(this.bpfTimer)
    this.retryTimer = null
    this.closeSocket(1000)
    this.state.value = 'closed'
  }

  /** Close while the tab is hidden; `resume()` reconnects and backfills the gap. */
  suspend(): void {
    if (!this.started || this.state.value === 'suspended') return
    this.env.clearTimeout(this.retryTimer)
    this.closeSocket(1000)
    this.state.value = 'suspended'
  }

  resume(): void {
    if (!this.started || this.state.value !== 'suspended') return
    this.attempt = 0
    this.connect()
  }

  /** Reconnect now (a person pressed "retry"). */
  retry(): void {
    if (!this.started) return this.start()
    this.env.clearTimeout(this.retryTimer)
    this.attempt = 0
    this.closeSocket(1000)
    this.loadMetadata(true)
    this.connect()
  }

  /** Use `token` for this daemon from now on (kept per tab, see lib/api.ts) and reconnect. */
  signIn(token: string): void {
    setToken(this.base, token.trim() || null)
    this.needsToken.value = null
    this.problem.value = null
    this.retry()
  }

  /** The daemon refused our credentials: forget a stored token that no longer works,
   * stop retrying (it would only count as failed attempts) and ask for one. */
  private unauthorized(reason: string): void {
    const had = tokenFor(this.base) !== null
    const asked = this.needsToken.value !== null
    setToken(this.base, null)
    this.env.clearTimeout(this.retryTimer)
    this.retryTimer = null
    this.retryAt.value = null
    this.closeSocket(1000)
    this.state.value = 'closed'
    if (asked && !had) return // REST and the socket both refused: one message is enough
    this.needsToken.value = had
      ? `The daemon at ${this.base || location.host} refused the token (${reason}).`
      : `The daemon at ${this.base || location.host} needs a token.`
    this.problem.value = this.needsToken.value
  }

  /** Widgets declare the metrics they draw; the returned function releases them. */
  need(names: string[]): () => void {
    for (const n of names) this.wants.set(n, (this.wants.get(n) ?? 0) + 1)
    this.queueFlush()
    let released = false
    return () => {
      if (released) return
      released = true
      for (const n of names) {
        const c = (this.wants.get(n) ?? 1) - 1
        if (c <= 0) this.wants.delete(n)
        else this.wants.set(n, c)
      }
      // Unsubscribe lazily: reordering or resizing widgets re-creates them at once.
      this.env.clearTimeout(this.releaseTimer)
      this.releaseTimer = this.env.setTimeout(() => this.dropUnwanted(), 3000)
    }
  }

  /** The longest window any view shows; enlarging it fetches the missing history. */
  setWindow(seconds: number): void {
    const before = this.windowS
    this.windowS = seconds
    this.main.retentionS = seconds + 10
    if (seconds > before && this.subscribed.size) void this.fillFromHistory(seconds)
  }

  /** Scope per-process and per-cgroup series to one container ("" = all). */
  setContainer(name: string): void {
    if (name === this.container.value) return
    this.container.value = name
    const match = (m: string) => isScoped(m)
    this.main.forgetMetrics(match)
    this.short.forgetMetrics(match)
    for (const n of [...this.subscribed]) if (isScoped(n)) this.subscribed.delete(n)
    this.bump()
    // The filter travels with a subscription; a fresh connection is the simplest exact
    // way to change it (and backfills the scoped series for the new container).
    if (this.ws && this.state.value === 'open') {
      this.closeSocket(1000)
      this.connect()
    }
  }

  /** Is a metric known to be unavailable on this host? Returns the reason, or null. */
  absence(metric: string): string | null {
    if (this.unknown.value.has(metric)) return `this daemon does not know ${metric}`
    const psi = metric.includes('.pressure.')
    const psiReason = () => this.info.value?.capabilities?.psi?.reason ?? 'no pressure stall information (PSI) on this host'
    if (this.absent.value.some((p) => metric === p || metric.startsWith(p + '.'))) {
      return psi ? psiReason() : `this host has no ${metric}`
    }
    const cat = this.catalogue.value
    if (cat && !cat.has(metric)) {
      for (const k of cat.keys()) if (k.startsWith(metric + '.')) return null
      return psi ? psiReason() : `this daemon does not collect ${metric}`
    }
    return null
  }

  /**
   * Names a container filter can take on this host: the cgroup charts' container names
   * (`cgroup.container.name`). The daemon matches a raw cgroup path hierarchically, so
   * `/process_api` also scopes processes whose own cgroup is `/process_api/<id>`.
   */
  async containerNames(): Promise<string[]> {
    return [...new Set((await this.containerCgroups()).map((c) => c.name))]
  }

  /**
   * The host's containers with their cgroup paths: `cgroup.container.name` is one
   * instance per cgroup path, valued with its readable name (`docker:ab12…`,
   * `nginx.service`, or the path itself). The root cgroup (no name) is left out.
   * `version` is the daemon's `cgroup.version` of the path: `v2` if the unified hierarchy
   * has it (cgroup filters take only those), `v1` if only v1 hierarchies do (hybrid
   * hosts); absent from daemons that do not report it.
   */
  async containerCgroups(): Promise<ContainerCgroup[]> {
    const found = new Map<string, string>()
    const versions = new Map<string, string>()
    const metric = 'cgroup.container.name'
    const versionMetric = 'cgroup.version'
    for (const [k, text] of this.main.text) {
      const [m, instance] = splitKey(k)
      if (m === metric && text) found.set(instance, text)
    }
    if (!this.catalogue.value || this.catalogue.value.has(metric)) {
      // The version only when the daemon lists it: an unknown name fails the whole fetch.
      const names = this.catalogue.value?.has(versionMetric) ? `${metric},${versionMetric}` : metric
      try {
        const ans = await getJson<{ values: { name?: unknown; instances: { instance: unknown; value: unknown }[] }[] }>(this.base, `/api/v1/fetch?names=${names}`)
        for (const v of ans.values ?? []) {
          const into = v.name === versionMetric ? versions : found
          for (const i of v.instances ?? []) {
            if (typeof i.value === 'string' && i.value && typeof i.instance === 'string') into.set(i.instance, i.value)
          }
        }
      } catch {
        /* the suggestions are a convenience: the filter still works typed by hand */
      }
    }
    return [...found].map(([path, name]) => {
      const version = versions.get(path)
      return version ? { path, name, version } : { path, name }
    })
  }

  descriptor(metric: string): Descriptor | undefined {
    return this.descriptors.value.get(metric) ?? this.catalogue.value?.get(metric)
  }

  timelineFor(metric: string): Timeline {
    return isShort(metric) ? this.short : this.main
  }

  // -- BPF modules -------------------------------------------------------------------

  /** Fetch the module list (once, or again with `force`). */
  loadBpf(force = false): Promise<void> {
    if (this.bpfLoad && !force) return this.bpfLoad
    this.bpfLoad = (async () => {
      try {
        this.bpf.value = await getJson<BpfList>(this.base, '/api/v1/bpf')
        this.bpfProblem.value = null
      } catch (e) {
        const err = e as DaemonError
        this.bpfProblem.value =
          err.status === 404 && err.code === 'not_found'
            ? 'this daemon has no BPF support (it predates the BPF API)'
            : (err.message ?? String(e))
        if (this.bpf.value === null) this.bpfLoad = null // try again next time
      }
    })()
    return this.bpfLoad
  }

  /** A BPF widget is shown: keep module states fresh; returns the function that stops it. */
  watchBpf(): () => void {
    this.bpfWatchers++
    void this.loadBpf()
    if (this.bpfWatchers === 1) this.scheduleBpfRefresh()
    let done = false
    return () => {
      if (done) return
      done = true
      this.bpfWatchers--
      if (this.bpfWatchers === 0) {
        this.env.clearTimeout(this.bpfTimer)
        this.bpfTimer = null
      }
    }
  }

  private scheduleBpfRefresh(): void {
    this.env.clearTimeout(this.bpfTimer)
    this.bpfTimer = this.env.setTimeout(() => {
      if (this.bpfWatchers === 0) return
      if (this.state.value === 'open' && !this.bpfPending.length) void this.loadBpf(true)
      this.scheduleBpfRefresh()
    }, BPF_REFRESH_MS)
  }

  bpfModule(name: string): BpfModuleStatus | undefined {
    return this.bpf.value?.modules.find((m) => m.name === name)
  }

  /**
   * Switch module `name` on for as long as the returned function is not called. The
   * hold travels over this page's websocket, so the daemon releases it when the page
   * goes away, and it is taken again after every reconnect (a new socket holds nothing).
   */
  holdBpf(name: string, settings?: BpfSettings): () => void {
    const n = (this.bpfHolds.get(name) ?? 0) + 1
    this.bpfHolds.set(name, n)
    if (n === 1) {
      this.bpfWanted.set(name, settings)
      this.setBpfLocal(name, { error: null, code: null })
      this.sendBpf(name, true)
    }
    let released = false
    return () => {
      if (released) return
      released = true
      const left = (this.bpfHolds.get(name) ?? 1) - 1
      if (left > 0) return void this.bpfHolds.set(name, left)
      this.bpfHolds.delete(name)
      this.bpfWanted.delete(name)
      this.bpfNeeds.get(name)?.()
      this.bpfNeeds.delete(name)
      this.setBpfLocal(name, { error: null, code: null })
      this.sendBpf(name, false)
    }
  }

  /**
   * Ask a held module for other settings (undefined: its defaults). The daemon restarts
   * it with them when this page is its only holder, and refuses (`settings_conflict`,
   * shown on the widget) when other viewers run it with other settings; the module then
   * stays on as it was.
   */
  setBpfSettings(name: string, settings: BpfSettings | undefined): void {
    if (!this.bpfHolds.has(name)) return
    if (JSON.stringify(this.bpfWanted.get(name) ?? null) === JSON.stringify(settings ?? null)) return
    this.bpfWanted.set(name, settings)
    this.setBpfLocal(name, { error: null, code: null })
    // An explicit change: "no filter" means the defaults now, not whatever others run.
    this.sendBpf(name, true, settings ?? {})
  }

  /**
   * Take this page's holds on a new socket. The daemon handles a connection's messages in
   * order and an enable compiles for 0.3-1 s, so a subscribe sent after four enables would
   * wait seconds for them: subscribe to the held modules' metrics first (their history
   * draws at once), then enable.
   */
  private async takeHolds(ws: WebSocket): Promise<void> {
    await Promise.all([this.loadBpf(true), this.metricsLoad])
    if (this.ws !== ws || this.state.value !== 'open') return
    const describe = (m: string) => this.descriptor(m)
    for (const name of this.bpfHolds.keys()) {
      const mod = this.bpfModule(name)
      if (mod && !this.bpfNeeds.has(name)) this.bpfNeeds.set(name, this.need(widgetMetrics(mod, describe)))
    }
    this.flush()
    for (const name of this.bpfHolds.keys()) this.sendBpf(name, true)
  }

  /** Subscriptions taken on behalf of held modules (released with the hold). */
  private bpfNeeds = new Map<string, () => void>()

  /** The module as this page should show it. */
  bpfView(name: string): BpfView {
    const status = this.bpfModule(name)
    const local = this.bpfLocal.value.get(name)
    const held = this.bpfHolds.has(name)
    let phase: BpfView['phase'] = status?.state === 'on' ? 'on' : 'off'
    let message: string | null = null
    let code: string | null = null
    if (local?.pending === 'enable' || (held && status?.state === 'starting')) phase = 'starting'
    else if (local?.pending === 'disable') phase = 'stopping'
    else if (held && local?.error) [phase, message, code] = ['error', local.error, local.code]
    else if (held && status?.state === 'error') [phase, message] = ['error', status.error ?? 'the module failed']
    else if (held && this.state.value !== 'open') phase = 'starting'
    return { held, phase, message, code, status }
  }

  /** Settings this page asks of module `name` while holding it (undefined: none). */
  bpfSettingsWanted(name: string): BpfSettings | undefined {
    return this.bpfWanted.get(name)
  }

  private setBpfLocal(name: string, patch: Partial<BpfLocal>): void {
    const next = new Map(this.bpfLocal.value)
    next.set(name, { pending: null, error: null, code: null, ...next.get(name), ...patch })
    this.bpfLocal.value = next
  }

  private sendBpf(name: string, enabled: boolean, explicit?: BpfSettings): void {
    const ws = this.ws
    if (!ws || ws.readyState !== 1 || this.state.value !== 'open') return
    const msg: BpfToggleMsg = { type: 'bpf', name, enabled }
    const wanted = explicit ?? this.bpfWanted.get(name)
    const st = this.bpfModule(name)
    if (enabled && wanted) msg.settings = { ...wanted }
    // Without settings of its own, join a run other viewers started with theirs (asking
    // for the defaults would be refused as a conflict).
    else if (enabled && st?.state === 'on' && st.settings && st.users.length) msg.settings = st.settings
    this.bpfPending.push({ name, enabled })
    this.setBpfLocal(name, { pending: enabled ? 'enable' : 'disable' })
    ws.send(JSON.stringify(msg))
  }

  private onBpf(msg: BpfMsg): void {
    const st = msg.status
    const i = this.bpfPending.findIndex((p) => p.name === st.name)
    if (i >= 0) this.bpfPending.splice(i, 1)
    const list = this.bpf.value
    if (list) {
      const modules = list.modules.some((m) => m.name === st.name)
        ? list.modules.map((m) => (m.name === st.name ? st : m))
        : [...list.modules, st]
      this.bpf.value = { ...list, modules }
    } else {
      this.bpf.value = { available: true, reason: null, modules: [st] }
    }
    const stillPending = this.bpfPending.some((p) => p.name === st.name)
    this.setBpfLocal(st.name, { pending: stillPending ? this.bpfLocal.value.get(st.name)?.pending ?? null : null, error: null, code: null })
  }

  /** An error answering a `bpf` message: the oldest unanswered toggle is the one refused. */
  private onBpfError(msg: ErrorMsg): boolean {
    const p = this.bpfPending.shift()
    if (!p) return false
    const detail = msg.errors?.length ? msg.errors.join('; ') : msg.message
    const pending = this.bpfPending.some((q) => q.name === p.name) ? this.bpfLocal.value.get(p.name)?.pending ?? null : null
    this.setBpfLocal(p.name, { pending, error: detail, code: msg.code })
    return true
  }

  // -- internals -------------------------------------------------------------------

  private loadMetadata(force = false): void {
    if (this.metricsLoad && !force) return
    this.metricsLoad = (async () => {
      try {
        const [info, metrics] = await Promise.all([
          getJson<HostInfo>(this.base, '/api/v1/host'),
          getJson<{ metrics: Descriptor[] }>(this.base, '/api/v1/metrics'),
        ])
        this.info.value = info
        this.catalogue.value = new Map(metrics.metrics.map((d) => [d.name, d]))
      } catch (e) {
        if (e instanceof DaemonError && e.status === 401) {
          this.metricsLoad = null // load again once signed in
          return this.unauthorized(e.message)
        }
        // The websocket may still work (REST refused cross-origin); the socket's own
        // failure, if any, reports the problem. Keep the REST one as a notice.
        this.notice(e instanceof DaemonError ? e.code : 'error', (e as Error).message)
      }
    })()
  }

  private connect(): void {
    this.env.clearTimeout(this.retryTimer)
    this.retryTimer = null
    this.retryAt.value = null
    this.state.value = this.attempt === 0 ? 'connecting' : 'reconnecting'
    let ws: WebSocket
    try {
      ws = new this.env.WebSocket(streamUrl(this.base))
    } catch (e) {
      this.problem.value = `Cannot open a websocket to ${this.base || location.host}: ${(e as Error).message}`
      this.scheduleReconnect()
      return
    }
    this.ws = ws
    this.subscribed.clear()
    this.layouts.clear()
    this.bpfPending = []
    if ([...this.bpfLocal.value.values()].some((l) => l.pending)) {
      this.bpfLocal.value = new Map([...this.bpfLocal.value].map(([k, l]) => [k, { ...l, pending: null }]))
    }
    let opened = false
    ws.onopen = () => {
      opened = true
      // Authenticate before anything else (docs/security.md); without a stored token
      // the page's cookie did it at the upgrade.
      const token = tokenFor(this.base)
      if (token) ws.send(JSON.stringify({ type: 'auth', token }))
    }
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return
      this.onMessage(typeof ev.data === 'string' ? ev.data : '')
    }
    ws.onclose = (ev) => {
      if (this.ws !== ws) return
      this.ws = null
      if (!this.started || this.state.value === 'suspended') return
      if (ev.code === 4401) return this.unauthorized(ev.reason || 'unauthorized')
      this.problem.value = this.closeReason(ev, opened)
      this.scheduleReconnect()
    }
    ws.onerror = () => {
      /* onclose follows with the details we can know */
    }
  }

  private closeReason(ev: CloseEvent, opened: boolean): string {
    const who = this.base || location.host
    if (ev.code === 1013) return `The daemon at ${who} dropped this page for being too slow; reconnecting.`
    if (ev.code === 1001) return `The daemon at ${who} is shutting down or restarting.`
    if (ev.code === 4429) return `The daemon at ${who} refuses sign-ins for a while after too many wrong tokens: ${ev.reason}.`
    if (ev.reason) return `The daemon at ${who} closed the connection: ${ev.reason} (code ${ev.code}).`
    if (!opened) {
      return isCrossOrigin(this.base)
        ? unreachableMessage(this.base)
        : `Cannot connect to the daemon at ${who}: is it running?`
    }
    return `Lost the connection to ${who} (code ${ev.code}).`
  }

  private scheduleReconnect(): void {
    if (!this.started) return
    this.attempt += 1
    const delay = Math.min(MAX_BACKOFF_S, 0.5 * 2 ** (this.attempt - 1)) * (0.8 + 0.4 * Math.random())
    this.state.value = 'reconnecting'
    this.retryAt.value = this.env.now() + delay
    this.retryTimer = this.env.setTimeout(() => {
      this.loadMetadata(this.catalogue.value === null)
      this.connect()
    }, delay * 1000)
  }

  private closeSocket(code: number): void {
    const ws = this.ws
    this.ws = null
    if (ws) {
      ws.onclose = null
      ws.onmessage = null
      try {
        ws.close(code)
      } catch {
        /* already closed */
      }
    }
  }

  private onMessage(text: string): void {
    const msg = parseServerMsg(text)
    if (!msg) return
    switch (msg.type) {
      case 'hello':
        if (msg.protocol !== PROTOCOL_VERSION) {
          this.problem.value = `The daemon speaks protocol ${msg.protocol}; this dashboard speaks ${PROTOCOL_VERSION}. Open the dashboard served by that daemon.`
          this.stop()
          return
        }
        this.hello.value = msg
        this.state.value = 'open'
        this.problem.value = null
        this.attempt = 0
        this.queueFlush()
        // A new socket holds no module: take this page's holds again.
        if (this.bpfHolds.size) void this.takeHolds(this.ws!)
        else if (this.bpfWatchers) void this.loadBpf(true)
        return
      case 'meta':
        return this.onMeta(msg)
      case 'samples':
        return this.onSamples(msg)
      case 'error':
        return this.onError(msg)
      case 'bpf':
        return this.onBpf(msg)
      case 'notice':
        return this.notice(msg.code, msg.message)
      case 'stale':
        this.stale.value = msg.stale
        return
      default:
        return
    }
  }

  private onMeta(msg: MetaMsg): void {
    const descs = new Map(this.descriptors.value)
    for (const [name, d] of Object.entries(msg.metrics)) descs.set(name, d)
    this.descriptors.value = descs
    if (msg.absent) this.absent.value = msg.absent
    this.stale.value = msg.stale ?? {}
    const layout: Layout = { main: { keys: [], idx: [], scale: [] }, short: { keys: [], idx: [], scale: [] } }
    msg.series.forEach(([metric, instance], c) => {
      const part = isShort(metric) ? layout.short : layout.main
      part.keys.push(seriesKey(metric, instance))
      part.idx.push(c)
      part.scale.push(descs.get(metric)?.value_units.base_factor ?? 1)
    })
    this.layouts.set(msg.seq, layout)
    // Samples always refer to a recent meta; keep a few in case frames cross.
    for (const seq of this.layouts.keys()) if (seq < msg.seq - 4) this.layouts.delete(seq)
  }

  private onSamples(msg: SamplesMsg): void {
    const layout = this.layouts.get(msg.seq)
    if (!layout) return
    for (const [tl, part] of [
      [this.main, layout.main],
      [this.short, layout.short],
    ] as const) {
      if (part.keys.length) tl.add(msg.t, part.keys, part.idx.map((c) => msg.v[c]), part.scale)
    }
    this.ready.value = true
    this.bump()
  }

  private onError(msg: ErrorMsg): void {
    if (msg.ref === 'bpf' && this.onBpfError(msg)) return
    if (msg.ref === 'subscribe' && msg.code === 'unknown_metric') {
      // Nothing from that subscribe was applied. Learn which names were unknown, mark
      // them (their panels say so) and subscribe the rest of that batch again.
      const listed = new Set(
        msg.names ?? (msg.message.split(': ').pop() ?? '').split(',').map((x) => x.trim()),
      )
      const batch = this.sent.find((b) => b.some((n) => listed.has(n)))
      if (batch) {
        const unknown = new Set(this.unknown.value)
        for (const n of batch) {
          this.subscribed.delete(n)
          if (listed.has(n)) unknown.add(n)
        }
        this.unknown.value = unknown
        this.sent = this.sent.filter((b) => b !== batch)
        this.queueFlush()
        this.bump()
        return
      }
    }
    this.notice(msg.code, msg.message)
  }

  /** Recent subscribe batches, to match an `unknown_metric` error to what it refused. */
  private sent: string[][] = []

  private notice(code: string, message: string): void {
    // Retries repeat the same failure: say it once.
    if (this.notices.value.some((n) => n.message === message)) return
    this.notices.value = [...this.notices.value.slice(-4), { at: this.env.now(), code, message }]
  }

  private queueFlush(): void {
    if (this.flushQueued) return
    this.flushQueued = true
    queueMicrotask(() => {
      this.flushQueued = false
      this.flush()
    })
  }

  /** Send one subscribe for every wanted name not yet subscribed. */
  private flush(): void {
    const ws = this.ws
    if (!ws || ws.readyState !== 1 || this.state.value !== 'open') return
    if (this.catalogue.value === null && this.metricsLoad && !this.waitedForMetadata) {
      // Subscribe only to what this daemon has, so one absent metric does not get a
      // whole batch refused. If the list cannot be had (REST refused), go ahead anyway.
      this.waitedForMetadata = true
      void this.metricsLoad.then(() => this.queueFlush())
      return
    }
    const fresh = [...this.wants.keys()].filter((n) => !this.subscribed.has(n) && !this.unknown.value.has(n))
    if (!fresh.length) return
    const last = this.main.last
    const gap = last === undefined ? this.windowS : this.env.now() - last + 2 * this.intervalS
    // A metric new to this connection needs its whole window, not just the gap.
    const isNew = fresh.some((n) => !this.timelineFor(n).instances.has(n))
    const backfill = Math.ceil(Math.min(MAX_BACKFILL_S, this.windowS, isNew ? this.windowS : Math.max(gap, 1)))
    // Names this daemon is known to have go in `names`; the rest in `optional`, which the
    // daemon reports back in meta.absent instead of refusing the whole message (a host
    // without PSI, a daemon without a cgroup collector). `names` may not be empty.
    const cat = this.catalogue.value
    const known = (n: string) => !cat || cat.has(n) || [...cat.keys()].some((k) => k.startsWith(n + '.'))
    let names = fresh.filter(known)
    let optional = fresh.filter((n) => !known(n))
    if (!names.length) {
      // Everything asked for is missing from the daemon's list: the panels say so.
      if (cat) return
      names = optional.slice(0, 1)
      optional = optional.slice(1)
    }
    const msg: SubscribeMsg = { type: 'subscribe', names, backfill }
    if (optional.length) msg.optional = optional
    // The container filter applies to the connection's per-process and per-cgroup series.
    if (this.container.value) msg.filter = { container: this.container.value }
    for (const n of fresh) this.subscribed.add(n)
    this.sent = [...this.sent.slice(-7), fresh]
    ws.send(JSON.stringify(msg))
  }

  private dropUnwanted(): void {
    const gone = [...this.subscribed].filter((n) => !this.wants.has(n))
    if (!gone.length) return
    for (const n of gone) this.subscribed.delete(n)
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify({ type: 'unsubscribe', names: gone }))
    const set = new Set(gone)
    this.main.forgetMetrics((m) => set.has(m))
    this.short.forgetMetrics((m) => set.has(m))
    this.bump()
  }

  private async fillFromHistory(seconds: number): Promise<void> {
    const names = [...this.subscribed].filter((n) => !isShort(n))
    if (!names.length) return
    try {
      const q = new URLSearchParams({ names: names.join(','), seconds: String(Math.min(86400, Math.ceil(seconds))) })
      const h = await getJson<HistoryAnswer>(this.base, `/api/v1/history?${q}`)
      const keys = h.series.map((s) => seriesKey(s.name, s.instance))
      const scale = h.series.map((s) => this.descriptor(s.name)?.value_units.base_factor ?? 1)
      this.main.add(h.t, keys, h.series.map((s) => s.values), scale)
      this.bump()
    } catch (e) {
      this.notice('history', `Could not load older history: ${(e as Error).message}`)
    }
  }

  private bump(): void {
    if (this.frameQueued) return
    this.frameQueued = true
    this.env.frame(() => {
      this.frameQueued = false
      this.version.value++
    })
  }
}
