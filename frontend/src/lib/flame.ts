/**
 * Flame graphs as data: the daemon's JSON tree flattened into arrays, the layout of a zoom
 * root into rectangles, hit testing, search, and colours (by frame kind, or by change for
 * a differential graph). Pure: FlameGraph.vue draws the rectangles on a canvas.
 *
 * Why flat arrays: a 30 s capture at 99 Hz on two CPUs is ~6,000 samples and a few thousand
 * nodes; zooming re-lays-out the whole tree on every click and hovering hit-tests on every
 * mouse move, so the tree is walked once into pre-order arrays (a subtree is the index range
 * `[i, end[i])`) and a layout is one linear pass that skips subtrees too narrow to see.
 */

export type FrameKind = 'process' | 'user' | 'kernel' | 'jit' | 'unknown'

/** One node of `GET /api/v1/profiles/ID?format=json` (`base` only in a diff answer). */
export interface FlameNode {
  name: string
  kind: FrameKind | 'root'
  module?: string | null
  value: number
  self: number
  base?: number
  children?: FlameNode[]
}

/** The tree in pre-order; node 0 is the root. */
export interface FlatTree {
  n: number
  name: string[]
  kind: (FrameKind | 'root')[]
  module: (string | null)[]
  value: Float64Array
  self: Float64Array
  /** Inclusive value in the base capture of a diff, else null. */
  base: Float64Array | null
  depth: Uint16Array
  parent: Int32Array
  /** One past the last node of the subtree rooted here. */
  end: Int32Array
  maxDepth: number
}

/** Flatten the daemon's tree (iteratively: a deep recursive stack must not overflow). */
export function flatten(root: FlameNode): FlatTree {
  const nodes: FlameNode[] = []
  const depths: number[] = []
  const parents: number[] = []
  const stack: [FlameNode, number, number][] = [[root, 0, -1]]
  while (stack.length) {
    const [node, d, p] = stack.pop()!
    const i = nodes.length
    nodes.push(node)
    depths.push(d)
    parents.push(p)
    const kids = node.children ?? []
    for (let k = kids.length - 1; k >= 0; k--) stack.push([kids[k], d + 1, i])
  }
  const n = nodes.length
  const hasBase = nodes.some((x) => typeof x.base === 'number')
  const t: FlatTree = {
    n,
    name: nodes.map((x) => String(x.name)),
    kind: nodes.map((x) => x.kind),
    module: nodes.map((x) => x.module ?? null),
    value: Float64Array.from(nodes, (x) => Math.max(0, Number(x.value) || 0)),
    self: Float64Array.from(nodes, (x) => Math.max(0, Number(x.self) || 0)),
    base: hasBase ? Float64Array.from(nodes, (x) => Math.max(0, Number(x.base) || 0)) : null,
    depth: Uint16Array.from(depths),
    parent: Int32Array.from(parents),
    end: new Int32Array(n),
    maxDepth: 0,
  }
  // A subtree ends where the next node at the same or a shallower depth starts.
  const open: number[] = []
  for (let i = 0; i < n; i++) {
    while (open.length && t.depth[open[open.length - 1]] >= t.depth[i]) t.end[open.pop()!] = i
    open.push(i)
    if (t.depth[i] > t.maxDepth) t.maxDepth = t.depth[i]
  }
  for (const i of open) t.end[i] = n
  return t
}

/** Rectangles of one layout, in pre-order; x and w in pixels, depth in rows. */
export interface Layout {
  count: number
  idx: Int32Array
  x: Float64Array
  w: Float64Array
  depth: Uint16Array
  /** Deepest row drawn. */
  maxDepth: number
}

/**
 * Lay out the tree zoomed on `zoom` across `width` pixels: the zoom root and its ancestors
 * span the full width (so the path back up stays visible and clickable), its descendants
 * are placed left to right in the daemon's order, proportional to their value. Subtrees
 * narrower than `minWidth` pixels are skipped whole.
 */
