"""The top-N process view: what ``GET /api/v1/processes`` and the dashboard's table show.

It reads the sampler's latest *cooked* values (rates already computed once per sample by
the one rate layer), so serving the table to any number of viewers costs no /proc reads
and can never disagree with the charts. Selection uses ``heapq.nlargest``, so only the
``limit`` winning rows are ever built.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from .collector import Cooked
from .collectors.cgroup import container_matches
from .collectors.process import PF_KTHREAD

#: sort key -> the cooked metric it orders by (descending; missing values sort last).
SORT_METRICS: dict[str, str] = {
    "cpu": "proc.cpu.util",
    "rss": "proc.memory.rss",
    "io": "proc.io.total_bytes",
}
MAX_LIMIT = 1000

_EMPTY: Mapping[str, Any] = {}


def _validate(sort: object, limit: object) -> None:
    if sort not in SORT_METRICS:
        raise ValueError(
            f"sort must be one of {', '.join(SORT_METRICS)}; got {sort!r}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}; got {limit!r}")


def _num(value: object) -> float | None:
    return None if value is None or isinstance(value, str) else float(value)  # type: ignore[arg-type]


def top_processes(
    latest: Cooked,
    *,
    sort: str = "cpu",
    limit: int = 20,
    container: str | None = None,
    include_kernel_threads: bool = True,
) -> list[dict[str, Any]]:
    """The ``limit`` processes using most CPU (``cpu``), memory (``rss``) or I/O (``io``).

    Rows: ``instance`` ("PID:STARTTIME"), ``pid``, ``cmd``, ``args``, ``container``, ``cpu``
    (1.0 = one CPU), ``rss`` (bytes), ``io`` (bytes/s), ``threads``, ``state``,
    ``start_time`` (seconds since the epoch). A value not known yet (no rate on a
    process's first sample) or not readable (another user's I/O) is None. ``container``
    keeps only processes of that container (see
    :func:`~hostscope.metrics.collectors.cgroup.container_matches`; "" = the host, not
    in any container or unit). Ties are broken by PID so the order is stable.

    Raises ValueError for an unknown ``sort`` or a ``limit`` outside 1..MAX_LIMIT.
    """
    _validate(sort, limit)
    pids = latest.get("proc.psinfo.pid", _EMPTY)
    key_metric = latest.get(SORT_METRICS[sort], _EMPTY)
    containers = latest.get("proc.id.container", _EMPTY)
    flags = latest.get("proc.psinfo.flags", _EMPTY)

    candidates: list[tuple[float, int, str]] = []
    for inst, pid in pids.items():
        if container is not None and not container_matches(containers.get(inst), container):
            continue
        if not include_kernel_threads:
            flag = flags.get(inst)
            if isinstance(flag, int | float) and int(flag) & PF_KTHREAD:
                continue
        value = _num(key_metric.get(inst))
        # Missing values rank below every real one (-1: all real values are >= 0).
        candidates.append((value if value is not None else -1.0, -int(pid or 0), inst))

    winners = heapq.nlargest(limit, candidates)
    cmd = latest.get("proc.psinfo.cmd", _EMPTY)
    args = latest.get("proc.psinfo.psargs", _EMPTY)
    cpu = latest.get("proc.cpu.util", _EMPTY)
    rss = latest.get("proc.memory.rss", _EMPTY)
    io = latest.get("proc.io.total_bytes", _EMPTY)
    threads = latest.get("proc.psinfo.threads", _EMPTY)
    state = latest.get("proc.psinfo.sname", _EMPTY)
    start = latest.get("proc.psinfo.start_time", _EMPTY)
    rows: list[dict[str, Any]] = []
    for _, neg_pid, inst in winners:
        n_threads = _num(threads.get(inst))
        rows.append({
            "instance": inst,
            "pid": -neg_pid,
            "cmd": cmd.get(inst),
            "args": args.get(inst),
            "container": containers.get(inst),
            "cpu": _num(cpu.get(inst)),
            "rss": _num(rss.get(inst)),
            "io": _num(io.get(inst)),
            "threads": int(n_threads) if n_threads is not None else None,
            "state": state.get(inst),
            "start_time": _num(start.get(inst)),
        })
    return rows
