import { describe, expect, it } from 'vitest'
import fx from './fixtures/profiles.synthetic.json'
import {
  diffColour,
  fitLabel,
  flatten,
  hitTest,
  kindColour,
  layout,
  maxAbs,
  rowTop,
  search,
  selfDeltas,
  shares,
  type FlameNode,
  type FlatTree,
} from './flame'

const tree = fx.json.tree as unknown as FlameNode
const byName = (t: FlatTree, name: string, from = 0): number => t.name.indexOf(name, from)

/**
 * A synthetic capture the size of 30 s at 99 Hz on two CPUs: ~6,000 samples over a few
 * hundred distinct stacks 4-34 frames deep, sharing their outer frames (a few thousand nodes).
 */
export function bigTree(stacks: number, samples: number, seed = 1): FlameNode {
  let s = seed
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296
  const paths: string[][] = []
  for (let k = 0; k < stacks; k++) {
    const depth = 4 + Math.floor(rnd() * 31)
    const p = [`proc${Math.floor(rnd() * 8)}`]
    for (let d = 1; d < depth; d++) p.push(`fn_${d}_${Math.floor(rnd() * (d < 4 ? 3 : 6))}`)
    paths.push(p)
  }
  const root: FlameNode = { name: 'all', kind: 'root', value: 0, self: 0, children: [] }
  for (let n = 0; n < samples; n++) {
    const path = paths[Math.floor(rnd() * rnd() * stacks)]
    let node = root
    node.value++
    path.forEach((name, d) => {
      let child = node.children!.find((c) => c.name === name)
      if (!child) {
        const kind = d === 0 ? 'process' : d > path.length - 4 ? 'kernel' : 'user'
        child = { name, kind, module: null, value: 0, self: 0, children: [] }
        node.children!.push(child)
      }
      child.value++
      node = child
    })
    node.self++
  }
  return root
}

describe('flatten', () => {
  it('keeps pre-order, depths, parents and subtree ends', () => {
    const t = flatten(tree)
    expect(t.name[0]).toBe('all')
    expect(t.value[0]).toBe(fx.json.profile.total)
    for (let i = 1; i < t.n; i++) {
      const p = t.parent[i]
      expect(p).toBeLessThan(i)
      expect(t.depth[i]).toBe(t.depth[p] + 1)
      expect(i).toBeLessThan(t.end[p])
      expect(t.end[i]).toBeLessThanOrEqual(t.end[p])
    }
    // The subtree of a process is exactly the nodes whose ancestor it is.
    const proc = byName(t, 'busyloop')
    for (let i = proc + 1; i < t.end[proc]; i++) {
      let a = t.parent[i]
      while (a > proc) a = t.parent[a]
      expect(a).toBe(proc)
    }
    expect(t.base).toBeNull()
    expect(flatten(fx.diff.tree as unknown as FlameNode).base).not.toBeNull()
  })

  it('survives a stack thousands of frames deep', () => {
    const root: FlameNode = { name: 'all', kind: 'root', value: 1, self: 0, children: [] }
    let n = root
    for (let d = 0; d < 5000; d++) {
      const c: FlameNode = { name: `f${d}`, kind: 'user', value: 1, self: d === 4999 ? 1 : 0, children: [] }
      n.children!.push(c)
      n = c
    }
    const t = flatten(root)
    expect(t.n).toBe(5001)
    expect(t.maxDepth).toBe(5000)
    expect(t.end[0]).toBe(5001)
  })
})

describe('layout', () => {
  const t = flatten(tree)

  it('places children left to right in proportion to their value', () => {
    const l = layout(t, 0, 1000)
    const rect = (i: number) => {
      const k = Array.from(l.idx.subarray(0, l.count)).indexOf(i)
      return k < 0 ? null : { x: l.x[k], w: l.w[k], d: l.depth[k] }
    }
    expect(rect(0)).toEqual({ x: 0, w: 1000, d: 0 })
    let x = 0
    for (let i = 1; i < t.n; i++) {
      if (t.parent[i] !== 0) continue
      const r = rect(i)!
      expect(r.x).toBeCloseTo(x, 9)
      expect(r.w).toBeCloseTo((t.value[i] / t.value[0]) * 1000, 9)
      x += r.w
    }
    expect(x).toBeCloseTo(1000, 9)
    // A child never sticks out of its parent.
    for (let k = 0; k < l.count; k++) {
      const p = rect(t.parent[l.idx[k]])
      if (!p) continue
      expect(l.x[k]).toBeGreaterThanOrEqual(p.x - 1e-9)
      expect(l.x[k] + l.w[k]).toBeLessThanOrEqual(p.x + p.w + 1e-9)
    }
  })

  it('zooms: the zoom root spans the width, its ancestors stay, other branches go', () => {
    const main = byName(t, 'main', byName(t, 'busyloop'))
    const l = layout(t, main, 800)
    const ids = Array.from(l.idx.subarray(0, l.count))
    const k = ids.indexOf(main)
    expect(l.x[k]).toBe(0)
    expect(l.w[k]).toBe(800)
    for (let a = t.parent[main]; a >= 0; a = t.parent[a]) expect(l.w[ids.indexOf(a)]).toBe(800)
    expect(ids).not.toContain(byName(t, 'swapper/0'))
    expect(ids).not.toContain(byName(t, 'main'))
    expect(ids).toContain(byName(t, 'busy_loop'))
  })

  it('skips subtrees narrower than the minimum width', () => {
    const l = layout(t, 0, 100, 5)
    for (let k = 0; k < l.count; k++) expect(l.w[k]).toBeGreaterThanOrEqual(5)
    expect(l.count).toBeLessThan(t.n)
  })

  it('hit-tests flame (bottom-up) and icicle (top-down) rows', () => {
    const W = 1000
    const H = 300
    const rowH = 16
    const l = layout(t, 0, W)
    for (const icicle of [false, true]) {
      for (let k = 0; k < l.count; k++) {
        const i = l.idx[k]
        if (l.w[k] < 2) continue
        const top = rowTop(l.depth[k], rowH, H, icicle)
        // The middle, the top pixel and the bottom pixel of the row are all this frame.
        for (const y of [top + rowH / 2, top, top + rowH - 0.5]) {
          expect(hitTest(l, l.x[k] + l.w[k] / 2, y, rowH, H, icicle)).toBe(i)
        }
      }
      expect(hitTest(l, 10, icicle ? H - 1 : 0, rowH, H, icicle)).toBe(-1)
    }
  })

  it('lays out and hit-tests a 6,000-sample tree fast enough to zoom on click', () => {
    const big = flatten(bigTree(300, 6000))
    expect(big.value[0]).toBe(6000)
    expect(big.n).toBeGreaterThan(2000)
    const t0 = performance.now()
    const runs = 50
    let drawn = 0
    for (let r = 0; r < runs; r++) {
      const l = layout(big, r % 2 ? 0 : 1, 1600)
      drawn += l.count
      hitTest(l, 800, 100, 16, 600, false)
    }
    const ms = (performance.now() - t0) / runs
    console.info(`layout+hit test of ${big.n} nodes (${big.value[0]} samples): ${ms.toFixed(3)} ms, ${drawn / runs} rectangles`)
    expect(ms).toBeLessThan(16)
  })
})

