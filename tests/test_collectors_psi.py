"""PSI collector: captured and crafted pressure files, absent and disabled PSI, live."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hostscope.metrics.collectors.psi import (
    AVG_INSTANCES,
    PsiCollector,
    parse_pressure,
    probe_psi,
)
from hostscope.metrics.model import MetricRegistry, Semantics
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FIXTURES, FakeClock, copy_fixture, fixture_roots

LIVE_T0 = FIXTURES / "psi" / "live" / "t0" / "proc" / "pressure"
LIVE_T1 = FIXTURES / "psi" / "live" / "t1" / "proc" / "pressure"


def naive_pressure(path: Path) -> dict[str, dict[str, float]]:
    """An independent reading: kind -> {avg10, avg60, avg300, total}."""
    out = {}
    for line in path.read_text().splitlines():
        kind, *pairs = line.split()
        out[kind] = {k: float(v) for k, v in (p.split("=") for p in pairs)}
    return out


def test_parse_pressure_matches_the_file() -> None:
    for resource in ("cpu", "memory", "io"):
        parsed = parse_pressure((LIVE_T0 / resource).read_text())
        for kind, fields in naive_pressure(LIVE_T0 / resource).items():
            assert parsed[kind] == (fields["avg10"], fields["avg60"], fields["avg300"],
                                    int(fields["total"]))


def test_parse_pressure_drops_cut_and_malformed_lines() -> None:
    text = ("some avg10=1.00 avg60=2.00 avg300=3.00 total=42\n"
            "full avg10=0.50 avg60=0.2")
    assert parse_pressure(text) == {"some": (1.0, 2.0, 3.0, 42)}
    assert parse_pressure("some avg10=x avg60=1 avg300=1 total=1\nbogus line\n") == {}
    assert parse_pressure("") == {}


def test_live_tree_declares_twelve_metrics_with_percent_avgs_and_usec_totals() -> None:
    collector = PsiCollector(fixture_roots("psi", "live", "t0"))
    assert collector.available and collector.reason is None
    descs = {d.name: d for d in collector.descriptors()}
    assert len(descs) == 12
    avg = descs["kernel.all.pressure.io.full.avg"]
    assert avg.semantics is Semantics.INSTANT and avg.indom == "kernel.pressure.avg"
    total = descs["kernel.all.pressure.memory.some.total"]
    assert total.semantics is Semantics.COUNTER and str(total.units) == "microsec"
    raw = collector.collect()
    assert set(raw) == set(descs)
    io = naive_pressure(LIVE_T0 / "io")
    assert raw["kernel.all.pressure.io.some.avg"] == dict(
        zip(AVG_INSTANCES, (io["some"]["avg10"], io["some"]["avg60"], io["some"]["avg300"]),
            strict=True))
    assert raw["kernel.all.pressure.io.some.total"] == {"": int(io["some"]["total"])}


def test_kernel_without_cpu_full_line_has_no_cpu_full_metrics() -> None:
    collector = PsiCollector(fixture_roots("psi", "no-cpu-full"))
    names = {d.name for d in collector.descriptors()}
    assert "kernel.all.pressure.cpu.some.avg" in names
    assert not any(n.startswith("kernel.all.pressure.cpu.full") for n in names)
    assert "kernel.all.pressure.memory.full.total" in names
    raw = collector.collect()
    assert set(raw) == names
    assert raw["kernel.all.pressure.cpu.some.total"] == {"": 123456789}


def test_absent_psi_registers_nothing_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    collector = PsiCollector(Roots.under(tmp_path))
    assert not collector.available
    assert "4.20" in (collector.reason or "") and "CONFIG_PSI" in (collector.reason or "")
    assert collector.descriptors() == []
    registry = MetricRegistry()
    sampler = Sampler([collector], registry=registry, clock=FakeClock())
    assert len(registry) == 0
    assert sampler.sample().groups["psi"].raw == {}
    assert not sampler.status["psi"].stale


def test_listed_but_unreadable_psi_is_reported_as_disabled(tmp_path: Path) -> None:
    # A kernel with CONFIG_PSI_DEFAULT_DISABLED lists the files but fails reads with
    # EOPNOTSUPP; sources maps that to "missing", as it does a dangling link.
    pressure = tmp_path / "proc" / "pressure"
    pressure.mkdir(parents=True)
    for resource in ("cpu", "memory", "io"):
        (pressure / resource).symlink_to(tmp_path / "nowhere" / resource)
    probe = probe_psi(Roots.under(tmp_path))
    assert not probe.available
    assert "psi=1" in (probe.reason or "") and "disabled" in (probe.reason or "")
    assert PsiCollector(Roots.under(tmp_path)).descriptors() == []


def test_collect_before_descriptors_probes_first() -> None:
    raw = PsiCollector(fixture_roots("psi", "live", "t0")).collect()
    assert len(raw) == 12


def test_file_vanishing_after_probe_loses_only_its_values(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "psi", "live", "t0")
    collector = PsiCollector(roots)
    collector.descriptors()
    (roots.proc / "pressure" / "io").unlink()
    raw = collector.collect()
    assert not any(".io." in name for name in raw)
    assert "kernel.all.pressure.cpu.some.total" in raw


def test_sampler_turns_totals_into_stall_rates(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "psi", "live", "t0")
    clock = FakeClock()
    sampler = Sampler([PsiCollector(roots)], registry=MetricRegistry(), clock=clock)
    first = sampler.sample().groups["psi"].cooked
    assert first["kernel.all.pressure.cpu.some.total"][""] is None
    for resource in ("cpu", "memory", "io"):
        shutil.copy(LIVE_T1 / resource, roots.proc / "pressure" / resource)
    clock.advance(1.0)
    cooked = sampler.sample().groups["psi"].cooked
    for resource in ("cpu", "memory", "io"):
        before, after = naive_pressure(LIVE_T0 / resource), naive_pressure(LIVE_T1 / resource)
        for kind in after:
            rate = cooked[f"kernel.all.pressure.{resource}.{kind}.total"][""]
            assert rate == pytest.approx(after[kind]["total"] - before[kind]["total"])
            # microseconds stalled per second of wall time: at most 1e6
            assert 0 <= rate <= 1e6  # type: ignore[operator]
            assert cooked[f"kernel.all.pressure.{resource}.{kind}.avg"]["10 second"] == \
                after[kind]["avg10"]
    # The capture spun a CPU for its one second: CPU pressure moved.
    assert cooked["kernel.all.pressure.cpu.some.total"][""] > 0  # type: ignore[operator]


@pytest.mark.live
def test_live_pressure_matches_a_reread_of_proc_pressure() -> None:
    if not Path("/proc/pressure/cpu").exists():
        pytest.skip("this kernel has no /proc/pressure")
    collector = PsiCollector(Roots())
    if not collector.available:
        pytest.skip(f"PSI unavailable: {collector.reason}")
    before = {r: naive_pressure(Path("/proc/pressure") / r) for r in ("cpu", "memory", "io")}
    raw = collector.collect()
    after = {r: naive_pressure(Path("/proc/pressure") / r) for r in ("cpu", "memory", "io")}
    for resource in ("cpu", "memory", "io"):
        for kind in after[resource]:
            base = f"kernel.all.pressure.{resource}.{kind}"
            total = raw[f"{base}.total"][""]
            lo, hi = before[resource][kind]["total"], after[resource][kind]["total"]
            assert lo <= total <= hi  # type: ignore[operator]
            for inst, key in zip(AVG_INSTANCES, ("avg10", "avg60", "avg300"), strict=True):
                a, b = before[resource][kind][key], after[resource][kind][key]
                assert min(a, b) <= raw[f"{base}.avg"][inst] <= max(a, b)  # type: ignore[operator]
