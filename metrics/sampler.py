"""The sampler: runs collectors on schedule, converts counters, computes derived metrics.

Data flows sampler -> hub -> clients. The sampler is synchronous on purpose: the daemon
runs :meth:`Sampler.collect` in a worker thread (reading /proc for a thousand processes
must not block the event loop), or on the loop itself when :meth:`Sampler.may_block`
says that no due collector can wait on anything, and hands the resulting :class:`Tick` to
:meth:`Sampler.publish` on the loop, which updates the latest values and the history.
The CLI calls both directly. One sampler serves every client, so the cost of sampling
never grows with the number of viewers.

Fault isolation: a collector that raises is counted and marked stale in
:class:`CollectorStatus` while the others keep going; its metrics simply have no new
values that tick. A collector that hangs cannot be interrupted (a thread cannot be
killed), so it is abandoned instead: whoever waits for :meth:`Sampler.collect` (the
daemon's ticker, :class:`~hostscope.metrics.watchdog.CollectWorker`) sees through
:meth:`Sampler.overdue_in` that the running call has overrun its timeout, calls
:meth:`Sampler.abandon`, and finishes the tick on a fresh thread with
:meth:`Sampler.resume`. The collector is counted as timed out, shown stale and skipped
until its stuck call returns; the stuck thread then drops that call's result and exits.
The normal path pays for this with two attribute stores per collector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .collector import Collector, Cooked, CookedView, Derivation, Raw
from .history import History
from .model import MetricDesc, MetricRegistry
from .rates import RateConverter

log = logging.getLogger("hostscope.metrics")

V = TypeVar("V")


class Clock(Protocol):
    """Source of wall-clock time (for display) and monotonic time (for rates)."""

    def wall(self) -> float: ...

    def mono(self) -> float: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


#: Why a collector is stale: its last call raised, or overran its timeout.
STALE_ERROR = "error"
STALE_TIMEOUT = "timeout"


@dataclass(slots=True)
class CollectorStatus:
    """Health of one collector, as ``/api/v1/host``, the stream and self-metrics show it.

    ``stale`` is set when a collection fails (``stale_reason`` "error") or times out
    ("timeout") and cleared by the next successful one; ``stale_since`` is the wall
    time of the first failure of the current stale spell (the time its metrics last
    had fresh values is ``last_ok_wall``). ``hung`` is true while an abandoned call
    has not returned (the collector is skipped meanwhile).
    """

    name: str
    interval_s: float
    collections: int = 0
    errors: int = 0
    timeouts: int = 0
    last_error: str | None = None
    last_ok_wall: float | None = None
    last_duration_s: float = 0.0
    stale: bool = False
    stale_since: float | None = None
    stale_reason: str | None = None
    hung: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "interval_s": self.interval_s,
            "collections": self.collections,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "last_error": self.last_error,
            "last_ok": self.last_ok_wall,
            "last_duration_ms": round(self.last_duration_s * 1000, 3),
            "stale": self.stale,
            "stale_since": self.stale_since,
            "stale_reason": self.stale_reason,
            "hung": self.hung,
        }

    def stale_json(self) -> dict[str, object]:
        """What a client shows on a stale metric's chart (see docs/protocol.md)."""
        return {"collector": self.name, "reason": self.stale_reason,
                "since": self.stale_since, "message": self.last_error}


@dataclass(slots=True)
class GroupSample:
    """One collector's output for one tick."""

    raw: Raw
    cooked: Cooked


@dataclass(slots=True)
class Tick:
    """Everything one sampling tick produced, for the hub and the history."""

    seq: int
    #: Wall-clock time at which the tick's collection completed (what clients display).
    timestamp: float
    #: Monotonic time at which the collection started.
    mono: float
    groups: dict[str, GroupSample] = field(default_factory=dict)

    def cooked(self) -> Cooked:
        merged: Cooked = {}
        for sample in self.groups.values():
            merged.update(sample.cooked)
        return merged


