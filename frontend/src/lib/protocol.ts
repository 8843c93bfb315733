/** Types of hostscope's wire protocol v1 (docs/protocol.md). */

export const PROTOCOL_VERSION = 1

export interface UnitsJson {
  label: string
  kind: string
  dim?: number[]
  per_sec: boolean
  base_factor: number
}

export interface Descriptor {
  name: string
  type: string
  semantics: 'counter' | 'instant' | 'discrete'
  units: UnitsJson
  value_units: UnitsJson
  indom: string | null
  help: string
  long_help?: string
  derived?: boolean
}

export type Value = number | string | null

export interface HelloMsg {
  type: 'hello'
  protocol: number
  host: string
  interval_s: number
  version: string
}

export interface MetaMsg {
  type: 'meta'
  seq: number
  interval_s: number
  series: [string, string][]
  metrics: Record<string, Descriptor>
  absent?: string[]
  /** Subscribed metrics whose collector failed or timed out (docs/protocol.md). */
  stale?: Record<string, StaleInfo>
}

/** Why a metric's values are stale: its collector's last call raised or timed out. */
export interface StaleInfo {
  collector: string
  reason: 'error' | 'timeout' | null
  /** Wall-clock seconds of the first failure of this stale spell. */
  since: number | null
  message: string | null
}

/** The stale state of the subscribed metrics changed (replaces the previous one). */
export interface StaleMsg {
  type: 'stale'
  stale: Record<string, StaleInfo>
}

/** "stale: collector network timed out 12 s ago", as a stale chart says it. */
export function staleText(info: StaleInfo, now: number): string {
  const what = info.reason === 'timeout' ? 'timed out' : 'failed'
  const ago = info.since === null ? '' : ` ${Math.max(0, Math.round(now - info.since))} s ago`
  return `stale: collector ${info.collector} ${what}${ago}`
}

export interface SamplesMsg {
  type: 'samples'
  seq: number
  backfill: boolean
  t: number[]
  v: Value[][]
}

export interface ErrorMsg {
  type: 'error'
  code: string
  message: string
  ref: string | null
  names?: string[]
  /** BPF errors: the module concerned and, for invalid settings, one message per problem. */
  module?: string
  errors?: string[]
}

/** One BPF module as `GET /api/v1/bpf` and the websocket's `bpf` answers describe it. */
export interface BpfModuleStatus {
  name: string
  title: string
  available: boolean
  /** Why the module cannot run on this host (null when it can). */
  reason: string | null
  attach_point: string | null
  state: 'off' | 'starting' | 'on' | 'error'
  error: string | null
  /** Holders: `ws:N` (a page) or `rest[:NAME]`. */
  users: string[]
  settings: Record<string, unknown> | null
  /** Table name -> what its rows are. */
  tables: Record<string, string>
  help: string
  metrics: string[]
  /** What runs degraded with the chosen plan (e.g. no TCP byte counts without BTF). */
  notes?: string[]
  /** Better attach plans this host cannot use, each with the reason. */
  rejected_attach_points?: { attach_point: string; reason: string }[]
  /** Every plan of the module, best first. */
  attach_plans?: string[]
  compile_s?: number | null
  settings_schema?: { name: string; type: string; default: unknown; help: string }[]
}

export interface BpfList {
  available: boolean
  reason: string | null
  modules: BpfModuleStatus[]
}

export interface BpfMsg {
  type: 'bpf'
  status: BpfModuleStatus
}

/** Client -> server: switch a module on or off for this connection. */
export interface BpfToggleMsg {
  type: 'bpf'
  name: string
  enabled: boolean
  settings?: Record<string, unknown>
}

export interface BpfTableAnswer {
  module: string
  table: string
  time: number
  rows: Record<string, unknown>[]
}

export interface PongMsg {
  type: 'pong'
  id: unknown
}

/** The daemon's privileged helper exited or was restarted (docs/privilege.md). */
export interface NoticeMsg {
  type: 'notice'
  code: string
  message: string
}

export type ServerMsg = HelloMsg | MetaMsg | SamplesMsg | ErrorMsg | PongMsg | BpfMsg | NoticeMsg | StaleMsg

export interface SubscribeMsg {
  type: 'subscribe'
  names: string[]
  /** Names that may match nothing on this host (reported in meta.absent, not refused). */
  optional?: string[]
  interval?: number
  backfill?: number
  filter?: { container?: string }
}

export interface Capability {
  available: boolean
  reason?: string | null
  version?: string | null
}

export interface HostInfo {
  hostname: string
  kernel: string
  machine_id?: string
  cpu_model?: string
  ncpu: number
  memory_bytes: number
  uptime_s: number
  boot_time?: number
  interval_s: number
  version: string
  protocol: number
  capabilities: Record<string, Capability | undefined>
  collectors?: { name: string; interval_s: number; errors: number; timeouts?: number; last_error: string | null; stale: boolean; stale_since?: number | null; stale_reason?: 'error' | 'timeout' | null }[]
  /** Stale collectors by name: why, since when, and their metrics. */
  stale?: Record<string, StaleInfo & { metrics: string[] }>
}

export interface ProcessRow {
  instance: string
  pid: number
  /** The kernel's task name (15 characters at most). */
  cmd: string
  /** The command line; absent for embed tokens (the daemon leaves it out). */
  args?: string | null
  container: string
  cpu: number | null
  rss: number | null
  io: number | null
  threads: number | null
  state: string
  /** `cpu` over the answer's `history.t` (only with `history=S`); null: no point then. */
  cpu_history?: (number | null)[]
}

export interface ProcessesAnswer {
  timestamp: number
  processes: ProcessRow[]
  /** With `history=S`: the time axis of every row's `cpu_history`. */
  history?: { seconds: number; step: number; t: number[] }
}

export interface HistoryAnswer {
  step: number
  t: number[]
  series: { name: string; instance: string; values: (number | null)[] }[]
}

/** An error the daemon answered with (`{"error": {"code", "message"}}`) or our own diagnosis. */
export class DaemonError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 0,
  ) {
    super(message)
  }
}

/** Parse a server frame defensively: anything malformed becomes null, never a throw. */
export function parseServerMsg(text: string): ServerMsg | null {
  let msg: unknown
  try {
    msg = JSON.parse(text)
  } catch {
    return null
  }
  if (!msg || typeof msg !== 'object') return null
  const m = msg as { type?: unknown }
  switch (m.type) {
    case 'hello':
    case 'error':
    case 'pong':
      return msg as ServerMsg
    case 'notice': {
      const nm = msg as NoticeMsg
      return typeof nm.code === 'string' && typeof nm.message === 'string' ? nm : null
    }
    case 'meta': {
      const mm = msg as MetaMsg
      return Array.isArray(mm.series) && mm.metrics && typeof mm.metrics === 'object' ? mm : null
    }
    case 'stale': {
      const st = (msg as StaleMsg).stale
      return st && typeof st === 'object' && !Array.isArray(st) ? (msg as StaleMsg) : null
    }
    case 'samples': {
      const sm = msg as SamplesMsg
      return Array.isArray(sm.t) && Array.isArray(sm.v) ? sm : null
    }
    case 'bpf': {
      const st = (msg as BpfMsg).status
      return st && typeof st === 'object' && typeof st.name === 'string' ? (msg as BpfMsg) : null
    }
    default:
      return null
  }
}
