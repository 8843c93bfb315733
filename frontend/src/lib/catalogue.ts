/**
 * The panel catalogue: daemon/panels.json, shared with the server-side SVG renderer so a
 * panel looks the same in the dashboard and in a wiki's static render.
 */
import raw from '../../../daemon/panels.json'

export type PanelKind = 'timeseries' | 'processes' | 'bpf' | 'flamegraph'

export interface SeriesSpec {
  metric: string
  /** Legend label; `{instance}` is replaced by the instance name. */
  label: string
  /** The metric's values are 0-100 percentages: shown as a utilisation. */
  percent?: boolean
}

export interface PanelSpec {
  id: string
  group: string
  title: string
  help?: string
  kind?: PanelKind
  stack?: boolean
  requires?: string
  series: SeriesSpec[]
}

export interface GroupSpec {
  id: string
  title: string
}

interface Catalogue {
  version: number
  palette: string[]
  groups: GroupSpec[]
  default: string[]
  panels: PanelSpec[]
}

const catalogue = raw as unknown as Catalogue

/** Series colours, shared with the SVG renders (colour-blind-friendly first). */
export const PALETTE: readonly string[] = catalogue.palette
export const GROUPS: readonly GroupSpec[] = catalogue.groups
export const PANELS: readonly PanelSpec[] = catalogue.panels
export const DEFAULT_PANELS: readonly string[] = catalogue.default
const byId = new Map(PANELS.map((p) => [p.id, p]))

export const CUSTOM_PREFIX = 'custom:'
/** Widgets of BPF modules are `bpf.<module>`, one per module the daemon lists. */
export const BPF_PREFIX = 'bpf.'

/** Titles for modules the catalogue file does not list. */
const BPF_TITLES: Record<string, string> = {
  syscalls: 'Syscall latency and top syscalls',
  offcpu: 'Off-CPU time (heat map)',
}

/** The widget of BPF module `name` (a catalogue entry when there is one). */
export function bpfPanel(name: string): PanelSpec {
  return byId.get(BPF_PREFIX + name) ?? {
    id: BPF_PREFIX + name,
    group: 'bpf',
    title: BPF_TITLES[name] ?? `BPF: ${name}`,
    kind: 'bpf',
    requires: 'bpf',
    series: [],
  }
}

/** Module name of a BPF widget, or null. */
export function bpfModuleOf(p: PanelSpec): string | null {
  return p.kind === 'bpf' && p.id.startsWith(BPF_PREFIX) ? p.id.slice(BPF_PREFIX.length) : null
}

/** A custom widget: any metric from the descriptor list, one line per instance. */
export function customPanel(metric: string): PanelSpec {
  return {
    id: CUSTOM_PREFIX + metric,
    group: 'custom',
    title: metric,
    series: [{ metric, label: '{instance}' }],
  }
}

/** The panel for a widget id (catalogue id or `custom:METRIC`), or undefined. */
export function panelById(id: string): PanelSpec | undefined {
  if (id.startsWith(CUSTOM_PREFIX)) {
    const metric = id.slice(CUSTOM_PREFIX.length)
    return /^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$/.test(metric) ? customPanel(metric) : undefined
  }
  if (/^bpf\.[a-z][a-z0-9_]{0,31}$/.test(id)) return bpfPanel(id.slice(BPF_PREFIX.length))
  return byId.get(id)
}

export function panelKind(p: PanelSpec): PanelKind {
  return p.kind ?? 'timeseries'
}

/** Metric names a panel streams (BPF and flame graph panels stream none yet). */
export function panelMetrics(p: PanelSpec): string[] {
  return [...new Set(p.series.map((s) => s.metric))]
}

export function seriesLabel(spec: SeriesSpec, instance: string): string {
  const text = spec.label.replaceAll('{instance}', instance)
  return text.trim() || spec.metric
}

/** Panels that stream process or cgroup metrics, i.e. the ones a container filter scopes. */
export function isContainerScoped(p: PanelSpec): boolean {
  return p.series.some((s) => s.metric.startsWith('proc.') || s.metric.startsWith('cgroup.'))
}