describe('search', () => {
  const t = flatten(tree)

  it('matches substrings case-insensitively and counts nested matches once', () => {
    const r = search(t, 'BUSY')
    // busyloop (a process) contains busy_loop: the share is busyloop's value alone.
    const proc = byName(t, 'busyloop')
    expect(r.matched[proc]).toBe(1)
    expect(r.matched[byName(t, 'busy_loop')]).toBe(1)
    expect(r.value).toBe(t.value[proc])
    expect(r.share).toBeCloseTo(t.value[proc] / t.value[0], 12)
  })

  it('sums separate matches', () => {
    const r = search(t, 'entry_SYSCALL_64')
    let expected = 0
    for (let i = 0; i < t.n; i++) if (t.name[i] === 'entry_SYSCALL_64') expected += t.value[i]
    expect(r.nodes).toBe(2)
    expect(r.value).toBe(expected)
  })

  it('takes /regular expressions/ and treats a broken one as no match', () => {
    expect(search(t, '/^do_(idle|syscall_64)$/').nodes).toBe(3)
    expect(search(t, '/([/').nodes).toBe(0)
    expect(search(t, '   ').share).toBe(0)
  })

  it('finds hostile names as plain text', () => {
    const r = search(t, '<script>')
    expect(r.nodes).toBe(1)
    expect(t.name[r.matched.indexOf(1)]).toBe('<script>alert(1)</script>')
  })
})

describe('colours', () => {
  it('gives each kind its own colours and a name a stable shade', () => {
    const kinds = ['user', 'kernel', 'jit', 'process', 'unknown'] as const
    const hues = kinds.map((k) => kindColour(k, 'x'))
    expect(new Set(hues).size).toBe(kinds.length)
    expect(kindColour('kernel', 'vfs_write')).toBe(kindColour('kernel', 'vfs_write'))
    expect(kindColour('unknown', 'a')).toMatch(/^hsl\(0 0% /)
  })

  it('colours a diff red where the own share grew and blue where it shrank', () => {
    const t = flatten(fx.diff.tree as unknown as FlameNode)
    const d = selfDeltas(t, fx.diff.base!.total)
    const loop = byName(t, 'busy_loop')
    const idle = byName(t, 'default_idle_call')
    const same = byName(t, 'vfs_write')
    // busy_loop: 900 of 2300 now, 400 of 2200 before; idle: 500/2300 now, 900/2200 before.
    expect(d[loop]).toBeCloseTo(900 / 2300 - 400 / 2200, 12)
    expect(d[idle]).toBeCloseTo(500 / 2300 - 900 / 2200, 12)
    // An unchanged function's share moves only by the totals; its ancestors have no self.
    expect(d[same]).toBeCloseTo(120 / 2300 - 120 / 2200, 12)
    expect(d[byName(t, 'main')]).toBe(0)
    const scale = maxAbs(d)
    expect(diffColour(d[loop], scale)).toMatch(/^hsl\(0 /)
    expect(diffColour(d[idle], scale)).toMatch(/^hsl\(220 /)
    expect(diffColour(0, scale)).toBe('hsl(0 0% 88%)')
    expect(maxAbs(new Float64Array(3))).toBe(1)
  })
})

describe('labels and shares', () => {
  it('cuts labels to fit and hides them when nothing fits', () => {
    expect(fitLabel('do_syscall_64', 200, 7)).toBe('do_syscall_64')
    expect(fitLabel('do_syscall_64', 60, 7)).toBe('do_sys…')
    expect(fitLabel('do_syscall_64', 20, 7)).toBe('')
  })

  it('gives a frame its share of the total and of its parent', () => {
    const t = flatten(tree)
    const i = byName(t, 'busy_loop')
    expect(shares(t, i).ofTotal).toBeCloseTo(t.value[i] / t.value[0], 12)
    expect(shares(t, i).ofParent).toBeCloseTo(t.value[i] / t.value[t.parent[i]], 12)
    expect(shares(t, 0)).toEqual({ ofTotal: 1, ofParent: 1 })
  })
})
