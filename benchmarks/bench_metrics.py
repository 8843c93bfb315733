"""Cost of the metrics core on this machine: one command, figures printed.

    .venv/bin/python benchmarks/bench_metrics.py [--ticks N]

Measures, side by side in one run (this machine is noisy, so ratios matter more than
absolute numbers):

* the CPU time of one full sampling tick of the system metric set (every default
  collector except processes: collect + rate conversion + derived metrics + history),
  per collector and in total, as ms per tick and % of one core at 1 Hz;
* the floor: the CPU time of merely reading the same procfs files (open/read/close);
* history memory: bytes per series for the default retention, measured by filling a
  History with an hour of 1 Hz data for the live series set.

The process collector has its own benchmark (benchmarks/bench_processes.py) because its
cost scales with the number of processes.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.history import History
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots

#: The procfs files the per-second system set reads each tick (the floor of any
#: collector). /proc/net/tcp is not among them: TCP states come from a netlink dump.
SYSTEM_FILES = (
    "stat", "loadavg", "meminfo", "vmstat", "diskstats", "net/dev", "net/snmp",
    "net/netstat", "pressure/cpu", "pressure/memory", "pressure/io",
)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_floor(ticks: int) -> float:
    """CPU seconds per tick to open/read/close the system set's files."""
    paths = [Path("/proc") / f for f in SYSTEM_FILES if (Path("/proc") / f).exists()]
    start = cpu_seconds()
    for _ in range(ticks):
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            while os.read(fd, 65536):
                pass
            os.close(fd)
    return (cpu_seconds() - start) / ticks


def read_tcp_files(ticks: int) -> float:
    """CPU seconds to read /proc/net/tcp and tcp6 once (what PCP and psutil do)."""
    start = cpu_seconds()
    for _ in range(ticks):
        for name in ("net/tcp", "net/tcp6"):
            fd = os.open(Path("/proc") / name, os.O_RDONLY)
            while os.read(fd, 65536):
                pass
            os.close(fd)
    return (cpu_seconds() - start) / ticks


def system_sampler(history: History | None) -> Sampler:
    sampler = build_sampler(Roots(), history=history)
    sampler.collectors = [c for c in sampler.collectors if c.name != "process"]
    return sampler


def bench_ticks(ticks: int) -> tuple[float, dict[str, tuple[float, float]], int]:
    """CPU seconds per 1 Hz tick at the collectors' real cadences, and per collector
    (seconds per call, seconds amortised per tick)."""
    sampler = system_sampler(History())
    for _ in range(10):
        sampler.sample()
    calls = {c.name: sampler.status[c.name].collections for c in sampler.collectors}
    spent = dict.fromkeys(calls, 0.0)
    start = cpu_seconds()
    for _ in range(ticks):
        tick = sampler.collect()
        sampler.publish(tick)
        for name in tick.groups:
            spent[name] += sampler.status[name].last_duration_s
    total = (cpu_seconds() - start) / ticks
    per = {
        name: (spent[name] / max(1, sampler.status[name].collections - calls[name]),
               spent[name] / ticks)
        for name in spent
    }
    series = sampler.history.series_count if sampler.history else 0
    return total, per, series


def bench_history_memory() -> tuple[int, int, float]:
    """(series, bytes held after one hour at 1 Hz, bytes per series)."""
    sampler = system_sampler(None)
    sampler.sample(force_all=True)
    time.sleep(0.2)
    tick = sampler.collect(force_all=True)
    cooked = tick.cooked()
    history = History()
    history.add_group("system", 1.0)
    t0 = 1_700_000_000.0
    for i in range(3600):
        history.append("system", t0 + i, cooked)
    series = history.series_count
    return series, history.nbytes(), history.nbytes() / max(1, series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=2000, help="1 Hz ticks to simulate")
    args = parser.parse_args()

    floor = read_floor(args.ticks)
    total, per, series = bench_ticks(args.ticks)
    floor2 = read_floor(args.ticks)  # again, to see the noise
    print(f"system set at 1 Hz, {series} series, {args.ticks} ticks (own cadences honoured)")
    print(f"  {'collector':<10} {'per call':>10} {'per tick':>10}")
    for name, (call, amortised) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<10} {call * 1e6:8.1f}µs {amortised * 1e6:8.1f}µs")
    print(f"  full tick (incl. rates, derived, history) {total * 1e6:8.1f} µs CPU"
          f" = {total * 100:.3f} % of one core")
    print(f"  floor: open/read/close of the per-second files {floor * 1e6:.1f} µs"
          f" / {floor2 * 1e6:.1f} µs (tick/floor {total / ((floor + floor2) / 2):.1f}x)")
    print(f"  (/proc/net/tcp+tcp6, which hostscope avoids: {read_tcp_files(200) * 1e6:.0f} µs)")
    n, nbytes, per_series = bench_history_memory()
    print(f"history: {n} series x 1 h at 1 Hz = {nbytes / 1e6:.2f} MB"
          f" ({per_series:.0f} bytes/series fine tier; +5,760 coarse tier after 24 h)")


if __name__ == "__main__":
    main()
