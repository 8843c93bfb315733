"""Cost of the metrics core on this machine: one command, figures printed.

    .venv/bin/python benchmarks/bench_metrics.py [--ticks N] [--rounds R] [--in-situ S]
                                                  [--compare REV]

Measures the system metric set (every default collector except processes, which has its
own benchmark, benchmarks/bench_processes.py, because its cost scales with the number of
processes) as the daemon runs it: 1 Hz ticks of Sampler.collect() + Sampler.publish()
with a History, each collector at its own cadence. CPU time is this thread's
(CLOCK_THREAD_CPUTIME_ID: user and kernel time, so the kernel's work behind each read
or netlink dump is included). It prints:

* per collector: its cadence and the CPU time of its collect() (reading and parsing),
  per call and amortised per 1 s tick;
* the pipeline: rate conversion, derived metrics, publishing and history, per tick
  (the tick's CPU time minus its collect() calls; the timing of each call, ~0.7 µs,
  lands here too);
* the per-second set's total: the CPU time of a tick in which only the 1 s collectors
  run (what every second costs at least);
* the amortised total: the mean over all ticks, slower collectors included;
* the floor: the CPU time of merely opening, reading and closing the files the
  per-second collectors read (no parsing at all), and the ratio of the per-second
  total to it; and the same files read through descriptors kept open (``pread`` at
  offset 0), as the collectors read them since issue #2's third round;
* history memory per series after an hour at 1 Hz: the worst case (values that never
  repeat) and, from the in-situ run, real values (its collections replayed for an
  hour; at least 128 of them, one compressed block).

This machine is shared and noisy: each run is repeated ``--rounds`` times in fresh
processes and the best round is shown (contention only ever adds time); compare ratios
measured side by side, such as total/floor, rather than absolute figures between runs.
``--in-situ SECONDS`` (default 150) then runs the same set on a real 1 Hz schedule, the
way the daemon runs it, with the floor files read once a second between ticks: at that
pace caches are cold at every tick, and both figures are 2-3x the back-to-back ones.

``--compare REV`` measures the metrics code of git revision REV (extracted with
``git archive`` into a temporary directory) in alternating rounds with the working
tree, and prints both side by side. In situ, both run in one process (the revision's
code imported under another package name), each ticking once a second, in turn and in
a random order each second: the same load falls on both, which separate runs a minute
apart on a shared machine cannot promise (their difference was often larger than the
effect measured).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flat_reference  # beside this file (the script's directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent

#: The procfs files the per-second collectors read each tick (the floor of any
#: collector). TCP states come from a netlink dump every 5 s, not from these.
SYSTEM_FILES = (
    "stat", "loadavg", "meminfo", "vmstat", "diskstats", "net/dev", "net/snmp",
    "net/netstat", "net/sockstat", "pressure/cpu", "pressure/memory", "pressure/io",
)


def cpu_now() -> float:
    return time.thread_time()


def system_paths() -> list[Path]:
    """The per-second files present on this machine."""
    return [Path("/proc") / f for f in SYSTEM_FILES if (Path("/proc") / f).exists()]


def read_floor(ticks: int) -> float:
    """CPU seconds per tick to open/read/close the per-second files."""
    paths = system_paths()
    start = cpu_now()
    for _ in range(ticks):
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            while os.read(fd, 65536):
                pass
            os.close(fd)
    return (cpu_now() - start) / ticks


class Reference:
    """A reference path of ``flat_reference`` ticked like a sampler: CPU per tick."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.name = path.name
        for _ in range(10):
            path.tick()  # as the probes: first reads and the layout learnt
        self.cpu: list[float] = []

    def tick(self) -> None:
        start = cpu_now()
        self.path.tick()
        self.cpu.append(cpu_now() - start)

    def mean_us(self) -> float:
        return statistics.fmean(self.cpu) * 1e6 if self.cpu else 0.0

    def close(self) -> None:
        self.path.close()


class KeptFloor:
    """The same files read from descriptors kept open (``pread`` at offset 0 until the
    end), as the collectors read them: what reading costs without the opens."""

    def __init__(self) -> None:
        self.fds = [os.open(Path("/proc") / f, os.O_RDONLY) for f in SYSTEM_FILES
                    if (Path("/proc") / f).exists()]

    def __call__(self, ticks: int) -> float:
        start = cpu_now()
        for _ in range(ticks):
            for fd in self.fds:
                size = len(os.pread(fd, 65536, 0))
                while chunk := os.pread(fd, 65536, size):
                    size += len(chunk)
        return (cpu_now() - start) / ticks


