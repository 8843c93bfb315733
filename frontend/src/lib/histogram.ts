/**
 * Log2 latency histograms as the daemon streams them (docs/bpf.md, "Histograms"): one
 * counter instance per bucket, named `"lo-hi"` in microseconds (`"0-1"`, `"2-3"`,
 * `"4-7"`, ... `"67108864-inf"`), optionally prefixed by other components separated by
 * `:` (`"vda:read:4-7"`: the bucket is always the part after the last `:`). The stream
 * serves counters as per-second rates, so one sample of every bucket is one heat-map
 * column once multiplied by its interval.
 *
 * `percentiles` is the twin of `hostscope.bpfmods.histogram.percentiles`: the dashboard
 * uses the daemon's `bpf.<x>.p50/p90/p99` metrics where they exist and this only for
 * histograms it sums itself (every disk and operation at once), so the two must agree;
 * histogram.spec.ts checks it against cases printed by the Python implementation.
 */

/** Slots of a hostscope histogram (HS_HIST_SLOTS): 0-1, 2-3, ... 2^26-inf. */
export const SLOTS = 27
const SEP = ':'

export interface Bucket {
  /** Lowest value counted, µs. */
  lo: number
  /** Highest value counted, µs (`Infinity` for the open last bucket). */
  hi: number
  /** Log2 slot: 0 for 0-1, k for [2^k, 2^(k+1) - 1]. */
  slot: number
}

/** The instance's components before the bucket (`"vda:read"`; `""` when there are none). */
export function groupOf(instance: string): string {
  const i = instance.lastIndexOf(SEP)
  return i < 0 ? '' : instance.slice(0, i)
}

/** Bounds and slot of a bucket instance name (prefixes allowed), or null if it is not one. */
export function parseBucket(instance: string): Bucket | null {
  const name = instance.slice(instance.lastIndexOf(SEP) + 1)
  const dash = name.indexOf('-')
  if (dash <= 0) return null
  const lo = Number(name.slice(0, dash))
  const hiText = name.slice(dash + 1)
  const hi = hiText === 'inf' ? Infinity : Number(hiText)
  if (!Number.isFinite(lo) || Number.isNaN(hi) || hiText === '' || lo < 0 || hi < lo) return null
  // Log2 buckets start at 0 or at a power of two; anything else is not ours.
  const slot = lo === 0 ? 0 : Math.log2(lo)
  if (!Number.isInteger(slot) || slot >= SLOTS) return null
  return { lo, hi, slot }
}

/** Bucket name of a slot, as the daemon names it (`bucketName(2)` is `"4-7"`). */
export function bucketName(slot: number): string {
  const lo = slot === 0 ? 0 : 2 ** slot
  return slot === SLOTS - 1 ? `${lo}-inf` : `${lo}-${2 ** (slot + 1) - 1}`
}

/**
 * Estimated quantiles of one interval's counts (or rates: same answer), in µs.
 *
 * Values are assumed uniform over [lo, hi + 1) within a bucket; a quantile in the open
 * last bucket is that bucket's lower bound (a floor, not a guess); null when the interval
 * has no events. Missing, null and non-positive counts are zero.
 */
export function percentiles(
  buckets: Iterable<readonly [string, number | null | undefined]>,
  qs: readonly number[] = [0.5, 0.9, 0.99],
): (number | null)[] {
  for (const q of qs) if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} outside 0..1`)
  const spans: [number, number, number][] = []
  let total = 0
  for (const [name, count] of buckets) {
    if (count == null || !(count > 0)) continue
    const b = parseBucket(name)
    if (!b) throw new RangeError(`not a histogram bucket name: ${JSON.stringify(name)}`)
    spans.push([b.lo, b.hi, count])
  }
  // Python sorts the (lo, hi, count) tuples; buckets are distinct, so lo decides.
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2])
  for (const s of spans) total += s[2]
  if (total <= 0) return qs.map(() => null)
  return qs.map((q) => {
    const target = q * total
    let acc = 0
    for (const [lo, hi, count] of spans) {
      if (acc + count >= target) return hi === Infinity ? lo : lo + ((target - acc) / count) * (hi + 1 - lo)
      acc += count
    }
    return spans[spans.length - 1][0]
  })
}

/**
 * Percentiles from per-slot counts (index = slot), the layout the heat map keeps:
 * the same estimate as {@link percentiles} without building names.
 */
export function slotPercentiles(counts: ArrayLike<number>, qs: readonly number[]): (number | null)[] {
  let total = 0
  for (let s = 0; s < counts.length; s++) if (counts[s] > 0) total += counts[s]
  if (total <= 0) return qs.map(() => null)
  return qs.map((q) => {
    const target = q * total
    let acc = 0
    let last = 0
    for (let s = 0; s < counts.length; s++) {
      const c = counts[s]
      if (!(c > 0)) continue
      const lo = s === 0 ? 0 : 2 ** s
      last = lo
      if (acc + c >= target) {
        if (s === SLOTS - 1) return lo
        const width = s === 0 ? 2 : lo
        return lo + ((target - acc) / c) * width
      }
      acc += c
    }
    return last
  })
}

/**
 * Position of a latency (µs) on the heat map's vertical axis, in slots: bucket k >= 1
 * spans [k, k+1) logarithmically (log2 of the value), bucket 0 (0-1 µs) spans [0, 1)
 * linearly, so a percentile drawn as a line sits inside the row of its bucket.
 */
export function slotY(us: number): number {
  if (!(us > 0)) return 0
  return us < 2 ? us / 2 : Math.min(SLOTS, Math.log2(us))
}

/** Inverse of {@link slotY}: the latency (µs) at a vertical position in slots. */
export function slotValue(y: number): number {
  return y < 1 ? Math.max(0, 2 * y) : 2 ** y
}
