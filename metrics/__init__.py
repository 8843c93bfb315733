"""hostscope's metrics core: PCP-style descriptors, collectors, rates and history.

Nothing is registered or read at import time: build a registry, collectors (with
injected :class:`Roots`) and a :class:`Sampler` explicitly, usually through
:func:`hostscope.metrics.defaults.build_sampler`.
"""

from .collector import Collector, Cooked, Derivation, Raw
from .history import History, HistorySlice
from .model import (
    SINGULAR,
    MetricDesc,
    MetricError,
    MetricRegistry,
    Semantics,
    Units,
    UnknownMetricError,
    ValueType,
)
from .rates import RateConverter
from .sampler import Clock, CollectorStatus, Sampler, SystemClock, Tick
from .sources import Roots

__all__ = [
    "SINGULAR",
    "Clock",
    "Collector",
    "CollectorStatus",
    "Cooked",
    "Derivation",
    "History",
    "HistorySlice",
    "MetricDesc",
    "MetricError",
    "MetricRegistry",
    "RateConverter",
    "Raw",
    "Roots",
    "Sampler",
    "Semantics",
    "SystemClock",
    "Tick",
    "Units",
    "UnknownMetricError",
    "ValueType",
]
