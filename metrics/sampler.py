"""The sampler: runs collectors on schedule, converts counters, computes derived metrics.

Data flows sampler -> hub -> clients. The sampler is synchronous on purpose: the daemon
runs :meth:`Sampler.collect` in a worker thread (reading /proc for a thousand processes
must not block the event loop) and hands the resulting :class:`Tick` to
:meth:`Sampler.publish` on the loop, which updates the latest values and the history.
The CLI calls both directly. One sampler serves every client, so the cost of sampling
never grows with the number of viewers.

Fault isolation: a collector that raises is counted and marked stale in
:class:`CollectorStatus` while the others keep going; its metrics simply have no new
values that tick.
"""

from __future__ import annotations

import logging
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


@dataclass(slots=True)
class CollectorStatus:
    name: str
    interval_s: float
    collections: int = 0
    errors: int = 0
    last_error: str | None = None
    last_ok_wall: float | None = None
    last_duration_s: float = 0.0
    stale: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "interval_s": self.interval_s,
            "collections": self.collections,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_ok": self.last_ok_wall,
            "last_duration_ms": round(self.last_duration_s * 1000, 3),
            "stale": self.stale,
        }


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
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.history = history
        self.collectors = list(collectors)
        self._rates = RateConverter()
        self._descs: dict[str, dict[str, MetricDesc]] = {}
        self._derivations: dict[str, list[Derivation]] = {}
        self._derived_names: dict[str, frozenset[str]] = {}
        self._counters: dict[str, dict[str, int | None]] = {}
        self._declared: dict[str, frozenset[str]] = {}
        self._group_time: dict[str, float] = {}
        self._every: dict[str, int] = {}
        self.status: dict[str, CollectorStatus] = {}
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

    def collect(self, *, force_all: bool = False) -> Tick:
        """Run the collectors due this tick. Blocking; safe to run in a worker thread."""
        seq = self.seq
        self.seq += 1
        tick = Tick(seq=seq, timestamp=self.clock.wall(), mono=self.clock.mono())
        for collector in self.collectors:
            if not force_all and seq % self._every[collector.name]:
                continue
            status = self.status[collector.name]
            start = time.perf_counter()
            try:
                raw = collector.collect()
                mono = self.clock.mono()
                declared = self._declared[collector.name]
                if not declared.issuperset(raw):
                    raise RuntimeError(f"undeclared metrics {sorted(set(raw) - declared)}")
                cooked = self._rates.convert(self._counters[collector.name], raw, mono,
                                             group=collector.name)
                if self._derivations[collector.name]:
                    self._derive(collector, cooked, status)
            except Exception as exc:  # noqa: BLE001 - isolate any collector failure
                status.errors += 1
                status.stale = True
                status.last_error = f"{type(exc).__name__}: {exc}"
                if status.errors == 1 or status.errors % 60 == 0:
                    log.warning(
                        "collector failed",
                        extra={"collector": collector.name, "error": status.last_error,
                               "errors": status.errors},
                    )
                continue
            finally:
                status.last_duration_s = time.perf_counter() - start
            status.collections += 1
            status.stale = False
            status.last_ok_wall = tick.timestamp
            tick.groups[collector.name] = GroupSample(raw, cooked)
        # The tick is stamped when its collection is complete: that is when the sample
        # exists and can be delivered. A tick that also walks a thousand processes takes
        # ~15 ms; stamping its start would charge that walk to the delivery latency while
        # the values themselves span the whole collection anyway.
        tick.timestamp = self.clock.wall()
        return tick

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
