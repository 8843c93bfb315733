/**
 * The flame graph code against the daemon's own answers, recorded from real captures by
 * frontend/scripts/record_profile_fixture.py (a busy process named `<b>"x'&` running).
 * The synthetic fixture covers crafted cases; this one checks the two sides agree.
 */
import { describe, expect, it } from 'vitest'
import rec from './fixtures/profiles.recorded.json'
import { flatten, layout, search, selfDeltas, type FlameNode } from './flame'
import { rangeTotal, type Timeline } from './flamescope'
import { DEFAULT_LIMITS, describeState, validateCapture, type ProfileSummary, type ProfilesList } from './profiles'

const HOSTILE = `<b>"x'&`
type Node = FlameNode & { self_base?: number; children: Node[] }

describe('recorded profiles API answers', () => {
  it('flattens a real tree whose values add up', () => {
    const tree = rec.json.tree as unknown as Node
    const t = flatten(tree)
    expect(t.value[0]).toBe(rec.json.profile.total)
    const childSum = new Float64Array(t.n)
    for (let i = 1; i < t.n; i++) childSum[t.parent[i]] += t.value[i]
    for (let i = 0; i < t.n; i++) expect(childSum[i] + t.self[i]).toBe(t.value[i])
    const kinds = new Set(t.kind)
    for (const k of ['process', 'user', 'kernel', 'unknown']) expect(kinds.has(k as never)).toBe(true)
    const l = layout(t, 0, 1200)
    expect(l.count).toBeGreaterThan(10)
  })

  it('finds the hostile process by its raw name, with its share', () => {
    const t = flatten(rec.json.tree as unknown as FlameNode)
    const r = search(t, HOSTILE)
    const proc = t.name.indexOf(HOSTILE)
    expect(t.kind[proc]).toBe('process')
    expect(t.depth[proc]).toBe(1)
    expect(r.value).toBe(t.value[proc])
    // It ran flat out for the whole capture (on a machine others were using too).
    expect(r.share).toBeGreaterThan(0.05)
  })

  it('maps a FlameScope range to the same samples the daemon puts in that range', () => {
    const tl = rec.json.timeline as Timeline
    expect(tl.counts.flat().reduce((a, b) => a + b, 0)).toBe(rec.json.profile.total)
    const r = rec.range.range!
    expect(rangeTotal(tl, r)).toBe(rec.range.tree.value)
    expect(rec.range.timeline).toEqual(rec.json.timeline)
  })

  it('derives each frame\'s base self value as the daemon does', () => {
    const tree = rec.diff.tree as unknown as Node
    const t = flatten(tree)
    const selfBase: number[] = []
    const stack: Node[] = [tree]
    while (stack.length) {
      const n = stack.pop()!
      selfBase.push(n.self_base ?? NaN)
      for (let k = n.children.length - 1; k >= 0; k--) stack.push(n.children[k])
    }
    const baseTotal = rec.diff.base!.total
    const d = selfDeltas(t, baseTotal)
    for (let i = 0; i < t.n; i++) {
      const expected = t.self[i] / t.value[0] - selfBase[i] / baseTotal
      expect(d[i]).toBeCloseTo(expected, 12)
    }
  })

  it('describes the states the daemon went through', () => {
    const states = rec.states as unknown as ProfileSummary[]
    expect(states.at(-1)!.state).toBe('done')
    expect(states.map(describeState)).toContain('resolving symbols…')
    expect(describeState(rec.waiting as unknown as ProfileSummary)).toBe(`queued (position ${rec.waiting.position})`)
    for (const c of rec.cancelled) expect(describeState(c.body as unknown as ProfileSummary)).toBe('cancelled')
  })

  it('validates against the limits the daemon sends, refusing what it refuses', () => {
    const limits = (rec.list as unknown as ProfilesList).limits
    expect(limits.duration).toEqual(DEFAULT_LIMITS.duration)
    expect(validateCapture({ kind: 'cpu', duration: 1 }, limits)).not.toBeNull()
    expect(rec.errors.invalid.status).toBe(400)
    expect(validateCapture({ kind: 'cpu', duration: 5, frequency: 99 }, limits)).toBeNull()
  })
})
