"""BPF modules as metric collectors, so their data flows through the normal pipeline.

Each module becomes one :class:`~hostscope.metrics.collector.Collector` named
``bpf.<module>``. Its descriptors are declared whether or not the module is enabled (the
sampler registers descriptors once, at start); while the module is off ``collect()``
returns nothing, so its metrics simply have no values, and the dashboard shows a gap rather
than zeros. Histogram buckets are counters, so the rate layer does the user-space diff;
percentiles are derived from those rates.

Reading goes through :meth:`BpfManager.read_metrics`, i.e. through the manager's lock, so a
collection never races a module being detached.
"""

from __future__ import annotations

from hostscope.metrics.collector import Collector, Derivation, Raw
from hostscope.metrics.model import MetricDesc

from .manager import BpfManager


class BpfModuleCollector(Collector):
    """The metrics of one BPF module; empty while the module is off."""

    def __init__(self, manager: BpfManager, module: str) -> None:
        self.manager = manager
        self.module = next(m for m in manager.modules() if m.name == module)
        self.name = f"bpf.{module}"

    def descriptors(self) -> list[MetricDesc]:
        return self.module.descriptors()

    def derivations(self) -> list[Derivation]:
        return self.module.derivations()

    def may_block(self) -> bool:
        """Only while the module is on (or starting): reading its maps then goes
        through the manager's lock, behind a map read of a wedged module."""
        return self.manager.may_be_on(self.module.name)

    def collect(self) -> Raw:
        return self.manager.read_metrics(self.module.name)


def bpf_collectors(manager: BpfManager) -> list[Collector]:
    """One collector per module of ``manager``, for the sampler's collector list."""
    return [BpfModuleCollector(manager, m.name) for m in manager.modules()]
