"""``hostscope.collector.*``: how the sampler's own collectors are doing.

Errors, timeouts, staleness and the duration of each collector's last call, one
instance per collector, so that a failing or slow collector shows on a chart (and in
``/metrics``) like any other metric instead of only in a log line. It reads the
sampler's :class:`~hostscope.metrics.sampler.CollectorStatus` objects, which the
sampler updates anyway; nothing is measured twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..collector import Collector, Raw
from ..model import COUNT, NONE, SEC, MetricDesc, ValueType, counter, instant

if TYPE_CHECKING:
    from ..sampler import CollectorStatus

_KW = {"indom": "hostscope.collector", "labels": ("collector",)}


class SelfCollector(Collector):
    """The sampler's collectors' health; the sampler runs it last in its ticks.

    Every 5 s by default: forty-odd series every second cost ~40 us per tick (4 % of
    the whole system set's sampling, measured), while errors and timeouts are counts
    and staleness also reaches clients at once through the stream's ``stale`` message.
    """

    name = "hostscope"

    def __init__(self, status: Mapping[str, CollectorStatus], *,
                 interval_s: float | None = 5.0) -> None:
        self._status = status
        self.interval_s = interval_s

    def descriptors(self) -> list[MetricDesc]:
        return [
            counter("hostscope.collector.errors", COUNT,
                    "failed collections (the collector raised, or its values were invalid)",
                    type=ValueType.U64, **_KW),  # type: ignore[arg-type]
            counter("hostscope.collector.timeouts", COUNT,
                    "collections abandoned because the collector did not answer in time",
                    type=ValueType.U64, **_KW),  # type: ignore[arg-type]
            instant("hostscope.collector.stale", NONE,
                    "1 while the collector's metrics are stale (last collection failed or "
                    "timed out), else 0", type=ValueType.U32, **_KW),  # type: ignore[arg-type]
            instant("hostscope.collector.duration", SEC,
                    "time the collector's last collection took (reading, parsing, rates)",
                    **_KW),  # type: ignore[arg-type]
        ]

    def may_block(self) -> bool:
        """The sampler's own status objects, in memory."""
        return False

    def collect(self) -> Raw:
        statuses = [s for s in self._status.values() if s.name != self.name]
        return {
            "hostscope.collector.errors": {s.name: s.errors for s in statuses},
            "hostscope.collector.timeouts": {s.name: s.timeouts for s in statuses},
            "hostscope.collector.stale": {s.name: int(s.stale) for s in statuses},
            "hostscope.collector.duration": {s.name: s.last_duration_s for s in statuses},
        }
