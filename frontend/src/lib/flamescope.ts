/**
 * The FlameScope view of a capture as data: the daemon's sub-second timeline (x = seconds,
 * y = offset within the second, top = start of the second, so time reads down each column
 * then on to the next, as in Netflix's FlameScope), the colour of a cell, and the range of
 * seconds a selection of cells means. Pure: FlameScope.vue draws and handles the mouse.
 */

/** `timeline` of `GET /api/v1/profiles/ID?format=json`. */
export interface Timeline {
  slot_ms: number
  rows: number
  seconds: number
  /** counts[second][row]: samples (or blocked µs) in that cell. */
  counts: number[][]
  max: number
}

export interface Cell {
  sec: number
  row: number
}

/** Seconds after the capture started at which a cell begins. */
export function cellStart(c: Cell, rows: number): number {
  return c.sec + c.row / rows
}

/**
 * The range two cells select, in seconds after the start: from the start of the earlier
 * cell to the end of the later one, whichever order they were picked in. Rounded to the
 * millisecond so the query string stays short and exact.
 */
export function cellRange(a: Cell, b: Cell, rows: number): { start: number; end: number } {
  const ta = cellStart(a, rows)
  const tb = cellStart(b, rows)
  const lo = Math.min(ta, tb)
  const hi = Math.max(ta, tb) + 1 / rows
  return { start: Math.round(lo * 1000) / 1000, end: Math.round(hi * 1000) / 1000 }
}

/** Is the cell inside [start, end) seconds? */
export function inRange(c: Cell, rows: number, r: { start: number; end: number } | null): boolean {
  if (!r) return false
  const t = cellStart(c, rows) + 1e-9
  return t >= r.start && t < r.end
}

/** The cell under a point of a grid of `cellW` x `cellH` pixels, clamped to the grid. */
export function cellAt(px: number, py: number, cellW: number, cellH: number, tl: Timeline): Cell {
  const sec = Math.min(tl.seconds - 1, Math.max(0, Math.floor(px / cellW)))
  const row = Math.min(tl.rows - 1, Math.max(0, Math.floor(py / cellH)))
  return { sec, row }
}

/**
 * Selecting by mouse: a drag selects from where it started to where it ended; a click
 * (press and release on one cell) either marks the start or, with a start marked,
 * selects from it to here. Returns the new pending start and the selection, if any.
 */
export function selectStep(
  pending: Cell | null,
  down: Cell,
  up: Cell,
  rows: number,
): { pending: Cell | null; range: { start: number; end: number } | null } {
  const click = down.sec === up.sec && down.row === up.row
  if (!click) return { pending: null, range: cellRange(down, up, rows) }
  if (pending) return { pending: null, range: cellRange(pending, up, rows) }
  return { pending: up, range: null }
}

/** Sum of a timeline's cells inside a range (what the range's flame graph should total). */
export function rangeTotal(tl: Timeline, r: { start: number; end: number }): number {
  let sum = 0
  for (let s = 0; s < tl.counts.length; s++) {
    const col = tl.counts[s]
    for (let row = 0; row < col.length; row++) if (inRange({ sec: s, row }, tl.rows, r)) sum += col[row]
  }
  return sum
}

/**
 * Cell colour: white for none, then light to dark red with the count relative to the
 * busiest cell (square root, so a lone sample is visible next to a busy one).
 */
export function cellColour(count: number, max: number, dark: boolean): string {
  if (!(count > 0) || !(max > 0)) return dark ? '#22272e' : '#ffffff'
  const t = Math.min(1, Math.sqrt(count / max))
  return `hsl(${(40 - 40 * t).toFixed(0)} 90% ${(88 - 50 * t).toFixed(0)}%)`
}

/** "1.500 s" style label of a time within the capture. */
export function secondsLabel(s: number): string {
  return `${s.toFixed(s < 10 ? 3 : 2)} s`
}
