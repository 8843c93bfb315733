"""Bounded in-memory history: what lets someone opening the dashboard mid-incident see
what happened before they opened it (Vector's most requested missing feature, #183).

Layout. Series are grouped by the collector that produced them, because each collector
has its own cadence (processes are refreshed less often than CPU). A group holds one
ring of timestamps and, per series (metric, instance), a parallel ring of values.

* Fine tier: every sample at the collector's cadence, ``retention_s`` long (default one
  hour).
* Coarse tier: per-minute means over ``coarse_retention_s`` (default 24 hours), for
  groups that enable it (processes do not: their instances come and go too fast for a
  day-long record to be worth its memory).

Memory. Values are stored as 32-bit floats: cooked values are rates and levels shown to
people, for which seven significant digits are plenty. Each ring is a
:class:`~hostscope.metrics.rings.BlockRing`: blocks of 128 values, the one being written
a plain array, the others sealed end to end in one bytes object, 4 bytes when every value
in the block is the same and deflated otherwise (stored raw when deflate saves nothing).
Rings grow as data arrives and stop at capacity, so memory is proportional to what has
been seen, and bounded by::

    bytes per series <= 4.4 * (retention_s / interval_s + coarse_retention_s / 60)
                     =  4.4 * (3,600 + 1,440) = 22,176 bytes at the defaults (1 s, 1 h, 24 h)

when no value ever repeats (every block stored raw, plus a 4-byte offset a block and the
fine tier's open block: 20,781 bytes, 4.12 a value, measured), and under 1 KB for a
series whose values never change. Measured on real collections of the development VM:
2.9 KB a series for an hour (idle disks and interfaces, error counters and pressure at
zero deflate to a few bytes a block). The total number of series is capped by
``max_series``; series beyond it are not recorded (and counted in ``dropped_series``),
and series whose instance has been absent for a whole fine window are evicted.

Short-lived instances. A series starts *sparse*: its values by ring slot in a dict
(~200 bytes a value), and becomes a ring once it holds :func:`sparse_limit` values (a
sixty-fourth of the ring: 28 at 2 s for an hour) or a plan writes it every tick. A
process that lived a few seconds would otherwise cost a whole ring for an hour: with
plain arrays, one new short-lived process per 2 s sample made the process history 39 MiB
(`benchmarks/bench_metrics.py` prints it with this).

Missing values (no rate yet, instance absent at that tick) are NaN inside the rings and
None when returned.
"""

from __future__ import annotations

import bisect
import math
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat

from .collector import Cooked
from .layout import FlatLayout, getter
from .rings import BLOCK, BlockRing

SeriesKey = tuple[str, str]
NAN = float("nan")
#: Rows a plan stages before they are moved into the rings (the coarse tier's
#: per-minute flush and every read move them sooner).
STAGE_ROWS = 64
_TEXT = frozenset({str})
#: None -> NaN, anything else (hashable) unchanged: ``map(_NONE_AS_NAN, xs, xs)``.
_NONE_AS_NAN = {None: NAN}.get
#: What one value of a sparse series holds beyond its dict's table (:meth:`History.nbytes`):
#: a float object and, for a slot over 256, an int object.
SPARSE_VALUE_BYTES = 24 + 28


@dataclass(slots=True)
class HistorySlice:
    """Values of some series over a time range, columnar (uPlot's ``[xs, ...ys]``)."""

    group: str
    step_s: float
    timestamps: list[float]
    series: dict[SeriesKey, list[float | None]]


#: A sparse fine series (see the module docstring): ring slot -> value; absent = no value.
Sparse = dict[int, float]


