"""The metric model: descriptors, units and the registry.

hostscope follows PCP's metric model because on-call engineers already know its names
(``kernel.all.cpu.user``, ``disk.dev.read_bytes``) and because its descriptors carry
exactly what a consumer needs to treat a value correctly without hard-coding per-metric
knowledge: the value type, the semantics (is this a counter that must be rate-converted,
an instantaneous level, or a rarely-changing discrete value?), the units (so a chart can
pick an axis and Prometheus a base-unit suffix) and the instance domain (what the
instances of a multi-valued metric are: CPUs, disks, interfaces, processes ...).

Vector hard-coded "is this a counter" per widget and got it wrong in places; here every
consumer (rate layer, history, REST, websocket, Prometheus, CLI) reads it from one
descriptor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

#: The instance name used for metrics that have a single value (PCP's PM_IN_NULL).
SINGULAR = ""

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


class MetricError(Exception):
    """Base class of the metric layer's domain errors."""


class UnknownMetricError(MetricError, KeyError):
    """A name (or prefix) matches no registered metric."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        super().__init__(self.names)

    def __str__(self) -> str:
        return "unknown metric name or prefix: " + ", ".join(self.names)


class DuplicateMetricError(MetricError, ValueError):
    """Two descriptors claim the same metric name."""


class Semantics(StrEnum):
    """How a value behaves over time (PCP semantics)."""

    #: Monotonically increasing raw total; consumers want its per-second rate.
    COUNTER = "counter"
    #: A level at the time of sampling (free memory, queue length, load average).
    INSTANT = "instant"
    #: Rarely changes (number of CPUs, physical memory, kernel release).
    DISCRETE = "discrete"


class ValueType(StrEnum):
    """Storage type of the raw value, as in PCP (u32 counters wrap at 2**32)."""

    U32 = "u32"
    U64 = "u64"
    I64 = "i64"
    DOUBLE = "double"
    STRING = "string"

    @property
    def numeric(self) -> bool:
        return self is not ValueType.STRING

    @property
    def wrap_bits(self) -> int | None:
        """Width at which a counter of this type wraps, or None if it cannot."""
        return {ValueType.U32: 32, ValueType.U64: 64}.get(self)


class SpaceScale(IntEnum):
    BYTE = 0
    KBYTE = 1
    MBYTE = 2
    GBYTE = 3
    TBYTE = 4


class TimeScale(IntEnum):
    NSEC = 0
    USEC = 1
    MSEC = 2
    SEC = 3
    MIN = 4
    HOUR = 5


_SPACE_LABEL = {
    SpaceScale.BYTE: "byte",
    SpaceScale.KBYTE: "Kbyte",
    SpaceScale.MBYTE: "Mbyte",
    SpaceScale.GBYTE: "Gbyte",
    SpaceScale.TBYTE: "Tbyte",
}
_TIME_LABEL = {
    TimeScale.NSEC: "nanosec",
    TimeScale.USEC: "microsec",
    TimeScale.MSEC: "millisec",
    TimeScale.SEC: "sec",
    TimeScale.MIN: "min",
    TimeScale.HOUR: "hour",
}
_TIME_FACTOR = {
    TimeScale.NSEC: 1e-9,
    TimeScale.USEC: 1e-6,
    TimeScale.MSEC: 1e-3,
    TimeScale.SEC: 1.0,
    TimeScale.MIN: 60.0,
    TimeScale.HOUR: 3600.0,
}


@dataclass(frozen=True, slots=True)
class Units:
    """PCP-style units: dimension exponents (space, time, count) and their scales.

    ``per_sec`` marks the units of a rate produced from a counter: a ``millisec``
    counter becomes ``millisec / sec`` (a time utilisation), a ``byte`` counter
    ``byte / sec``. Keeping the numerator's scale (rather than collapsing ms/s into a
    bare ratio) lets a consumer both label the value as the kernel reports it and
    convert it to base units with :meth:`base_factor`.
    """

    space: int = 0
    time: int = 0
    count: int = 0
    space_scale: SpaceScale = SpaceScale.BYTE
    time_scale: TimeScale = TimeScale.SEC
    count_scale: int = 0
    per_sec: bool = False

    def base_factor(self) -> float:
        """Multiplier that converts a value in these units to bytes, seconds and counts."""
        factor = 1.0
        if self.space:
            factor *= float(1024 ** int(self.space_scale)) ** self.space
        if self.time:
            factor *= _TIME_FACTOR[self.time_scale] ** self.time
        if self.count:
            factor *= float(10**self.count_scale) ** self.count
        return factor

    def rate(self) -> Units:
        """Units of the per-second rate of a counter in these units."""
        return replace(self, per_sec=True)

    @property
    def kind(self) -> str:
        """A coarse category for formatting: bytes, time, utilization, count or none.

        ``utilization`` is time per second (a ``millisec`` counter's rate, or a derived
        busy fraction): multiplied by :meth:`base_factor` it is a 0..N ratio that
        dashboards show as a percentage.
        """
        if self.time == 1 and self.per_sec and not self.space and not self.count:
            return "utilization"
        if self.space == 1 and not self.time:
            return "bytes"
        if self.time == 1 and not self.space:
            return "time"
        if self.count == 1:
            return "count"
        return "none"

    def _part(self, label: str, exp: int) -> str:
        return label if exp == 1 else f"{label}^{exp}"

    def __str__(self) -> str:
        num: list[str] = []
        den: list[str] = []
        for exp, label in (
            (self.space, _SPACE_LABEL[self.space_scale]),
            (self.time, _TIME_LABEL[self.time_scale]),
            (self.count, "count" if not self.count_scale else f"count x 10^{self.count_scale}"),
        ):
            if exp > 0:
                num.append(self._part(label, exp))
            elif exp < 0:
                den.append(self._part(label, -exp))
        if self.per_sec:
            den.append("sec")
        text = " ".join(num)
        if den:
            text = f"{text or '1'} / {' '.join(den)}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "label": str(self),
            "kind": self.kind,
            "dim": [self.space, self.time, self.count],
            "space_scale": _SPACE_LABEL[self.space_scale],
            "time_scale": _TIME_LABEL[self.time_scale],
            "count_scale": self.count_scale,
            "per_sec": self.per_sec,
            "base_factor": self.base_factor(),
        }


#: Common units, named as PCP's pminfo prints them.
NONE = Units()
COUNT = Units(count=1)
BYTES = Units(space=1)
KBYTES = Units(space=1, space_scale=SpaceScale.KBYTE)
MBYTES = Units(space=1, space_scale=SpaceScale.MBYTE)
NSEC = Units(time=1, time_scale=TimeScale.NSEC)
USEC = Units(time=1, time_scale=TimeScale.USEC)
MSEC = Units(time=1, time_scale=TimeScale.MSEC)
SEC = Units(time=1, time_scale=TimeScale.SEC)
#: Busy time per second as a fraction (0..1 of one resource): derived utilisations.
UTILIZATION = Units(time=1, time_scale=TimeScale.SEC, per_sec=True)


@dataclass(frozen=True, slots=True)
class MetricDesc:
    """Everything a consumer needs to know about one metric.

    ``indom`` names the instance domain (``"kernel.cpu"``, ``"disk.dev"``, ...); ``None``
    means the metric is singular and its only instance is :data:`SINGULAR`. ``derived``
    marks values computed from other metrics (utilisation, IOPS, await) rather than
    read from the kernel, so people know they are not raw kernel figures.
    """

    name: str
    type: ValueType
    semantics: Semantics
    units: Units
    indom: str | None
    help: str
    long_help: str = ""
    derived: bool = False
    #: Labels for Prometheus, one per instance-name component (e.g. ("device",)).
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not a dotted lower-case PCP name")
        if not self.help or "\n" in self.help:
            raise ValueError(f"metric {self.name}: help must be one non-empty line")
        if self.semantics is Semantics.COUNTER and not self.type.numeric:
            raise ValueError(f"metric {self.name}: a counter must be numeric")
        if self.indom is None and self.labels:
            raise ValueError(f"metric {self.name}: a singular metric has no instance labels")

    @property
    def is_counter(self) -> bool:
        return self.semantics is Semantics.COUNTER

    @property
    def value_units(self) -> Units:
        """Units of the value consumers see: the rate for counters, else the raw units."""
        return self.units.rate() if self.is_counter else self.units

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": str(self.type),
            "semantics": str(self.semantics),
            "units": self.units.to_json(),
            "value_units": self.value_units.to_json(),
            "indom": self.indom,
            "help": self.help,
            "long_help": self.long_help,
            "derived": self.derived,
        }


def counter(
    name: str,
    units: Units,
    help: str,
    *,
    indom: str | None = None,
    type: ValueType = ValueType.U64,
    labels: tuple[str, ...] = (),
    long_help: str = "",
) -> MetricDesc:
    """Shorthand for a counter descriptor (most kernel statistics)."""
    return MetricDesc(name, type, Semantics.COUNTER, units, indom, help, long_help, labels=labels)


def instant(
    name: str,
    units: Units,
    help: str,
    *,
    indom: str | None = None,
    type: ValueType = ValueType.DOUBLE,
    labels: tuple[str, ...] = (),
    long_help: str = "",
    derived: bool = False,
) -> MetricDesc:
    """Shorthand for an instantaneous-value descriptor."""
    return MetricDesc(
        name, type, Semantics.INSTANT, units, indom, help, long_help, derived=derived, labels=labels
    )


def discrete(
    name: str,
    units: Units,
    help: str,
    *,
    indom: str | None = None,
    type: ValueType = ValueType.U64,
    labels: tuple[str, ...] = (),
    long_help: str = "",
) -> MetricDesc:
    """Shorthand for a rarely-changing value (hardware inventory, identity)."""
    return MetricDesc(name, type, Semantics.DISCRETE, units, indom, help, long_help, labels=labels)


class MetricRegistry:
    """The set of known metric descriptors, keyed by name.

    Duplicate names are rejected at registration, so two collectors can never silently
    publish different meanings under one name. Lookups accept exact names and dotted
    prefixes (``disk.dev`` matches ``disk.dev.read`` but not ``disk.devx``), as PCP's
    pminfo does.
    """

    def __init__(self) -> None:
        self._descs: dict[str, MetricDesc] = {}

    def register(self, desc: MetricDesc) -> None:
        if desc.name in self._descs:
            raise DuplicateMetricError(f"metric {desc.name} is already registered")
        # A name may not also be a prefix of another (PCP's namespace is a tree whose
        # leaves are metrics), otherwise "fetch disk.dev" would be ambiguous.
        prefix = desc.name + "."
        for other in self._descs:
            if other.startswith(prefix) or desc.name.startswith(other + "."):
                raise DuplicateMetricError(
                    f"metric {desc.name} clashes with {other}: a metric name cannot be a "
                    "prefix of another"
                )
        self._descs[desc.name] = desc

    def register_all(self, descs: Iterable[MetricDesc]) -> None:
        for desc in descs:
            self.register(desc)

    def get(self, name: str) -> MetricDesc:
        try:
            return self._descs[name]
        except KeyError:
            raise UnknownMetricError([name]) from None

    def __contains__(self, name: object) -> bool:
        return name in self._descs

    def __iter__(self) -> Iterator[MetricDesc]:
        return iter(sorted(self._descs.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._descs)

    def names(self) -> list[str]:
        return sorted(self._descs)

    def match(self, name_or_prefix: str) -> list[MetricDesc]:
        """Descriptors whose name equals, or is below, ``name_or_prefix``."""
        if name_or_prefix in self._descs:
            return [self._descs[name_or_prefix]]
        prefix = name_or_prefix.rstrip(".") + "."
        if name_or_prefix == "":
            return list(self)
        return [d for d in self if d.name.startswith(prefix)]

    def resolve(self, names: Iterable[str]) -> list[MetricDesc]:
        """Expand names and prefixes to descriptors, in order, without duplicates.

        Raises :class:`UnknownMetricError` naming every entry that matched nothing, so a
        client learns all its mistakes at once.
        """
        seen: dict[str, MetricDesc] = {}
        unknown: list[str] = []
        for item in names:
            found = self.match(item)
            if not found:
                unknown.append(item)
            for desc in found:
                seen.setdefault(desc.name, desc)
        if unknown:
            raise UnknownMetricError(unknown)
        return list(seen.values())
