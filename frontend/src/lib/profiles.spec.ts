import { describe, expect, it } from 'vitest'
import fx from './fixtures/profiles.synthetic.json'
import {
  DEFAULT_LIMITS,
  captureBody,
  describeRequest,
  describeState,
  downloadLinks,
  downloadUrl,
  formatAmount,
  outputQuery,
  parseRoute,
  routeHash,
  validateCapture,
  type ProfileSummary,
} from './profiles'

const limits = fx.list.limits

describe('capture requests', () => {
  it('checks duration and frequency against the daemon limits', () => {
    expect(validateCapture({ kind: 'cpu', duration: 30, frequency: 49 }, limits)).toBeNull()
    expect(validateCapture({ kind: 'cpu', duration: 4, frequency: 49 }, limits)).toBe('Duration must be between 5 and 120 seconds.')
    expect(validateCapture({ kind: 'cpu', duration: 121 }, limits)).toMatch(/between 5 and 120/)
    expect(validateCapture({ kind: 'cpu', duration: NaN }, limits)).toMatch(/between/)
    expect(validateCapture({ kind: 'cpu', duration: 10, frequency: 1000 }, limits)).toMatch(/between 1 and 999/)
    expect(validateCapture({ kind: 'cpu', duration: 10, frequency: 4.5 }, limits)).toMatch(/whole number/)
    expect(validateCapture({ kind: 'offcpu', duration: 10, pid: 0 }, limits)).toMatch(/positive/)
    expect(validateCapture({ kind: 'offcpu', duration: 10, pid: 5, container: 'web' }, limits)).toMatch(/not both/)
    const tight = { ...DEFAULT_LIMITS, duration: { ...DEFAULT_LIMITS.duration, max: 60 } }
    expect(validateCapture({ kind: 'cpu', duration: 90 }, tight)).toBe('Duration must be between 5 and 60 seconds.')
  })

  it('builds the POST body of the contract', () => {
    expect(captureBody({ kind: 'cpu', duration: 30, frequency: 49 })).toEqual({ kind: 'cpu', duration: 30, frequency: 49 })
    expect(captureBody({ kind: 'offcpu', duration: 10, frequency: 49, pid: 42 })).toEqual({ kind: 'offcpu', duration: 10, pid: 42 })
    expect(captureBody({ kind: 'cpu', duration: 5, container: 'web-1' })).toEqual({ kind: 'cpu', duration: 5, container: 'web-1' })
  })
})

describe('output links', () => {
  it('puts format, range and base in the query', () => {
    expect(outputQuery('json')).toBe('format=json')
    expect(outputQuery('json', { start: 1.2, end: 3.1 }, 'pf-2')).toBe('format=json&start=1.2&end=3.1&base=pf-2')
    expect(downloadUrl('', 'pf-1', 'folded')).toBe('/api/v1/profiles/pf-1?format=folded')
    expect(downloadUrl('http://db1:7470', 'a/b', 'svg', { start: 0, end: 1 })).toBe(
      'http://db1:7470/api/v1/profiles/a%2Fb?format=svg&start=0&end=1',
    )
    expect(downloadUrl('', 'pf-1', 'svg', null, 'pf-0')).toBe('/api/v1/profiles/pf-1?format=svg&base=pf-0')
  })

  it('offers the capture in every format, and while a diff is shown the differential SVG', () => {
    const plain = downloadLinks('pf-1', { start: 1, end: 2 })
    expect(plain.map((l) => [l.id, l.format, l.range, l.baseId, l.label, l.name])).toEqual([
      ['pf-1', 'folded', { start: 1, end: 2 }, null, 'folded stacks', 'pf-1.folded'],
      ['pf-1', 'svg', { start: 1, end: 2 }, null, 'SVG', 'pf-1.svg'],
      ['pf-1', 'speedscope', { start: 1, end: 2 }, null, 'speedscope JSON', 'pf-1.speedscope.json'],
    ])
    // The daemon diffs json and svg only (`base` with folded/speedscope is a 400): the
    // SVG is the differential; folded comes as both captures' files; speedscope says it
    // is this capture alone. Nothing asks the daemon for a base it would refuse.
    const diff = downloadLinks('pf-1', { start: 1, end: 2 }, 'pf-0')
    expect(diff.map((l) => [l.id, l.format, l.range, l.baseId, l.label, l.name])).toEqual([
      ['pf-1', 'svg', { start: 1, end: 2 }, 'pf-0', 'differential SVG', 'pf-1-vs-pf-0.svg'],
      ['pf-1', 'folded', { start: 1, end: 2 }, null, 'folded stacks (this capture)', 'pf-1.folded'],
      ['pf-0', 'folded', null, null, 'folded stacks (base)', 'pf-0.folded'],
      ['pf-1', 'speedscope', { start: 1, end: 2 }, null, 'speedscope JSON (this capture only)', 'pf-1.speedscope.json'],
    ])
    expect(diff.filter((l) => l.baseId).every((l) => ['svg', 'json'].includes(l.format))).toBe(true)
    expect(diff[0].title).toMatch(/against the base capture/)
    expect(diff[1].title).toMatch(/no differential folded format/)
    expect(new Set(diff.map((l) => l.key)).size).toBe(diff.length)
  })
})