def sparse_limit(capacity: int) -> int:
    """Values a sparse series holds before it becomes a ring: a sixty-fourth of the
    ring's slots. The dict costs ~200 bytes a value (its entry, the slot's int and the
    float, measured with tracemalloc); a mostly empty compressed ring ~1 KB (its open
    block), and an hour of a process that lived 16 to 56 s measured the same either way."""
    return max(8, capacity // 64)


@dataclass(slots=True)
class _Series:
    fine: BlockRing | Sparse
    coarse: BlockRing | None  # None in a group without a coarse tier
    last_seen: int  # group append count when this series last had a value


@dataclass(slots=True)
class _Group:
    name: str
    interval_s: float
    capacity: int
    coarse: bool
    times: array = field(default_factory=lambda: array("d"))
    head: int = 0  # index of the next write once the ring is full
    appended: int = 0
    coarse_times: array = field(default_factory=lambda: array("d"))
    coarse_head: int = 0
    coarse_bucket: int | None = None
    bucket_n: int = 0  # appends so far in the current coarse bucket
    metrics: frozenset[str] | None = None  # recorded metrics (None = all)
    series: dict[SeriesKey, _Series] = field(default_factory=dict)
    #: Bumped whenever a series is created or evicted (invalidates ``plan``).
    version: int = 0
    #: Append count of the last tick written through ``plan``: every series existing
    #: then was seen then (it stands in for their ``last_seen``, see ``History.append``).
    planned_at: int = 0
    #: Layout of the last collection and the fine rings its values go to, in order.
    plan: _Plan | None = None


@dataclass(slots=True)
class _Plan:
    """How to write a collection laid out like the last one, and its rows not yet written.

    ``layout`` reads the numeric metrics' values by name (:class:`FlatLayout`, which
    also tells a different layout apart); ``nmetrics`` rules out an extra metric.
    ``texts`` are metrics whose values are all text, or that have none: not recorded,
    only checked to stay so. ``rings`` are the fine rings of the values, in the
    layout's order. Valid while the group's ``version`` is unchanged.

    Rows, one per append, are staged in ``stage`` as 32-bit floats by one ``struct``
    call, and moved into the rings (one strided copy per ring, :meth:`History._unstage`)
    when STAGE_ROWS are staged, when the coarse tier takes its minute and before
    anything reads or writes the rings otherwise: a tick touches one small buffer
    instead of an array per series. ``first`` is the ring slot of the first staged row.
    """

    nmetrics: int
    layout: FlatLayout
    texts: Callable[[Cooked], tuple[dict[str, str], ...]] | None
    rings: list[BlockRing]
    version: int
    row: struct.Struct
    stage: bytearray
    rows: int = 0
    first: int = 0
    #: Whether the last row had a None (then the next is converted first: an idle
    #: disk's await is None tick after tick, and a failed pack costs an exception).
    nones: bool = False

    def values_of(self, values: Cooked) -> list[float | None] | None:
        """The collection's values in ring order, or None if it is laid out otherwise."""
        if len(values) != self.nmetrics:
            return None
        flat = self.layout.values(values)
        if flat is not None and self.texts is not None:
            try:
                if not _TEXT.issuperset(
                    map(type, chain.from_iterable(map(dict.values, self.texts(values))))
                ):
                    return None
            except (KeyError, TypeError):
                return None
        return flat

    def stage_row(self, flat: list[float | None], slot: int) -> bool:
        """Stage one row (False: a value is neither a number nor None)."""
        offset = self.rows * self.row.size
        packed = False
        if not self.nones:
            try:
                self.row.pack_into(self.stage, offset, *flat)
                packed = True
            except struct.error:
                pass
        if not packed:
            try:  # no value yet (None) is NaN in the rings
                self.row.pack_into(self.stage, offset, *map(_NONE_AS_NAN, flat, flat))
            except (struct.error, TypeError):
                return False
            self.nones = None in flat
        if not self.rows:
            self.first = slot
        self.rows += 1
        return True


def _ring_write(ring: array, capacity: int, head: int, value: float) -> None:
    if len(ring) < capacity:
        ring.append(value)
    else:
        ring[head] = value


def _times_range(times: array, capacity: int, head: int, low: float, high: float,
                 ) -> tuple[int, int, list[float]]:
    """(first, last, the timestamps between): the oldest-first positions of a ring of
    increasing timestamps that are in ``(low, high]``, found by bisecting the ring's two
    runs in place, and only those timestamps copied. A sparkline's minute out of an hour's
    ring thus costs a few comparisons and 30 copies, not the whole ring unrolled."""
    if len(times) < capacity or head == 0:
        first, last = bisect.bisect_right(times, low), bisect.bisect_right(times, high)
        return first, last, times[first:last].tolist()
    older = capacity - head  # oldest-first positions 0..older-1 are times[head:]

    def position(t: float) -> int:
        if t < times[0]:  # within the older run (every newer timestamp is above t)
            return bisect.bisect_right(times, t, head, capacity) - head
        return older + bisect.bisect_right(times, t, 0, head)

    first, last = position(low), position(high)
    if last <= older:
        return first, last, times[head + first:head + last].tolist()
    if first >= older:
        return first, last, times[first - older:last - older].tolist()
    return first, last, times[head + first:].tolist() + times[:last - older].tolist()


class History:
    """Fine and coarse ring buffers per series; see the module docstring for sizes."""

    def __init__(
        self,
        *,
        retention_s: float = 3600.0,
        coarse_step_s: float = 60.0,
        coarse_retention_s: float = 86400.0,
        max_series: int = 20000,
    ) -> None:
        if retention_s <= 0 or coarse_step_s <= 0 or coarse_retention_s < 0:
            raise ValueError("history retention and step must be positive")
        self.retention_s = retention_s
        self.coarse_step_s = coarse_step_s
        self.coarse_capacity = int(coarse_retention_s // coarse_step_s)
        self.max_series = max_series
        self.dropped_series = 0
        self._groups: dict[str, _Group] = {}
        self._nseries = 0

    # -- writing -------------------------------------------------------------------

    def add_group(
        self, name: str, interval_s: float, *, coarse: bool = True,
        metrics: frozenset[str] | None = None,
    ) -> None:
        """Declare a group (one per collector) with its sampling cadence.

        ``metrics`` restricts which of the group's metrics are recorded (None = all):
        a thousand processes times sixteen per-process series would be ~110 MiB an
        hour, while the few that the dashboard charts per process cost a fifth of it.
        """
        if name in self._groups:
            return
        capacity = max(2, math.ceil(self.retention_s / interval_s))
        self._groups[name] = _Group(
            name, interval_s, capacity, coarse and self.coarse_capacity > 0, metrics=metrics
        )

    def append(self, group_name: str, timestamp: float, values: Cooked) -> None:
        """Record one collection of a group taken at wall-clock ``timestamp``.

        This runs every tick for every series, so it is written for speed. A group
        remembers the layout of its last collection and the rings its values went to
        (:class:`_Plan`); a collection laid out the same way, as nearly all are, is
        staged as one row, with no Python code per value. Otherwise values are written
        one by one (a dict lookup each), series created and absent ones padded and
        evicted, and a new plan made.
        """
        group = self._groups[group_name]
        if not group.series and not any(values.values()):
            # Nothing to record and no series to pad with a gap: a BPF module that is
            # off (seven such groups in the daemon, every second), a collector with no
            # instances yet. Its timestamps alone would cost each tick a trip through
            # the plan and 8 bytes (plus the coarse tier's) for an hour, for nothing.
            return
        if group.coarse:
            bucket = int(timestamp // self.coarse_step_s)
            if group.coarse_bucket is not None and bucket != group.coarse_bucket:
                self._flush_coarse(group)
            if bucket != group.coarse_bucket:
                group.coarse_bucket = bucket
                group.bucket_n = 0
            group.bucket_n += 1
        cap = group.capacity
        times = group.times
        growing = len(times) < cap
        if growing:
            idx = len(times)
            times.append(timestamp)
        else:
            idx = group.head
            times[idx] = timestamp
            group.head = (idx + 1) % cap
        count = group.appended + 1
        group.appended = count
        if group.metrics is None:
            # The common case: the same metrics and instances as last time. Their
            # values are fetched by name at C speed, which also checks the layout,
            # and staged as one row (see _Plan).
            plan = group.plan
            if plan is not None and plan.version == group.version:
                if not idx % BLOCK and plan.rows:
                    self._unstage(group)  # staged rows stay within one block
                flat = plan.values_of(values)
                if flat is not None and plan.stage_row(flat, idx):
                    group.planned_at = count
                    if plan.rows == STAGE_ROWS:
                        self._unstage(group)
                    return
            self._append_each(group, values, idx, growing, count)
            group.plan = self._plan(group, values)
            return
        self._append_each(group, values, idx, growing, count)

    def _append_each(self, group: _Group, values: Cooked, idx: int, growing: bool,
                     count: int) -> None:
        """Write a collection value by value, creating and evicting series as needed."""
        self._unstage(group)
        cap = group.capacity
        limit = sparse_limit(cap)
        series_map = group.series
        recorded = group.metrics
        nseen = 0
        # The slot's block and offset: every ring's open block is that block after its
        # first write this tick (BlockRing.put, inlined).
        k, off = divmod(idx, BLOCK)
        for metric, instances in values.items():
            if recorded is not None and metric not in recorded:
                continue
            for inst, value in instances.items():
                if value is None or value.__class__ is str:
                    continue
                series = series_map.get((metric, inst))
                if series is None:
                    series = self._new_series(group, (metric, inst))
                    if series is None:
                        continue
                fine = series.fine
                if fine.__class__ is dict:
                    fine[idx] = float(value)  # type: ignore[index,arg-type]  # as a ring would
                    if len(fine) >= limit:
                        series.fine = _densify(fine, len(group.times), cap)  # type: ignore[arg-type]
                else:
                    if fine.open_k != k:  # type: ignore[union-attr]
                        fine.roll(k)  # type: ignore[union-attr]
                    fine.open[off] = value  # type: ignore[union-attr]
                series.last_seen = count
                nseen += 1
        if nseen == len(series_map):
            return
        stale: list[SeriesKey] = []
        planned_at = group.planned_at
        for key, series in series_map.items():
            if series.last_seen != count:
                fine = series.fine
                if fine.__class__ is dict:
                    if not growing:
                        fine.pop(idx, None)  # type: ignore[union-attr]  # a value an hour old
                else:
                    if fine.open_k != k:  # type: ignore[union-attr]
                        fine.roll(k)  # type: ignore[union-attr]
                    fine.open[off] = NAN  # type: ignore[union-attr]
                if count - max(series.last_seen, planned_at) >= cap:
                    stale.append(key)
        for key in stale:
            del series_map[key]
            self._nseries -= 1
        if stale:
            group.version += 1

    def _plan(self, group: _Group, values: Cooked) -> _Plan | None:
        """A plan for collections laid out like ``values`` (just written), if one fits.

        It fits when every metric's values are all numbers or None, or all text, and
        the collection covers every series of the group (then a tick written through
        it leaves nothing absent). An instance whose value has always been None (a
        disk's await while it is idle) gets its all-NaN series here, so that one idle
        device does not send the whole group down the value-by-value path.
        """
        numeric: list[str] = []
        texts: list[str] = []
        for metric, instances in values.items():
            text = sum(1 for value in instances.values() if value.__class__ is str)
            if text or not instances:
                if text != len(instances):
                    return None  # text and numbers mixed
                texts.append(metric)
            else:
                numeric.append(metric)
        layout = FlatLayout(values, numeric)
        series_map = group.series
        rings: list[BlockRing] = []
        for key in layout.order:
            series = series_map.get(key)
            if series is None:
                if values[key[0]][key[1]] is not None:
                    return None  # dropped: over max_series
                series = self._new_series(group, key)
                if series is None:
                    return None
            if series.fine.__class__ is dict:  # written every tick from now on
                series.fine = _densify(series.fine, len(group.times), group.capacity)  # type: ignore[arg-type]
            rings.append(series.fine)  # type: ignore[arg-type]
        if len(rings) != len(series_map):
            return None
        row = struct.Struct(f"{len(rings)}f")
        return _Plan(len(values), layout, getter(texts) if texts else None, rings,
                     group.version, row, bytearray(row.size * STAGE_ROWS))

    def _unstage(self, group: _Group) -> None:
        """Move the rows staged by the group's plan into its rings.

        Staged rows fill consecutive ring slots from ``plan.first``, all in one block
        (:meth:`append` moves them when the next row starts another): each ring
        receives its column of the rows by one strided copy into its open block.
        """
        plan = group.plan
        if plan is None or not plan.rows:
            return
        rows = plan.rows
        plan.rows = 0
        rings = plan.rings
        if not rings:
            return
        k, off = divmod(plan.first, BLOCK)
        width = len(rings)
        with memoryview(plan.stage) as staged, staged.cast("f") as cells:
            end = rows * width
            for j, ring in enumerate(rings):
                if ring.open_k != k:
                    ring.roll(k)
                with memoryview(ring.open) as dest:
                    dest[off : off + rows] = cells[j:end:width]

    def _new_series(self, group: _Group, key: SeriesKey) -> _Series | None:
        if self._nseries >= self.max_series:
            self.dropped_series += 1
            return None
        # Sparse until it has values enough (see the module docstring); the coarse ring
        # is padded with NaN so that it stays aligned with the group's coarse times.
        coarse = (BlockRing.empty(len(group.coarse_times), self.coarse_capacity)
                  if group.coarse else None)
        series = _Series({}, coarse, group.appended)
        group.series[key] = series
        group.version += 1
        self._nseries += 1
        return series

    def _flush_coarse(self, group: _Group) -> None:
        """Append the mean of the finished minute, read back from the fine ring.

        Computing means at flush time (once a minute) instead of accumulating every
        tick keeps the per-tick path minimal; the fine ring always still holds the
        minute whenever retention is at least one coarse step (with a shorter retention,
        the mean covers the points still retained). The minute's points are one or two
        slices of each ring, summed at C speed; NaN (no value) propagates into the sum,
        and only then are the points filtered one by one.
        """
        assert group.coarse_bucket is not None
        self._unstage(group)
        cap = self.coarse_capacity
        head = group.coarse_head
        full = len(group.coarse_times) >= cap
        slot = head if full else len(group.coarse_times)
        _ring_write(group.coarse_times, cap, head, group.coarse_bucket * self.coarse_step_s)
        length = len(group.times)
        n = min(group.bucket_n, length)
        # ring positions of the newest n points: [end - n, end), wrapping below zero
        end = group.head if length >= group.capacity else length
        start = end - n
        for series in group.series.values():
            fine = series.fine
            if fine.__class__ is dict:
                slots = (range(start, end) if start >= 0
                         else chain(range(length + start, length), range(end)))
                points = _sparse_values(fine, slots)  # type: ignore[arg-type]
            elif start >= 0:
                points = fine.get(start, end)  # type: ignore[union-attr]
            else:
                points = fine.get(length + start, length) + fine.get(0, end)  # type: ignore[union-attr]
            total = sum(points)
            if math.isnan(total):  # some points have no value
                values = [v for v in points if not math.isnan(v)]
                mean = sum(values) / len(values) if values else NAN
            else:
                mean = total / len(points) if points else NAN
            series.coarse.put_sealed(slot, mean)  # type: ignore[union-attr]  # a coarse group
        if full:
            group.coarse_head = (head + 1) % cap

    # -- reading -------------------------------------------------------------------

    @property
    def series_count(self) -> int:
        return self._nseries

    def groups(self) -> list[str]:
        return list(self._groups)

    def keys(self) -> list[SeriesKey]:
        return [key for group in self._groups.values() for key in group.series]

    def nbytes(self) -> int:
        """Bytes held by the value and time rings (the part that scales with series)."""
        total = 0
        for group in self._groups.values():
            self._unstage(group)
            total += group.times.itemsize * len(group.times)
            total += group.coarse_times.itemsize * len(group.coarse_times)
            for series in group.series.values():
                fine = series.fine
                if fine.__class__ is dict:
                    total += sys.getsizeof(fine) + SPARSE_VALUE_BYTES * len(fine)
                else:
                    total += fine.nbytes()  # type: ignore[union-attr]
                if series.coarse is not None:
                    total += series.coarse.nbytes()
        return total

    def query(
        self, metrics: Iterable[str], seconds: float, *, now: float | None = None,
        instances: Mapping[str, set[str]] | None = None,
    ) -> list[HistorySlice]:
        """History of the named metrics over the last ``seconds`` (before ``now``, or
        before each group's newest timestamp when ``now`` is None).

        Returns one slice per group that holds any of them. A range longer than the
        fine tier is served from the coarse tier (per-minute means) where the group
        has one. ``instances`` optionally restricts the instances per metric.
        """
        return self._read(metrics, instances, tier_s=seconds, back_s=seconds,
                          start=None if now is None else now - seconds, end=math.inf)

    def query_range(
        self, metrics: Iterable[str], start: float, end: float, *,
        instances: Mapping[str, set[str]] | None = None, tier_s: float | None = None,
    ) -> list[HistorySlice]:
        """History of the named metrics at timestamps in ``(start, end]``.

        Like :meth:`query`, but bounded at both ends and reading only that part of each
        ring, so that a long read can be made window by window (the daemon's backfill)
        at a cost proportional to the window, not to the ring. ``tier_s`` (default
        ``end - start``) is the length of the whole read the window belongs to: the
        coarse tier serves it where the fine tier is shorter, as in :meth:`query`, so
        every window of one read comes from the same tier.
        """
        span = end - start if tier_s is None else tier_s
        return self._read(metrics, instances, tier_s=span, back_s=span, start=start, end=end)

    def _read(
        self, metrics: Iterable[str], instances: Mapping[str, set[str]] | None, *,
        tier_s: float, start: float | None, end: float, back_s: float,
    ) -> list[HistorySlice]:
        """Slices at timestamps in ``(start, end]`` (``start`` None: each group's newest
        timestamp minus ``back_s``), from the tier a read spanning ``tier_s`` uses,
        copying only that part of each ring."""
        wanted = set(metrics)
        # Every metric's instances named (the process table's few rows): look those keys
        # up instead of walking every series of every group.
        named = ([(m, i) for m in wanted for i in instances[m]]
                 if instances is not None and wanted <= instances.keys() else None)
        out: list[HistorySlice] = []
        for group in self._groups.values():
            self._unstage(group)
            held = group.series
            if named is not None:
                keys = [k for k in named if k in held]
            else:
                keys = [
                    k for k in held
                    if k[0] in wanted and (instances is None or k[0] not in instances
                                           or k[1] in instances[k[0]])
                ]
            if not keys:
                continue
            use_coarse, step, stamps, first, last = self._span(group, tier_s, start, end,
                                                               back_s)
            cap, head = ((self.coarse_capacity, group.coarse_head) if use_coarse
                         else (group.capacity, group.head))
            series: dict[SeriesKey, list[float | None]] = {}
            length = len(group.coarse_times if use_coarse else group.times)
            for key in sorted(keys):
                s = group.series[key]
                ring = s.coarse if use_coarse else s.fine
                vals = (_sparse_range(ring, length, cap, head, first=first, last=last)
                        if ring.__class__ is dict
                        else _ring_range(ring, length, cap, head, first=first, last=last))  # type: ignore[arg-type]
                series[key] = [None if math.isnan(v) else v for v in vals]
            out.append(HistorySlice(group.name, step, stamps, series))
        return out

    def _span(
        self, group: _Group, tier_s: float, start: float | None, end: float, back_s: float,
    ) -> tuple[bool, float, list[float], int, int]:
        """(coarse tier?, its step, its timestamps in the range oldest first, first and
        last oldest-first index of the range) of a read spanning ``tier_s`` at timestamps
        in ``(start, end]``."""
        use_coarse = bool(
            group.coarse and tier_s > group.capacity * group.interval_s and group.coarse_times
        )
        if use_coarse:
            cap, head, times = self.coarse_capacity, group.coarse_head, group.coarse_times
            step = self.coarse_step_s
        else:
            cap, head, times = group.capacity, group.head, group.times
            step = group.interval_s
        low = start if start is not None else (_last_time(times, cap, head) or 0.0) - back_s
        first, last, stamps = _times_range(times, cap, head, low, end)
        return use_coarse, step, stamps, first, last

    def timeline(
        self, metrics: Iterable[str], start: float, end: float, *, tier_s: float | None = None,
    ) -> tuple[list[float], float | None]:
        """(every timestamp in ``(start, end]`` of the groups holding any of ``metrics``,
        sorted; the finest step among them, None if none holds any) in the tier
        :meth:`query_range` would read: the time axis of a long answer that is then read
        series by series (the daemon's REST history), without copying any values."""
        wanted = set(metrics)
        span = end - start if tier_s is None else tier_s
        stamps: set[float] = set()
        step: float | None = None
        for group in self._groups.values():
            if not any(k[0] in wanted for k in group.series):
                continue
            self._unstage(group)
            _, group_step, held, _, _ = self._span(group, span, start, end, span)
            stamps.update(held)
            step = group_step if step is None else min(step, group_step)
        return sorted(stamps), step

    def oldest(self, metrics: Iterable[str], tier_s: float) -> float | None:
        """The oldest timestamp held for any of ``metrics`` in the tier a read spanning
        ``tier_s`` seconds uses (see :meth:`query_range`), or None if none is held: where
        a windowed read can start instead of walking empty windows."""
        wanted = set(metrics)
        found: float | None = None
        for group in self._groups.values():
            if not any(k[0] in wanted for k in group.series):
                continue
            self._unstage(group)
            if group.coarse and tier_s > group.capacity * group.interval_s and group.coarse_times:
                first = _first_time(group.coarse_times, self.coarse_capacity, group.coarse_head)
            else:
                first = _first_time(group.times, group.capacity, group.head)
            if first is not None and (found is None or first < found):
                found = first
        return found


def align(
    slices: Iterable[HistorySlice], keys: Iterable[SeriesKey],
    stamps: list[float] | None = None,
) -> tuple[list[float], list[list[float | None]]]:
    """(time axis, one column per key in ``keys`` order) from slices of several groups.

    The axis is ``stamps``, or the union of the slices' timestamps (every collector
    collected in a tick shares the tick's timestamp, so groups merge on them). A column
    is None where its group has no point, all None for a key in no slice; points off a
    given axis are dropped. A slice already on the axis hands its lists over as they are.
    """
    slices = list(slices)
    if stamps is None:
        stamps = sorted({t for s in slices for t in s.timestamps})
    column_of = {key: i for i, key in enumerate(keys)}
    columns: list[list[float | None]] = [[None] * len(stamps) for _ in column_of]
    position = {t: i for i, t in enumerate(stamps)}
    for piece in slices:
        aligned = piece.timestamps == stamps
        where = None if aligned else [position.get(t) for t in piece.timestamps]
        for key, values in piece.series.items():
            col = column_of.get(key)
            if col is None:
                continue
            if where is None:
                columns[col] = values
                continue
            target = columns[col]
            for pos, value in zip(where, values, strict=True):
                if pos is not None:
                    target[pos] = value
    return stamps, columns


def _ring_range(ring: BlockRing, length: int, capacity: int, head: int, *, first: int,
                last: int) -> list[float]:
    """Elements ``first`` to ``last`` (exclusive) of a ring of ``length`` slots written in
    oldest-first order, unpacking only the blocks they lie in (two runs of slots at most
    where the range wraps)."""
    if length < capacity:
        return ring.get(first, last).tolist()
    a, b = (head + first) % capacity, (head + last) % capacity
    if first == last:
        return []
    if a < b:
        return ring.get(a, b).tolist()
    return ring.get(a, capacity).tolist() + ring.get(0, b).tolist()


def _sparse_range(sparse: Sparse, length: int, capacity: int, head: int, *, first: int,
                  last: int) -> list[float]:
    """:func:`_ring_range` of a sparse series in a group ring of ``length`` slots."""
    if length < capacity:
        slots: Iterable[int] = range(first, last)
    else:
        slots = ((head + i) % capacity for i in range(first, last))
    return _sparse_values(sparse, slots).tolist()


def _sparse_values(sparse: Sparse, slots: Iterable[int]) -> array:
    """A sparse series' values at ring ``slots``, NaN where it has none, rounded to 32
    bits as a ring holds them."""
    return array("f", map(sparse.get, slots, repeat(NAN)))


def _densify(sparse: Sparse, length: int, capacity: int) -> BlockRing:
    """The ring of ``capacity`` slots holding a sparse series' values in its first
    ``length``, NaN elsewhere."""
    values = array("f", [NAN]) * length
    for slot, value in sparse.items():
        values[slot] = value
    return BlockRing.from_values(values, capacity)


def _first_time(times: array, capacity: int, head: int) -> float | None:
    """Oldest timestamp of a ring (None if empty)."""
    if not times:
        return None
    return times[head] if len(times) >= capacity else times[0]


def _last_time(times: array, capacity: int, head: int) -> float | None:
    """Newest timestamp of a ring (None if empty)."""
    if not times:
        return None
    return times[head - 1] if len(times) >= capacity else times[-1]
