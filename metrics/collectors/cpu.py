"""CPU, load and scheduler metrics from ``/proc/stat`` and ``/proc/loadavg``.

This module is the pattern every collector follows: pure ``parse_<file>(text)``
functions that know the file's layout (unit-tested on captured and crafted content),
a collector class whose ``collect`` does the I/O through :mod:`..sources`, descriptors
declared once, and derived metrics computed from cooked (rate-converted) values.

``/proc/stat`` cpu lines (fields per proc(5); trailing ones appeared over kernel
versions and default to 0 when absent)::

    cpu  user nice system idle iowait irq softirq steal guest guest_nice   (USER_HZ ticks)

PCP reports CPU time in milliseconds, so ticks are scaled by 1000 / USER_HZ. As in the
kernel and PCP, ``user`` and ``nice`` include ``guest`` and ``guest_nice``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from itertools import repeat
from operator import mul

from ..collector import Collector, Cooked, CookedView, Derivation, Raw, ratio
from ..model import (
    COUNT,
    MSEC,
    NONE,
    SEC,
    SINGULAR,
    UTILIZATION,
    MetricDesc,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import KeptFile, Roots

#: (PCP leaf name, /proc/stat column index, help)
CPU_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("user", 0, "time in user mode, including guest time"),
    ("nice", 1, "time in user mode at low priority (nice), including guest_nice"),
    ("sys", 2, "time in kernel mode"),
    ("idle", 3, "time idle, not waiting for I/O"),
    ("wait.total", 4, "time idle while I/O was outstanding (iowait)"),
    ("irq.hard", 5, "time servicing hardware interrupts"),
    ("irq.soft", 6, "time servicing soft interrupts"),
    ("steal", 7, "time stolen by the hypervisor for other guests"),
    ("guest", 8, "time running a virtual CPU for guests"),
    ("guest_nice", 9, "time running a niced virtual CPU for guests"),
)

#: Utilisation components shown stacked on the dashboard: (derived leaf, source leaves)
UTIL_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("user", ("user",)),
    ("nice", ("nice",)),
    ("sys", ("sys",)),
    ("wait", ("wait.total",)),
    ("irq", ("irq.hard", "irq.soft")),
    ("steal", ("steal",)),
    ("idle", ("idle",)),
)
_BUSY = ("user", "nice", "sys", "irq.hard", "irq.soft", "steal")
# Index tables of CpuCollector.derive_all, built once.
_LEAVES = tuple(leaf for leaf, _, _ in CPU_FIELDS)
_ALL_NAMES = tuple(f"kernel.all.cpu.{leaf}" for leaf in _LEAVES)
_PERCPU_NAMES = tuple(f"kernel.percpu.cpu.{leaf}" for leaf in _LEAVES)
_PERCPU_USER, _PERCPU_SYS = _LEAVES.index("user"), _LEAVES.index("sys")
_BUSY_POSITIONS = tuple(_LEAVES.index(leaf) for leaf in _BUSY)
_EMPTY: Mapping[str, float | str | None] = {}
_ALL_UTIL = (
    *((f"kernel.all.cpu.util.{leaf}", tuple(_LEAVES.index(s) for s in sources))
      for leaf, sources in UTIL_PARTS),
    ("kernel.all.cpu.util.busy", _BUSY_POSITIONS),
)


def parse_stat(text: str, hz: int) -> dict[str, object]:
    """Parse /proc/stat into totals, per-CPU times (ms) and scheduler counters.

    A line's key is split off first; cpu lines are split into at most 11 more fields
    and the others into two: the ``intr`` line carries one count per interrupt source
    (hundreds of them, thousands on big hosts) of which only the total, the first, is
    used. A line whose numbers are cut or garbled is skipped (never raises): the other
    lines are still good. Where USER_HZ divides 1000 (100, 250, 1000 Hz) ticks become
    ms by an integer product, exact where the float one is for any real count.
    """
    factor = 1000 // hz if 1000 % hz == 0 else 0
    scale = 1000.0 / hz
    out: dict[str, object] = {"percpu": {}}
    percpu: dict[str, list[int]] = out["percpu"]  # type: ignore[assignment]
    scalars = _STAT_SCALARS
    for line in text.split("\n"):
        head = line.split(None, 1)
        if len(head) != 2:
            if head and head[0].startswith("cpu"):
                head.append("")  # a cpu line without numbers: zeros, as before
            else:
                continue
        key, rest = head
        try:
            if key.startswith("cpu"):
                values = rest.split(None, 10)[:10]
                if factor:
                    ms = list(map(mul, map(int, values), repeat(factor)))
                else:
                    ms = [int(int(v) * scale) for v in values]
                if len(ms) < 10:
                    ms += [0] * (10 - len(ms))
                if key == "cpu":
                    out["all"] = ms
                else:
                    percpu[key] = ms
            elif key in scalars:
                out[key] = int(rest.split(None, 1)[0])
        except ValueError:
            continue
    return out


_STAT_SCALARS = frozenset({"ctxt", "processes", "procs_running", "procs_blocked", "btime",
                           "intr"})


def parse_loadavg(text: str) -> dict[str, float | int]:
    """Parse /proc/loadavg: ``0.31 0.19 0.07 1/79 2698``.

    Raises ValueError (only) for text of another shape, so the caller needs one except.
    """
    parts = text.split()
    if len(parts) < 4:
        raise ValueError(f"not a /proc/loadavg: {text[:40]!r}")
    running, _, total = parts[3].partition("/")
    return {
        "1 minute": float(parts[0]),
        "5 minute": float(parts[1]),
        "15 minute": float(parts[2]),
        "runnable": int(running),
        "nprocs": int(total),
    }


class CpuCollector(Collector):
    """``kernel.all.*``, ``kernel.percpu.*`` and ``hinv.ncpu``."""

    name = "cpu"

    def __init__(self, roots: Roots, *, hz: int | None = None) -> None:
        self.roots = roots
        self.hz = hz or os.sysconf("SC_CLK_TCK")
        self._stat = KeptFile(roots.proc / "stat")
        self._loadavg = KeptFile(roots.proc / "loadavg")

    def descriptors(self) -> list[MetricDesc]:
        descs: list[MetricDesc] = []
        for leaf, _, text in CPU_FIELDS:
            descs.append(
                counter(f"kernel.all.cpu.{leaf}", MSEC, f"CPU {text}, summed over all CPUs")
            )
            descs.append(
                counter(f"kernel.percpu.cpu.{leaf}", MSEC, f"CPU {text}, per CPU",
                        indom="kernel.cpu", labels=("cpu",))
            )
        descs += [
            discrete("hinv.ncpu", COUNT, "number of online CPUs", type=ValueType.U32),
            instant("kernel.all.load", NONE, "load average over 1, 5 and 15 minutes",
                    indom="kernel.loadavg", labels=("interval",)),
            instant("kernel.all.runnable", COUNT, "runnable (running or queued) tasks",
                    type=ValueType.U32),
            instant("kernel.all.blocked", COUNT, "tasks blocked in uninterruptible I/O wait",
                    type=ValueType.U32),
            instant("kernel.all.nprocs", COUNT, "number of tasks (threads) that exist",
                    type=ValueType.U32),
            counter("kernel.all.pswitch", COUNT, "context switches"),
            counter("kernel.all.intr", COUNT, "interrupts serviced, all sources"),
            counter("kernel.all.sysfork", COUNT, "tasks created (fork and clone)"),
            discrete("kernel.all.boottime", SEC, "system boot time, seconds since epoch"),
        ]
        return descs

    def derivations(self) -> list[Derivation]:
        derivs = [
            Derivation(
                instant(f"kernel.all.cpu.util.{leaf}", UTILIZATION,
                        f"fraction of all CPUs' time spent {leaf} (0-1)", derived=True),
                _all_util(sources),
            )
            for leaf, sources in UTIL_PARTS
        ]
        derivs.append(
            Derivation(
                instant("kernel.all.cpu.util.busy", UTILIZATION,
                        "fraction of all CPUs' time not idle or waiting for I/O (0-1)",
                        derived=True),
                _all_util(_BUSY),
            )
        )
        derivs.append(
            Derivation(
                instant("kernel.percpu.cpu.util.busy", UTILIZATION,
                        "fraction of each CPU's time not idle or waiting for I/O (0-1)",
                        indom="kernel.cpu", labels=("cpu",), derived=True),
                _percpu_busy,
            )
        )
        for leaf in ("user", "sys"):
            derivs.append(
                Derivation(
                    instant(f"kernel.percpu.cpu.util.{leaf}", UTILIZATION,
                            f"fraction of each CPU's time spent {leaf} (0-1)",
                            indom="kernel.cpu", labels=("cpu",), derived=True),
                    _percpu_util(leaf),
                )
            )
        return derivs

    def derive_all(self, cooked: CookedView) -> Cooked:
        """The derivations above in one pass (same arithmetic, same order of operations)."""
        get = cooked.get
        ncpu = get("hinv.ncpu", _EMPTY).get(SINGULAR)
        usable = ncpu.__class__ in (int, float) and ncpu != 0
        totals = [get(name, _EMPTY).get(SINGULAR) for name in _ALL_NAMES]
        out: Cooked = {}
        for name, positions in _ALL_UTIL:
            parts = [totals[i] for i in positions]
            # as _all_util: rate is ms of CPU time per second; / 1000 -> CPUs busy;
            # / ncpu -> fraction (ratio() without its per-call checks)
            if None in parts or not usable:
                out[name] = {SINGULAR: None}
            else:
                out[name] = {SINGULAR: sum(parts) / ncpu * 1e-3}  # type: ignore[arg-type,operator]
        percpu = [get(name, _EMPTY) for name in _PERCPU_NAMES]
        sources = [percpu[i] for i in _BUSY_POSITIONS]
        busy: dict[str, float | str | None] = {}
        for cpu in percpu[_PERCPU_USER]:
            parts = [values.get(cpu) for values in sources]
            busy[cpu] = None if None in parts else sum(parts) / 1000.0  # type: ignore[arg-type]
        out["kernel.percpu.cpu.util.busy"] = busy
        out["kernel.percpu.cpu.util.user"] = {
            cpu: ratio(v, 1000.0) for cpu, v in percpu[_PERCPU_USER].items()
        }
        out["kernel.percpu.cpu.util.sys"] = {
            cpu: ratio(v, 1000.0) for cpu, v in percpu[_PERCPU_SYS].items()
        }
        return out

    def may_block(self) -> bool:
        """``/proc/stat`` and ``/proc/loadavg``: counters, no lock another task holds."""
        return False

    def collect(self) -> Raw:
        stat = parse_stat(self._stat.read().decode("utf-8", "replace"), self.hz)
        load = parse_loadavg(self._loadavg.read().decode("utf-8", "replace"))
        raw: Raw = {}
        percpu: dict[str, list[int]] = stat["percpu"]  # type: ignore[assignment]
        all_ms: list[int] = stat["all"]  # type: ignore[assignment]
        cpus = percpu.items()
        for all_name, percpu_name, idx in _FIELD_NAMES:
            raw[all_name] = {SINGULAR: all_ms[idx]}
            raw[percpu_name] = {cpu: ms[idx] for cpu, ms in cpus}
        raw["hinv.ncpu"] = {SINGULAR: len(percpu)}
        raw["kernel.all.load"] = {k: load[k] for k in ("1 minute", "5 minute", "15 minute")}
        raw["kernel.all.runnable"] = {SINGULAR: int(stat.get("procs_running", load["runnable"]))}
        raw["kernel.all.blocked"] = {SINGULAR: int(stat.get("procs_blocked", 0))}
        raw["kernel.all.nprocs"] = {SINGULAR: load["nprocs"]}
        for name, key in (("kernel.all.pswitch", "ctxt"), ("kernel.all.intr", "intr"),
                          ("kernel.all.sysfork", "processes"), ("kernel.all.boottime", "btime")):
            if key in stat:
                raw[name] = {SINGULAR: stat[key]}  # type: ignore[dict-item]
        return raw

    def close(self) -> None:
        self._stat.close()
        self._loadavg.close()


#: (kernel.all name, kernel.percpu name, /proc/stat column) per CPU_FIELDS entry
_FIELD_NAMES = tuple(
    (f"kernel.all.cpu.{leaf}", f"kernel.percpu.cpu.{leaf}", idx) for leaf, idx, _ in CPU_FIELDS
)


Compute = Callable[[CookedView], dict[str, float | None]]


def _all_util(sources: tuple[str, ...]) -> Compute:
    def compute(c: CookedView) -> dict[str, float | None]:
        ncpu = c.get("hinv.ncpu", {}).get(SINGULAR)
        parts = [c.get(f"kernel.all.cpu.{s}", {}).get(SINGULAR) for s in sources]
        if any(p is None for p in parts):
            return {SINGULAR: None}
        # rate is ms of CPU time per second; / 1000 -> CPUs busy; / ncpu -> fraction
        return {SINGULAR: ratio(sum(parts), ncpu, 1e-3)}  # type: ignore[arg-type]

    return compute


def _percpu_util(leaf: str) -> Compute:
    def compute(c: CookedView) -> dict[str, float | None]:
        return {cpu: ratio(v, 1000.0) for cpu, v in c.get(f"kernel.percpu.cpu.{leaf}", {}).items()}

    return compute


def _percpu_busy(c: CookedView) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for cpu in c.get("kernel.percpu.cpu.user", {}):
        parts = [c.get(f"kernel.percpu.cpu.{s}", {}).get(cpu) for s in _BUSY]
        out[cpu] = None if any(p is None for p in parts) else sum(parts) / 1000.0  # type: ignore[arg-type,misc]
    return out