def read_tcp_files(ticks: int) -> float:
    """CPU seconds to read /proc/net/tcp and tcp6 once (what PCP and psutil do)."""
    start = cpu_now()
    for _ in range(ticks):
        for name in ("net/tcp", "net/tcp6"):
            fd = os.open(Path("/proc") / name, os.O_RDONLY)
            while os.read(fd, 65536):
                pass
            os.close(fd)
    return (cpu_now() - start) / ticks


def use_code(code: Path, package: str = "hostscope.metrics") -> None:
    """Import ``code/metrics`` as ``package`` (by default instead of the installed tree;
    under another name, several trees can be measured side by side in one process)."""
    import hostscope  # noqa: F401 - the namespace package must exist first

    init = code / "metrics" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        package, init, submodule_search_locations=[str(code / "metrics")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)


def build(package: str) -> Any:
    """A sampler of the system set (no processes) with a history, from ``package``."""
    defaults = importlib.import_module(f"{package}.defaults")
    history = importlib.import_module(f"{package}.history")
    sources = importlib.import_module(f"{package}.sources")
    sampler = defaults.build_sampler(sources.Roots(), history=history.History())
    sampler.collectors = [c for c in sampler.collectors if c.name != "process"]
    return sampler


class Probe:
    """One sampler under measurement: its collectors timed, its ticks recorded."""

    def __init__(self, sampler: Any, *, record: bool = False) -> None:
        self.sampler = sampler
        #: group -> its cooked collections, in order (when recording)
        self.recorded: dict[str, list[Any]] | None = {} if record else None
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.tick_cpu: list[float] = []
        self.only_per_second: list[float] = []
        for _ in range(10):
            sampler.sample()  # warm up: first reads, classification, the tcpconn check
        self.every = {c.name: sampler.group_interval_s(c.name) for c in sampler.collectors}
        for collector in sampler.collectors:
            self.spent[collector.name] = 0.0
            self.calls[collector.name] = 0
            collector.collect = self.timed(collector.name, collector.collect)
        self.per_second = {name for name, every in self.every.items()
                           if every <= sampler.interval_s}

    def timed(self, name: str, collect: Any) -> Any:
        def wrapper() -> Any:
            start = cpu_now()
            try:
                return collect()
            finally:
                self.spent[name] += cpu_now() - start
                self.calls[name] += 1
        return wrapper

    def tick(self) -> None:
        start = cpu_now()
        tick = self.sampler.collect()
        self.sampler.publish(tick)
        cost = cpu_now() - start
        self.tick_cpu.append(cost)
        if self.recorded is not None:
            for group, sample in tick.groups.items():
                self.recorded.setdefault(group, []).append(sample.cooked)
        if set(tick.groups) <= self.per_second:
            self.only_per_second.append(cost)

    def result(self, floor_cpu: list[float], kept_cpu: list[float]) -> dict[str, Any]:
        ticks = len(self.tick_cpu)
        total = statistics.fmean(self.tick_cpu)
        collect_total = sum(self.spent.values()) / ticks
        history = self.sampler.history
        return {
            "series": history.series_count if history else 0,
            "collectors": {
                name: {
                    "every_s": self.every[name],
                    "per_call_us": spent / max(1, self.calls[name]) * 1e6,
                    "per_tick_us": spent / ticks * 1e6,
                }
                for name, spent in self.spent.items()
            },
            "pipeline_us": (total - collect_total) * 1e6,
            "per_second_us": (statistics.fmean(self.only_per_second) * 1e6
                              if self.only_per_second else None),
            "amortised_us": total * 1e6,
            "floor_us": statistics.fmean(floor_cpu) * 1e6 if floor_cpu else None,
            "kept_floor_us": statistics.fmean(kept_cpu) * 1e6 if kept_cpu else None,
        }

    def replayed_history(self, history_cls: Any) -> dict[str, Any] | None:
        """(series, bytes) of a history holding an hour of the recorded collections,
        replayed in a loop: what an hour of this host's real values costs. None unless
        a block's worth (128 s) was recorded: a shorter loop would repeat within a
        block, which deflate would turn into flattering figures."""
        if not self.recorded or len(self.recorded.get("cpu", ())) < 128:
            return None
        history = history_cls()
        t0 = 1_700_000_000.0
        for group, collections in self.recorded.items():
            every = self.every[group]
            history.add_group(group, every)
            for i in range(int(3600 / every)):
                history.append(group, t0 + i * every, collections[i % len(collections)])
        return {"ticks": len(self.recorded["cpu"]), "series": history.series_count,
                "bytes": history.nbytes()}


