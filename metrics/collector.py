"""The collector contract and derived metrics.

A collector owns one source (``/proc/stat``, ``/proc/diskstats``, the process table,
...). It declares its descriptors up front and, each time it is sampled, returns the
*raw* values it read: counters as the kernel's totals, never as rates. Rate conversion
happens in exactly one place (:mod:`hostscope.metrics.rates`); derived metrics
(utilisation, IOPS, await) are computed from the converted values by
:class:`Derivation` objects the collector also declares, so the arithmetic that turns
kernel counters into what a person reads sits next to the parser that knows the source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .model import MetricDesc

#: Raw values of one collection: metric name -> instance name -> value.
Raw = dict[str, dict[str, int | float | str]]
#: Values as consumers see them (counters converted to rates; None = no value yet).
Cooked = dict[str, dict[str, float | str | None]]
#: Read-only view of cooked values, as derivations receive them.
CookedView = Mapping[str, Mapping[str, float | str | None]]


@dataclass(frozen=True, slots=True)
class Derivation:
    """A metric computed from other metrics' cooked values of the same collection.

    ``compute`` receives the cooked values of the collector's own metrics (rates for
    counters) and returns instance -> value. It should return None for an instance
    whose inputs are missing (for example the first sample, when no rate exists yet)
    rather than guessing.
    """

    desc: MetricDesc
    compute: Callable[[Mapping[str, Mapping[str, float | str | None]]], dict[str, float | None]]


class Collector(ABC):
    """One source of metrics. Subclasses parse; the sampler schedules and isolates."""

    #: Short name used in logs, status reports and history groups ("cpu", "disk", ...).
    name: str = ""
    #: Own sampling cadence in seconds; None means every tick of the sampler.
    interval_s: float | None = None
    #: Metrics kept in the history (None = all). Collectors with many instances record
    #: only what is charted over time, to keep history memory proportionate.
    history_metrics: frozenset[str] | None = None
    #: Whether the history keeps a 24-hour per-minute tier for this collector.
    history_coarse: bool = True

    @abstractmethod
    def descriptors(self) -> list[MetricDesc]:
        """Descriptors of every metric this collector can produce on this host."""

    def derivations(self) -> list[Derivation]:
        """Metrics derived from this collector's cooked values (default: none)."""
        return []

    def derive_all(self, cooked: CookedView) -> Cooked | None:
        """Every derived metric at once, or None to have each :class:`Derivation` run.

        An optional fast path for collectors with many derivations over few instances
        (the CPU's twelve, the disks' twenty), where calling one closure per metric
        costs more than the arithmetic. It must return exactly what the derivations'
        ``compute`` functions would (the tests compare the two); if it raises, the
        sampler records the error and falls back to the derivations one by one, so a
        bad formula still loses only its own metric.
        """
        return None

    def may_block(self) -> bool:
        """Whether the next :meth:`collect` could wait on something outside this process.

        The daemon runs a tick whose due collectors all answer False on its event loop
        (no thread hand-off: on the development VM each thread wake-up costs ~0.2 ms of
        CPU, more than most collectors' work) and any other tick on a worker thread that
        a hung collector cannot stall (:mod:`hostscope.metrics.watchdog`). So answer
        False only if the next call reads nothing that another task's lock or a remote
        party can hold up: procfs counter files (``/proc/stat``, ``/proc/meminfo``) and
        memory qualify; a statfs (a dead NFS server), a process's ``cmdline`` (its
        mmap lock), a netlink dump, an RPC, or a sysfs attribute behind the RTNL do not.
        The default is True.
        """
        return True

    @abstractmethod
    def collect(self) -> Raw:
        """Read the source once and return raw values.

        Expected absences (a file missing on this kernel, a process that exited) yield
        no value; unexpected failures raise and are isolated by the sampler.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Release anything held open between collections."""


def ratio(num: float | str | None, den: float | str | None, scale: float = 1.0) -> float | None:
    """``num / den * scale``, or None when either side is missing or ``den`` is zero.

    Derived metrics such as await (busy time per I/O) are undefined, not zero, when
    nothing happened in the interval; None lets charts show a gap rather than a lie.
    """
    if num is None or den is None or isinstance(num, str) or isinstance(den, str) or den == 0:
        return None
    return num / den * scale


def total(*values: float | str | None) -> float | None:
    """Sum of values, or None if any is missing (a partial sum would be misleading)."""
    acc = 0.0
    for value in values:
        if value is None or isinstance(value, str):
            return None
        acc += value
    return acc
