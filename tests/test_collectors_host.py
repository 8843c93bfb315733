"""Host collector and hostinfo (identity, capabilities) on captured/crafted trees and live."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hostscope.metrics.collectors.cpu import CpuCollector
from hostscope.metrics.collectors.host import HostCollector
from hostscope.metrics.collectors.memory import MemoryCollector
from hostscope.metrics.collectors.psi import PsiCollector
from hostscope.metrics.hostinfo import (
    CAP_BPF,
    CAP_PERFMON,
    detect_capabilities,
    parse_cpuinfo,
    parse_mounts,
    parse_os_release,
    read_host_identity,
)
from hostscope.metrics.model import MetricRegistry, Semantics, ValueType
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FIXTURES, FakeClock, copy_fixture, fixture_roots

LIVE = FIXTURES / "host" / "live"


def _lines(path: Path, prefix: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith(prefix)]


# ---- parsers -------------------------------------------------------------------------


def test_parse_cpuinfo_live_x86() -> None:
    info = parse_cpuinfo((LIVE / "proc" / "cpuinfo").read_text())
    processors = _lines(LIVE / "proc" / "cpuinfo", "processor")
    assert info.count == len(processors)
    assert info.model == _lines(LIVE / "proc" / "cpuinfo", "model name")[0]
    assert info.mhz == {f"cpu{n}": float(mhz) for n, mhz in
                        zip(processors, _lines(LIVE / "proc" / "cpuinfo", "cpu MHz"), strict=True)}


def test_parse_cpuinfo_arm64_and_power_layouts() -> None:
    arm = parse_cpuinfo((FIXTURES / "host/crafted-arm64/proc/cpuinfo").read_text())
    assert arm.count == 2 and arm.model is None and arm.mhz == {}
    power = parse_cpuinfo("processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n"
                          "clock\t\t: 2900.000000MHz\nrevision\t: 2.2\n\n"
                          "processor\t: 8\ncpu\t\t: POWER9 (architected), altivec supported\n"
                          "clock\t\t: unknown\n")
    assert power.model == "POWER9 (architected), altivec supported"
    assert power.mhz == {"cpu0": 2900.0}  # cpu8's "unknown" clock gives no value


def test_parse_os_release_quoting() -> None:
    parsed = parse_os_release(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n# comment\n\nID=debian\n'
        "VARIANT='Server Edition'\nNAME=\"say \\\"hi\\\"\"\nBROKEN=\"unterminated\n"
        "not a key line\n"
    )
    assert parsed == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian",
                      "VARIANT": "Server Edition", "NAME": 'say "hi"', "BROKEN": "unterminated"}


def test_parse_mounts_unescapes_paths() -> None:
    mounts = parse_mounts((FIXTURES / "host/crafted-arm64/proc/mounts").read_text())
    assert "/mnt/my disk" in [m.path for m in mounts]
    cgroup = next(m for m in mounts if m.fstype == "cgroup2")
    assert "nsdelegate" in cgroup.options


# ---- collector -----------------------------------------------------------------------


def test_collect_live_tree() -> None:
    collector = HostCollector(fixture_roots("host", "live"))
    raw = collector.collect()
    descs = {d.name: d for d in collector.descriptors()}
    assert set(raw) == set(descs)
    assert "hinv.ncpu" not in descs  # published by the cpu collector
    sysctl = LIVE / "proc" / "sys" / "kernel"
    assert raw["kernel.uname.release"][""] == (sysctl / "osrelease").read_text().strip()
    assert raw["kernel.uname.nodename"][""] == (sysctl / "hostname").read_text().strip()
    assert raw["kernel.uname.machine"][""] == (sysctl / "arch").read_text().strip()
    assert raw["kernel.uname.sysname"][""] == "Linux"
    assert raw["hinv.machineid"][""] == (LIVE / "etc" / "machine-id").read_text().strip()
    assert raw["kernel.uname.distro"][""] == "Debian GNU/Linux 12 (bookworm)"
    memtotal_kb = int(_lines(LIVE / "proc" / "meminfo", "MemTotal")[0].split()[0])
    assert raw["hinv.physmem"][""] == memtotal_kb // 1024
    assert raw["kernel.all.uptime"][""] == float((LIVE / "proc/uptime").read_text().split()[0])
    assert set(raw["hinv.cpu.clock"]) == {"cpu0", "cpu1"}
    for name in ("kernel.uname.release", "hinv.cpu.model", "hinv.machineid"):
        assert descs[name].type is ValueType.STRING
    assert descs["hinv.cpu.clock"].indom == "kernel.cpu"
    assert str(descs["hinv.cpu.clock"].units) == "1 / microsec"  # MHz, as PCP declares it


def test_arm64_tree_uses_cpufreq_and_fallbacks() -> None:
    raw = HostCollector(fixture_roots("host", "crafted-arm64")).collect()
    assert raw["hinv.cpu.clock"] == {"cpu0": 2500.0, "cpu1": 1800.0}  # kHz -> MHz
    assert "hinv.cpu.model" not in raw
    assert "hinv.machineid" not in raw
    # No /proc/sys/kernel/arch before 6.1: our own uname (same host, same architecture).
    assert raw["kernel.uname.machine"][""] == os.uname().machine
    assert raw["kernel.uname.distro"][""] == "Debian GNU/Linux 11 (bullseye)"
    assert raw["kernel.uname.nodename"][""] == "edge-01"


def test_boot_facts_and_model_are_cached_hostname_is_not(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "live")
    collector = HostCollector(roots)
    first = collector.collect()
    sysctl = roots.proc / "sys" / "kernel"
    (sysctl / "osrelease").write_text("9.9.9\n")
    (sysctl / "hostname").write_text("renamed\n")
    cpuinfo = roots.proc / "cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace("model name", "modelname")
                       .replace("cpu MHz\t\t: ", "cpu MHz\t\t: 1"))
    second = collector.collect()
    assert second["kernel.uname.release"] == first["kernel.uname.release"]
    assert second["hinv.cpu.model"] == first["hinv.cpu.model"]
    assert second["kernel.uname.nodename"][""] == "renamed"
    assert second["hinv.cpu.clock"] != first["hinv.cpu.clock"]


def test_sampler_runs_host_every_ten_seconds_and_passes_values_through() -> None:
    clock = FakeClock()
    registry = MetricRegistry()
    sampler = Sampler([HostCollector(fixture_roots("host", "live"))], registry=registry,
                      interval_s=1.0, clock=clock)
    assert sampler.group_interval_s("host") == 10.0
    assert registry.get("kernel.all.uptime").semantics is Semantics.INSTANT
    ran = []
    for _ in range(21):
        tick = sampler.sample()
        if "host" in tick.groups:
            ran.append(tick.seq)
            cooked, raw = tick.groups["host"].cooked, tick.groups["host"].raw
            assert cooked == raw  # no counters: strings and levels pass through
        clock.advance(1.0)
    assert ran == [0, 10, 20]
    assert sampler.latest["kernel.uname.release"][""] == \
        (LIVE / "proc/sys/kernel/osrelease").read_text().strip()


def test_all_four_collectors_register_together_and_sample_one_tree() -> None:
    roots = fixture_roots("host", "live")
    registry = MetricRegistry()
    sampler = Sampler([CpuCollector(roots, hz=100), MemoryCollector(roots), PsiCollector(roots),
                       HostCollector(roots)], registry=registry, clock=FakeClock())
    tick = sampler.sample()
    assert set(tick.groups) == {"cpu", "memory", "psi", "host"}
    assert "hinv.ncpu" in registry and "hinv.physmem" in registry and "mem.physmem" in registry
    cooked = tick.cooked()
    assert cooked["hinv.physmem"][""] == cooked["mem.physmem"][""] // 1024  # type: ignore[operator]


# ---- hostinfo ------------------------------------------------------------------------


def test_host_identity_live_tree() -> None:
    ident = read_host_identity(fixture_roots("host", "live"))
    memtotal_kb = int(_lines(LIVE / "proc" / "meminfo", "MemTotal")[0].split()[0])
    btime = next(int(line.split()[1]) for line in (LIVE / "proc/stat").read_text().splitlines()
                 if line.startswith("btime"))
    assert ident == {
        "hostname": (LIVE / "proc/sys/kernel/hostname").read_text().strip(),
        "kernel_release": (LIVE / "proc/sys/kernel/osrelease").read_text().strip(),
        "kernel_version": (LIVE / "proc/sys/kernel/version").read_text().strip(),
        "arch": (LIVE / "proc/sys/kernel/arch").read_text().strip(),
        "machine_id": "0123456789abcdef0123456789abcdef",
        "cpu_model": _lines(LIVE / "proc" / "cpuinfo", "model name")[0],
        "ncpu": len(_lines(LIVE / "proc" / "cpuinfo", "processor")),
        "memory_bytes": memtotal_kb * 1024,
        "boot_time": btime,
        "uptime_s": float((LIVE / "proc/uptime").read_text().split()[0]),
        "os_pretty_name": "Debian GNU/Linux 12 (bookworm)",
    }


def test_host_identity_of_an_empty_tree_is_all_unknown(tmp_path: Path) -> None:
    ident = read_host_identity(Roots.under(tmp_path))
    assert set(ident.values()) == {None}


def test_capabilities_live_tree_root_hybrid_no_kprobes() -> None:
    caps = detect_capabilities(fixture_roots("host", "live"))
    assert caps["psi"] == {"available": True, "reason": None}
    assert caps["cgroup"]["version"] == "hybrid"
    assert caps["cgroup"]["v2_path"] == "/sys/fs/cgroup/unified"
    assert {"cpu", "memory", "name=systemd"} <= set(caps["cgroup"]["v1_controllers"])
    assert "rw" not in caps["cgroup"]["v1_controllers"]
    assert caps["bpf"]["available"] and caps["bpf"]["btf"] and caps["bpf"]["euid_root"]
    assert caps["bpf"]["unprivileged_bpf_disabled"] == 2
    assert caps["perf"] == {"available": True, "reason": None, "perf_event_paranoid": 2}
    assert caps["tracefs"] == {"mounted": True, "path": "/sys/kernel/tracing", "reason": None}
    # 6.18 built without CONFIG_KPROBES: tracefs has no kprobe_events, config.gz says so.
    assert caps["kprobes"]["available"] is False
    assert caps["kprobes"]["source"] == "/proc/config.gz"
    assert "CONFIG_KPROBES" in caps["kprobes"]["reason"]


def test_capabilities_unprivileged_arm64_tree() -> None:
    caps = detect_capabilities(fixture_roots("host", "crafted-arm64"))
    assert not caps["psi"]["available"] and "CONFIG_PSI" in caps["psi"]["reason"]
    assert caps["cgroup"] == {"version": "v2", "reason": None, "v2_path": "/sys/fs/cgroup",
                              "v1_controllers": []}
    bpf = caps["bpf"]
    assert not bpf["available"] and not bpf["btf"] and not bpf["euid_root"]
    assert "kernel.unprivileged_bpf_disabled=1" in bpf["reason"]
    assert "CAP_BPF" in bpf["reason"]
    perf = caps["perf"]
    assert not perf["available"] and perf["perf_event_paranoid"] == 3
    assert perf["reason"].startswith("kernel.perf_event_paranoid=3 and not root")
    assert "CAP_PERFMON" in perf["reason"]
    assert caps["kprobes"]["available"] and caps["kprobes"]["source"].endswith("tracing")
    assert caps["privileges"] == {"euid": 1000, "euid_root": False, "capabilities": []}


def _status(uid: int, cap_eff: int) -> str:
    return f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t{cap_eff:016x}\n"


def test_capabilities_not_root_but_cap_bpf_and_cap_perfmon(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    (roots.proc / "self" / "status").write_text(_status(998, 1 << CAP_BPF | 1 << CAP_PERFMON))
    caps = detect_capabilities(roots)
    assert caps["bpf"]["available"] and caps["perf"]["available"]
    assert caps["privileges"]["capabilities"] == ["CAP_PERFMON", "CAP_BPF"]


def test_capabilities_root_without_capabilities_in_a_container(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    (roots.proc / "self" / "status").write_text(_status(0, 0))
    caps = detect_capabilities(roots)
    assert caps["bpf"]["euid_root"] and not caps["bpf"]["available"]
    assert "root without CAP_PERFMON" in caps["perf"]["reason"]


def test_perf_open_to_all_when_paranoid_is_negative(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    (roots.proc / "sys/kernel/perf_event_paranoid").write_text("-1\n")
    assert detect_capabilities(roots)["perf"]["available"]


def test_kernel_without_perf_or_bpf(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    (roots.proc / "sys/kernel/perf_event_paranoid").unlink()
    (roots.proc / "sys/kernel/unprivileged_bpf_disabled").unlink()
    caps = detect_capabilities(roots)
    assert caps["perf"]["perf_event_paranoid"] is None
    assert "CONFIG_PERF_EVENTS" in caps["perf"]["reason"]
    assert "CONFIG_BPF_SYSCALL" in caps["bpf"]["reason"]


@pytest.mark.parametrize(
    ("mounts", "version", "v2_path"),
    [
        ("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,relatime,cpu,cpuacct 0 0\n"
         "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n", "v1", None),
        ("cgroup2 /sys/fs/cgroup cgroup2 rw,relatime 0 0\n", "v2", "/sys/fs/cgroup"),
        ("cgroup2 /run/cg cgroup2 rw,relatime 0 0\n", "v2", "/run/cg"),
        ("proc /proc proc rw 0 0\n", None, None),
    ],
)
def test_cgroup_versions(tmp_path: Path, mounts: str, version: str | None,
                         v2_path: str | None) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    (roots.proc / "mounts").write_text(mounts)
    cgroup = detect_capabilities(roots)["cgroup"]
    assert cgroup["version"] == version and cgroup["v2_path"] == v2_path
    if version == "v1":
        assert cgroup["v1_controllers"] == ["cpu", "cpuacct", "memory"]
    if version is None:
        assert "no cgroup" in cgroup["reason"]


def test_kprobes_from_config_when_tracefs_is_not_mounted(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "host", "crafted-arm64")
    shutil.rmtree(roots.sys / "kernel" / "tracing")
    assert "cannot tell" in detect_capabilities(roots)["kprobes"]["reason"]
    (roots.proc / "config.gz").write_bytes(gzip.compress(b"CONFIG_KPROBES=y\nCONFIG_PSI=y\n"))
    assert detect_capabilities(roots)["kprobes"] == {"available": True, "reason": None,
                                                      "source": "/proc/config.gz"}
    (roots.proc / "config.gz").write_bytes(b"not gzip at all")
    assert "corrupt" in detect_capabilities(roots)["kprobes"]["reason"]


# ---- live cross-checks ---------------------------------------------------------------


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.live
def test_live_identity_matches_uname_and_hostname() -> None:
    ident = read_host_identity(Roots())
    raw = HostCollector(Roots()).collect()
    assert ident["kernel_release"] == _run("uname", "-r") == raw["kernel.uname.release"][""]
    assert ident["kernel_version"] == _run("uname", "-v") == raw["kernel.uname.version"][""]
    assert ident["arch"] == _run("uname", "-m") == raw["kernel.uname.machine"][""]
    assert ident["hostname"] == socket.gethostname() == raw["kernel.uname.nodename"][""]
    if shutil.which("hostname"):
        assert ident["hostname"] == _run("hostname")
    assert raw["kernel.uname.sysname"][""] == _run("uname", "-s")
    assert ident["ncpu"] == os.cpu_count()
    assert ident["memory_bytes"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    psutil = pytest.importorskip("psutil")
    assert abs(ident["boot_time"] - psutil.boot_time()) <= 1


@pytest.mark.live
def test_live_capabilities_agree_with_independent_tools() -> None:
    caps = detect_capabilities(Roots())
    assert caps["privileges"]["euid_root"] == (os.geteuid() == 0)
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    assert caps["perf"]["perf_event_paranoid"] == paranoid
    assert caps["bpf"]["btf"] == Path("/sys/kernel/btf/vmlinux").exists()
    if shutil.which("stat"):
        top = _run("stat", "-f", "-c", "%T", "/sys/fs/cgroup")
        if top == "cgroup2fs":
            assert caps["cgroup"]["version"] == "v2"
        elif Path("/sys/fs/cgroup/unified").is_dir() and \
                _run("stat", "-f", "-c", "%T", "/sys/fs/cgroup/unified") == "cgroup2fs":
            assert caps["cgroup"]["version"] == "hybrid"
    if shutil.which("findmnt"):
        tracefs = subprocess.run(["findmnt", "-n", "-t", "tracefs", "-o", "TARGET"],
                                 check=False, capture_output=True, text=True).stdout.split()
        assert caps["tracefs"]["mounted"] == bool(tracefs)
    if Path("/proc/config.gz").exists():
        with gzip.open("/proc/config.gz", "rt") as f:
            has_kprobes = "CONFIG_KPROBES=y\n" in f.readlines()
        assert caps["kprobes"]["available"] == has_kprobes
