"""CPU collector over captured and crafted /proc trees, and against the live machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hostscope.metrics.collector import CookedView
from hostscope.metrics.collectors.cpu import CpuCollector, parse_loadavg, parse_stat
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FakeClock, copy_fixture, fixture_roots


def test_parse_stat_scales_ticks_to_ms_and_pads_old_kernels() -> None:
    text = (Path(__file__).parent / "fixtures/cpu/old-kernel/proc/stat").read_text()
    stat = parse_stat(text, hz=100)
    # 7 columns on old kernels: steal/guest/guest_nice default to 0
    assert stat["all"] == [1000, 50, 500, 10000, 70, 0, 30, 0, 0, 0]
    assert stat["percpu"]["cpu1"][0] == 400  # type: ignore[index]
    assert stat["ctxt"] == 99999
    assert stat["processes"] == 4242
    assert stat["intr"] == 12345


def test_parse_loadavg() -> None:
    load = parse_loadavg("1.50 0.75 0.25 3/120 4242\n")
    assert load == {"1 minute": 1.5, "5 minute": 0.75, "15 minute": 0.25, "runnable": 3,
                    "nprocs": 120}


def test_collect_from_captured_tree_has_every_declared_metric() -> None:
    collector = CpuCollector(fixture_roots("cpu", "live"), hz=100)
    raw = collector.collect()
    declared = {d.name for d in collector.descriptors()}
    assert set(raw) == declared
    assert raw["hinv.ncpu"][""] == 2
    assert set(raw["kernel.percpu.cpu.user"]) == {"cpu0", "cpu1"}
    assert set(raw["kernel.all.load"]) == {"1 minute", "5 minute", "15 minute"}


def test_utilisation_derived_from_rates(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "cpu", "old-kernel")
    clock = FakeClock()
    sampler = Sampler([CpuCollector(roots, hz=100)], registry=MetricRegistry(), clock=clock)
    first = sampler.sample()
    assert first.groups["cpu"].cooked["kernel.all.cpu.util.busy"][""] is None
    # one second later: +60 user ticks, +20 sys, +120 idle over 2 CPUs (200 ticks total)
    stat = roots.proc / "stat"
    stat.write_text(
        stat.read_text().replace("cpu  100 5 50 1000", "cpu  160 5 70 1120")
        .replace("ctxt 99999", "ctxt 100999")
    )
    clock.advance(1.0)
    cooked = sampler.sample().groups["cpu"].cooked
    assert cooked["kernel.all.cpu.user"][""] == pytest.approx(600.0)  # ms per second
    assert cooked["kernel.all.cpu.util.user"][""] == pytest.approx(0.30)
    assert cooked["kernel.all.cpu.util.sys"][""] == pytest.approx(0.10)
    assert cooked["kernel.all.cpu.util.idle"][""] == pytest.approx(0.60)
    assert cooked["kernel.all.cpu.util.busy"][""] == pytest.approx(0.40)
    assert cooked["kernel.all.pswitch"][""] == pytest.approx(1000.0)
    assert cooked["kernel.all.load"]["1 minute"] == 1.5


def test_truncated_stat_is_an_isolated_collector_error(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "cpu", "old-kernel")
    (roots.proc / "loadavg").write_text("1.0 0.5\n")
    sampler = Sampler([CpuCollector(roots, hz=100)], registry=MetricRegistry(), clock=FakeClock())
    tick = sampler.sample()
    assert "cpu" not in tick.groups
    status = sampler.status["cpu"]
    assert status.stale and status.errors == 1 and "ValueError" in (status.last_error or "")


@pytest.mark.live
def test_live_cpu_matches_os_and_busy_loop_shows_up() -> None:
    sampler = Sampler([CpuCollector(Roots())], registry=MetricRegistry())
    sampler.sample()
    assert sampler.latest["hinv.ncpu"][""] == os.cpu_count()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:  # burn one CPU for half a second
        pass
    sampler.sample()
    busy = sampler.latest["kernel.all.cpu.util.busy"][""]
    ncpu = os.cpu_count() or 1
    assert busy is not None and busy >= 0.6 / ncpu
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    assert sampler.latest["kernel.all.load"]["1 minute"] == pytest.approx(load1, abs=0.5)


def _one_by_one(collector: CpuCollector, cooked: CookedView) -> dict[str, object]:
    return {d.desc.name: dict(d.compute(cooked)) for d in collector.derivations()}


def test_derive_all_equals_the_derivations_one_by_one(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "cpu", "old-kernel")
    collector = CpuCollector(roots, hz=100)
    clock = FakeClock()
    sampler = Sampler([collector], registry=MetricRegistry(), clock=clock)
    stat = roots.proc / "stat"
    cases: list[CookedView] = []
    for step in range(3):
        cooked = sampler.sample().groups["cpu"].cooked
        cases.append({k: v for k, v in cooked.items() if "util" not in k})
        stat.write_text(stat.read_text().replace(f"cpu  {100 + 60 * step} ",
                                                 f"cpu  {160 + 60 * step} "))
        clock.advance(1.0)
    steady = cases[-1]
    cases += [
        {**steady, "hinv.ncpu": {"": 0}},  # no CPUs: no utilisation, not a crash
        {k: v for k, v in steady.items() if k != "hinv.ncpu"},
        {**steady, "kernel.percpu.cpu.steal": {"cpu0": None, "cpu1": 1.0}},
        {**steady, "kernel.all.cpu.irq.soft": {"": None}},
        {},
    ]
    for cooked in cases:
        assert collector.derive_all(cooked) == _one_by_one(collector, cooked)
    assert cases[0]["kernel.all.cpu.user"] == {"": None}  # the first sample was covered
    assert collector.derive_all(steady)["kernel.all.cpu.util.busy"][""] is not None


@pytest.mark.live
def test_live_derive_all_equals_the_derivations_one_by_one() -> None:
    collector = CpuCollector(Roots())
    sampler = Sampler([collector], registry=MetricRegistry())
    for _ in range(3):
        cooked = sampler.sample().groups["cpu"].cooked
        assert {k: v for k, v in cooked.items() if k in _one_by_one(collector, cooked)} == (
            _one_by_one(collector, cooked))
        time.sleep(0.05)
