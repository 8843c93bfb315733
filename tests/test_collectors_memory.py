"""Memory collector over captured and crafted /proc trees, and against free, vmstat, psutil."""

from __future__ import annotations

import mmap
import shutil
import subprocess
from pathlib import Path

import pytest

from hostscope.metrics.collectors.memory import (
    MEMINFO_FIELDS,
    VMSTAT_FIELDS,
    MemoryCollector,
    TokenPicker,
    parse_meminfo,
    parse_vmstat,
    vmstat_route,
)
from hostscope.metrics.model import SINGULAR, MetricRegistry, Semantics
from hostscope.metrics.sampler import Sampler, SystemClock
from hostscope.metrics.sources import Roots
from tests.support import FIXTURES, FakeClock, copy_fixture, fixture_roots

LIVE_T0 = FIXTURES / "memory" / "live" / "t0" / "proc"
LIVE_T1 = FIXTURES / "memory" / "live" / "t1" / "proc"


def naive_meminfo(path: Path) -> dict[str, int]:
    """An independent, obvious reading of a complete meminfo file."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    return out


def naive_vmstat(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def test_parse_meminfo_reads_every_key_including_parenthesised_and_unitless() -> None:
    parsed = parse_meminfo((LIVE_T0 / "meminfo").read_text())
    expected = naive_meminfo(LIVE_T0 / "meminfo")
    assert parsed == expected
    assert "Active(anon)" in parsed and "HugePages_Total" in parsed


def test_collect_live_tree_publishes_meminfo_fields_with_kernel_values() -> None:
    collector = MemoryCollector(fixture_roots("memory", "live", "t0"))
    raw = collector.collect()
    declared = {d.name for d in collector.descriptors()}
    assert set(raw) <= declared
    mem = naive_meminfo(LIVE_T0 / "meminfo")
    assert raw["mem.physmem"][""] == mem["MemTotal"]
    assert raw["mem.util.hugepagesize"][""] == mem["Hugepagesize"]
    for leaf, key, _, _ in MEMINFO_FIELDS:
        assert raw[f"mem.util.{leaf}"] == {"": mem[key]}, leaf
    # Every declared metric has a value on this kernel (6.18 prints every key we use).
    assert set(raw) == declared


def test_vmstat_sums_reclaim_families_without_double_counting() -> None:
    vm = naive_vmstat(LIVE_T0 / "vmstat")
    picked = parse_vmstat((LIVE_T0 / "vmstat").read_text())
    for name in ("pgfault", "pgmajfault", "pgpgin", "pgpgout", "pswpin", "pswpout", "oom_kill",
                 "compact_stall", "nr_dirtied", "nr_written", "thp_fault_fallback"):
        assert picked[name] == vm[name], name
    # 4.8+: node totals per reclaimer; pgscan_anon/file split the same scans by LRU type
    # and pgscan_direct_throttle counts events, so none of those are added in.
    assert picked["pgscan"] == sum(vm[k] for k in ("pgscan_kswapd", "pgscan_direct",
                                                   "pgscan_khugepaged", "pgscan_proactive"))
    assert picked["pgsteal"] == sum(vm[k] for k in ("pgsteal_kswapd", "pgsteal_direct",
                                                    "pgsteal_khugepaged", "pgsteal_proactive"))
    assert picked["pgscan_direct"] == vm["pgscan_direct"]
    assert picked["allocstall"] == sum(v for k, v in vm.items() if k.startswith("allocstall_"))
    assert picked["workingset_refault"] == (vm["workingset_refault_anon"]
                                            + vm["workingset_refault_file"])
    assert set(picked) == {f.leaf for f in VMSTAT_FIELDS}


def test_old_kernel_layout_missing_keys_are_absent_and_per_zone_keys_summed() -> None:
    raw = MemoryCollector(fixture_roots("memory", "crafted-old")).collect()
    for absent in ("mem.util.available", "mem.util.slab_reclaimable", "mem.util.shared",
                   "mem.util.active_anon", "mem.util.hugepages_surp", "mem.vmstat.oom_kill",
                   "mem.vmstat.workingset_refault"):
        assert absent not in raw, absent
    assert raw["mem.util.hugepages_total"][""] == 16
    assert raw["mem.util.hugepages_rsvd"][""] == 2
    assert raw["mem.vmstat.pgscan"][""] == 500 + 1500 + 40 + 160  # throttle (7) excluded
    assert raw["mem.vmstat.pgsteal"][""] == 300 + 700 + 20 + 80
    assert raw["mem.vmstat.pgscan_direct"][""] == 40 + 160
    assert raw["mem.vmstat.pgsteal_direct"][""] == 20 + 80
    assert raw["mem.vmstat.allocstall"][""] == 12


def test_derived_used_and_swapused_on_old_kernel_without_sreclaimable() -> None:
    sampler = Sampler([MemoryCollector(fixture_roots("memory", "crafted-old"))],
                      registry=MetricRegistry(), clock=FakeClock())
    cooked = sampler.sample().groups["memory"].cooked
    # free(1): MemTotal - MemFree - Buffers - Cached (- SReclaimable, absent here)
    assert cooked["mem.util.used"][""] == 8061104 - 1203456 - 204800 - 3145728
    assert cooked["mem.util.swapused"][""] == 2097148 - 1048572


def test_truncated_files_keep_complete_lines_only() -> None:
    raw = MemoryCollector(fixture_roots("memory", "truncated")).collect()
    full = naive_meminfo(LIVE_T0 / "meminfo")
    assert raw["mem.util.slab"][""] == full["Slab"]
    # The SReclaimable line was cut mid-number: no value rather than a wrong one.
    assert "mem.util.slab_reclaimable" not in raw
    assert "mem.util.committed_as" not in raw
    # vmstat was cut before the reclaim keys: the early counters are still there.
    assert raw["mem.vmstat.pgpgin"][""] == naive_vmstat(LIVE_T0 / "vmstat")["pgpgin"]
    assert "mem.vmstat.oom_kill" not in raw


def test_garbage_value_loses_only_that_key() -> None:
    text = (LIVE_T0 / "meminfo").read_text().replace("MemFree:", "MemFree: x", 1)
    parsed = parse_meminfo(text)
    assert "MemFree" not in parsed
    assert parsed["MemTotal"] == naive_meminfo(LIVE_T0 / "meminfo")["MemTotal"]


def test_picker_relearns_when_the_layout_changes() -> None:
    picker = TokenPicker(lambda tok: (tok[:-1],) if tok in ("MemTotal:", "MemFree:") else ())
    live = (LIVE_T0 / "meminfo").read_text()
    old = (FIXTURES / "memory/crafted-old/proc/meminfo").read_text()
    assert picker.pick(live)["MemFree"] == naive_meminfo(LIVE_T0 / "meminfo")["MemFree"]
    assert picker.pick(old) == {"MemTotal": 8061104, "MemFree": 1203456}
    # Same number of tokens, keys in another order: positions are checked, not assumed.
    lines = live.splitlines(keepends=True)
    swapped = "".join([lines[1], lines[0], *lines[2:]])
    assert picker.pick(swapped)["MemTotal"] == naive_meminfo(LIVE_T0 / "meminfo")["MemTotal"]


def test_sampler_turns_vmstat_counters_into_rates(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "memory", "live", "t0")
    clock = FakeClock()
    registry = MetricRegistry()
    sampler = Sampler([MemoryCollector(roots)], registry=registry, clock=clock)
    assert registry.get("mem.vmstat.pgfault").semantics is Semantics.COUNTER
    assert registry.get("mem.util.used").derived
    first = sampler.sample().groups["memory"].cooked
    assert first["mem.vmstat.pgfault"][""] is None  # no rate from one sample
    for name in ("meminfo", "vmstat"):
        shutil.copy(LIVE_T1 / name, roots.proc / name)
    clock.advance(2.0)
    cooked = sampler.sample().groups["memory"].cooked
    vm0, vm1 = naive_vmstat(LIVE_T0 / "vmstat"), naive_vmstat(LIVE_T1 / "vmstat")
    for leaf in ("pgfault", "pgmajfault", "pgpgin", "pgpgout", "nr_dirtied"):
        assert cooked[f"mem.vmstat.{leaf}"][""] == pytest.approx((vm1[leaf] - vm0[leaf]) / 2.0)
    # 64 MiB were touched between the captures: at least 16384 faults in 2 s.
    assert cooked["mem.vmstat.pgfault"][""] >= 16384 / 2.0  # type: ignore[operator]
    mem = naive_meminfo(LIVE_T1 / "meminfo")
    assert cooked["mem.util.free"][""] == mem["MemFree"]
    assert cooked["mem.util.used"][""] == (mem["MemTotal"] - mem["MemFree"] - mem["Buffers"]
                                           - mem["Cached"] - mem["SReclaimable"])
    # The stacked chart adds up to physical memory exactly.
    stack = sum(cooked[f"mem.util.{leaf}"][""] for leaf in  # type: ignore[misc]
                ("used", "free", "bufmem", "cached", "slab_reclaimable"))
    assert stack == mem["MemTotal"]


def test_missing_vmstat_gives_meminfo_only(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "memory", "live", "t0")
    (roots.proc / "vmstat").unlink()
    raw = MemoryCollector(roots).collect()
    assert "mem.util.free" in raw
    assert not any(name.startswith("mem.vmstat.") for name in raw)


# ---- live cross-checks -----------------------------------------------------------------


def _free_k() -> dict[str, int]:
    out = subprocess.run(["free", "-k"], check=True, capture_output=True, text=True).stdout
    header, mem = out.splitlines()[0].split(), out.splitlines()[1].split()
    return dict(zip(header, (int(v) for v in mem[1:]), strict=True))


def _within(value: float, a: float, b: float, slack: float) -> bool:
    return min(a, b) - slack <= value <= max(a, b) + slack


@pytest.mark.live
def test_live_levels_match_free_and_psutil() -> None:
    psutil = pytest.importorskip("psutil")
    if shutil.which("free") is None:
        pytest.skip("free(1) is not installed")
    collector = MemoryCollector(Roots())
    sampler = Sampler([collector], registry=MetricRegistry())
    before = sampler.sample().groups["memory"].cooked
    free = _free_k()
    vm = psutil.virtual_memory()
    after = sampler.sample().groups["memory"].cooked
    slack = 16 * 1024  # KB: memory the machine may allocate while the tools run

    def ours(name: str) -> tuple[float, float]:
        return before[name][""], after[name][""]  # type: ignore[return-value]

    def both(name: str, *extra: str) -> tuple[float, float]:
        a, b = ours(name)
        for other in extra:
            oa, ob = ours(other)
            a, b = a + oa, b + ob
        return a, b

    assert free["total"] == before["mem.physmem"][""]
    assert _within(free["free"], *ours("mem.util.free"), slack)
    assert _within(free["shared"], *ours("mem.util.shared"), slack)
    assert _within(free["available"], *ours("mem.util.available"), slack)
    assert _within(free["buff/cache"],
                   *both("mem.util.bufmem", "mem.util.cached", "mem.util.slab_reclaimable"), slack)
    # Our used is free(1)'s total - free - buff/cache (procps 3.3's "used").
    assert _within(free["total"] - free["free"] - free["buff/cache"], *ours("mem.util.used"),
                   slack)
    assert vm.total == before["mem.physmem"][""] * 1024
    assert _within(vm.free / 1024, *ours("mem.util.free"), slack)
    assert _within(vm.available / 1024, *ours("mem.util.available"), slack)
    assert _within(vm.buffers / 1024, *ours("mem.util.bufmem"), slack)
    # psutil's cached includes SReclaimable, as free(1) does.
    assert _within(vm.cached / 1024, *both("mem.util.cached", "mem.util.slab_reclaimable"), slack)
    assert _within((vm.total - vm.free - vm.buffers - vm.cached) / 1024, *ours("mem.util.used"),
                   slack)


def _vmstat_pgfault() -> int:
    return naive_vmstat(Path("/proc/vmstat"))["pgfault"]


@pytest.mark.live
def test_live_pgfault_rate_counts_a_known_workload_and_matches_vmstat() -> None:
    class Recording(SystemClock):
        """The rate's interval runs from the end of one collection to the end of the
        next (when the sampler reads the clock for rates), not from tick start to tick
        start: on a loaded machine the two differed by more than 5 %."""

        def __init__(self) -> None:
            self.readings: list[float] = []

        def mono(self) -> float:
            self.readings.append(super().mono())
            return self.readings[-1]

    clock = Recording()
    sampler = Sampler([MemoryCollector(Roots())], registry=MetricRegistry(), clock=clock)
    outer_start = _vmstat_pgfault()
    first = sampler.sample()
    pages = 16384
    with mmap.mmap(-1, pages * mmap.PAGESIZE) as region:
        # Without this a THP-backed region takes one fault per 2 MiB.
        region.madvise(mmap.MADV_NOHUGEPAGE)
        for offset in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            region[offset] = 1
        second = sampler.sample()
    outer_end = _vmstat_pgfault()
    rate = second.groups["memory"].cooked["mem.vmstat.pgfault"][""]
    assert isinstance(rate, float)
    # readings: tick 1 starts, memory collected, tick 2 starts, memory collected
    assert clock.readings[0] == first.mono and clock.readings[2] == second.mono
    faults = rate * (clock.readings[3] - clock.readings[1])
    # At least the faults we caused, at most all faults an outside reader saw around them.
    assert faults >= pages * 0.95
    assert faults <= (outer_end - outer_start) * 1.05


@pytest.mark.live
def test_live_pgpgin_equals_vmstat_s() -> None:
    if shutil.which("vmstat") is None:
        pytest.skip("vmstat(8) is not installed")
    collector = MemoryCollector(Roots())
    before = collector.collect()["mem.vmstat.pgpgin"][""]
    out = subprocess.run(["vmstat", "-s"], check=True, capture_output=True, text=True).stdout
    after = collector.collect()["mem.vmstat.pgpgin"][""]
    paged_in = next(int(line.split()[0]) for line in out.splitlines() if "paged in" in line)
    assert before <= paged_in <= after  # type: ignore[operator]


def test_picker_gives_the_same_from_bytes_and_text_and_sums_on_the_fast_path() -> None:
    text = (LIVE_T0 / "vmstat").read_text()
    picker = TokenPicker(vmstat_route())
    from_text = picker.pick(text)
    from_bytes = picker.pick(text.encode())  # relearnt for bytes tokens
    assert from_bytes == from_text == parse_vmstat(text)
    assert list(from_bytes) == list(from_text)  # same order of outputs
    assert picker.pick(text.encode()) == from_text  # learnt: the fast path
    # a garbled value among summed keys loses only its own contribution
    garbled = text.replace("pgscan_kswapd ", "pgscan_kswapd x", 1).encode()
    vm = naive_vmstat(LIVE_T0 / "vmstat")
    picked = picker.pick(garbled)
    assert picked["pgscan"] == from_text["pgscan"] - vm["pgscan_kswapd"]
    assert picked["pgfault"] == from_text["pgfault"]
    # cut short in bytes, like text: the partial last line is not trusted
    cut = text.encode()[: text.index("pgpgout") + 9]
    assert "pgpgout" not in picker.pick(cut) and "pgpgin" in picker.pick(cut)


def test_derive_all_equals_the_derivations_one_by_one() -> None:
    for case in (("live", "t0"), ("crafted-old",)):
        collector = MemoryCollector(fixture_roots("memory", *case))
        cooked = dict(collector.collect())
        want = {d.desc.name: dict(d.compute(cooked)) for d in collector.derivations()}
        assert collector.derive_all(cooked) == want
    assert collector.derive_all({}) == {"mem.util.used": {SINGULAR: None},
                                        "mem.util.swapused": {SINGULAR: None}}
