/**
 * Named dashboards kept in this browser (localStorage), exportable and importable as
 * JSON files so a team can pass a dashboard around or keep it next to a runbook.
 */
import { sanitizeView, type ViewState } from './view'

const KEY = 'hostscope.dashboards.v1'
export const EXPORT_FORMAT = 'hostscope-dashboards'

export type Saved = Record<string, ViewState>

export function loadSaved(storage: Storage = localStorage): Saved {
  try {
    const data = JSON.parse(storage.getItem(KEY) ?? '{}') as Record<string, unknown>
    const out: Saved = {}
    for (const [name, v] of Object.entries(data)) {
      const view = sanitizeView(v)
      if (view) out[name] = view
    }
    return out
  } catch {
    return {}
  }
}

export function storeSaved(saved: Saved, storage: Storage = localStorage): void {
  storage.setItem(KEY, JSON.stringify(saved))
}

export function exportJson(saved: Saved): string {
  return JSON.stringify({ format: EXPORT_FORMAT, version: 1, dashboards: saved }, null, 2)
}

/** Dashboards from an exported file; throws an Error with a message for people. */
export function importJson(text: string): Saved {
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch {
    throw new Error('This file is not JSON.')
  }
  const d = data as { format?: unknown; dashboards?: unknown }
  if (d?.format !== EXPORT_FORMAT || !d.dashboards || typeof d.dashboards !== 'object') {
    throw new Error('This file is not a hostscope dashboard export.')
  }
  const out: Saved = {}
  for (const [name, v] of Object.entries(d.dashboards as Record<string, unknown>)) {
    const view = sanitizeView(v)
    if (view && name.trim()) out[name.trim().slice(0, 100)] = view
  }
  if (!Object.keys(out).length) throw new Error('This file holds no valid dashboard.')
  return out
}
