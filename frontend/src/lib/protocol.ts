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
}

export interface PongMsg {
  type: 'pong'
  id: unknown
}

export type ServerMsg = HelloMsg | MetaMsg | SamplesMsg | ErrorMsg | PongMsg

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
  collectors?: { name: string; interval_s: number; errors: number; last_error: string | null; stale: boolean }[]
}

export interface ProcessRow {
  instance: string
  pid: number
  cmd: string
  args: string
  container: string
  cpu: number | null
  rss: number | null
  io: number | null
  threads: number | null
  state: string
}

export interface ProcessesAnswer {
  timestamp: number
  processes: ProcessRow[]
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
    case 'meta': {
      const mm = msg as MetaMsg
      return Array.isArray(mm.series) && mm.metrics && typeof mm.metrics === 'object' ? mm : null
    }
    case 'samples': {
      const sm = msg as SamplesMsg
      return Array.isArray(sm.t) && Array.isArray(sm.v) ? sm : null
    }
    default:
      return null
  }
}
