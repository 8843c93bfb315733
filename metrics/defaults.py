"""The default collector set and a one-call sampler factory for the daemon and CLI."""

from __future__ import annotations

from .collector import Collector
from .collectors.cgroup import CgroupCollector
from .collectors.cpu import CpuCollector
from .collectors.disk import DiskCollector
from .collectors.filesys import FilesysCollector
from .collectors.host import HostCollector
from .collectors.memory import MemoryCollector
from .collectors.network import NetworkCollector, TcpConnCollector
from .collectors.process import IoReader, ProcessCollector
from .collectors.psi import PsiCollector
from .history import History
from .model import MetricRegistry
from .sampler import Clock, Sampler
from .sources import Roots


def default_collectors(
    roots: Roots, *, process_interval_s: float = 2.0, io_reader: IoReader | None = None,
    tcpconn_interval_s: float = 5.0,
) -> list[Collector]:
    """Every collector hostscope runs by default, reading under ``roots``.

    ``io_reader``: how to read the I/O counters of processes this one may not (the
    privileged helper, when the daemon runs without capabilities).
    ``tcpconn_interval_s``: the TCP states' cadence (the daemon's ``tcpconn_interval``)."""
    return [
        CpuCollector(roots),
        MemoryCollector(roots),
        PsiCollector(roots),  # registers nothing where PSI is absent; .reason says why
        DiskCollector(roots),
        FilesysCollector(roots),  # every 5 s; tmpfs and network filesystems off by default
        NetworkCollector(roots),
        # Per-state TCP counts make the kernel walk the whole TCP hash table (one netlink
        # walk, 0.3-1.9 ms even when idle: docs/metrics.md), so they have their own
        # cadence, 5 s by default; the network collector's per-second sockstat and
        # CurrEstab counts cover the gaps.
        TcpConnCollector(roots, interval_s=tcpconn_interval_s),
        HostCollector(roots),  # every 10 s: identity and inventory change rarely
        ProcessCollector(roots, interval_s=process_interval_s, io_reader=io_reader),
        CgroupCollector(roots, interval_s=2.0),
    ]


def build_sampler(
    roots: Roots | None = None,
    *,
    interval_s: float = 1.0,
    process_interval_s: float = 2.0,
    history: History | None = None,
    clock: Clock | None = None,
    registry: MetricRegistry | None = None,
) -> Sampler:
    """A sampler over the default collectors with a fresh registry."""
    roots = roots or Roots()
    return Sampler(
        default_collectors(roots, process_interval_s=process_interval_s),
        registry=registry or MetricRegistry(),
        interval_s=interval_s,
        clock=clock,
        history=history,
        self_metrics=True,
    )