export function layout(t: FlatTree, zoom: number, width: number, minWidth = 0.5): Layout {
  const cap = t.n
  const idx = new Int32Array(cap)
  const x = new Float64Array(cap)
  const w = new Float64Array(cap)
  const depth = new Uint16Array(cap)
  let count = 0
  let maxDepth = 0
  const ancestors: number[] = []
  for (let a = t.parent[zoom]; a >= 0; a = t.parent[a]) ancestors.push(a)
  for (let k = ancestors.length - 1; k >= 0; k--) {
    const a = ancestors[k]
    idx[count] = a
    x[count] = 0
    w[count] = width
    depth[count] = t.depth[a]
    count++
  }
  const total = t.value[zoom]
  if (total <= 0) {
    idx[count] = zoom
    w[count] = width
    depth[count] = t.depth[zoom]
    return { count: count + 1, idx, x, w, depth, maxDepth: t.depth[zoom] }
  }
  const scale = width / total
  // cursor[i]: where the next child of node i starts.
  const cursor = new Float64Array(cap)
  cursor[zoom] = 0
  const end = t.end[zoom]
  let i = zoom
  while (i < end) {
    const px = i === zoom ? 0 : cursor[t.parent[i]]
    const pw = i === zoom ? width : t.value[i] * scale
    if (i !== zoom) cursor[t.parent[i]] = px + pw
    if (pw < minWidth) {
      i = t.end[i]
      continue
    }
    cursor[i] = px
    idx[count] = i
    x[count] = px
    w[count] = pw
    depth[count] = t.depth[i]
    if (t.depth[i] > maxDepth) maxDepth = t.depth[i]
    count++
    i++
  }
  return { count, idx, x, w, depth, maxDepth }
}

/** Top of a row in pixels: flame graphs grow up from the bottom, icicles hang down. */
export function rowTop(depth: number, rowH: number, height: number, icicle: boolean): number {
  return icicle ? depth * rowH : height - (depth + 1) * rowH
}

/** The node under (px, py), or -1. */
export function hitTest(l: Layout, px: number, py: number, rowH: number, height: number, icicle: boolean): number {
  // Row d spans [top, top + rowH): flame rows count up from the bottom edge, so a point on
  // a row's top pixel is in that row, not the one above.
  const d = icicle ? Math.floor(py / rowH) : Math.ceil((height - py) / rowH) - 1
  if (d < 0) return -1
  for (let k = 0; k < l.count; k++) {
    if (l.depth[k] === d && px >= l.x[k] && px < l.x[k] + l.w[k]) return l.idx[k]
  }
  return -1
}

/** Nodes whose name matches, and the share of all samples under a match. */
export interface SearchResult {
  matched: Uint8Array
  nodes: number
  /** Samples under matching frames, each counted once (a match inside a match adds nothing). */
  value: number
  /** `value` over the root's value, 0..1. */
  share: number
}

/**
 * Case-insensitive search: a plain substring, or a regular expression written `/like this/`
 * (an invalid one matches nothing rather than throwing at the person typing).
 */
export function search(t: FlatTree, query: string): SearchResult {
  const matched = new Uint8Array(t.n)
  const q = query.trim()
  if (!q) return { matched, nodes: 0, value: 0, share: 0 }
  let test: (s: string) => boolean
  const re = /^\/(.+)\/$/.exec(q)
  if (re) {
    let rx: RegExp | null = null
    try {
      rx = new RegExp(re[1], 'i')
    } catch {
      rx = null
    }
    test = rx ? (s) => rx.test(s) : () => false
  } else {
    const needle = q.toLowerCase()
    test = (s) => s.toLowerCase().includes(needle)
  }
  let nodes = 0
  let value = 0
  // Pre-order: skipping a matched node's subtree for `value` counts nested matches once.
  let coveredUntil = -1
  for (let i = 1; i < t.n; i++) {
    if (!test(t.name[i])) continue
    matched[i] = 1
    nodes++
    if (i >= coveredUntil) {
      value += t.value[i]
      coveredUntil = t.end[i]
    }
  }
  const total = t.value[0]
  return { matched, nodes, value, share: total > 0 ? value / total : 0 }
}

