"""Log2 latency histograms: bucket naming, user-space diffs and percentiles.

The kernel side (``hostscope_bpf.h``) keeps one cumulative counter per log2 slot: slot 0
counts values 0-1, slot k >= 1 counts [2**k, 2**(k+1) - 1], and the last slot also takes
everything larger. Histograms are never cleared by reading them; consumers diff successive
reads (here, or through the metric pipeline's counter->rate conversion), so no event that
lands between a read and a clear is lost.

Bucket instance names follow Vector/PCP's bcc agent: ``"lo-hi"`` in the histogram's unit
(microseconds for every hostscope module), e.g. ``"0-1"``, ``"2-3"``, ``"4-7"``; the
clamped last slot is ``"67108864-inf"``. Multi-dimensional histograms prefix the bucket
with their other instance components separated by ``:`` (``"vda:read:4-7"``), so the
bucket is always the part after the last ``:``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

#: Number of slots; must equal HS_HIST_SLOTS in hostscope_bpf.h.
SLOTS = 27
#: Separator between instance-name components (disk, op, bucket).
SEP = ":"


def bucket_bounds(slot: int) -> tuple[int, float]:
    """(lowest, highest) value counted in ``slot``; the last slot is open (``inf``)."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} outside 0..{SLOTS - 1}")
    lo = 0 if slot == 0 else 1 << slot
    hi: float = math.inf if slot == SLOTS - 1 else (1 << (slot + 1)) - 1
    return lo, hi


def bucket_name(slot: int) -> str:
    lo, hi = bucket_bounds(slot)
    return f"{lo}-{'inf' if hi == math.inf else int(hi)}"


#: Instance names of one histogram, in slot order.
BUCKET_NAMES: tuple[str, ...] = tuple(bucket_name(s) for s in range(SLOTS))


def parse_bucket(name: str) -> tuple[float, float]:
    """Bounds of a bucket instance name, with or without component prefixes.

    >>> parse_bucket("vda:read:4-7")
    (4.0, 7.0)
    """
    bucket = name.rpartition(SEP)[2]
    lo, dash, hi = bucket.partition("-")
    if not dash:
        raise ValueError(f"not a histogram bucket name: {name!r}")
    return float(lo), float(hi)


def slot_value(value: float) -> int:
    """The slot a value falls into (mirror of ``hs_slot`` in the C header, for tests)."""
    v = int(value)
    return min(v.bit_length() - 1, SLOTS - 1) if v > 1 else 0


def diff_counts(
    prev: Mapping[str, float] | None, cur: Mapping[str, float]
) -> dict[str, float]:
    """Per-interval counts from two cumulative reads.

    A bucket that went down means the histogram restarted (module re-enabled): its current
    value is the whole count since the restart. A bucket absent before counts from zero.
    """
    if prev is None:
        return dict(cur)
    out: dict[str, float] = {}
    for name, value in cur.items():
        old = prev.get(name, 0.0)
        out[name] = value - old if value >= old else value
    return out


def percentiles(
    buckets: Mapping[str, float | None], qs: Sequence[float] = (0.5, 0.9, 0.99)
) -> dict[float, float | None]:
    """Estimated quantiles of a histogram's per-interval counts (or rates).

    ``buckets`` maps bucket names (``"4-7"``; prefixes allowed) to counts in the interval;
    missing or None counts are zero. Within a bucket values are assumed uniform over
    [lo, hi + 1), the usual estimate for log2 histograms; a quantile that falls into the
    open last bucket is reported as that bucket's lower bound (a floor, not a guess).
    Each quantile is None when the interval has no events. Counts and rates give the
    same answer, so callers can pass the pipeline's cooked rates directly.
    """
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside 0..1")
    spans: list[tuple[float, float, float]] = []
    for name, count in buckets.items():
        if count is None or count <= 0:
            continue
        lo, hi = parse_bucket(name)
        spans.append((lo, hi, float(count)))
    spans.sort()
    total = sum(c for _, _, c in spans)
    if total <= 0:
        return dict.fromkeys(qs)
    out: dict[float, float | None] = {}
    for q in qs:
        target = q * total
        acc = 0.0
        value = spans[-1][0]
        for lo, hi, count in spans:
            if acc + count >= target:
                if hi == math.inf:
                    value = lo
                else:
                    frac = (target - acc) / count
                    value = lo + frac * (hi + 1 - lo)
                break
            acc += count
        out[q] = value
    return out


def hist_from_slots(counts: Iterable[float]) -> dict[str, float]:
    """{bucket name: count} from per-slot counts in slot order (at most SLOTS)."""
    return {BUCKET_NAMES[i]: float(c) for i, c in enumerate(counts) if i < SLOTS}