@dataclass(slots=True)
class _Attempt:
    """A tick being collected: its due collectors and how far the collection got.

    ``index`` is advanced before each collector runs, so after :meth:`Sampler.abandon`
    a fresh thread resumes with the collector after the hung one.
    """

    tick: Tick
    due: list[Collector]
    generation: int
    index: int = 0


class Published(Mapping[str, Mapping[str, V]]):
    """Metric -> its instances' values, as of the tick that last published its group.

    A read-only view over each group's latest collection (cooked or raw), so that
    publishing a tick stores one reference per group instead of copying every metric
    into one dict. A group's metrics are replaced wholesale: metrics it no longer
    reports (a feature gone, every instance vanished) disappear with the next tick; a
    group whose collector failed keeps its previous values.
    """

    __slots__ = ("_by_group", "_group_of")

    def __init__(self, group_of: Mapping[str, str],
                 by_group: Mapping[str, Mapping[str, Mapping[str, V]]]) -> None:
        self._group_of = group_of
        self._by_group = by_group

    def __getitem__(self, name: str) -> Mapping[str, V]:
        values = self._by_group.get(self._group_of.get(name, ""))
        if values is None:
            raise KeyError(name)
        return values[name]

    def get(self, name: str, default: Any = None) -> Any:
        values = self._by_group.get(self._group_of.get(name, ""))
        return default if values is None else values.get(name, default)

    def __contains__(self, name: object) -> bool:
        values = self._by_group.get(self._group_of.get(name, ""))  # type: ignore[call-overload]
        return values is not None and name in values

    def __iter__(self) -> Iterator[str]:
        for values in list(self._by_group.values()):
            yield from values

    def __len__(self) -> int:
        return sum(map(len, self._by_group.values()))