def measure(ticks: int, spaced_s: float = 0.0,
            packages: tuple[str, ...] = ("hostscope.metrics",)) -> list[dict[str, Any]]:
    """One round in this process: figures in microseconds (see the module docstring),
    one result per package.

    ``spaced_s`` > 0 runs the ticks on a real schedule, each sampler ticking once every
    ``spaced_s`` seconds as the daemon does, instead of back to back. Several packages
    (variants of the code) tick in turn, evenly spread over each period and in a new
    random order each period, so that they are measured side by side under the same
    load; once a period, between ticks, the floor files are read (opened each time,
    and through kept descriptors, in slots of their own), so the floors are measured
    as cold as the ticks."""
    probes = [Probe(build(package), record=spaced_s > 0) for package in packages]
    floor_cpu: list[float] = []
    kept_cpu: list[float] = []
    kept_floor = KeptFloor()
    tmp = flat_reference.make_tmp()
    try:
        refs = [Reference(ref) for ref in flat_reference.references(system_paths(), tmp)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    order: list[Probe | Reference] = [*probes, *refs]
    slot = time.monotonic()
    step = spaced_s / (len(order) + 2)
    for _ in range(ticks):
        if not spaced_s:
            for probe in order:
                probe.tick()
            continue
        random.shuffle(order)
        for k, probe in enumerate(order):
            time.sleep(max(0.0, slot + (k + 1) * step - time.monotonic()))
            probe.tick()
        time.sleep(max(0.0, slot + (len(order) + 1) * step - time.monotonic()))
        floor_cpu.append(read_floor(1))
        time.sleep(max(0.0, slot + spaced_s - time.monotonic()))
        kept_cpu.append(kept_floor(1))
        slot += spaced_s
    for ref in refs:
        ref.close()
    results = [probe.result(floor_cpu, kept_cpu) for probe in probes]
    for result in results:
        result["references"] = {ref.name: ref.mean_us() for ref in refs}
    for probe, package, result in zip(probes, packages, results, strict=True):
        history_cls = importlib.import_module(f"{package}.history").History
        result["replayed_history"] = probe.replayed_history(history_cls)
    return results


def bench_history_memory() -> tuple[int, int, float]:
    """(series, bytes held after one hour at 1 Hz, bytes per series) for the system set's
    series when no value ever repeats (random values): the history's worst case. What
    real values cost is measured in situ (``replayed_history``)."""
    from hostscope.metrics.defaults import build_sampler
    from hostscope.metrics.history import History
    from hostscope.metrics.sources import Roots

    sampler = build_sampler(Roots())
    sampler.collectors = [c for c in sampler.collectors if c.name != "process"]
    sampler.sample(force_all=True)
    time.sleep(0.2)
    cooked = sampler.collect(force_all=True).cooked()
    history = History()
    history.add_group("system", 1.0)
    t0 = 1_700_000_000.0
    rng = random.Random(1)
    numeric = {metric: [inst for inst, v in instances.items()
                        if v is not None and not isinstance(v, str)]
               for metric, instances in cooked.items()}
    for i in range(3600):
        history.append("system", t0 + i, {
            metric: {inst: rng.random() for inst in insts} for metric, insts in numeric.items()
        })
    series = history.series_count
    return series, history.nbytes(), history.nbytes() / max(1, series)


def bench_process_churn(new_per_sample: int = 1, steady: int = 100) -> tuple[int, int, int]:
    """(series, bytes held, bytes rings throughout would hold) after an hour of the process
    group at its default 2 s with ``steady`` processes and ``new_per_sample`` new
    short-lived ones (seen once) per sample: what a host running cron jobs, health checks
    and shell scripts looks like."""
    from hostscope.metrics.collectors.process import ProcessCollector
    from hostscope.metrics.history import History

    history = History()
    metrics = ProcessCollector.history_metrics
    history.add_group("process", 2.0, coarse=False, metrics=metrics)
    t0 = 1_700_000_000.0
    for i in range(1800):
        present = [str(n) for n in range(steady)]
        present += [f"short{i}.{k}" for k in range(new_per_sample)]
        history.append("process", t0 + 2 * i,
                       {m: dict.fromkeys(present, float(i)) for m in metrics})
    series = history.series_count
    rings = series * 4 * 1800 + 8 * 1800
    return series, history.nbytes(), rings


def tcp_sockets() -> int | None:
    """TCP sockets in this namespace now (the tcpconn walk grows with them)."""
    try:
        from hostscope.metrics.collectors.network import TcpStateDump

        dump = TcpStateDump()
        try:
            return sum(dump())
        finally:
            dump.close()
    except (ImportError, OSError):
        return None


def run_round(codes: list[Path | None], ticks: int, spaced_s: float = 0.0) -> list[dict[str, Any]]:
    """One measurement in a fresh interpreter: the metrics code of each of ``codes``
    (None: the working tree), side by side in that one process."""
    cmd = [sys.executable, __file__, "--worker", "--ticks", str(ticks), "--spaced", str(spaced_s)]
    for code in codes:
        cmd += ["--code", str(code) if code is not None else ""]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest of each figure over rounds (noise from other processes only adds)."""
    def low(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    first = rounds[0]
    return {
        "series": first["series"],
        "collectors": {
            name: {
                "every_s": info["every_s"],
                "per_call_us": low([r["collectors"][name]["per_call_us"] for r in rounds]),
                "per_tick_us": low([r["collectors"][name]["per_tick_us"] for r in rounds]),
            }
            for name, info in first["collectors"].items()
        },
        "pipeline_us": low([r["pipeline_us"] for r in rounds]),
        "per_second_us": low([r["per_second_us"] for r in rounds]),
        "amortised_us": low([r["amortised_us"] for r in rounds]),
        "floor_us": low([r.get("floor_us") for r in rounds]),
        "kept_floor_us": low([r.get("kept_floor_us") for r in rounds]),
        "references": {name: low([r["references"].get(name) for r in rounds])
                       for name in first.get("references", {})},
    }


def fmt(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def report(results: list[tuple[str, dict[str, Any]]], floor: float, ticks: int,
           rounds: int, title: str = "back to back", *,
           kept_floor: float | None = None) -> None:
    cell = 26
    print(f"system metric set at 1 Hz, {title}: {results[-1][1]['series']} series, "
          f"{ticks} ticks, best of {rounds} rounds; CPU time in µs")
    print(f"  {'':<26}" + "".join(f"{label:>{cell}}" for label, _ in results))
    print(f"  {'collect() of':<26}" + "".join(
        f"{'every':>8}{'per call':>9}{'per tick':>9}" for _ in results))
    names = list(results[-1][1]["collectors"])
    names += [n for _, r in results for n in r["collectors"] if n not in names]
    names.sort(key=lambda n: -(results[-1][1]["collectors"].get(n, {}).get("per_tick_us") or 0))
    for name in names:
        cells = []
        for _, r in results:
            info = r["collectors"].get(name)
            if info is None:
                cells.append(f"{'-':>{cell}}")
                continue
            cells.append(f"{info['every_s']:>6g} s{fmt(info['per_call_us'], 9)}"
                         f"{fmt(info['per_tick_us'], 9)}")
        print(f"  {name:<26}" + "".join(cells))

    def line(text: str, values: list[str]) -> None:
        print(f"  {text:<26}" + "".join(f"{v:>{cell}}" for v in values))

    floor_us = floor * 1e6
    line("pipeline per tick", [fmt(r["pipeline_us"]) for _, r in results])
    print("    (rates, derived metrics, publish, history)")
    line("PER-SECOND SET per tick", [fmt(r["per_second_us"]) for _, r in results])
    print("    (a tick in which only the 1 s collectors run: collect + pipeline)")
    line("AMORTISED TOTAL per tick", [fmt(r["amortised_us"]) for _, r in results])
    print("    (mean of all ticks, slower collectors at their cadence)")
    line("FLOOR", [fmt(floor_us) for _ in results])
    print("    (open/read/close of the files the 1 s collectors read, no parsing)")
    if kept_floor is not None:
        line("FLOOR, descriptors kept", [fmt(kept_floor * 1e6) for _ in results])
        print("    (the same files read by pread on descriptors kept open, as collected now)")
    references = results[-1][1].get("references") or {}
    for name, us in references.items():
        line(f"{name.upper()} (reference)", [fmt(us) for _ in results])
    if references:
        print("    (the same files, kept open: tokenised, every number an integer, rates of all,")
        print("     one history row; no per-metric dicts, derived metrics or views: the least")
        print("     a design in that language does, benchmarks/flat_reference.py)")
    line("per-second set / floor",
         [f"{(r['per_second_us'] or 0) / floor_us:.1f}x" for _, r in results])
    line("amortised total / floor", [f"{r['amortised_us'] / floor_us:.1f}x" for _, r in results])
    line("amortised, % of one core", [f"{r['amortised_us'] / 1e4:.3f} %" for _, r in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=2000, help="1 Hz ticks to simulate")
    parser.add_argument("--rounds", type=int, default=2, help="fresh-process repetitions")
    parser.add_argument("--compare", metavar="REV",
                        help="also measure the metrics code of this git revision")
    parser.add_argument("--in-situ", type=float, default=150.0, metavar="SECONDS",
                        help="also run the set on a real 1 Hz schedule for this long, as the "
                        "daemon does (0: skip)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spaced", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--code", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        packages: list[str] = []
        for n, code in enumerate(args.code or [""]):
            if not code:
                packages.append("hostscope.metrics")  # the working tree, as installed
                continue
            packages.append(f"hostscope.bench_variant_{n}")
            use_code(Path(code), packages[-1])
        print(json.dumps(measure(args.ticks, args.spaced, tuple(packages))))
        return

    with tempfile.TemporaryDirectory(prefix="hostscope-bench-") as tmp:
        variants: list[tuple[str, Path | None]] = []
        if args.compare:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare,
                                      "metrics"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            variants.append((f"before ({args.compare[:10]})", Path(tmp)))
        variants.append(("working tree" if args.compare else "", None))
        collected: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
        floors = [read_floor(args.ticks)]
        kept_floor = KeptFloor()
        kept_floors = [kept_floor(args.ticks)]
        for _ in range(args.rounds):
            for label, code in variants:  # alternate, so drifting load hits both alike
                collected[label].append(run_round([code], args.ticks)[0])
            floors.append(read_floor(args.ticks))
            kept_floors.append(kept_floor(args.ticks))
        floor = min(floors)
        report([(label, best(collected[label])) for label, _ in variants], floor, args.ticks,
               args.rounds, kept_floor=min(kept_floors))
        if args.in_situ > 0:  # (inside the with: the extracted revision is still there)
            # The same set once a second, as the daemon runs it: caches are cold at each
            # tick (other work ran in between), which costs 2-3x the back-to-back figures
            # above on the development VM. All variants in one process, each ticking once
            # a second, in turn: side by side under the same load.
            ticks = max(10, round(args.in_situ))
            results = run_round([code for _, code in variants], ticks, 1.0)
            situ = [(label, result) for (label, _), result in zip(variants, results, strict=True)]
            situ_floor = min(r["floor_us"] for _, r in situ) / 1e6
            print()
            report(situ, situ_floor, ticks, 1,
                   title="in situ, one tick a second (floor read once a second too)",
                   kept_floor=situ[0][1]["kept_floor_us"] / 1e6)
            for label, result in situ:
                replayed = result.get("replayed_history")
                name = f"{label}: " if label else ""
                if replayed is None:
                    print(f"history of real values: {name}needs --in-situ 128 or more "
                          "(a whole block of real collections)")
                    continue
                print(f"history of real values, {name}the {replayed['ticks']} collections "
                      f"above replayed for 1 h: {replayed['series']} series, "
                      f"{replayed['bytes'] / 1e6:.2f} MB "
                      f"({replayed['bytes'] / max(1, replayed['series']):.0f} bytes/series)")
    sockets = tcp_sockets()
    if sockets is not None:
        print(f"  (tcpconn walks the TCP hash: {sockets} TCP sockets here now; each adds "
              "~0.6 µs per walk)")
    print(f"  (/proc/net/tcp+tcp6, which hostscope avoids: {read_tcp_files(200) * 1e6:.0f} µs)")
    n, nbytes, per_series = bench_history_memory()
    print(f"history, worst case (no value repeats): {n} series x 1 h at 1 Hz = "
          f"{nbytes / 1e6:.2f} MB ({per_series:.0f} bytes/series fine tier; up to 6.3 KB "
          "more for the coarse tier after 24 h)")
    for new in (1, 3):
        n, nbytes, rings = bench_process_churn(new)
        print(f"process history, 100 processes + {new} short-lived new one(s) per 2 s sample, "
              f"1 h: {n} series, {nbytes / 2**20:.1f} MiB ({rings / 2**20:.1f} MiB if every "
              "series were a ring)")


if __name__ == "__main__":
    main()