describe('route', () => {
  it('round-trips a capture link with range and base', () => {
    const hash = routeHash({ id: 'pf-7d1c', range: { start: 1.2, end: 2.5 }, baseId: 'pf-0' })
    expect(hash).toBe('#/profiles/pf-7d1c?start=1.2&end=2.5&base=pf-0')
    expect(parseRoute(hash)).toEqual({
      id: 'pf-7d1c', host: '', newKind: null, pid: null, container: null, range: { start: 1.2, end: 2.5 }, baseId: 'pf-0',
    })
  })

  it('parses the list, the prefilled form and other hosts', () => {
    expect(parseRoute('#/profiles')?.id).toBeNull()
    expect(parseRoute('#/profiles/')?.id).toBeNull()
    const r = parseRoute('#/profiles?new=offcpu&pid=77&host=db1%3A7470')!
    expect([r.newKind, r.pid, r.host]).toEqual(['offcpu', 77, 'db1:7470'])
    expect(parseRoute('#/profiles?new=cpu&container=web-1')?.container).toBe('web-1')
  })

  it('ignores what is not a profiles route or not valid', () => {
    expect(parseRoute('')).toBeNull()
    expect(parseRoute('#/other')).toBeNull()
    const r = parseRoute('#/profiles/x?new=gpu&pid=-3&start=5&end=2')!
    expect([r.newKind, r.pid, r.range]).toEqual([null, null, null])
    expect(parseRoute('#/profiles/%E0%A4%A')?.id).toBeNull()
  })
})

describe('descriptions', () => {
  it('says what was asked and where the capture is', () => {
    const s = fx.queued as unknown as ProfileSummary
    expect(describeState(s)).toBe('queued (position 2)')
    expect(describeState(fx.running as unknown as ProfileSummary)).toBe('capturing 40 %')
    expect(describeState({ ...(fx.running as unknown as ProfileSummary), progress: 0 })).toBe('starting (compiling and attaching)…')
    expect(describeRequest(s)).toBe('CPU, 5 s, whole host')
    const failed = { ...s, state: 'failed', error: { code: 'capture_failed', message: 'perf exited 1' } } as ProfileSummary
    expect(describeState(failed)).toBe('failed: perf exited 1')
    expect(describeRequest({ ...s, kind: 'offcpu', request: { ...s.request, pid: 9 } })).toBe('Off-CPU, 5 s, pid 9')
  })
})

describe('amounts', () => {
  it('prints samples as counts and off-CPU microseconds as blocked time', () => {
    expect(formatAmount(1, 'samples')).toBe('1 sample')
    expect(formatAmount(12345, 'samples')).toBe('12,345 samples')
    expect(formatAmount(300, 'microseconds')).toBe('300 µs blocked')
    expect(formatAmount(264_835_197, 'microseconds')).toBe('4.41 min blocked')
  })
})