class LatestTimes(Mapping[str, float]):
    """Metric -> wall-clock time of the tick that last published it.

    A view over the per-group publication times, so that publishing a group records
    one time instead of one per metric.
    """

    __slots__ = ("_group_of", "_group_time", "_latest")

    def __init__(self, latest: CookedView, group_of: Mapping[str, str],
                 group_time: Mapping[str, float]) -> None:
        self._latest = latest
        self._group_of = group_of
        self._group_time = group_time

    def __getitem__(self, name: str) -> float:
        if name not in self._latest:
            raise KeyError(name)
        return self._group_time[self._group_of[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


class Sampler:
    """Schedules collectors at multiples of a base interval and keeps the latest values."""

    def __init__(
        self,
        collectors: Iterable[Collector],
        *,
        registry: MetricRegistry,
        interval_s: float = 1.0,
        clock: Clock | None = None,
        history: History | None = None,
        self_metrics: bool = False,
        self_metrics_interval_s: float | None = 5.0,
    ) -> None:
        """``self_metrics`` adds the ``hostscope.collector.*`` metrics (errors, timeouts,
        staleness and duration of every collector) as one more collector, every
        ``self_metrics_interval_s`` (None: every tick), collected last in its ticks so
        that it reports that tick's durations."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.history = history
        self.collectors = list(collectors)
        self.status: dict[str, CollectorStatus] = {}
        if self_metrics:
            from .collectors.selfmon import SelfCollector  # the collectors import this module

            self.collectors.append(SelfCollector(self.status,
                                                 interval_s=self_metrics_interval_s))
        self._rates = RateConverter()
        # Isolation of hung collectors (see the module docstring): the call running
        # now (collector name, perf_counter at its start), the tick being collected,
        # and a generation bumped by every abandon, by which a stuck thread learns
        # that its tick was taken over.
        self._running: tuple[str, float] | None = None
        self._attempt: _Attempt | None = None
        self._generation = 0
        self._lock = threading.Lock()
        #: Bumped whenever any collector becomes stale or fresh again (the hub
        #: re-sends stale state to clients when it changes).
        self.stale_version = 0
        self._descs: dict[str, dict[str, MetricDesc]] = {}
        self._derivations: dict[str, list[Derivation]] = {}
        self._derived_names: dict[str, frozenset[str]] = {}
        self._counters: dict[str, dict[str, int | None]] = {}
        self._declared: dict[str, frozenset[str]] = {}
        # group -> metric names of its last collection that passed the declared check
        self._checked: dict[str, tuple[str, ...]] = {}
        self._group_time: dict[str, float] = {}
        self._every: dict[str, int] = {}
        self.seq = 0
        self.latest_timestamp: float | None = None
        self.metric_group: dict[str, str] = {}
        self._cooked_by_group: dict[str, Cooked] = {}
        self._raw_by_group: dict[str, Raw] = {}
        #: Latest cooked values of every metric (a read-only mapping, see :class:`Published`).
        self.latest: Published[float | str | None] = Published(
            self.metric_group, self._cooked_by_group)
        #: Latest raw values (counters as the kernel's totals).
        self.latest_raw: Published[int | float | str] = Published(
            self.metric_group, self._raw_by_group)
        self.latest_time: Mapping[str, float] = LatestTimes(
            self.latest, self.metric_group, self._group_time)
        names = [c.name for c in self.collectors]
        if len(names) != len(set(names)) or not all(names):
            raise ValueError(f"collector names must be unique and non-empty: {names}")
        for collector in self.collectors:
            descs = collector.descriptors()
            derivs = collector.derivations()
            registry.register_all(descs)
            registry.register_all(d.desc for d in derivs)
            self._descs[collector.name] = {d.name: d for d in descs}
            self._declared[collector.name] = frozenset(self._descs[collector.name])
            self._counters[collector.name] = RateConverter.counters_of(self._descs[collector.name])
            self._derivations[collector.name] = derivs
            self._derived_names[collector.name] = frozenset(d.desc.name for d in derivs)
            every = max(1, round((collector.interval_s or interval_s) / interval_s))
            self._every[collector.name] = every
            self.status[collector.name] = CollectorStatus(collector.name, every * interval_s)
            for desc in [*descs, *(d.desc for d in derivs)]:
                self.metric_group[desc.name] = collector.name
            if history is not None:
                history.add_group(
                    collector.name, every * interval_s, coarse=collector.history_coarse,
                    metrics=collector.history_metrics,
                )

    def group_interval_s(self, group: str) -> float:
        return self._every[group] * self.interval_s

    def may_block(self) -> bool:
        """Whether the next :meth:`collect` may wait on something outside this process:
        whether any collector due then says it may (:meth:`Collector.may_block`; one
        that fails to answer counts as yes). A hung collector is asked too, since its
        call may return, and the collector run again, before that collection.

        The daemon runs a collection that cannot block on its event loop, with no
        thread hand-off, and any other on a worker thread (:mod:`hostscope.daemon.ticker`).
        """
        seq = self.seq
        every = self._every
        for collector in self.collectors:
            if seq % every[collector.name]:
                continue
            try:
                if collector.may_block():
                    return True
            except Exception:  # noqa: BLE001 - a broken answer must not stop sampling
                return True
        return False

    def collect(self, *, force_all: bool = False) -> Tick:
        """Run the collectors due this tick. Blocking; safe to run in a worker thread."""
        seq = self.seq
        self.seq += 1
        tick = Tick(seq=seq, timestamp=self.clock.wall(), mono=self.clock.mono())
        every = self._every
        due = [c for c in self.collectors if force_all or not seq % every[c.name]]
        attempt = self._attempt = _Attempt(tick, due, self._generation)
        return self._run(attempt)

    def resume(self) -> Tick:
        """Finish the tick whose collection was abandoned (call on a fresh thread).

        Runs the collectors after the hung one; the groups collected before it are
        already in the tick.
        """
        with self._lock:
            old = self._attempt
            if old is None:
                raise RuntimeError("no collection to resume")
            attempt = self._attempt = _Attempt(old.tick, old.due, self._generation, old.index)
        return self._run(attempt)

    def overdue_in(self, timeout_s: float) -> float:
        """Seconds until the collector call running now overruns ``timeout_s``
        (``timeout_s`` if none is running: check again then)."""
        running = self._running
        if running is None:
            return timeout_s
        return running[1] + timeout_s - time.perf_counter()

    def abandon(self, timeout_s: float) -> str | None:
        """Give up on the collector call running now if it has overrun ``timeout_s``.

        Called by whoever waits for :meth:`collect` (another thread). The collector is
        counted as timed out, marked stale and skipped until its call returns; the
        thread stuck in it returns as soon as the call does, dropping its result. The
        caller continues the tick with :meth:`resume` on a fresh thread. Returns the
        collector's name, or None if nothing was overdue.
        """
        with self._lock:
            running = self._running
            if running is None:
                return None
            name, started = running
            elapsed = time.perf_counter() - started
            if elapsed < timeout_s:
                return None
            self._running = None
            self._generation += 1
            status = self.status[name]
            status.hung = True
            status.timeouts += 1
            status.last_error = f"timed out: no answer after {elapsed:.1f} s"
            self._mark_stale(status, STALE_TIMEOUT)
        log.warning("collector timed out",
                    extra={"collector": name, "timeout_s": timeout_s,
                           "timeouts": status.timeouts})
        return name

    def _run(self, attempt: _Attempt) -> Tick:
        tick = attempt.tick
        due = attempt.due
        generation = attempt.generation
        perf_counter = time.perf_counter
        while attempt.index < len(due):
            collector = due[attempt.index]
            attempt.index += 1
            name = collector.name
            status = self.status[name]
            if status.hung:
                continue  # its abandoned call has not returned: never run it twice
            start = perf_counter()
            self._running = (name, start)
            try:
                raw = collector.collect()
            except Exception as exc:  # noqa: BLE001 - isolate any collector failure
                self._running = None
                if self._generation != generation:
                    self._returned(status, start)
                    return tick
                status.last_duration_s = perf_counter() - start
                self._failed(status, exc)
                continue
            self._running = None
            if self._generation != generation:
                self._returned(status, start)
                return tick
            try:
                mono = self.clock.mono()
                # The same names as last time (a tuple compared by identity of its
                # interned strings) need no lookup in the declared set, whose table
                # is out of cache a second later.
                names = tuple(raw)
                if names != self._checked.get(name):
                    declared = self._declared[name]
                    if not declared.issuperset(raw):
                        raise RuntimeError(f"undeclared metrics {sorted(set(raw) - declared)}")
                    self._checked[name] = names
                cooked = self._rates.convert(self._counters[name], raw, mono, group=name)
                if self._derivations[name]:
                    self._derive(collector, cooked, status)
            except Exception as exc:  # noqa: BLE001 - a bad collection loses only itself
                status.last_duration_s = perf_counter() - start
                self._failed(status, exc)
                continue
            status.last_duration_s = perf_counter() - start
            status.collections += 1
            if status.stale:
                self._mark_fresh(status)
            status.last_ok_wall = tick.timestamp
            tick.groups[name] = GroupSample(raw, cooked)
        # The tick is stamped when its collection is complete: that is when the sample
        # exists and can be delivered. A tick that also walks a thousand processes takes
        # ~15 ms; stamping its start would charge that walk to the delivery latency while
        # the values themselves span the whole collection anyway.
        tick.timestamp = self.clock.wall()
        return tick

    def _failed(self, status: CollectorStatus, exc: Exception) -> None:
        status.errors += 1
        status.last_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._mark_stale(status, STALE_ERROR)
        if status.errors == 1 or status.errors % 60 == 0:
            log.warning(
                "collector failed",
                extra={"collector": status.name, "error": status.last_error,
                       "errors": status.errors},
            )

    def _returned(self, status: CollectorStatus, start: float) -> None:
        """An abandoned call came back: the collector may run again from the next tick."""
        with self._lock:
            status.hung = False
        log.info("timed-out collector returned",
                 extra={"collector": status.name,
                        "after_s": round(time.perf_counter() - start, 3)})

    def _mark_stale(self, status: CollectorStatus, reason: str) -> None:
        if status.stale and status.stale_reason == reason:
            return
        if not status.stale:
            status.stale = True
            status.stale_since = self.clock.wall()
        status.stale_reason = reason
        self.stale_version += 1

    def _mark_fresh(self, status: CollectorStatus) -> None:
        with self._lock:
            status.stale = False
            status.stale_since = None
            status.stale_reason = None
            self.stale_version += 1

    def stale(self) -> dict[str, CollectorStatus]:
        """The collectors whose metrics are stale now, by name."""
        return {name: status for name, status in self.status.items() if status.stale}

    def stale_metrics(self, names: Iterable[str]) -> dict[str, dict[str, object]]:
        """Of ``names``, the metrics whose collector is stale: name -> why and since when."""
        stale = self.stale()
        if not stale:
            return {}
        group_of = self.metric_group
        out: dict[str, dict[str, object]] = {}
        for name in names:
            status = stale.get(group_of.get(name, ""))
            if status is not None:
                out[name] = status.stale_json()
        return out

    def _derive(self, collector: Collector, cooked: Cooked, status: CollectorStatus) -> None:
        """Compute derived metrics; a failing derivation loses only its own metric.

        A collector's :meth:`Collector.derive_all` computes them all in one pass; if it
        has none, fails, or returns metrics it did not declare, each derivation runs
        on its own.
        """
        group = collector.name
        try:
            derived = collector.derive_all(cooked)
            if derived is not None:
                if not self._derived_names[group].issuperset(derived):
                    undeclared = sorted(set(derived) - self._derived_names[group])
                    raise RuntimeError(f"undeclared derived metrics {undeclared}")
                cooked.update(derived)
                return
        except Exception as exc:  # noqa: BLE001 - the derivations one by one still run
            status.errors += 1
            status.last_error = f"derive_all: {type(exc).__name__}: {exc}"
            if status.errors == 1 or status.errors % 60 == 0:
                log.warning("derive_all failed",
                            extra={"collector": group, "error": status.last_error})
        for derivation in self._derivations[group]:
            try:
                cooked[derivation.desc.name] = dict(derivation.compute(cooked))
            except Exception as exc:  # noqa: BLE001 - one bad formula must not hide the rest
                status.errors += 1
                name = derivation.desc.name
                status.last_error = f"derivation {name}: {type(exc).__name__}: {exc}"
                if status.errors == 1 or status.errors % 60 == 0:
                    log.warning("derivation failed",
                                extra={"collector": group, "error": status.last_error})

    def publish(self, tick: Tick) -> None:
        """Make a tick's values current and record them in the history."""
        for group, sample in tick.groups.items():
            # A group's metrics are replaced wholesale (see Published)
            self._cooked_by_group[group] = sample.cooked
            self._raw_by_group[group] = sample.raw
            self._group_time[group] = tick.timestamp
            if self.history is not None:
                self.history.append(group, tick.timestamp, sample.cooked)
        self.latest_timestamp = tick.timestamp

    def sample(self, *, force_all: bool = False) -> Tick:
        """Collect and publish in one call (CLI, tests, benchmarks)."""
        tick = self.collect(force_all=force_all)
        self.publish(tick)
        return tick

    def instances(self, name: str) -> list[str]:
        """Instance names the metric had at its latest collection."""
        self.registry.get(name)
        return sorted(self.latest.get(name, {}))

    def close(self) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception:
                log.exception("collector close failed", extra={"collector": collector.name})