/** The node's share of its root, and of its parent. */
export function shares(t: FlatTree, i: number): { ofTotal: number; ofParent: number } {
  const total = t.value[0]
  const p = t.parent[i]
  return {
    ofTotal: total > 0 ? t.value[i] / total : 0,
    ofParent: p >= 0 && t.value[p] > 0 ? t.value[i] / t.value[p] : 1,
  }
}

// -- colours ------------------------------------------------------------------------------

/** A small stable hash of a frame name, so a function keeps its shade across redraws. */
export function nameHash(s: string): number {
  let h = 2166136261
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 16777619)
  }
  return (h >>> 0) / 4294967296
}

/** Hue ranges per kind: user red, kernel orange, JIT green, process violet, unknown grey. */
export const KIND_COLOURS: Record<FrameKind | 'root', { h: [number, number]; s: number; l: [number, number]; label: string }> = {
  user: { h: [0, 14], s: 70, l: [62, 72], label: 'user' },
  kernel: { h: [32, 44], s: 88, l: [52, 60], label: 'kernel' },
  jit: { h: [95, 140], s: 50, l: [50, 62], label: 'JIT' },
  process: { h: [255, 275], s: 45, l: [62, 70], label: 'process' },
  unknown: { h: [0, 0], s: 0, l: [66, 74], label: 'unknown' },
  root: { h: [210, 210], s: 10, l: [70, 70], label: 'all' },
}

/** Fill colour of a frame by kind, varied within the kind's range by its name. */
export function kindColour(kind: FrameKind | 'root', name: string): string {
  const c = KIND_COLOURS[kind] ?? KIND_COLOURS.unknown
  const v = nameHash(name)
  const h = c.h[0] + (c.h[1] - c.h[0]) * v
  const l = c.l[0] + (c.l[1] - c.l[0]) * (1 - v)
  return `hsl(${h.toFixed(0)} ${c.s}% ${l.toFixed(0)}%)`
}

/**
 * Change of each node's own (self) share between the base capture and this one:
 * `self/total - baseSelf/baseTotal`, in -1..1. Shares, not counts, so captures of different
 * lengths compare; self, not inclusive, so a function is red because it grew, not because
 * something it calls did (as Brendan Gregg's differential flame graphs colour).
 */
export function selfDeltas(t: FlatTree, baseTotal: number): Float64Array {
  const out = new Float64Array(t.n)
  const base = t.base
  if (!base) return out
  const childBase = new Float64Array(t.n)
  for (let i = 1; i < t.n; i++) childBase[t.parent[i]] += base[i]
  const total = t.value[0]
  for (let i = 0; i < t.n; i++) {
    const baseSelf = Math.max(0, base[i] - childBase[i])
    const now = total > 0 ? t.self[i] / total : 0
    const before = baseTotal > 0 ? baseSelf / baseTotal : 0
    out[i] = now - before
  }
  return out
}

/** Largest |delta|, the scale of the diff colours (never 0). */
export function maxAbs(d: Float64Array): number {
  let m = 0
  for (const v of d) if (Math.abs(v) > m) m = Math.abs(v)
  return m || 1
}

/**
 * Diff fill: red = grew, blue = shrank, near-white = unchanged; saturation grows with the
 * change relative to the largest one (square root, so small changes are still visible).
 */
export function diffColour(delta: number, scale: number): string {
  const t = Math.min(1, Math.sqrt(Math.abs(delta) / scale))
  if (t < 0.02) return 'hsl(0 0% 88%)'
  const hue = delta > 0 ? 0 : 220
  return `hsl(${hue} ${(25 + 65 * t).toFixed(0)}% ${(88 - 33 * t).toFixed(0)}%)`
}

/** A frame's label cut to fit `px` pixels at `charPx` per character ('' when nothing fits). */
export function fitLabel(name: string, px: number, charPx: number): string {
  const room = Math.floor((px - 6) / charPx)
  if (room < 3) return ''
  return name.length <= room ? name : name.slice(0, room - 1) + '…'
}
