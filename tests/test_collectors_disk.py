"""Disk collector over captured and crafted /proc + /sys trees, and against the live machine.

The crafted tree (tests/fixtures/disk/crafted, built by its capture.py) holds whole disks,
partitions, device-mapper, md, idle and busy loop devices, an idle zram device, a device
named with a space and a cciss name with a slash, in the 20-column (5.5+) layout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
import pytest

from hostscope.metrics.collector import CookedView
from hostscope.metrics.collectors.disk import (
    DiskCollector,
    classify_device,
    parse_diskstats,
)
from hostscope.metrics.model import SINGULAR, MetricRegistry, ValueType
from hostscope.metrics.sampler import Sampler, Tick
from hostscope.metrics.sources import Roots, read_text
from tests.support import FIXTURES, FakeClock, fixture_roots


def tree(tmp_path: Path, name: str) -> Roots:
    """A writable copy of a disk fixture that keeps sysfs symlinks as symlinks."""
    dest = tmp_path / name
    shutil.copytree(FIXTURES / "disk" / name, dest, symlinks=True)
    return Roots.under(dest)


def edit_line(roots: Roots, device: str, **changes: int) -> None:
    """Change some columns (f1..f17 as in iostats.rst, by 0-based index) of one device."""
    path = roots.proc / "diskstats"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        head = 2 + len(device.split())
        if " ".join(parts[2:head]) == device:
            fields = parts[head:]
            for key, value in changes.items():
                fields[int(key[1:])] = str(value)
            lines[i] = " ".join([*parts[:head], *fields])
    path.write_text("\n".join(lines) + "\n")


def sampler_for(roots: Roots, clock: FakeClock, **kw: int) -> Sampler:
    return Sampler([DiskCollector(roots, **kw)], registry=MetricRegistry(), clock=clock)


# --- parsing ---------------------------------------------------------------------------


def test_parse_20_column_layout_with_space_and_slash_in_names() -> None:
    rows = parse_diskstats((FIXTURES / "disk/crafted/proc/diskstats").read_text())
    by_name = {name: (major, minor, fields) for major, minor, name, fields in rows}
    assert len(rows) == 13
    assert by_name["my disk"] == (65, 0, (10, 0, 80, 5, 20, 0, 160, 15, 0, 20, 20,
                                          0, 0, 0, 0, 0, 0))
    assert by_name["cciss/c0d0"][2][:4] == (7, 0, 56, 3)
    assert by_name["sda"][2] == (1000, 10, 8000, 500, 2000, 20, 16000, 1500, 2, 1800, 2100,
                                 5, 1, 64, 7, 30, 9)


def test_parse_14_column_layout_ignores_pre_2_6_25_partition_lines() -> None:
    rows = parse_diskstats((FIXTURES / "disk/kernel-4.14/proc/diskstats").read_text())
    names = [name for _, _, name, _ in rows]
    assert "sdb1" not in names  # "8 17 sdb1 4 32 0 0": the old 4-field form
    assert all(len(fields) == 11 for *_, fields in rows)
    assert names[:3] == ["sda", "sda1", "sdb"]


def test_parse_ignores_columns_a_future_kernel_appends() -> None:
    rows = parse_diskstats("   8 0 sda " + " ".join(str(i) for i in range(1, 23)) + "\n")
    assert rows == [(8, 0, "sda", tuple(range(1, 18)))]


def test_parse_drops_cut_short_and_garbage_lines() -> None:
    text = (
        "   8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
        "   8 1 sda1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
        "   8 2 sda2 1 2 3 4 5 6 x 8 9 10 11 12 13 14 15 16 17\n"
        "   8 3 sda3 1 2 3 4 5 6 7 8\n"
        "   8 16 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1"  # cut mid-number, no newline
    )
    assert [name for _, _, name, _ in parse_diskstats(text)] == ["sda", "sda1"]


def test_parse_empty_and_nonsense() -> None:
    assert parse_diskstats("") == []
    assert parse_diskstats("hello world\n") == []


# --- classification --------------------------------------------------------------------


def test_classify_from_sysfs() -> None:
    roots = fixture_roots("disk", "crafted")
    names = frozenset({"sda", "sda1"})
    sda = classify_device(roots, "sda", names)
    assert (sda.group, sda.virtual, sda.in_all) == ("dev", False, True)
    assert classify_device(roots, "sda1", names).group == "partitions"
    dm0 = classify_device(roots, "dm-0", names)
    assert (dm0.group, dm0.instance, dm0.virtual, dm0.in_all) == ("dm", "vg0-root", True, False)
    md0 = classify_device(roots, "md0", names)
    assert (md0.group, md0.virtual, md0.in_all) == ("dev", True, False)
    assert classify_device(roots, "cciss/c0d0", names).in_all


def test_classify_by_name_without_sysfs() -> None:
    roots = Roots.under("/nonexistent")
    names = frozenset({"sda", "sda1", "nvme0n1", "nvme0n1p2", "mmcblk0", "mmcblk0p1", "sr0",
                       "loop0", "dm-3", "md127"})
    got = {n: classify_device(roots, n, names) for n in names}
    assert {n for n, d in got.items() if d.group == "partitions"} == {
        "sda1", "nvme0n1p2", "mmcblk0p1"}
    assert got["dm-3"].group == "dm" and got["dm-3"].instance == "dm-3"
    assert {n for n, d in got.items() if d.in_all} == {"sda", "nvme0n1", "mmcblk0", "sr0"}
    assert got["loop0"].virtual and got["md127"].virtual


# --- collection ------------------------------------------------------------------------


def test_collect_crafted_tree_groups_and_sums() -> None:
    collector = DiskCollector(fixture_roots("disk", "crafted"))
    raw = collector.collect()
    declared = {d.name for d in collector.descriptors()}
    assert set(raw) <= declared
    # Idle virtual devices (loop0, zram0) are left out; busy ones (loop1, md0) are in.
    assert set(raw["disk.dev.read"]) == {"sda", "nvme0n1", "md0", "loop1", "my disk",
                                         "cciss/c0d0"}
    assert set(raw["disk.dm.read"]) == {"vg0-root", "luks-home"}
    assert set(raw["disk.partitions.read"]) == {"sda1", "sda2", "nvme0n1p1"}
    # Sectors -> Kbytes, rounding each odd sector count down like PCP.
    assert raw["disk.dev.read_bytes"]["nvme0n1"] == 12000
    assert raw["disk.dev.total"]["sda"] == 3000
    assert raw["disk.dev.total_bytes"]["sda"] == 12000
    assert raw["disk.dev.inflight"]["sda"] == 2
    assert raw["disk.dm.write_rawactive"]["vg0-root"] == 400
    # disk.all: physical whole disks only (sda, nvme0n1, "my disk", cciss/c0d0)
    all_ = {k.removeprefix("disk.all."): v[SINGULAR] for k, v in raw.items()
            if k.startswith("disk.all.")}
    assert raw["hinv.ndisk"][SINGULAR] == 4
    assert all_["read"] == 1000 + 3000 + 10 + 7
    assert all_["write"] == 2000 + 1000 + 20
    assert all_["read_bytes"] == 4000 + 12000 + 40 + 28
    assert all_["write_bytes"] == 8000 + 4000 + 80
    assert all_["total"] == 4017 + 3020
    assert all_["total_bytes"] == 16068 + 12080
    assert all_["avactive"] == 1800 + 950 + 20 + 3
    assert all_["aveq"] == 2100 + 1000 + 20 + 3
    assert all_["read_rawactive"] == 500 + 900 + 5 + 3
    assert all_["write_rawactive"] == 1500 + 100 + 15
    assert all_["inflight"] == 2
    assert all_["discard"] == 5 and all_["discard_bytes"] == 32
    assert all_["flush"] == 80 and all_["flush_rawactive"] == 14


def test_time_columns_are_u32_counters_and_counts_u64() -> None:
    descs = {d.name: d for d in DiskCollector(Roots()).descriptors()}
    for leaf in ("read_rawactive", "write_rawactive", "avactive", "aveq", "flush_rawactive"):
        assert descs[f"disk.dev.{leaf}"].type is ValueType.U32
        assert descs[f"disk.all.{leaf}"].type is ValueType.U64
    assert descs["disk.dev.read"].type is ValueType.U64
    assert descs["disk.dev.read_bytes"].units.space_scale.name == "KBYTE"


def test_14_column_kernel_without_sysfs() -> None:
    raw = DiskCollector(fixture_roots("disk", "kernel-4.14")).collect()
    assert set(raw["disk.dev.read"]) == {"sda", "sdb", "nvme0n1", "loop1"}
    assert set(raw["disk.partitions.read"]) == {"sda1", "nvme0n1p1"}
    assert set(raw["disk.dm.read"]) == {"dm-0"}
    assert raw["hinv.ndisk"][SINGULAR] == 3
    assert raw["disk.all.read"][SINGULAR] == 100 + 10 + 40
    # No discard or flush columns on this kernel: absent, not zero.
    assert not any("discard" in k or "flush" in k for k in raw)


def test_18_column_kernel_has_discards_but_no_flushes() -> None:
    raw = DiskCollector(fixture_roots("disk", "kernel-4.19")).collect()
    assert raw["disk.dev.discard"] == {"sda": 30}
    assert raw["disk.all.discard_bytes"][SINGULAR] == 1200
    assert raw["disk.partitions.discard_rawactive"] == {"sda1": 60}
    assert not any("flush" in k for k in raw)


def test_captured_live_tree() -> None:
    roots = fixture_roots("disk", "live")
    raw = DiskCollector(roots).collect()
    text = (roots.proc / "diskstats").read_text()
    busy = [name for _, _, name, f in parse_diskstats(text) if f[0] or f[4]]
    assert sorted(raw["disk.dev.read"]) == sorted(busy)  # idle loops and zram left out
    assert raw["hinv.ndisk"][SINGULAR] == len(busy)
    assert raw["disk.all.read"][SINGULAR] == sum(raw["disk.dev.read"].values())


# --- through a real Sampler: rates and derived metrics ----------------------------------


def test_rates_await_util_and_queue_through_sampler(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    sampler = sampler_for(roots, clock)
    first = sampler.sample().groups["disk"].cooked
    assert first["disk.dev.await"]["sda"] is None
    assert first["disk.dev.util"]["sda"] is None
    # One second later sda completed 100 reads taking 300 ms in total and 50 writes
    # taking 250 ms, was busy 800 ms, with 1500 ms of queue-weighted time.
    edit_line(roots, "sda", f0=1100, f3=800, f4=2050, f7=1750, f9=2600, f10=3600)
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.dev.read"]["sda"] == pytest.approx(100.0)
    assert c["disk.dev.r_await"]["sda"] == pytest.approx(3.0)
    assert c["disk.dev.w_await"]["sda"] == pytest.approx(5.0)
    assert c["disk.dev.await"]["sda"] == pytest.approx(550 / 150)
    assert c["disk.dev.util"]["sda"] == pytest.approx(0.8)
    assert c["disk.dev.avg_qlen"]["sda"] == pytest.approx(1.5)
    # No I/O on nvme0n1: latency undefined, utilisation zero.
    assert c["disk.dev.await"]["nvme0n1"] is None
    assert c["disk.dev.util"]["nvme0n1"] == 0.0
    # disk.all: the same I/O, utilisation averaged over the 4 physical disks.
    assert c["disk.all.total"][SINGULAR] == pytest.approx(150.0)
    assert c["disk.all.await"][SINGULAR] == pytest.approx(550 / 150)
    assert c["disk.all.util"][SINGULAR] == pytest.approx(0.2)
    assert c["disk.all.avg_qlen"][SINGULAR] == pytest.approx(1.5)
    # Busy time can exceed wall time by a jiffy or so: utilisation is clamped.
    edit_line(roots, "sda", f9=5200)
    clock.advance(2.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.dev.util"]["sda"] == 1.0
    assert c["disk.dev.await"]["sda"] is None


def _one_by_one(collector: DiskCollector, cooked: CookedView) -> dict[str, object]:
    return {d.desc.name: dict(d.compute(cooked)) for d in collector.derivations()}


def _inputs(cooked: CookedView) -> dict[str, dict[str, float | str | None]]:
    return {k: dict(v) for k, v in cooked.items()
            if not k.endswith(("util", "await", "avg_qlen"))}


def test_derive_all_equals_the_derivations_one_by_one(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    collector = DiskCollector(roots)
    sampler = Sampler([collector], registry=MetricRegistry(), clock=clock)
    cases = [_inputs(sampler.sample().groups["disk"].cooked)]  # first sample: all None
    edit_line(roots, "sda", f0=1100, f3=800, f4=2050, f7=1750, f9=2600, f10=3600)
    clock.advance(1.0)
    cases.append(_inputs(sampler.sample().groups["disk"].cooked))
    edit_line(roots, "sda", f9=5200)  # busier than wall time: clamped
    clock.advance(2.0)
    steady = _inputs(sampler.sample().groups["disk"].cooked)
    cases.append(steady)
    no_disks = {**steady, "hinv.ndisk": {SINGULAR: 0}}
    writes_only = {**steady, "disk.dev.read": {"sda": 0.0}, "disk.dev.read_rawactive": {}}
    cases += [no_disks, writes_only, {k: v for k, v in steady.items() if k != "hinv.ndisk"},
              {**steady, "disk.dev.aveq": {"sda": None}}, {}]
    for cooked in cases:
        assert collector.derive_all(cooked) == _one_by_one(collector, cooked)
    assert collector.derive_all(steady)["disk.dev.util"]["sda"] == 1.0
    assert collector.derive_all(no_disks)["disk.all.util"] == {SINGULAR: None}


def test_u32_time_wrap_is_continuous_per_disk_and_a_gap_in_the_sum(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    sampler = sampler_for(roots, clock)
    edit_line(roots, "sda", f3=2**32 - 100)
    sampler.sample()
    edit_line(roots, "sda", f0=1100, f3=200)  # +100 reads, +300 ms across the wrap
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.dev.read_rawactive"]["sda"] == pytest.approx(300.0)
    assert c["disk.dev.r_await"]["sda"] == pytest.approx(3.0)
    # The sum is u64, so one member wrapping looks like a reset: a gap, never a spike.
    assert c["disk.all.read_rawactive"][SINGULAR] is None
    assert c["disk.all.r_await"][SINGULAR] is None
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.all.read_rawactive"][SINGULAR] == 0.0


def test_counter_reset_gives_a_gap_not_a_spike(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    sampler = sampler_for(roots, clock)
    sampler.sample()
    edit_line(roots, "loop1", f0=5, f2=40)  # loop1 detached and re-attached
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.dev.read"]["loop1"] is None
    edit_line(roots, "loop1", f0=15, f2=120)
    clock.advance(1.0)
    assert sampler.sample().groups["disk"].cooked["disk.dev.read"]["loop1"] == 10.0


def test_idle_loop_device_appears_on_first_io_without_touching_disk_all(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    sampler = sampler_for(roots, clock)
    sampler.sample()
    assert "loop0" not in sampler.latest["disk.dev.read"]
    sampler.sample()
    edit_line(roots, "loop0", f0=7, f2=56, f3=2, f9=2, f10=2)
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert c["disk.dev.read"]["loop0"] is None  # first sight: no rate yet
    assert c["disk.all.read"][SINGULAR] == 0.0  # loop I/O is counted on its backing disk
    assert sampler.latest["hinv.ndisk"][SINGULAR] == 4


def test_device_that_disappears_stops_being_reported(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    clock = FakeClock()
    sampler = sampler_for(roots, clock)
    sampler.sample()
    path = roots.proc / "diskstats"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if " nvme0n1" not in line))
    clock.advance(1.0)
    c = sampler.sample().groups["disk"].cooked
    assert "nvme0n1" not in c["disk.dev.read"]
    assert "nvme0n1p1" not in c["disk.partitions.read"]
    assert sampler.latest["hinv.ndisk"][SINGULAR] == 3
    assert c["disk.all.read"][SINGULAR] is None  # the sum went down: a reset, not a rate


def test_renamed_dm_device_is_picked_up_on_reclassification(tmp_path: Path) -> None:
    roots = tree(tmp_path, "crafted")
    collector = DiskCollector(roots, reclassify_every=3)
    assert "vg0-root" in collector.collect()["disk.dm.read"]
    name = roots.sys / "devices/virtual/block/dm-0/dm/name"
    name.write_text("vg0-renamed\n")
    assert "vg0-root" in collector.collect()["disk.dm.read"]  # cached
    assert "vg0-renamed" in collector.collect()["disk.dm.read"]  # third: refreshed


def test_unreadable_diskstats_is_an_isolated_collector_error(tmp_path: Path) -> None:
    roots = Roots.under(tmp_path)
    sampler = sampler_for(roots, FakeClock())
    tick = sampler.sample()
    assert "disk" not in tick.groups
    assert sampler.status["disk"].errors == 1
    assert "SourceUnavailable" in (sampler.status["disk"].last_error or "")


# --- live cross-checks -----------------------------------------------------------------


def _backing_device(path: Path) -> tuple[str, str] | None:
    """(group, instance) of the block device holding ``path``, if it is one."""
    st = os.stat(path)
    collector = DiskCollector(Roots())
    rows = parse_diskstats(read_text(Path("/proc/diskstats")))
    devices = collector._classify(rows)
    for major, minor, name, _ in rows:
        if (major, minor) == (os.major(st.st_dev), os.minor(st.st_dev)):
            dev = devices[(major, minor, name)]
            return dev.group, dev.instance
    return None


@pytest.mark.live
def test_live_matches_psutil() -> None:
    raw = DiskCollector(Roots()).collect()
    ps = psutil.disk_io_counters(perdisk=True)
    assert raw["disk.dev.read"], "this machine has at least one busy whole disk"
    for name, reads in raw["disk.dev.read"].items():
        counters = ps[name]
        # Read moments apart: allow the I/O of a busy moment.
        assert abs(counters.read_count - reads) <= 50
        assert abs(counters.write_count - raw["disk.dev.write"][name]) <= 200
        assert abs(counters.read_bytes // 1024 - raw["disk.dev.read_bytes"][name]) <= 4096
        assert abs(counters.write_bytes // 1024 - raw["disk.dev.write_bytes"][name]) <= 16384
        assert abs(counters.busy_time - raw["disk.dev.avactive"][name]) <= 2000
    for name, reads in raw.get("disk.partitions.read", {}).items():
        assert abs(ps[name].read_count - reads) <= 50


def _moved(sampler: Sampler, before: Tick, metric: str, inst: str) -> tuple[float, float]:
    """(raw increase, rate x interval) of ``metric`` between ``before`` and a new tick."""
    after = sampler.sample()
    b, a = before.groups["disk"], after.groups["disk"]
    increase = float(a.raw[metric][inst]) - float(b.raw[metric][inst])
    rate = a.cooked[metric][inst]
    assert isinstance(rate, float)
    print(f"{metric}[{inst}]: +{increase:.0f} KB, rate {rate:.0f} KB/s")
    return increase, rate * (after.mono - before.mono)


@pytest.mark.live
def test_live_write_fsync_and_uncached_read_move_the_rates(tmp_path: Path) -> None:
    where = _backing_device(tmp_path)
    if where is None:
        pytest.skip(f"{tmp_path} is not on a block device")
    group, inst = where
    size_kb = 16 << 10
    sampler = Sampler([DiskCollector(Roots())], registry=MetricRegistry())
    before = sampler.sample()
    path = tmp_path / "io.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, os.urandom(size_kb * 1024))
        os.fsync(fd)
    finally:
        os.close(fd)
    increase, from_rate = _moved(sampler, before, f"disk.{group}.write_bytes", inst)
    assert increase >= 0.9 * size_kb
    assert from_rate == pytest.approx(increase, rel=0.1)
    latest = sampler.latest
    assert latest[f"disk.{group}.w_await"][inst] is not None
    assert 0.0 < (latest[f"disk.{group}.util"][inst] or 0.0) <= 1.0
    # Drop the file from the page cache so that reading it goes to the disk.
    before = sampler.sample()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
    increase, from_rate = _moved(sampler, before, f"disk.{group}.read_bytes", inst)
    assert increase >= 0.9 * size_kb
    assert from_rate == pytest.approx(increase, rel=0.1)
    assert sampler.latest[f"disk.{group}.r_await"][inst] is not None


@pytest.mark.live
def test_live_derive_all_equals_the_derivations_one_by_one() -> None:
    collector = DiskCollector(Roots())
    sampler = Sampler([collector], registry=MetricRegistry())
    for _ in range(3):
        cooked = _inputs(sampler.sample().groups["disk"].cooked)
        assert collector.derive_all(cooked) == _one_by_one(collector, cooked)
