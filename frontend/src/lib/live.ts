/**
 * Page-wide time state shared by every chart: the window, pause, and a zoomed range.
 * Provided by the root component (no module-level singletons: tests make their own).
 */
import { reactive, type InjectionKey } from 'vue'

export interface LiveState {
  windowS: number
  paused: boolean
  /** Zoomed range [min, max] (epoch s), or null to follow the window. */
  zoom: [number, number] | null
  /** When paused without zoom: the end of the frozen window. */
  frozenAt: number | null
  dark: boolean
}

export const LIVE: InjectionKey<LiveState> = Symbol('live')

export function createLive(windowS: number, dark: boolean): LiveState {
  return reactive({ windowS, paused: false, zoom: null, frozenAt: null, dark })
}

export function pause(live: LiveState, at: number | undefined): void {
  live.paused = true
  live.frozenAt = at ?? Date.now() / 1000
}

export function resume(live: LiveState): void {
  live.paused = false
  live.zoom = null
  live.frozenAt = null
}

export function zoomTo(live: LiveState, range: [number, number], at: number | undefined): void {
  if (!live.paused) pause(live, at)
  live.zoom = [Math.min(...range), Math.max(...range)]
}

/** The range a chart whose newest sample is `last` should show. */
export function visibleRange(live: LiveState, last: number | undefined): [number, number] {
  if (live.zoom) return live.zoom
  const end = live.paused && live.frozenAt !== null ? live.frozenAt : (last ?? Date.now() / 1000)
  return [end - live.windowS, end]
}
